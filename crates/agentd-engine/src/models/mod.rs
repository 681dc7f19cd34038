//! Model providers behind one streaming interface: a request goes in, a stream
//! of [`ModelDelta`]s comes out, and failures say whether a retry may help.

pub mod anthropic;
pub mod local;
pub mod openai;
mod upstream;

use std::pin::Pin;

use agentd_core::Usage;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agents::{ModelSpec, Provider};

/// One message of the conversation sent to a model. Serializable because a
/// run's own turns are kept in its events (`step.done`, `tool.finished`) and
/// rebuilt from them when a run resumes or is recovered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    System {
        content: String,
    },
    User {
        content: String,
        /// Files sent with the message (seed 002's attachments).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    Assistant(AssistantTurn),
    Tool(ToolResult),
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::System {
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::User {
            content: content.into(),
            attachments: Vec::new(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::Assistant(AssistantTurn {
            content: content.into(),
            ..AssistantTurn::default()
        })
    }
}

/// A file sent with a user message: an image or a PDF, base64-encoded,
/// already checked (type, encoding, size) where it entered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub mime_type: String,
    /// Standard base64.
    pub data: String,
    #[serde(default)]
    pub name: String,
}

impl Attachment {
    pub fn is_image(&self) -> bool {
        self.mime_type.starts_with("image/")
    }

    /// `data:<mime>;base64,<data>`, as Chat Completions takes files.
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime_type, self.data)
    }
}

/// What the model said in one step: text, its thinking, and the tools it
/// wants called (several at once is allowed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AssistantTurn {
    #[serde(default)]
    pub content: String,
    /// Kept whole, signatures included: Anthropic refuses a later tool turn
    /// whose thinking was altered or dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking: Vec<ThinkingBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThinkingBlock {
    /// The reasoning text; for a redacted block, its opaque `data`.
    pub thinking: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Anthropic's `redacted_thinking`: returned verbatim, never shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; results answer it.
    pub id: String,
    pub name: String,
    /// The parsed JSON arguments; a `Value::String` holding the raw text when
    /// the model sent something that is not JSON (the tool then refuses).
    pub arguments: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub tool_call_id: String,
    /// The tool's name (Anthropic does not need it; others log it).
    pub name: String,
    pub content: String,
    #[serde(default)]
    pub is_error: bool,
}

/// A tool as the model is told about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

#[derive(Clone, Debug)]
pub struct ModelRequest {
    pub messages: Vec<ChatMessage>,
    /// Offered to the model; empty means a plain answer.
    pub tools: Vec<ToolSpec>,
    pub max_output_tokens: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelDelta {
    /// Answer text, as it streams.
    Content(String),
    /// Reasoning text, as it streams (`step.progress` kind `thinking_delta`).
    Thinking(String),
    /// A finished thinking block, signature included, for the history.
    ThinkingBlock(ThinkingBlock),
    /// A tool call whose arguments have fully arrived.
    ToolCall(ToolCall),
    Usage(Usage),
}

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// 429, 5xx, a reset or a stall: the step may succeed if run again.
    #[error("{reason_code}: {message}")]
    Transient {
        reason_code: &'static str,
        message: String,
    },
    /// The upstream refused the request itself; retrying will not help.
    #[error("{reason_code}: {message}")]
    Fatal {
        reason_code: &'static str,
        message: String,
    },
}

impl ModelError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            ModelError::Transient { reason_code, .. } | ModelError::Fatal { reason_code, .. } => {
                reason_code
            }
        }
    }
}

/// A failure that may pass if the step runs again.
pub(crate) fn transient(reason_code: &'static str, message: impl Into<String>) -> ModelError {
    ModelError::Transient {
        reason_code,
        message: message.into(),
    }
}

/// What a non-2xx answer means, the same for every provider: 429 and 5xx
/// (Anthropic's 529 "overloaded" included) may pass on a retry, the rest
/// will not.
pub(crate) fn status_error(status: reqwest::StatusCode, detail: &str) -> ModelError {
    let message = format!("upstream answered {status}: {}", truncate(detail, 500));
    if status.as_u16() == 429 {
        transient("UPSTREAM_RATE_LIMITED", message)
    } else if status.is_server_error() {
        transient("UPSTREAM_UNAVAILABLE", message)
    } else {
        ModelError::Fatal {
            reason_code: "UPSTREAM_REJECTED",
            message,
        }
    }
}

/// At most `max` characters of `s`, cut on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<ModelDelta, ModelError>> + Send>>;

/// Starts one streaming model call.
pub async fn stream(
    http: &reqwest::Client,
    local: &local::LocalModels,
    spec: &ModelSpec,
    request: &ModelRequest,
) -> Result<DeltaStream, ModelError> {
    match spec.provider {
        Provider::Openai => openai::stream(http, spec, request).await,
        Provider::Anthropic => anthropic::stream(http, spec, request).await,
        Provider::Local => local.stream(spec, request).await,
    }
}
