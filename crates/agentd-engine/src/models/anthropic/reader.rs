//! The Messages API event stream turned into [`ModelDelta`]s. Content
//! arrives in indexed blocks (`content_block_start`, deltas, `_stop`): text
//! and thinking stream out as they come; a thinking block is handed over
//! whole at its stop (its signature arrives last), and a tool call once its
//! `input_json_delta` pieces are complete. Usage is split between
//! `message_start` (input) and `message_delta` (output) and goes out once,
//! at `message_stop`.

use std::collections::{BTreeMap, VecDeque};

use agentd_core::Usage;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::models::upstream::UpstreamEvents;
use crate::models::{ModelDelta, ModelError, ThinkingBlock, ToolCall, transient};

/// One event's `data`, by its `type`. Unknown types are skipped: Anthropic
/// may add event types without a new API version.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: ApiError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

/// A content block between its start and its stop.
enum Open {
    Text,
    Thinking {
        thinking: String,
        signature: String,
    },
    Redacted {
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        /// The `input` given at the start; used when no pieces follow.
        input: Value,
        json: String,
    },
    Other,
}

impl Open {
    /// What the block amounts to once it is complete.
    fn finish(self) -> Option<ModelDelta> {
        match self {
            Open::Text | Open::Other => None,
            Open::Thinking {
                thinking,
                signature,
            } => Some(ModelDelta::ThinkingBlock(ThinkingBlock {
                thinking,
                signature: (!signature.is_empty()).then_some(signature),
                redacted: false,
            })),
            Open::Redacted { data } => Some(ModelDelta::ThinkingBlock(ThinkingBlock {
                thinking: data,
                signature: None,
                redacted: true,
            })),
            Open::ToolUse {
                id,
                name,
                input,
                json,
            } => {
                let arguments = if !json.trim().is_empty() {
                    // The tool refuses non-JSON text; the raw text is kept
                    // so the refusal can say what was sent.
                    serde_json::from_str(&json).unwrap_or(Value::String(json))
                } else if input.is_object() {
                    input
                } else {
                    Value::Object(Map::new())
                };
                Some(ModelDelta::ToolCall(ToolCall {
                    id,
                    name,
                    arguments,
                }))
            }
        }
    }
}

/// An `error` event or error body, classified: overload, internal errors
/// and rate limits may pass; anything else is about the request.
pub fn api_error(e: &ApiError) -> ModelError {
    let message = format!("{}: {}", e.kind, e.message);
    match e.kind.as_str() {
        "rate_limit_error" => transient("UPSTREAM_RATE_LIMITED", message),
        "overloaded_error" | "api_error" => transient("UPSTREAM_UNAVAILABLE", message),
        _ => ModelError::Fatal {
            reason_code: "UPSTREAM_REJECTED",
            message,
        },
    }
}

pub struct Reader {
    events: UpstreamEvents,
    done: bool,
    /// Blocks started and not yet stopped, by index.
    open: BTreeMap<usize, Open>,
    input_tokens: u64,
    output_tokens: u64,
    /// Deltas decoded but not yet handed out.
    ready: VecDeque<ModelDelta>,
}

impl Reader {
    pub fn new(events: UpstreamEvents) -> Reader {
        Reader {
            events,
            done: false,
            open: BTreeMap::new(),
            input_tokens: 0,
            output_tokens: 0,
            ready: VecDeque::new(),
        }
    }

