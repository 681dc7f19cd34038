//! The chat surface (issue 6): seed 002's own Python and JavaScript clients
//! against a real daemon, conversation state, WebSocket auth (seed 003).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fake_upstream::{FakeUpstream, ScriptedTurn};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

const CHAT_KEY: &str = "sk-chat-key-0123456789";

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

async fn chat_daemon(fake: &FakeUpstream, extra: &str) -> Daemon {
    let config = format!("{}\n{extra}\n", config_for(fake));
    Daemon::start_with(&config, &[("AGENTD_API_KEYS", CHAT_KEY)]).await
}

/// Runs a seed client to its end and returns its stdout.
fn run_client(program: &str, script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .arg(clients_dir().join(script))
        .current_dir(clients_dir())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn seed_002_python_examples_run_as_written() {
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let answer = FakeUpstream::expected_text(8);
    let url = d.url.clone();
    let (plain, streamed) = tokio::task::spawn_blocking(move || {
        let env = [("AGENTD_URL", url.as_str()), ("AGENTD_KEY", CHAT_KEY)];
        (
            run_client("python3", "seed002_nonstreaming.py", &env),
            run_client("python3", "seed002_streaming.py", &env),
        )
    })
    .await
    .unwrap();
    assert_eq!(plain.trim_end(), answer.trim_end());
    assert!(streamed.starts_with(&answer), "{streamed}");
    assert!(
        streamed.contains(&format!("Complete: {answer}")),
        "{streamed}"
    );
}

#[tokio::test]
async fn seed_002_javascript_websocket_example_runs_as_written() {
    assert!(
        clients_dir().join("node_modules/ws").exists(),
        "run `npm ci --prefix crates/agentd/tests/clients` first (.ci/run does)"
    );
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let ws_url = d.url.replace("http://", "ws://");
    let mut child = tokio::process::Command::new("node")
        .arg(clients_dir().join("seed002_websocket.js"))
        .env("AGENTD_WS_URL", &ws_url)
        .env("AGENTD_KEY", CHAT_KEY)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !seen.contains("Response ID: run_") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "node exited early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(read.is_ok(), "no answer: {seen}");
    let answer = FakeUpstream::expected_text(8);
    assert!(
        seen.contains(&format!("Complete response: {answer}")),
        "{seen}"
    );
    let _ = child.kill().await;
}

async fn chat(api: &Api, body: Value) -> Reply {
    api.post("/api/chat", &body).await
}

#[tokio::test]
async fn state_continues_the_conversation_and_cannot_be_forged_or_borrowed() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::text(&["Hi Ada."]),
        ScriptedTurn::text(&["You are Ada."]),
    ]);
    let d = chat_daemon(&fake, "").await;
    let api = d.api().with_token(CHAT_KEY);
    let first = chat(&api, json!({"message": "I am Ada", "stream": false})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(
        (
            first.body["response"].as_str(),
            first.body["done"].as_bool()
        ),
        (Some("Hi Ada."), Some(true))
    );
    let state = first.body["state"].clone();
    assert!(
        state["previous_response_id"]
            .as_str()
            .unwrap()
            .starts_with("run_")
    );
    assert_eq!(state["current_agent_name"], "assistant");
    assert!(state["conversation_history"].is_array());

    let second = chat(
        &api,
        json!({"message": "Who am I?", "stream": false, "state": state}),
    )
    .await;
    assert_eq!(second.body["response"], "You are Ada.");
    let sent = fake.requests()[1]["messages"].as_array().unwrap().clone();
    let contents: Vec<&str> = sent
        .iter()
        .map(|m| m["content"].as_str().unwrap_or(""))
        .collect();
    assert!(
        contents.ends_with(&["I am Ada", "Hi Ada.", "Who am I?"]),
        "{contents:?}"
    );

    // A forged token, and a real one from another tenant.
    let mut forged = state.clone();
    let token = forged["session_token"].as_str().unwrap().to_owned();
    forged["session_token"] = json!(format!("{}x", token));
    let r = chat(
        &api,
        json!({"message": "hi", "stream": false, "state": forged}),
    )
    .await;
    assert_eq!((r.status, r.reason()), (401, "CHAT_STATE_INVALID"));
    let (_, other) = crate::keys::mint(&d.api(), "other-tenant", &["chat"]).await;
    let r = chat(
        &d.api().with_token(&other),
        json!({"message": "hi", "stream": false, "state": state}),
    )
    .await;
    assert_eq!((r.status, r.reason()), (404, "SESSION_NOT_FOUND"));
    assert_eq!(fake.requests().len(), 2, "neither reached the model");

    // Streaming: `done` carries the state too.
    let r = api
        .http
        .post(format!("{}/api/chat", d.url))
        .bearer_auth(CHAT_KEY)
        .json(&json!({"message": "again", "state": second.body["state"]}))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    let frames: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(frames.last(), Some(&"[DONE]"));
    let done: Value = serde_json::from_str(frames[frames.len() - 2]).unwrap();
    assert_eq!(done["type"], "done");
    assert!(done["response_id"].as_str().unwrap().starts_with("run_"));
    assert!(done["state"]["session_token"].is_string());
}

