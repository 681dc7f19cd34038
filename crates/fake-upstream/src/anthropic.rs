//! The same fake, speaking Anthropic's Messages API (`POST /v1/messages`,
//! `stream: true`): `message_start`, indexed content blocks (thinking with a
//! signature, text, `tool_use` with its input in `input_json_delta`
//! pieces), `message_delta` with the stop reason and usage, `message_stop`.
//! Like the real API it refuses a request without `anthropic-version`, so
//! a client that forgets the header fails here too.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{ScriptedTurn, Shared, token};

/// The one version this fake speaks, as the provider pins it.
pub const API_VERSION: &str = "2023-06-01";

/// An SSE frame: whether it waits for the `delay` knob, its event name and
/// its data.
type Frame = (bool, &'static str, Value);

pub(crate) async fn messages(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    record(&shared, &request, &headers);
    if let Some(refusal) = refuse(&headers, &request) {
        return error(StatusCode::BAD_REQUEST, &refusal);
    }
    let b = &shared.behavior;
    if b.fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let status = StatusCode::from_u16(b.fail_status.load(Ordering::SeqCst) as u16)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "injected failure");
    }
    let delay = Duration::from_micros(b.delay_us.load(Ordering::SeqCst));
    let model = request["model"].as_str().unwrap_or("fake").to_owned();
    let input_tokens = prompt_tokens(&request);
    if let Some(turn) = b.next_turn() {
        return sse_response(turn_frames(&turn, &model, input_tokens), delay);
    }
    let script = b.script.lock().map(|s| s.clone()).unwrap_or_default();
    let chunks: Vec<String> = if script.is_empty() {
        (0..b.tokens.load(Ordering::SeqCst)).map(token).collect()
    } else {
        script
    };
    let cut = b
        .cut_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let cut_after = b.cut_after.load(Ordering::SeqCst);
    let mut frames = vec![message_start(&model, input_tokens)];
    text_block(&mut frames, 0, &chunks);
    if cut && cut_after < chunks.len() {
        // message_start and the block's start, then `cut_after` deltas: the
        // connection drops mid-answer, before `message_stop`.
        frames.truncate(cut_after + 2);
    } else {
        finish(&mut frames, "end_turn", chunks.len());
    }
    sse_response(frames, delay)
}

/// Keeps the body and the key, in the lists the OpenAI route also fills.
fn record(shared: &Shared, request: &Value, headers: &HeaderMap) {
    if let (true, Ok(mut r), Ok(mut a)) = (
        shared.record,
        shared.requests.lock(),
        shared.authorizations.lock(),
    ) {
        r.push(request.clone());
        a.push(
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
    }
}

/// What the real API would refuse outright, as its message.
fn refuse(headers: &HeaderMap, request: &Value) -> Option<String> {
    match headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
    {
        None => return Some("anthropic-version: header is required".into()),
        Some(API_VERSION) => {}
        Some(other) => return Some(format!("anthropic-version: unknown version {other}")),
    }
    if !request["max_tokens"].is_u64() {
        return Some("max_tokens: Field required".into());
    }
    if !request["messages"].is_array() {
        return Some("messages: Field required".into());
    }
    if request["stream"] != json!(true) {
        return Some("this fake only streams: stream must be true".into());
    }
    None
}

/// Anthropic's error body, its `type` following the status as the API's do.
fn error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Words of the system text and of every text or result in the messages.
fn prompt_tokens(request: &Value) -> usize {
    let words = |v: &Value| v.as_str().map_or(0, |s| s.split_whitespace().count());
    let mut n = words(&request["system"]);
    for m in request["messages"].as_array().into_iter().flatten() {
        n += words(&m["content"]);
        for block in m["content"].as_array().into_iter().flatten() {
            n += words(&block["text"]) + words(&block["content"]);
        }
    }
    n
}

fn message_start(model: &str, input_tokens: usize) -> Frame {
    (
        false,
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
    )
}

fn block_start(index: usize, block: Value) -> Frame {
    (
        false,
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": block}),
    )
}

fn block_delta(paced: bool, index: usize, delta: Value) -> Frame {
    (
        paced,
        "content_block_delta",
        json!({"type": "content_block_delta", "index": index, "delta": delta}),
    )
}

fn block_stop(index: usize) -> Frame {
    (
        false,
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    )
}

fn text_block(frames: &mut Vec<Frame>, index: usize, chunks: &[String]) {
    frames.push(block_start(index, json!({"type": "text", "text": ""})));
    for c in chunks {
        frames.push(block_delta(
            true,
            index,
            json!({"type": "text_delta", "text": c}),
        ));
    }
    frames.push(block_stop(index));
}

/// `message_delta` (stop reason, output tokens) and `message_stop`.
fn finish(frames: &mut Vec<Frame>, stop_reason: &str, output_tokens: usize) {
    frames.push((
        false,
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    frames.push((false, "message_stop", json!({"type": "message_stop"})));
}

/// A scripted turn: a thinking block signed `sig-<index>`, a text block,
/// then each tool call with its input in two pieces; `tool_use` as the stop
/// reason when there are calls, else `end_turn`.
fn turn_frames(turn: &ScriptedTurn, model: &str, input_tokens: usize) -> Vec<Frame> {
    let mut frames = vec![
        message_start(model, input_tokens),
        (false, "ping", json!({"type": "ping"})),
    ];
    let mut index = 0;
    if !turn.thinking.is_empty() {
        frames.push(block_start(
            index,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
        ));
        for t in &turn.thinking {
            frames.push(block_delta(
                true,
                index,
                json!({"type": "thinking_delta", "thinking": t}),
            ));
        }
        frames.push(block_delta(
            false,
            index,
            json!({"type": "signature_delta", "signature": format!("sig-{index}")}),
        ));
        frames.push(block_stop(index));
        index += 1;
    }
    if !turn.text.is_empty() {
        text_block(&mut frames, index, &turn.text);
        index += 1;
    }
    for call in &turn.tool_calls {
        frames.push(block_start(
            index,
            json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}),
        ));
        let args = call.arguments.to_string();
        let (a, b) = args.split_at(args.floor_char_boundary(args.len() / 2));
        for piece in [a, b] {
            frames.push(block_delta(
                true,
                index,
                json!({"type": "input_json_delta", "partial_json": piece}),
            ));
        }
        frames.push(block_stop(index));
        index += 1;
    }
    let stop_reason = if turn.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let output = turn.text.len() + turn.thinking.len() + turn.tool_calls.len();
    finish(&mut frames, stop_reason, output);
    frames
}

/// Frames as an SSE body with event names, paced ones after `delay`.
fn sse_response(frames: Vec<Frame>, delay: Duration) -> Response {
    crate::paced_sse(
        frames
            .into_iter()
            .map(|(paced, event, data)| {
                (
                    paced,
                    format!(
                        "event: {event}
data: {data}

"
                    ),
                )
            })
            .collect(),
        delay,
    )
}
