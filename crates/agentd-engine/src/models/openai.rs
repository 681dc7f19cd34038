//! Chat Completions with `stream: true`, as OpenAI, vLLM, Ollama, llama.cpp
//! server and LM Studio speak it: SSE `chat.completion.chunk`s, then a usage
//! chunk (`stream_options.include_usage`), then `data: [DONE]`.

use std::time::Duration;

use agentd_core::Usage;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{DeltaStream, ModelDelta, ModelError, ModelRequest};
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
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
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

fn transient(reason_code: &'static str, message: impl Into<String>) -> ModelError {
    ModelError::Transient {
        reason_code,
        message: message.into(),
    }
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
    let messages: Vec<_> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
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
        let message = format!("upstream answered {status}: {}", truncate(&text, 500));
        return Err(if status.as_u16() == 429 {
            transient("UPSTREAM_RATE_LIMITED", message)
        } else if status.is_server_error() {
            transient("UPSTREAM_UNAVAILABLE", message)
        } else {
            ModelError::Fatal {
                reason_code: "UPSTREAM_REJECTED",
                message,
            }
        });
    }

    let idle = Duration::from_secs(spec.idle_timeout_secs.max(1));
    let events = response.bytes_stream().eventsource();
    let deltas = futures::stream::unfold(
        (Box::pin(events), false),
        move |(mut events, done)| async move {
            if done {
                return None;
            }
            loop {
                let next = match tokio::time::timeout(idle, events.next()).await {
                    Err(_) => {
                        let e = transient("UPSTREAM_STALLED", "no data from upstream");
                        return Some((Err(e), (events, true)));
                    }
                    Ok(next) => next,
                };
                let event = match next {
                    None => {
                        let e = transient("UPSTREAM_CLOSED", "stream ended before [DONE]");
                        return Some((Err(e), (events, true)));
                    }
                    Some(Err(e)) => {
                        let e = transient("UPSTREAM_STREAM_ERROR", e.to_string());
                        return Some((Err(e), (events, true)));
                    }
                    Some(Ok(event)) => event,
                };
                if event.data.trim() == "[DONE]" {
                    return None;
                }
                let chunk: Chunk = match serde_json::from_str(&event.data) {
                    Ok(c) => c,
                    Err(e) => {
                        let e = ModelError::Fatal {
                            reason_code: "UPSTREAM_BAD_RESPONSE",
                            message: format!("unparseable chunk: {e}"),
                        };
                        return Some((Err(e), (events, true)));
                    }
                };
                if let Some(err) = chunk.error {
                    let e = transient("UPSTREAM_ERROR", err.to_string());
                    return Some((Err(e), (events, true)));
                }
                if let Some(u) = chunk.usage {
                    let usage = Usage {
                        input_tokens: u.prompt_tokens,
                        output_tokens: u.completion_tokens,
                        total_tokens: u.total_tokens.max(u.prompt_tokens + u.completion_tokens),
                        model_calls: 0,
                    };
                    return Some((Ok(ModelDelta::Usage(usage)), (events, false)));
                }
                let text: String = chunk
                    .choices
                    .into_iter()
                    .filter_map(|c| c.delta.and_then(|d| d.content))
                    .collect();
                if !text.is_empty() {
                    return Some((Ok(ModelDelta::Content(text)), (events, false)));
                }
            }
        },
    );
    Ok(Box::pin(deltas))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