#[tokio::test]
async fn chat_errors_are_clear() {
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let api = d.api().with_token(CHAT_KEY);
    let r = d
        .api()
        .with_token("wrong")
        .post("/api/chat", &json!({"message": "x"}))
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("Invalid API key"))
    );
    let r = chat(
        &api,
        json!({"message": "x", "stream": false, "agent_name": "nobody"}),
    )
    .await;
    assert_eq!((r.status, r.reason()), (400, "AGENT_NOT_FOUND"));
    let r = chat(&api, json!({"stream": false})).await;
    assert_eq!((r.status, r.reason()), (400, "INVALID_REQUEST"));
    fake.behavior().fail_next(10, 400);
    let r = chat(&api, json!({"message": "x", "stream": false})).await;
    assert_eq!((r.status, r.reason()), (502, "RUN_FAILED"));
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("UPSTREAM_REJECTED")
    );
    // The chat key cannot reach the operator API.
    assert_eq!(api.get("/v1/runs").await.status, 403);
    let info = d.api().without_token().get("/api/info").await;
    assert_eq!(
        (
            info.body["agent"].as_str(),
            info.body["auth_required"].as_bool()
        ),
        (Some("assistant"), Some(true))
    );
}

#[tokio::test]
async fn public_chat_needs_no_key() {
    let fake = FakeUpstream::start().await;
    let d =
        Daemon::start_with_config(&format!("{}\n[chat]\npublic = true\n", config_for(&fake))).await;
    let anon = d.api().without_token();
    let info = anon.get("/api/info").await;
    assert_eq!(info.body["auth_required"], false);
    let r = chat(&anon, json!({"message": "hi", "stream": false})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        anon.get("/v1/runs").await.status,
        401,
        "only chat is public"
    );
}

#[tokio::test]
async fn a_tool_awaiting_approval_keeps_the_chat_stream_open_until_it_resumes() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("c1", "current_time", json!({})),
        ScriptedTurn::text(&["approved and done"]),
    ]);
    let config = format!(
        "{}\n[agents.assistant]\ntools = [\"current_time\"]\napproval = {{ current_time = \"always\" }}\n",
        config_for(&fake)
    );
    let d = Daemon::start_with(&config, &[("AGENTD_API_KEYS", CHAT_KEY)]).await;
    let resp = d
        .api()
        .http
        .post(format!("{}/api/chat", d.url))
        .bearer_auth(CHAT_KEY)
        .json(&json!({"message": "time?"}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("awaiting_input") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line = text.lines().find(|l| l.contains("awaiting_input")).unwrap();
    let event: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
    let run = event["data"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(event["data"]["pending"][0]["tool"], "current_time");
    let r = d
        .api()
        .post(
            &format!("/v1/runs/{run}/signal"),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(r.status, 200);
    while !text.contains("[DONE]") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let kinds: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "awaiting_input",
            "tool_call",
            "tool_result",
            "token",
            "done"
        ]
    );
}

/// Opens `/ws/chat` with these query and headers.
async fn ws_connect(
    d: &Daemon,
    query: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/ws/chat{query}", d.url.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).ok(),
            Message::Close(frame) => {
                return Some(json!({"closed": frame.map(|f| u16::from(f.code))}));
            }
            _ => {}
        }
    }
}

