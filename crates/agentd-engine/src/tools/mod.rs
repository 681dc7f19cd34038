//! Tools an agent can call. Each is a [`Tool`]: a spec the model is shown
//! and an async call that turns JSON arguments into a result the model reads.
//!
//! A tool never fails the run: whatever goes wrong (bad arguments, a refused
//! host, a timeout) becomes an error result the model sees and can act on.
//! Pausing for a human (`ask_user`, approval) is the agent loop's business,
//! not a tool's.

pub mod builtin;
pub mod http_fetch;
pub mod mcp;
pub mod run_code;

use std::sync::Arc;

pub use http_fetch::{EgressConfigError, HttpFetch, HttpFetchPolicy, OperatorEgress};

use agentd_core::TenantId;
use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use self::mcp::{McpConfigError, McpServer, McpServerSpec, McpTool};
use crate::agents::{AgentSnapshot, ApprovalPolicy};
use crate::models::ToolSpec;

/// Tool names an agent may list, beside MCP servers (`mcp:NAME`).
pub const BUILTIN_TOOLS: [&str; 4] = [
    builtin::ASK_USER,
    "current_time",
    "http_fetch",
    run_code::RunCode::NAME,
];

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

/// The operator's tool settings, shared by every run. Builds each run's
/// [`ToolSet`] from the run's own agent snapshot, and holds the MCP
/// servers' connections.
#[derive(Debug, Default)]
pub struct ToolRegistry {
    /// Address blocks and ports the operator opens to `http_fetch`.
    egress: OperatorEgress,
    mcp: IndexMap<String, Arc<McpServer>>,
    /// The sandbox `run_code` runs in; set once the store is open.
    sandbox: std::sync::OnceLock<Arc<agentd_sandbox::SandboxService>>,
}

/// Why a run's tools could not be set up; the run fails with `reason_code`.
#[derive(Debug, thiserror::Error)]
#[error("tool {tool:?}: {message}")]
pub struct ToolSetupError {
    pub tool: String,
    pub message: String,
    /// `AGENT_CONFIG_INVALID`, or `MCP_UNAVAILABLE` for a server that
    /// cannot be reached.
    pub reason_code: &'static str,
}

impl ToolSetupError {
    fn config(tool: &str, message: impl Into<String>) -> Self {
        ToolSetupError {
            tool: tool.to_owned(),
            message: message.into(),
            reason_code: "AGENT_CONFIG_INVALID",
        }
    }
}

impl ToolRegistry {
    /// Checks every `[mcp.NAME]` table; nothing is started or reached
    /// until a run needs the server.
    pub fn new(
        egress: OperatorEgress,
        mcp: IndexMap<String, McpServerSpec>,
    ) -> Result<Self, McpConfigError> {
        let mcp = mcp
            .iter()
            .map(|(name, spec)| Ok((name.clone(), Arc::new(McpServer::new(name, spec)?))))
            .collect::<Result<_, McpConfigError>>()?;
        Ok(ToolRegistry {
            egress,
            mcp,
            sandbox: Default::default(),
        })
    }

    /// Gives `run_code` its sandbox service (once, at start-up).
    pub fn set_sandbox(&self, service: Arc<agentd_sandbox::SandboxService>) {
        let _ = self.sandbox.set(service);
    }

    /// Checks what can be checked before any run: each agent's egress table.
    pub fn validate(&self, agent: &AgentSnapshot) -> Result<(), ToolSetupError> {
        if agent
            .tools
            .iter()
            .any(|t| t == HttpFetch::NAME || t == run_code::RunCode::NAME)
        {
            HttpFetchPolicy::from_egress(agent.egress.as_ref(), &self.egress)
                .map_err(|e| ToolSetupError::config(HttpFetch::NAME, e.to_string()))?;
        }
        Ok(())
    }

    /// Resolves the agent's tools. Async: an MCP server's tools are listed
    /// over its connection, opened here on first use.
    pub async fn for_agent(&self, agent: &AgentSnapshot) -> Result<ToolSet, ToolSetupError> {
        let mut tools: IndexMap<String, Arc<dyn Tool>> = IndexMap::new();
        let mut asks_user = false;
        for name in &agent.tools {
            match name.as_str() {
                builtin::ASK_USER => asks_user = true,
                "current_time" => {
                    tools.insert(name.clone(), Arc::new(builtin::CurrentTime));
                }
                run_code::RunCode::NAME => {
                    let service = self.sandbox.get().cloned().ok_or_else(|| ToolSetupError {
                        tool: name.clone(),
                        message: "no sandbox is available in this process".into(),
                        reason_code: "SANDBOX_UNAVAILABLE",
                    })?;
                    let tool = run_code::RunCode::new(service, agent.egress.as_ref(), &self.egress)
                        .map_err(|e| ToolSetupError::config(name, e.to_string()))?;
                    tools.insert(name.clone(), Arc::new(tool));
                }
                HttpFetch::NAME => {
                    let policy = HttpFetchPolicy::from_egress(agent.egress.as_ref(), &self.egress)
                        .map_err(|e| ToolSetupError::config(name, e.to_string()))?;
                    tools.insert(name.clone(), Arc::new(HttpFetch::new(policy)));
                }
                server if server.starts_with(mcp::TOOL_PREFIX) => {
                    let key = &server[mcp::TOOL_PREFIX.len()..];
                    let server = self.mcp.get(key).ok_or_else(|| {
                        ToolSetupError::config(name, format!("no [mcp.{key}] server is configured"))
                    })?;
                    let listed = McpTool::list(server).await.map_err(|e| ToolSetupError {
                        tool: name.clone(),
                        message: format!("MCP server {key:?}: {e}"),
                        reason_code: mcp::MCP_UNAVAILABLE,
                    })?;
                    for tool in listed {
                        tools.insert(tool.name().to_owned(), Arc::new(tool));
                    }
                }
                other => {
                    return Err(ToolSetupError::config(other, "not available in this build"));
                }
            }
        }
        Ok(ToolSet {
            tools,
            asks_user,
            approval: agent.approval.clone(),
        })
    }

    /// The configured MCP servers' names, for validating agents.
    pub fn mcp_servers(&self) -> impl Iterator<Item = &str> {
        self.mcp.keys().map(String::as_str)
    }

    /// Closes every MCP connection; stdio servers exit (at shutdown).
    pub async fn shutdown(&self) {
        for server in self.mcp.values() {
            server.shutdown().await;
        }
    }
}

/// One run's tools, resolved.
pub struct ToolSet {
    tools: IndexMap<String, Arc<dyn Tool>>,
    asks_user: bool,
    approval: IndexMap<String, ApprovalPolicy>,
}

impl ToolSet {
    /// What the model is offered, in the agent's order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs: Vec<ToolSpec> = self.tools.values().map(|t| t.spec()).collect();
        if self.asks_user {
            specs.push(builtin::ask_user_spec());
        }
        specs
    }

    pub fn asks_user(&self) -> bool {
        self.asks_user
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// The agent's policy for `name`, else the tool's own default.
    pub fn needs_approval(&self, name: &str, tool: &dyn Tool) -> bool {
        match self.approval.get(name) {
            Some(ApprovalPolicy::Always) => true,
            Some(ApprovalPolicy::Never) => false,
            None => tool.needs_approval_by_default(),
        }
    }
}
