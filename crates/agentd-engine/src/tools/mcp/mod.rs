//! MCP servers' tools (DESIGN §5): an agent lists `mcp:NAME` and every tool
//! of the `[mcp.NAME]` server is offered to its model as `NAME__tool`.
//!
//! Servers are reached with `rmcp`, the official SDK: a stdio command (in a
//! cleared environment; inside the sandbox once it exists) or a streamable
//! HTTP URL. Their calls wait for a human unless the server's `approval` or
//! the agent's says `never`.

mod render;
mod server;
mod spec;
#[cfg(test)]
mod tests;
mod transport;

use std::sync::Arc;

use async_trait::async_trait;
use rmcp::model::JsonObject;
use serde_json::Value;

pub use self::render::{MAX_RESULT_BYTES, MAX_TOOL_NAME, exposed_name};
pub use self::server::McpServer;
pub use self::spec::{McpConfigError, McpServerSpec, McpTransportSpec, STDIO_PATH};
use super::{Tool, ToolContext, ToolOutput};
use crate::agents::ApprovalPolicy;
use crate::models::ToolSpec;

/// How an agent's `tools` names a server: `mcp:NAME`.
pub const TOOL_PREFIX: &str = "mcp:";

/// The reason code of a server that cannot be reached or does not answer.
pub const MCP_UNAVAILABLE: &str = "MCP_UNAVAILABLE";

/// The reason code of a server that answered a call with a JSON-RPC error.
pub const MCP_ERROR: &str = "MCP_ERROR";

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum McpError {
    #[error("cannot start the server: {0}")]
    Spawn(String),
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
    #[error("MCP initialization failed: {0}")]
    Initialize(String),
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("the connection failed: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A JSON-RPC error: the server is there and said no (an unknown tool,
    /// invalid arguments).
    #[error("the server refused the call: {0}")]
    Refused(String),
}

impl McpError {
    pub fn reason_code(&self) -> &'static str {
        match self {
            McpError::Refused(_) => MCP_ERROR,
            _ => MCP_UNAVAILABLE,
        }
    }

    /// A failure of the connection itself, rather than of one request.
    fn is_transport(&self) -> bool {
        matches!(self, McpError::Transport(_))
    }
}

/// One tool of one server, as a run's [`Tool`].
pub struct McpTool {
    server: Arc<McpServer>,
    /// What the model calls it: `SERVER__tool`, sanitized.
    name: String,
    /// What the server calls it.
    original: String,
    description: String,
    parameters: Value,
}

impl McpTool {
    /// The server's tools, connecting first if needed.
    pub async fn list(server: &Arc<McpServer>) -> Result<Vec<McpTool>, McpError> {
        let conn = server.connection().await?;
        Ok(conn
            .tools
            .iter()
            .map(|(name, tool)| McpTool {
                server: server.clone(),
                name: name.clone(),
                original: tool.name.to_string(),
                description: tool
                    .description
                    .as_deref()
                    .or(tool.title.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                parameters: Value::Object(tool.input_schema.as_ref().clone()),
            })
            .collect())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
        }
    }

    fn needs_approval_by_default(&self) -> bool {
        self.server.approval() == ApprovalPolicy::Always
    }

    async fn call(&self, ctx: &ToolContext, arguments: Value) -> ToolOutput {
        let arguments: JsonObject = match arguments {
            Value::Object(map) => map,
            Value::Null => JsonObject::new(),
            _ => return ToolOutput::error("arguments must be a JSON object"),
        };
        let server = self.server.name();
        tokio::select! {
            _ = ctx.cancel.cancelled() => ToolOutput::error(format!(
                "CANCELLED: MCP server {server:?}: the call was abandoned"
            )),
            result = self.server.call(&self.original, arguments) => match result {
                Ok(result) => render::render(&result),
                Err(e) => ToolOutput::error(format!(
                    "{}: MCP server {server:?}: {e}",
                    e.reason_code()
                )),
            },
        }
    }
}
