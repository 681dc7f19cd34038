//! The fake's Anthropic route, read raw: the event sequence a client sees,
//! its error bodies, and the refusals that stand in for the real API's.

use fake_upstream::{FakeUpstream, ScriptedTurn};
use serde_json::{Value, json};

fn body() -> Value {
    json!({"model": "claude-test", "max_tokens": 64, "stream": true,
           "messages": [{"role": "user", "content": [{"type": "text", "text": "two words"}]}]})
}

async fn post(fake: &FakeUpstream, path: &str, version: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", fake.addr))
        .header("x-api-key", "k-1")
        .json(&body());
    if let Some(v) = version {
        req = req.header("anthropic-version", v);
    }
    req.send().await.expect("the fake answers")
}

/// `(event name, data)` of each SSE frame.
fn frames(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut event = String::new();
            let mut data = Value::Null;
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::Null);
                }
            }
            (event, data)
        })
        .collect()
}

#[tokio::test]
async fn a_default_answer_is_one_text_block_between_start_and_stop() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(2);
    let response = post(&fake, "/v1/messages", Some("2023-06-01")).await;
    assert_eq!(response.status(), 200);
    let frames = frames(&response.text().await.unwrap_or_default());
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    // Every frame's data names its own event, as the real API's do.
    assert!(frames.iter().all(|(e, d)| d["type"] == e.as_str()));
    assert_eq!(frames[0].1["message"]["usage"]["input_tokens"], 2);
    assert_eq!(
        frames[2].1["delta"],
        json!({"type": "text_delta", "text": "t0 "})
    );
    assert_eq!(frames[5].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(frames[5].1["usage"]["output_tokens"], 2);
    assert_eq!(fake.authorizations(), vec![Some("k-1".to_owned())]);
    assert_eq!(fake.requests(), vec![body()]);
}

#[tokio::test]
async fn a_scripted_turn_streams_signed_thinking_text_and_split_tool_input() {
    let fake = FakeUpstream::start().await;
    fake.behavior()
        .push_turns([ScriptedTurn::call("toolu_1", "f", json!({"q": "ééé"}))
            .with_thinking(&["hm"])
            .with_text(&["ok"])]);
    let response = post(&fake, "/messages", Some("2023-06-01")).await;
    let frames = frames(&response.text().await.unwrap_or_default());
    let deltas: Vec<&Value> = frames
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| &d["delta"])
        .collect();
    assert_eq!(
        deltas[0],
        &json!({"type": "thinking_delta", "thinking": "hm"})
    );
    assert_eq!(
        deltas[1],
        &json!({"type": "signature_delta", "signature": "sig-0"})
    );
    assert_eq!(deltas[2], &json!({"type": "text_delta", "text": "ok"}));
    let input: String = deltas[3..]
        .iter()
        .filter_map(|d| d["partial_json"].as_str())
        .collect();
    assert_eq!(deltas.len(), 5, "the input comes in two pieces");
    assert_eq!(
        serde_json::from_str::<Value>(&input).ok(),
        Some(json!({"q": "ééé"}))
    );
    let stop = frames.iter().find(|(e, _)| e == "message_delta");
    assert_eq!(
        stop.map(|(_, d)| &d["delta"]["stop_reason"]),
        Some(&json!("tool_use"))
    );
}

#[tokio::test]
async fn a_request_without_the_version_header_is_refused_as_the_api_does() {
    let fake = FakeUpstream::start().await;
    for version in [None, Some("2020-01-01")] {
        let response = post(&fake, "/v1/messages", version).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap_or_default();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn injected_failures_carry_anthropics_error_body() {
    let fake = FakeUpstream::start().await;
    fake.behavior().fail_next(1, 529);
    let response = post(&fake, "/v1/messages", Some("2023-06-01")).await;
    assert_eq!(response.status().as_u16(), 529);
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "injected failure"}})
    );
    let again = post(&fake, "/v1/messages", Some("2023-06-01")).await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_cut_stream_stops_before_message_stop() {
    let fake = FakeUpstream::start().await;
    fake.behavior().cut_next(1, 1);
    let response = post(&fake, "/v1/messages", Some("2023-06-01")).await;
    let frames = frames(&response.text().await.unwrap_or_default());
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta"
        ]
    );
}