/// Sends one message and returns the `done` text.
async fn ask(ws: &mut Ws, message: &str) -> String {
    ws.send(Message::Text(
        json!({"message": message}).to_string().into(),
    ))
    .await
    .unwrap();
    loop {
        let v = next_json(ws).await.expect("a frame");
        match v["type"].as_str() {
            Some("done") => return v["data"].as_str().unwrap().to_owned(),
            Some("error") | Some("auth_error") => panic!("{v}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn websocket_auth_follows_seed_003_precedence() {
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let answer = FakeUpstream::expected_text(8);
    let auth = format!("Bearer {CHAT_KEY}");
    for (query, headers) in [
        (format!("?key={CHAT_KEY}"), vec![]),
        (format!("?session_api_key={CHAT_KEY}"), vec![]),
        (String::new(), vec![("authorization", auth.as_str())]),
        (String::new(), vec![("x-session-api-key", CHAT_KEY)]),
        // The query wins over a wrong header.
        (
            format!("?session_api_key={CHAT_KEY}"),
            vec![("x-session-api-key", "wrong")],
        ),
    ] {
        let mut ws = ws_connect(&d, &query, &headers).await;
        assert_eq!(ask(&mut ws, "hi").await, answer, "{query} {headers:?}");
    }
    // First-frame auth.
    let mut ws = ws_connect(&d, "", &[]).await;
    ws.send(Message::Text(
        json!({"type": "auth", "key": CHAT_KEY}).to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(ask(&mut ws, "hi").await, answer);

    // Refusals: auth_error, then close 4001.
    for (query, headers, first) in [
        ("?key=wrong".to_owned(), vec![], None),
        // The query wins: a right header does not rescue a wrong query key.
        (
            "?key=wrong".to_owned(),
            vec![("authorization", auth.as_str())],
            None,
        ),
        (
            String::new(),
            vec![],
            Some(json!({"type": "auth", "key": "wrong"})),
        ),
        (
            String::new(),
            vec![],
            Some(json!({"message": "no auth first"})),
        ),
    ] {
        let mut ws = ws_connect(&d, &query, &headers).await;
        if let Some(f) = first {
            ws.send(Message::Text(f.to_string().into())).await.unwrap();
        }
        let err = next_json(&mut ws).await.unwrap();
        assert_eq!(
            err,
            json!({"type": "auth_error", "data": "Invalid API key"}),
            "{query}"
        );
        let closed = next_json(&mut ws).await.unwrap();
        assert_eq!(closed["closed"], 4001);
    }
}

#[tokio::test]
async fn websocket_turns_run_one_at_a_time_and_clear_starts_over() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::text(&["one"]),
        ScriptedTurn::text(&["two"]),
        ScriptedTurn::text(&["three"]),
    ]);
    let d = chat_daemon(&fake, "").await;
    let mut ws = ws_connect(&d, &format!("?key={CHAT_KEY}"), &[]).await;
    for m in ["first", "second"] {
        ws.send(Message::Text(json!({"message": m}).to_string().into()))
            .await
            .unwrap();
    }
    let mut dones = Vec::new();
    while dones.len() < 2 {
        let v = next_json(&mut ws).await.unwrap();
        if v["type"] == "done" {
            dones.push(v["data"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(dones, ["one", "two"]);
    let second = fake.requests()[1]["messages"].to_string();
    assert!(
        second.contains("first") && second.contains("one"),
        "the second turn continues the first"
    );
    ws.send(Message::Text(json!({"type": "clear"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(ask(&mut ws, "third").await, "three");
    let third = fake.requests()[2]["messages"].to_string();
    assert!(!third.contains("first"), "cleared: {third}");
}

#[tokio::test]
async fn revoking_a_key_closes_its_websockets() {
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let (id, key) = crate::keys::mint(&d.api(), "default", &["chat"]).await;
    let mut ws = ws_connect(&d, "", &[("x-session-api-key", key.as_str())]).await;
    assert_eq!(ask(&mut ws, "hi").await, FakeUpstream::expected_text(8));
    assert_eq!(
        d.api().delete(&format!("/v1/api-keys/{id}")).await.status,
        204
    );
    let closed = next_json(&mut ws).await.unwrap();
    assert_eq!(closed["closed"], 4001, "{closed}");
}

/// One small file of each supported type.
fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("image/jpeg", b"\xFF\xD8\xFF\xE0jpeg-bytes".to_vec()),
        ("image/png", b"\x89PNG\r\n\x1a\npng-bytes".to_vec()),
        ("image/gif", b"GIF89apixels".to_vec()),
        ("image/webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ".to_vec()),
        ("application/pdf", b"%PDF-1.7\n%%EOF".to_vec()),
    ]
}

fn attachments_json() -> Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    Value::Array(
        sample_files()
            .into_iter()
            .enumerate()
            .map(|(i, (mime, bytes))| json!({"mime_type": mime, "data": b64.encode(bytes), "name": format!("file{i}")}))
            .collect(),
    )
}

#[tokio::test]
async fn attachments_reach_openai_as_image_and_file_parts() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let api = d.api().with_token(CHAT_KEY);
    let r = chat(
        &api,
        json!({"message": "what are these?", "stream": false, "attachments": attachments_json()}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let content = fake.requests()[0]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .clone();
    assert_eq!(
        content[0],
        json!({"type": "text", "text": "what are these?"})
    );
    for (i, (mime, bytes)) in sample_files().into_iter().enumerate() {
        let part = &content[i + 1];
        let url = format!("data:{mime};base64,{}", b64.encode(&bytes));
        if mime.starts_with("image/") {
            assert_eq!(
                part,
                &json!({"type": "image_url", "image_url": {"url": url}}),
                "{mime}"
            );
        } else {
            assert_eq!(
                part,
                &json!({"type": "file", "file": {"filename": format!("file{i}"), "file_data": url}})
            );
        }
    }
    // The run keeps the files; its events show only their size.
    let run = r.body["state"]["previous_response_id"].as_str().unwrap();
    let created = d
        .api()
        .get(&format!("/v1/runs/{run}/events?limit=1"))
        .await
        .body["data"][0]
        .clone();
    let shown = &created["payload"]["value"]["input"]["attachments"][1];
    assert_eq!(shown["mime_type"], "image/png");
    assert!(
        shown.get("data").is_none() && shown["bytes"].as_u64().unwrap() > 0,
        "{shown}"
    );
}

#[tokio::test]
async fn attachments_reach_anthropic_as_image_and_document_blocks() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let fake = FakeUpstream::start().await;
    let config = format!(
        "[models.default]\nprovider = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"claude-test\"\napi_key_env = \"ANTHROPIC_TEST_KEY\"\n",
        fake.base_url()
    );
    let d = Daemon::start_with(
        &config,
        &[
            ("AGENTD_API_KEYS", CHAT_KEY),
            ("ANTHROPIC_TEST_KEY", "sk-ant-0000"),
        ],
    )
    .await;
    let api = d.api().with_token(CHAT_KEY);
    let r = chat(
        &api,
        json!({"message": "describe", "stream": false, "attachments": attachments_json()}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let blocks = fake.requests()[0]["messages"][0]["content"].clone();
    for (i, (mime, bytes)) in sample_files().into_iter().enumerate() {
        let kind = if mime.starts_with("image/") {
            "image"
        } else {
            "document"
        };
        assert_eq!(
            blocks[i],
            json!({"type": kind, "source": {"type": "base64", "media_type": mime, "data": b64.encode(&bytes)}})
        );
    }
    assert_eq!(blocks[5], json!({"type": "text", "text": "describe"}));
}

#[tokio::test]
async fn bad_attachments_are_refused_never_dropped() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let fake = FakeUpstream::start().await;
    let d = chat_daemon(&fake, "").await;
    let api = d.api().with_token(CHAT_KEY);
    let big = vec![0xFFu8; 20 * 1024 * 1024 + 1];
    for (attachment, status, reason) in [
        (
            json!({"mime_type": "text/plain", "data": b64.encode(b"hello")}),
            400,
            "INVALID_REQUEST",
        ),
        (
            json!({"mime_type": "image/png", "data": "not base64!"}),
            400,
            "INVALID_REQUEST",
        ),
        (
            json!({"mime_type": "image/png", "data": b64.encode(b"%PDF-1.7")}),
            400,
            "INVALID_REQUEST",
        ),
        (
            json!({"mime_type": "image/jpeg", "data": b64.encode(&big)}),
            413,
            "ATTACHMENT_TOO_LARGE",
        ),
    ] {
        let r = chat(
            &api,
            json!({"message": "x", "stream": false, "attachments": [attachment]}),
        )
        .await;
        assert_eq!((r.status, r.reason()), (status, reason), "{:?}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("attachments[0]"));
    }
    assert!(fake.requests().is_empty(), "nothing reached the model");
    // A small route keeps its small limit.
    let r = d
        .api()
        .post(
            "/v1/sessions",
            &json!({"metadata": {"blob": "x".repeat(2 * 1024 * 1024)}}),
        )
        .await;
    assert_eq!(r.status, 413);
}
