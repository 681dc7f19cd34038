//! The client loops: N tasks, each running one turn after another until the
//! phase's deadline. A "turn" is either one streamed chat completion straight
//! from the fake upstream (the floor) or one agentd run followed to its
//! terminal event over SSE.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::stats::{Errors, Latencies};

/// A failed turn: a short category for the tally plus one example detail.
pub struct TurnError {
    pub kind: String,
    pub detail: String,
}

fn fail(kind: impl Into<String>, detail: impl ToString) -> TurnError {
    TurnError {
        kind: kind.into(),
        detail: detail.to_string(),
    }
}

/// What a phase measured.
#[derive(Default)]
pub struct PhaseResult {
    /// Successful turns, including those that finished while draining.
    pub ok: u64,
    /// Σ over clients of (its successful turns ÷ the time from the phase's
    /// start to the end of its last turn). Counting only turns that end
    /// before the deadline would undercount by up to one turn per client —
    /// 10% with 0.5 s turns in a 5 s phase — and by a different amount for
    /// the floor and for agentd, skewing their ratio.
    pub runs_per_s: f64,
    /// TTFT of every successful turn.
    pub ttft: Latencies,
    pub errors: Errors,
    /// From the start to the last turn finishing (deadline + drain).
    pub elapsed: Duration,
}

/// Runs `concurrency` loops of `turn(worker, n)`, starting turns for `secs`.
/// Turns in flight at the deadline are allowed to finish, so the next phase
/// doesn't start with agentd still busy on this one's runs.
pub async fn run_phase<F, Fut>(
    concurrency: usize,
    secs: u64,
    turn_timeout: Duration,
    turn: F,
) -> PhaseResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, TurnError>> + Send,
{
    let turn = Arc::new(turn);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let turn = turn.clone();
            tokio::spawn(async move {
                // Per-task tallies, merged at the end: no shared lock on the hot path.
                let mut r = PhaseResult::default();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    match tokio::time::timeout(turn_timeout, turn(worker, n)).await {
                        Ok(Ok(ttft)) => {
                            r.ok += 1;
                            r.ttft.push(ttft);
                        }
                        Ok(Err(e)) => {
                            r.errors.record(&e.kind, e.detail);
                            // Don't spin on an instant failure (e.g. refused connections).
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(_) => r
                            .errors
                            .record("timeout", format!("turn exceeded {turn_timeout:?}")),
                    }
                }
                r.runs_per_s = r.ok as f64 / started.elapsed().as_secs_f64();
                r
            })
        })
        .collect();
    let mut total = PhaseResult::default();
    for task in tasks {
        match task.await {
            Ok(r) => {
                total.ok += r.ok;
                total.runs_per_s += r.runs_per_s;
                total.ttft.extend(r.ttft);
                total.errors.merge(r.errors);
            }
            Err(e) => total.errors.record("task panicked", e.to_string()),
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// One streamed completion straight from the fake: POST, then read SSE to
/// `[DONE]`. TTFT is to the first chunk with non-empty content (the first
/// chunk only carries the role).
pub async fn floor_turn(client: reqwest::Client, url: Arc<str>) -> Result<Duration, TurnError> {
    let start = Instant::now();
    let body =
        json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let resp = client
        .post(&*url)
        .json(&body)
        .send()
        .await
        .map_err(|e| fail("floor: transport", e))?;
    if !resp.status().is_success() {
        return Err(fail(format!("floor: HTTP {}", resp.status().as_u16()), ""));
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut ttft = None;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| fail("floor: stream error", e))?;
        if ev.data == "[DONE]" {
            return ttft.ok_or_else(|| fail("floor: no content", "[DONE] before any content"));
        }
        // Parse only until the first token; after that only [DONE] matters.
        if ttft.is_none() {
            let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            let has_content = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty());
            if has_content {
                ttft = Some(start.elapsed());
            }
        }
    }
    Err(fail("floor: closed early", "stream ended without [DONE]"))
}

/// Where and how to reach agentd.
pub struct Agentd {
    pub base: String,
    pub auth: String,
    /// Makes idempotency keys unique across bench invocations too.
    pub nonce: u128,
    /// Turns through seed 002's `POST /api/chat` instead of `/v1/runs`.
    pub chat: bool,
}

/// One agentd run: `POST /v1/runs`, then follow its event stream to a terminal
/// event. TTFT is from the POST to the first `step.progress` event — what a
/// client streaming the answer would wait.
pub async fn agentd_turn(
    client: reqwest::Client,
    a: Arc<Agentd>,
    key: String,
) -> Result<Duration, TurnError> {
    if a.chat {
        return chat_turn(client, a).await;
    }
    let start = Instant::now();
    let resp = client
        .post(format!("{}/v1/runs", a.base))
        .header("authorization", &a.auth)
        .header("idempotency-key", key)
        .json(&json!({"input": {"user_query": "hi"}}))
        .send()
        .await
        .map_err(|e| fail("POST: transport", e))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(fail(format!("POST: HTTP {}", status.as_u16()), text));
    }
    let run: Value = resp.json().await.map_err(|e| fail("POST: bad body", e))?;
    let id = run["id"]
        .as_str()
        .ok_or_else(|| fail("POST: no id", run.to_string()))?;

    let resp = client
        .get(format!("{}/v1/runs/{id}/events/stream", a.base))
        .header("authorization", &a.auth)
        .send()
        .await
        .map_err(|e| fail("stream: transport", e))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(fail(format!("stream: HTTP {}", status.as_u16()), text));
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut ttft = None;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| fail("stream: error", e))?;
        match ev.event.as_str() {
            "run_event" => {}
            "error" => return Err(fail("stream: error event", ev.data)),
            _ => continue,
        }
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| fail("stream: bad event", e))?;
        match v["type"].as_str().unwrap_or("") {
            "step.progress" if ttft.is_none() => ttft = Some(start.elapsed()),
            "run.worker.succeeded" => {
                return ttft.ok_or_else(|| fail("run: no step.progress", format!("run {id}")));
            }
            kind @ ("run.worker.failed" | "run.cancelled" | "run.limit_exceeded") => {
                return Err(fail(
                    format!("run: {kind}"),
                    v["payload"]["value"].to_string(),
                ));
            }
            _ => {}
        }
    }
    Err(fail(
        "stream: closed early",
        format!("run {id}: no terminal event"),
    ))
}

/// One chat turn: `POST /api/chat` with `stream: true`, read to `done`. TTFT
/// is to the first `token` event.
pub async fn chat_turn(client: reqwest::Client, a: Arc<Agentd>) -> Result<Duration, TurnError> {
    let start = Instant::now();
    let resp = client
        .post(format!("{}/api/chat", a.base))
        .header("authorization", &a.auth)
        .json(&json!({"message": "hi", "stream": true}))
        .send()
        .await
        .map_err(|e| fail("chat: transport", e))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(fail(format!("chat: HTTP {}", status.as_u16()), text));
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut ttft = None;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| fail("chat: stream error", e))?;
        if ev.data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| fail("chat: bad event", e))?;
        match v["type"].as_str().unwrap_or("") {
            "token" if ttft.is_none() => ttft = Some(start.elapsed()),
            "done" => return ttft.ok_or_else(|| fail("chat: no token", "done before any token")),
            "error" => return Err(fail("chat: error event", v["data"].to_string())),
            _ => {}
        }
    }
    Err(fail("chat: closed early", "no done event"))
}
