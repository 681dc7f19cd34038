//! Tools an agent can call. Each is a [`Tool`]: a spec the model is shown
//! and an async call that turns JSON arguments into a result the model reads.
//!
//! A tool never fails the run: whatever goes wrong (bad arguments, a refused
//! host, a timeout) becomes an error result the model sees and can act on.
//! Pausing for a human (`ask_user`, approval) is the agent loop's business,
//! not a tool's.

pub mod builtin;
pub mod http_fetch;

use std::sync::Arc;

pub use http_fetch::{EgressConfigError, HttpFetch, HttpFetchPolicy, OperatorEgress};

use agentd_core::TenantId;
use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentSnapshot, ApprovalPolicy};
use crate::models::ToolSpec;

/// Tool names an agent may list, beside MCP servers' tools.
pub const BUILTIN_TOOLS: [&str; 3] = [builtin::ASK_USER, "current_time", "http_fetch"];

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
/// [`ToolSet`] from the run's own agent snapshot.
#[derive(Debug, Default)]
pub struct ToolRegistry {
    /// Address blocks and ports the operator opens to `http_fetch`.
    egress: OperatorEgress,
}

#[derive(Debug, thiserror::Error)]
#[error("tool {tool:?}: {message}")]
pub struct ToolSetupError {
    pub tool: String,
    pub message: String,
}

impl ToolRegistry {
    pub fn new(egress: OperatorEgress) -> Self {
        ToolRegistry { egress }
    }

    /// Checks what can be checked before any run: each agent's egress table.
    pub fn validate(&self, agent: &AgentSnapshot) -> Result<(), ToolSetupError> {
        if agent.tools.iter().any(|t| t == HttpFetch::NAME) {
            HttpFetchPolicy::from_egress(agent.egress.as_ref(), &self.egress).map_err(|e| {
                ToolSetupError {
                    tool: HttpFetch::NAME.into(),
                    message: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    pub fn for_agent(&self, agent: &AgentSnapshot) -> Result<ToolSet, ToolSetupError> {
        let mut tools: IndexMap<String, Arc<dyn Tool>> = IndexMap::new();
        let mut asks_user = false;
        for name in &agent.tools {
            match name.as_str() {
                builtin::ASK_USER => asks_user = true,
                "current_time" => {
                    tools.insert(name.clone(), Arc::new(builtin::CurrentTime));
                }
                HttpFetch::NAME => {
                    let policy = HttpFetchPolicy::from_egress(agent.egress.as_ref(), &self.egress)
                        .map_err(|e| ToolSetupError {
                            tool: name.clone(),
                            message: e.to_string(),
                        })?;
                    tools.insert(name.clone(), Arc::new(HttpFetch::new(policy)));
                }
                other => {
                    return Err(ToolSetupError {
                        tool: other.to_owned(),
                        message: "not available in this build".into(),
                    });
                }
            }
        }
        Ok(ToolSet {
            tools,
            asks_user,
            approval: agent.approval.clone(),
        })
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

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty() && !self.asks_user
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
