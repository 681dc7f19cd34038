//! Model providers behind one streaming interface: a request goes in, a stream
//! of [`ModelDelta`]s comes out, and failures say whether a retry may help.

pub mod openai;

use std::pin::Pin;

use agentd_core::Usage;
use futures::Stream;

use crate::agents::{ModelSpec, Provider};

/// One message of the conversation sent to a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelRequest {
    pub messages: Vec<ChatMessage>,
    pub max_output_tokens: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelDelta {
    Content(String),
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

pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<ModelDelta, ModelError>> + Send>>;

/// Starts one streaming model call.
pub async fn stream(
    http: &reqwest::Client,
    spec: &ModelSpec,
    request: &ModelRequest,
) -> Result<DeltaStream, ModelError> {
    match spec.provider {
        Provider::Openai => openai::stream(http, spec, request).await,
        Provider::Anthropic | Provider::Local => Err(ModelError::Fatal {
            reason_code: "PROVIDER_UNAVAILABLE",
            message: format!(
                "provider {:?} is not available in this build",
                spec.provider
            ),
        }),
    }
}