    /// The next delta; `None` after `message_stop` or an error. Each wait
    /// for an event is bounded by the idle timeout (Anthropic pings a quiet
    /// stream).
    pub async fn next(&mut self) -> Option<Result<ModelDelta, ModelError>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            if self.done {
                return None;
            }
            let event = match self.events.next().await {
                Err(_) => return self.fail(transient("UPSTREAM_STALLED", "no data from upstream")),
                Ok(None) => {
                    return self.fail(transient(
                        "UPSTREAM_CLOSED",
                        "stream ended before message_stop",
                    ));
                }
                Ok(Some(Err(e))) => {
                    return self.fail(transient("UPSTREAM_STREAM_ERROR", e.to_string()));
                }
                Ok(Some(Ok(event))) => event,
            };
            if event.data.trim().is_empty() {
                continue;
            }
            let event: Event = match serde_json::from_str(&event.data) {
                Ok(e) => e,
                Err(e) => {
                    return self.fail(ModelError::Fatal {
                        reason_code: "UPSTREAM_BAD_RESPONSE",
                        message: format!("unparseable event: {e}"),
                    });
                }
            };
            if let Err(e) = self.apply(event) {
                return self.fail(e);
            }
        }
    }

    /// Folds one event into the state, queueing what it completes.
    fn apply(&mut self, event: Event) -> Result<(), ModelError> {
        match event {
            Event::MessageStart { message } => {
                let usage = message.usage.unwrap_or_default();
                self.input_tokens = usage.input_tokens.unwrap_or(0);
                self.output_tokens = usage.output_tokens.unwrap_or(0);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                let open = match content_block {
                    Block::Text { text } => {
                        self.content(text);
                        Open::Text
                    }
                    Block::Thinking {
                        thinking,
                        signature,
                    } => {
                        if !thinking.is_empty() {
                            self.ready.push_back(ModelDelta::Thinking(thinking.clone()));
                        }
                        Open::Thinking {
                            thinking,
                            signature,
                        }
                    }
                    Block::RedactedThinking { data } => Open::Redacted { data },
                    Block::ToolUse { id, name, input } => Open::ToolUse {
                        id,
                        name,
                        input,
                        json: String::new(),
                    },
                    Block::Other => Open::Other,
                };
                self.open.insert(index, open);
            }
            Event::ContentBlockDelta { index, delta } => self.delta(index, delta),
            Event::ContentBlockStop { index } => {
                if let Some(d) = self.open.remove(&index).and_then(Open::finish) {
                    self.ready.push_back(d);
                }
            }
            Event::MessageDelta { usage } => {
                // Counts here are cumulative: the latest is the total.
                let usage = usage.unwrap_or_default();
                if let Some(n) = usage.input_tokens {
                    self.input_tokens = self.input_tokens.max(n);
                }
                if let Some(n) = usage.output_tokens {
                    self.output_tokens = n;
                }
            }
            Event::MessageStop => {
                self.done = true;
                // Blocks never stopped are still handed over, as the
                // message itself is complete.
                for (_, open) in std::mem::take(&mut self.open) {
                    if let Some(d) = open.finish() {
                        self.ready.push_back(d);
                    }
                }
                self.ready.push_back(ModelDelta::Usage(Usage {
                    input_tokens: self.input_tokens,
                    output_tokens: self.output_tokens,
                    total_tokens: self.input_tokens + self.output_tokens,
                    model_calls: 0,
                }));
            }
            Event::Error { error } => return Err(api_error(&error)),
            Event::Other => {}
        }
        Ok(())
    }

    fn delta(&mut self, index: usize, delta: BlockDelta) {
        match (delta, self.open.get_mut(&index)) {
            (BlockDelta::TextDelta { text }, _) => self.content(text),
            (BlockDelta::ThinkingDelta { thinking }, open) => {
                if let Some(Open::Thinking { thinking: t, .. }) = open {
                    t.push_str(&thinking);
                }
                if !thinking.is_empty() {
                    self.ready.push_back(ModelDelta::Thinking(thinking));
                }
            }
            (
                BlockDelta::SignatureDelta { signature },
                Some(Open::Thinking { signature: s, .. }),
            ) => {
                s.push_str(&signature);
            }
            (BlockDelta::InputJsonDelta { partial_json }, Some(Open::ToolUse { json, .. })) => {
                json.push_str(&partial_json);
            }
            // A piece for a block that was never started, or of a kind
            // this reader does not use: nothing to keep.
            _ => {}
        }
    }

    fn content(&mut self, text: String) {
        if !text.is_empty() {
            self.ready.push_back(ModelDelta::Content(text));
        }
    }

    fn fail(&mut self, e: ModelError) -> Option<Result<ModelDelta, ModelError>> {
        self.done = true;
        self.ready.clear();
        Some(Err(e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use eventsource_stream::Eventsource;
    use serde_json::json;

    /// Reads a whole body of `(event, data)` frames.
    async fn read(frames: &[(&str, Value)]) -> Vec<Result<ModelDelta, ModelError>> {
        let body: String = frames
            .iter()
            .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
            .collect();
        let chunks = vec![Ok::<_, reqwest::Error>(body.into_bytes())];
        let mut reader = Reader::new(UpstreamEvents::new(
            futures::stream::iter(chunks).eventsource(),
            Duration::from_secs(5),
        ));
        let mut out = Vec::new();
        while let Some(item) = reader.next().await {
            out.push(item);
        }
        out
    }

    fn start(index: usize, block: Value) -> (&'static str, Value) {
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    }

    fn delta(index: usize, delta: Value) -> (&'static str, Value) {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    fn stop(index: usize) -> (&'static str, Value) {
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        )
    }

    fn message_stop() -> (&'static str, Value) {
        ("message_stop", json!({"type": "message_stop"}))
    }

    fn usage(input: u64, output: u64) -> ModelDelta {
        ModelDelta::Usage(Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: input + output,
            model_calls: 0,
        })
    }

    #[tokio::test]
    async fn redacted_thinking_is_kept_opaque() {
        let out = read(&[
            start(0, json!({"type": "redacted_thinking", "data": "EncRypt3d"})),
            stop(0),
            message_stop(),
        ])
        .await;
        assert_eq!(
            out,
            vec![
                Ok(ModelDelta::ThinkingBlock(ThinkingBlock {
                    thinking: "EncRypt3d".into(),
                    signature: None,
                    redacted: true,
                })),
                Ok(usage(0, 0)),
            ]
        );
    }

    #[tokio::test]
    async fn tool_input_that_is_not_json_is_kept_raw_and_none_is_empty() {
        let out = read(&[
            start(
                0,
                json!({"type": "tool_use", "id": "a", "name": "f", "input": {}}),
            ),
            delta(
                0,
                json!({"type": "input_json_delta", "partial_json": "{\"x\": "}),
            ),
            stop(0),
            start(
                1,
                json!({"type": "tool_use", "id": "b", "name": "g", "input": {}}),
            ),
            stop(1),
            message_stop(),
        ])
        .await;
        let calls: Vec<(String, Value)> = out
            .into_iter()
            .filter_map(|d| match d {
                Ok(ModelDelta::ToolCall(c)) => Some((c.id, c.arguments)),
                _ => None,
            })
            .collect();
        assert_eq!(
            calls,
            vec![
                ("a".to_owned(), Value::String("{\"x\": ".into())),
                ("b".to_owned(), json!({})),
            ]
        );
    }

    #[tokio::test]
    async fn unknown_events_and_deltas_are_skipped() {
        let out = read(&[
            ("ping", json!({"type": "ping"})),
            ("future_event", json!({"type": "future_event", "x": 1})),
            start(0, json!({"type": "text", "text": ""})),
            delta(0, json!({"type": "citations_delta", "citation": {}})),
            delta(0, json!({"type": "text_delta", "text": "hi"})),
            stop(0),
            message_stop(),
        ])
        .await;
        assert_eq!(
            out,
            vec![Ok(ModelDelta::Content("hi".into())), Ok(usage(0, 0))]
        );
    }

    #[tokio::test]
    async fn error_events_say_whether_a_retry_may_help() {
        for (kind, transient, code) in [
            ("overloaded_error", true, "UPSTREAM_UNAVAILABLE"),
            ("api_error", true, "UPSTREAM_UNAVAILABLE"),
            ("rate_limit_error", true, "UPSTREAM_RATE_LIMITED"),
            ("invalid_request_error", false, "UPSTREAM_REJECTED"),
        ] {
            let out = read(&[
                start(0, json!({"type": "text", "text": ""})),
                delta(0, json!({"type": "text_delta", "text": "par"})),
                (
                    "error",
                    json!({"type": "error", "error": {"type": kind, "message": "x"}}),
                ),
            ])
            .await;
            assert_eq!(out.len(), 2, "{kind}");
            let err = out[1].clone().expect_err("an error event fails the stream");
            assert_eq!(err.reason_code(), code, "{kind}");
            assert_eq!(
                matches!(err, ModelError::Transient { .. }),
                transient,
                "{kind}"
            );
        }
    }

    #[tokio::test]
    async fn unparseable_data_is_a_bad_response() {
        let body = "event: message_start\ndata: {not json\n\n";
        let chunks = vec![Ok::<_, reqwest::Error>(body.as_bytes().to_vec())];
        let mut reader = Reader::new(UpstreamEvents::new(
            futures::stream::iter(chunks).eventsource(),
            Duration::from_secs(5),
        ));
        let err = reader
            .next()
            .await
            .and_then(Result::err)
            .map(|e| e.reason_code());
        assert_eq!(err, Some("UPSTREAM_BAD_RESPONSE"));
        assert!(reader.next().await.is_none());
    }
}
