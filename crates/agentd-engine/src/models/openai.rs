//! Chat Completions with `stream: true`, as OpenAI, vLLM, Ollama, llama.cpp
//! server and LM Studio speak it: SSE `chat.completion.chunk`s, then a usage
//! chunk (`stream_options.include_usage`), then `data: [DONE]`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use agentd_core::Usage;
use eventsource_stream::Eventsource;
use serde::Deserialize;
use serde_json::{Value, json};

use super::upstream::UpstreamEvents;
use super::{
    ChatMessage, DeltaStream, ModelDelta, ModelError, ModelRequest, ToolCall, status_error,
    transient,
};
use crate::agents::ModelSpec;

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    /// Some servers (vLLM, DeepSeek) stream reasoning here.
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
}

/// A fragment of a tool call: the first carries `id` and the name, later
/// ones pieces of the JSON arguments, all under the same `index`.
#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// A tool call being assembled from its fragments.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl PartialCall {
    fn finish(self, index: usize) -> ToolCall {
        let arguments = if self.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&self.arguments).unwrap_or(Value::String(self.arguments))
        };
        ToolCall {
            id: if self.id.is_empty() {
                format!("call_{index}")
            } else {
                self.id
            },
            name: self.name,
            arguments,
        }
    }
}

/// The wire form of the conversation.
fn encode_message(m: &ChatMessage) -> Value {
    match m {
        ChatMessage::System { content } => json!({"role": "system", "content": content}),
        ChatMessage::User {
            content,
            attachments,
        } if attachments.is_empty() => json!({"role": "user", "content": content}),
        ChatMessage::User {
            content,
            attachments,
        } => {
            // Multimodal: the text, then each file as an image or file part.
            let mut parts = vec![json!({"type": "text", "text": content})];
            parts.extend(attachments.iter().map(|a| {
                if a.is_image() {
                    json!({"type": "image_url", "image_url": {"url": a.data_url()}})
                } else {
                    json!({"type": "file", "file": {"filename": a.name, "file_data": a.data_url()}})
                }
            }));
            json!({"role": "user", "content": parts})
        }
        ChatMessage::Assistant(turn) => {
            let mut v = json!({"role": "assistant", "content": turn.content});
            if !turn.tool_calls.is_empty() {
                if turn.content.is_empty() {
                    v["content"] = Value::Null;
                }
                v["tool_calls"] = turn
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let arguments = match &c.arguments {
                            Value::String(raw) => raw.clone(),
                            other => other.to_string(),
                        };
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": arguments}})
                    })
                    .collect();
            }
            v
        }
        ChatMessage::Tool(r) => {
            json!({"role": "tool", "tool_call_id": r.tool_call_id, "content": r.content})
        }
    }
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

pub async fn stream(
    http: &reqwest::Client,
    spec: &ModelSpec,
    request: &ModelRequest,
) -> Result<DeltaStream, ModelError> {
    let base = spec
        .base_url
        .as_deref()
        .unwrap_or("https://api.openai.com/v1");
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let messages: Vec<Value> = request.messages.iter().map(encode_message).collect();
    let mut body = json!({
        "model": spec.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": request.max_output_tokens,
    });
    if let Some(t) = spec.temperature {
        body["temperature"] = json!(t);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
    }
    let mut req = http.post(&url).json(&body);
    if let Some(name) = spec.api_key_env.as_deref() {
        // Named but unset is a configuration error, not an upstream one: say
        // which variable, rather than relay the upstream's 401.
        let key = std::env::var(name).map_err(|_| ModelError::Fatal {
            reason_code: "MODEL_API_KEY_MISSING",
            message: format!("the model's key variable {name} is not set"),
        })?;
        req = req.bearer_auth(key);
    }
    let response = req
        .send()
        .await
        .map_err(|e| transient("UPSTREAM_UNREACHABLE", e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(status_error(status, &text));
    }

    let idle = Duration::from_secs(spec.idle_timeout_secs.max(1));
    let state = Reader {
        events: UpstreamEvents::new(response.bytes_stream().eventsource(), idle),
        done: false,
        calls: BTreeMap::new(),
        ready: VecDeque::new(),
    };
    let deltas = futures::stream::unfold(state, move |mut r| async move {
        let item = r.next().await?;
        Some((item, r))
    });
    Ok(Box::pin(deltas))
}

/// Turns the chunk stream into deltas, assembling tool calls on the way.
struct Reader {
    events: UpstreamEvents,
    done: bool,
    /// Tool calls in progress, by the provider's index.
    calls: BTreeMap<usize, PartialCall>,
    /// Deltas decoded but not yet handed out.
    ready: VecDeque<ModelDelta>,
}

impl Reader {
    /// Assembled tool calls go out when the choice finishes (or at `[DONE]`).
    fn flush_calls(&mut self) {
        for (index, call) in std::mem::take(&mut self.calls) {
            self.ready
                .push_back(ModelDelta::ToolCall(call.finish(index)));
        }
    }

    async fn next(&mut self) -> Option<Result<ModelDelta, ModelError>> {
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
                    return self.fail(transient("UPSTREAM_CLOSED", "stream ended before [DONE]"));
                }
                Ok(Some(Err(e))) => {
                    return self.fail(transient("UPSTREAM_STREAM_ERROR", e.to_string()));
                }
                Ok(Some(Ok(event))) => event,
            };
            if event.data.trim() == "[DONE]" {
                self.done = true;
                self.flush_calls();
                continue;
            }
            let chunk: Chunk = match serde_json::from_str(&event.data) {
                Ok(c) => c,
                Err(e) => {
                    return self.fail(ModelError::Fatal {
                        reason_code: "UPSTREAM_BAD_RESPONSE",
                        message: format!("unparseable chunk: {e}"),
                    });
                }
            };
            if let Some(err) = chunk.error {
                return self.fail(transient("UPSTREAM_ERROR", err.to_string()));
            }
            if let Some(u) = chunk.usage {
                self.ready.push_back(ModelDelta::Usage(Usage {
                    input_tokens: u.prompt_tokens,
                    output_tokens: u.completion_tokens,
                    total_tokens: u.total_tokens.max(u.prompt_tokens + u.completion_tokens),
                    model_calls: 0,
                }));
            }
            for choice in chunk.choices {
                if let Some(delta) = choice.delta {
                    if let Some(t) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                        self.ready.push_back(ModelDelta::Thinking(t));
                    }
                    if let Some(t) = delta.content.filter(|t| !t.is_empty()) {
                        self.ready.push_back(ModelDelta::Content(t));
                    }
                    for part in delta.tool_calls {
                        let call = self.calls.entry(part.index).or_default();
                        if let Some(id) = part.id {
                            call.id = id;
                        }
                        if let Some(f) = part.function {
                            if let Some(name) = f.name {
                                call.name.push_str(&name);
                            }
                            if let Some(args) = f.arguments {
                                call.arguments.push_str(&args);
                            }
                        }
                    }
                }
                if choice.finish_reason.is_some() {
                    self.flush_calls();
                }
            }
        }
    }

    fn fail(&mut self, e: ModelError) -> Option<Result<ModelDelta, ModelError>> {
        self.done = true;
        self.ready.clear();
        Some(Err(e))
    }
}
