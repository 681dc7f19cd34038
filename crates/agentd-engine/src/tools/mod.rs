//! Tools an agent can call. Each is a [`Tool`]: a spec the model is shown
//! and an async call that turns JSON arguments into a result the model reads.
//!
//! A tool never fails the run: whatever goes wrong (bad arguments, a refused
//! host, a timeout) becomes an error result the model sees and can act on.
//! Pausing for a human (`ask_user`, approval) is the agent loop's business,
//! not a tool's.

pub mod http_fetch;

pub use http_fetch::{EgressConfigError, HttpFetch, HttpFetchPolicy, OperatorEgress};

use agentd_core::TenantId;
use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::models::ToolSpec;

/// What a call knows of its run.
#[derive(Clone, Debug)]
pub struct ToolContext {
    pub run_id: String,
    pub tenant: TenantId,
    /// Cancelled when the run is cancelled or the worker stops: a long call
    /// should give up promptly.
    pub cancel: CancellationToken,
}

/// A tool's answer, as the model will read it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }

    pub fn error(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

#[async_trait]
pub trait Tool: Send + Sync + 'static {
    fn spec(&self) -> ToolSpec;

    /// Whether a call waits for a human when the agent's `approval` table
    /// does not name this tool (MCP tools: yes; built-ins: no).
    fn needs_approval_by_default(&self) -> bool {
        false
    }

    async fn call(&self, ctx: &ToolContext, arguments: Value) -> ToolOutput;
}
