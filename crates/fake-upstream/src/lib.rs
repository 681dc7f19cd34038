//! A fake model server speaking OpenAI's Chat Completions streaming wire
//! format (`chat.completion.chunk` SSE, a usage chunk, `data: [DONE]`) and
//! Anthropic's Messages API (`/v1/messages`, in `anthropic.rs`), with knobs
//! tests turn: how many tokens, how fast, and how many requests fail
//! first, or a script of whole turns ([`ScriptedTurn`], tool calls
//! included). It records every request body so tests can assert what a
//! model saw.
//!
//! [`mcp`] holds the MCP server fixture (stdio binary `fake-mcp`, and
//! streamable HTTP in-process).

mod anthropic;
pub mod mcp;
mod script;

pub use script::{ScriptedCall, ScriptedTurn};

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use futures::StreamExt;
use serde_json::{Value, json};

/// How the fake answers. Shared; tests change it between requests.
#[derive(Debug)]
pub struct Behavior {
    /// Content chunks per answer.
    pub tokens: AtomicUsize,
    /// Pause before each chunk, in microseconds.
    pub delay_us: AtomicU64,
    /// This many upcoming requests fail with `fail_status` before any succeed.
    pub fail_next: AtomicUsize,
    pub fail_status: AtomicUsize,
    /// This many upcoming streams stop after `cut_after` content chunks
    /// without `[DONE]`, as a dropped connection does.
    pub cut_next: AtomicUsize,
    pub cut_after: AtomicUsize,
    /// When set, every answer's content chunks are these instead of `t0 t1 …`.
    pub script: Mutex<Vec<String>>,
    /// Whole turns, one per request, before falling back to the above.
    pub turns: Mutex<VecDeque<ScriptedTurn>>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            tokens: AtomicUsize::new(8),
            delay_us: AtomicU64::new(0),
            fail_next: AtomicUsize::new(0),
            fail_status: AtomicUsize::new(500),
            cut_next: AtomicUsize::new(0),
            cut_after: AtomicUsize::new(0),
            script: Mutex::new(Vec::new()),
            turns: Mutex::new(VecDeque::new()),
        }
    }
}

impl Behavior {
    pub fn set_tokens(&self, n: usize) {
        self.tokens.store(n, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }
    /// The next `n` streams end after `chunks` content chunks, without `[DONE]`.
    pub fn cut_next(&self, n: usize, chunks: usize) {
        self.cut_after.store(chunks, Ordering::SeqCst);
        self.cut_next.store(n, Ordering::SeqCst);
    }

    /// Answers carry exactly these content chunks from now on.
    pub fn set_script(&self, chunks: &[&str]) {
        *self.script.lock().unwrap_or_else(|e| e.into_inner()) =
            chunks.iter().map(|c| (*c).to_owned()).collect();
    }

    /// The next requests answer these turns, in order.
    pub fn push_turns(&self, turns: impl IntoIterator<Item = ScriptedTurn>) {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(turns);
    }

    /// Takes the next scripted turn, if any.
    pub fn next_turn(&self) -> Option<ScriptedTurn> {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// The next `n` requests answer `status` (e.g. 500, 429).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail_status.store(status as usize, Ordering::SeqCst);
        self.fail_next.store(n, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Shared {
    behavior: Arc<Behavior>,
    requests: Arc<Mutex<Vec<Value>>>,
    /// The `Authorization` header (OpenAI) or `x-api-key` (Anthropic) of
    /// each recorded request.
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    /// When false, request bodies are not kept (benchmarks).
    record: bool,
    /// Requests to the plain web pages (`/web/...`), for tools to fetch.
    web_hits: Arc<AtomicUsize>,
}

/// A running fake; dropping it does not stop the server (it lives for the
/// test process), so tests may keep only what they need.
#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Shared,
}

impl FakeUpstream {
    /// Serves on `127.0.0.1:0` on the current runtime.
    pub async fn start() -> FakeUpstream {
        Self::start_on("127.0.0.1:0".parse().expect("literal address"), true).await
    }

    pub async fn start_on(addr: SocketAddr, record: bool) -> FakeUpstream {
        let shared = Shared {
            record,
            ..Shared::default()
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("fake upstream binds");
        let addr = listener.local_addr().expect("bound address");
        let app = router(shared.clone());
        // Paced chunks must leave when written, as a real provider's do.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, shared }
    }

    /// The base URL (`…/v1`), for either provider.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn behavior(&self) -> &Behavior {
        &self.shared.behavior
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The `Authorization` or `x-api-key` header of every request received
    /// so far.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared
            .authorizations
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// How many requests the `/web/...` pages have served.
    pub fn web_hits(&self) -> usize {
        self.shared.web_hits.load(Ordering::SeqCst)
    }

    /// The text a successful answer of `n` tokens carries.
    pub fn expected_text(n: usize) -> String {
        (0..n).map(token).collect()
    }
}

/// The `i`th content chunk.
pub fn token(i: usize) -> String {
    format!("t{i} ")
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/messages", post(anthropic::messages))
        .route("/messages", post(anthropic::messages))
        .route("/web/page", axum::routing::get(web_page))
        .route("/web/slow", axum::routing::get(web_slow))
        .with_state(shared)
}

/// A page for `http_fetch` to read.
async fn web_page(State(shared): State<Shared>) -> &'static str {
    shared.web_hits.fetch_add(1, Ordering::SeqCst);
    "hello from the page"
}

/// A page that takes `?ms=` milliseconds (default 10 s): a tool call to
/// interrupt or cancel.
async fn web_slow(
    State(shared): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, u64>>,
) -> &'static str {
    shared.web_hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(
        q.get("ms").copied().unwrap_or(10_000),
    ))
    .await;
    "slow page"
}

async fn chat(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": e.to_string()}}).to_string(),
            )
                .into_response();
        }
    };
    if let (true, Ok(mut r), Ok(mut a)) = (
        shared.record,
        shared.requests.lock(),
        shared.authorizations.lock(),
    ) {
        r.push(request.clone());
        a.push(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
    }
    let b = &shared.behavior;
    if b.fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let status = StatusCode::from_u16(b.fail_status.load(Ordering::SeqCst) as u16)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"message": "injected failure", "type": "server_error"}});
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let script = b.script.lock().map(|s| s.clone()).unwrap_or_default();
    let tokens = if script.is_empty() {
        b.tokens.load(Ordering::SeqCst)
    } else {
        script.len()
    };
    let delay = Duration::from_micros(b.delay_us.load(Ordering::SeqCst));
    let cut = b
        .cut_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let cut_after = b.cut_after.load(Ordering::SeqCst);
    let model = request["model"].as_str().unwrap_or("fake").to_owned();
    let prompt_tokens: usize = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    m["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    let include_usage = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);

    let id = "chatcmpl-fake";
    let chunk = move |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    if let Some(turn) = b.next_turn() {
        let frames = openai_turn_frames(&turn, &chunk, prompt_tokens, include_usage);
        return sse_response(frames, delay);
    }
    let mut frames: Vec<(bool, String)> = Vec::with_capacity(tokens + 4);
    frames.push((
        false,
        chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string(),
    ));
    for i in 0..tokens {
        frames.push((
            true,
            chunk(
                json!({"content": script.get(i).cloned().unwrap_or_else(|| token(i))}),
                Value::Null,
            )
            .to_string(),
        ));
    }
    if cut && cut_after < tokens {
        frames.truncate(cut_after + 1);
    } else {
        frames.push((false, chunk(json!({}), json!("stop")).to_string()));
        if include_usage {
            let usage = json!({
                "id": id, "object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens},
            });
            frames.push((false, usage.to_string()));
        }
        frames.push((false, "[DONE]".to_owned()));
    }
    sse_response(frames, delay)
}

