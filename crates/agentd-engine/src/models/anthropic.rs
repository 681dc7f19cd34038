//! Anthropic's Messages API with `stream: true`: `POST {base}/v1/messages`
//! keyed by `x-api-key` and pinned to one `anthropic-version`, answered by
//! SSE events (`message_start`, content blocks, `message_delta`,
//! `message_stop`). Thinking blocks come back with their signatures so the
//! history can carry them into the next tool turn, as the API requires.

mod encode;
mod reader;

use std::time::Duration;

use eventsource_stream::Eventsource;
use serde::Deserialize;
use serde_json::json;

use super::upstream::UpstreamEvents;
use super::{DeltaStream, ModelError, ModelRequest, status_error, transient};
use crate::agents::ModelSpec;
use reader::{ApiError, Reader};

pub use encode::{encode_messages, encode_tools};

/// The API version this encoder and reader are written against.
pub const API_VERSION: &str = "2023-06-01";

const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// `{base}/v1/messages`, whether or not the configured base already ends in
/// `/v1` (both forms are common in other tools' settings).
fn messages_url(base_url: Option<&str>) -> String {
    let base = base_url.unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

/// The request body; `pub` so the wire form can be checked without a server.
pub fn request_body(spec: &ModelSpec, request: &ModelRequest) -> serde_json::Value {
    let (system, messages) = encode_messages(&request.messages);
    let mut body = json!({
        "model": spec.model,
        "max_tokens": request.max_output_tokens,
        "stream": true,
        "messages": messages,
    });
    if let Some(system) = system {
        body["system"] = json!(system);
    }
    if !request.tools.is_empty() {
        body["tools"] = json!(encode_tools(&request.tools));
    }
    if let Some(t) = spec.temperature {
        body["temperature"] = json!(t);
    }
    // The budget must stay below this call's max_tokens; a late step of a
    // run whose output budget is nearly spent answers without thinking.
    if let Some(budget) = spec.thinking_budget_tokens
        && budget < request.max_output_tokens
    {
        body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
    }
    body
}

/// Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ApiError,
}

pub async fn stream(
    http: &reqwest::Client,
    spec: &ModelSpec,
    request: &ModelRequest,
) -> Result<DeltaStream, ModelError> {
    let url = messages_url(spec.base_url.as_deref());
    let mut req = http
        .post(&url)
        .header("anthropic-version", API_VERSION)
        .json(&request_body(spec, request));
    if let Some(name) = spec.api_key_env.as_deref() {
        // Named but unset is a configuration error, not an upstream one: say
        // which variable, rather than relay the upstream's 401.
        let key = std::env::var(name).map_err(|_| ModelError::Fatal {
            reason_code: "MODEL_API_KEY_MISSING",
            message: format!("the model's key variable {name} is not set"),
        })?;
        req = req.header("x-api-key", key);
    }
    let response = req
        .send()
        .await
        .map_err(|e| transient("UPSTREAM_UNREACHABLE", e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| format!("{}: {}", b.error.kind, b.error.message))
            .unwrap_or(text);
        return Err(status_error(status, &detail));
    }

    let idle = Duration::from_secs(spec.idle_timeout_secs.max(1));
    let state = Reader::new(UpstreamEvents::new(
        response.bytes_stream().eventsource(),
        idle,
    ));
    let deltas = futures::stream::unfold(state, move |mut r| async move {
        let item = r.next().await?;
        Some((item, r))
    });
    Ok(Box::pin(deltas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::Provider;
    use crate::models::ChatMessage;

    fn spec() -> ModelSpec {
        ModelSpec {
            provider: Provider::Anthropic,
            base_url: None,
            model: "claude-test".into(),
            api_key_env: None,
            max_retries: 0,
            retry_backoff_ms: 0,
            idle_timeout_secs: 5,
            temperature: None,
            thinking_budget_tokens: None,
            model_path: None,
            top_p: None,
            seed: None,
        }
    }

    #[test]
    fn the_url_gets_one_v1() {
        let expected = "https://api.anthropic.com/v1/messages";
        assert_eq!(messages_url(None), expected);
        assert_eq!(messages_url(Some("https://api.anthropic.com")), expected);
        assert_eq!(messages_url(Some("https://api.anthropic.com/")), expected);
        assert_eq!(messages_url(Some("https://api.anthropic.com/v1")), expected);
        assert_eq!(
            messages_url(Some("https://api.anthropic.com/v1/")),
            expected
        );
    }

    #[test]
    fn optional_fields_are_left_out_when_unset() {
        let request = ModelRequest {
            messages: vec![ChatMessage::user("hi")],
            tools: vec![],
            max_output_tokens: 100,
        };
        let body = request_body(&spec(), &request);
        assert_eq!(
            body,
            json!({"model": "claude-test", "max_tokens": 100, "stream": true,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
    }

    #[test]
    fn thinking_and_temperature_are_sent_when_set() {
        let spec = ModelSpec {
            temperature: Some(0.5),
            thinking_budget_tokens: Some(2048),
            ..spec()
        };
        let request = ModelRequest {
            messages: vec![ChatMessage::system("be brief"), ChatMessage::user("hi")],
            tools: vec![],
            max_output_tokens: 4096,
        };
        let body = request_body(&spec, &request);
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
    }
}