/// `(paced, data)` frames as an SSE body, paced ones after `delay`.
fn sse_response(frames: Vec<(bool, String)>, delay: Duration) -> Response {
    paced_sse(
        frames
            .into_iter()
            .map(|(paced, data)| (paced, format!("data: {data}\n\n")))
            .collect(),
        delay,
    )
}

/// Rendered SSE frames as a body, each `paced` one sent after `delay`.
pub(crate) fn paced_sse(frames: Vec<(bool, String)>, delay: Duration) -> Response {
    let stream = futures::stream::iter(frames).then(move |(paced, text)| async move {
        if paced && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(Bytes::from(text))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("static response parts")
}

/// A scripted turn as Chat Completions streams it: reasoning, text, then
/// each tool call as a first fragment (id, name) and its arguments in two
/// pieces, `finish_reason: "tool_calls"`, usage, `[DONE]`.
fn openai_turn_frames(
    turn: &ScriptedTurn,
    chunk: &dyn Fn(Value, Value) -> Value,
    prompt_tokens: usize,
    include_usage: bool,
) -> Vec<(bool, String)> {
    let mut frames = vec![(
        false,
        chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string(),
    )];
    for t in &turn.thinking {
        frames.push((
            true,
            chunk(json!({"reasoning_content": t}), Value::Null).to_string(),
        ));
    }
    for t in &turn.text {
        frames.push((true, chunk(json!({"content": t}), Value::Null).to_string()));
    }
    for (index, call) in turn.tool_calls.iter().enumerate() {
        let args = call.arguments.to_string();
        let (a, b) = args.split_at(args.floor_char_boundary(args.len() / 2));
        frames.push((
            true,
            chunk(
                json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                       "function": {"name": call.name, "arguments": ""}}]}),
                Value::Null,
            )
            .to_string(),
        ));
        for piece in [a, b] {
            frames.push((
                false,
                chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                    Value::Null,
                )
                .to_string(),
            ));
        }
    }
    let finish = if turn.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    frames.push((false, chunk(json!({}), json!(finish)).to_string()));
    let completion = turn.text.len() + turn.thinking.len() + turn.tool_calls.len();
    if include_usage {
        let usage = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
        });
        frames.push((false, usage.to_string()));
    }
    frames.push((false, "[DONE]".to_owned()));
    frames
}
