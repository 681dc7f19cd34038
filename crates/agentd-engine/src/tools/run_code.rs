//! `run_code {language, code}`: the agent's code in the sandbox (DESIGN §5,
//! §6), under the agent's egress list and approval policy (the agent loop
//! asks a human first when the policy says so). The model reads the exit
//! status, stdout, stderr and the structured result.

use std::sync::Arc;

use agentd_core::TenantId;
use agentd_sandbox::service::{AuditOrigin, EgressCeiling, EgressMode, EgressRequest};
use agentd_sandbox::{CreateRequest, HostRule, Language, SandboxService};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http_fetch::addr;
use super::{HttpFetchPolicy, OperatorEgress, Tool, ToolContext, ToolOutput};
use crate::models::ToolSpec;

/// Output shown to the model per stream; the full text stays on the session.
const MODEL_OUTPUT_BYTES: usize = 16 * 1024;

/// The operator's address rules as the proxy's per-address check.
pub fn addr_check(operator: &OperatorEgress) -> agentd_sandbox::egress::AddrCheck {
    let cidrs = operator.allow_cidrs.clone();
    Arc::new(move |ip| addr::check(ip, &cidrs).map_err(|why| why.to_string()))
}

pub struct RunCode {
    service: Arc<SandboxService>,
    /// The agent's list: both what is asked and its ceiling.
    egress: EgressRequest,
    ceiling: EgressCeiling,
}

impl RunCode {
    pub const NAME: &'static str = "run_code";

    /// The agent's `egress` value (already validated) over the operator's rules.
    pub fn new(
        service: Arc<SandboxService>,
        agent_egress: Option<&Value>,
        operator: &OperatorEgress,
    ) -> Result<Self, super::EgressConfigError> {
        let policy = HttpFetchPolicy::from_egress(agent_egress, operator)?;
        // IP entries mean nothing to the proxy, which refuses IP literals.
        let hosts: Vec<HostRule> = policy
            .allow_hosts
            .iter()
            .filter_map(|h| HostRule::parse(h))
            .collect();
        let egress = EgressRequest {
            mode: if hosts.is_empty() {
                EgressMode::DenyAll
            } else {
                EgressMode::AllowList
            },
            allow: hosts.iter().map(HostRule::to_entry).collect(),
        };
        Ok(RunCode {
            service,
            egress,
            ceiling: EgressCeiling {
                hosts,
                ports: operator.allowed_ports.clone(),
                check_addr: addr_check(operator),
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    language: Language,
    code: String,
}

fn clip(s: &str) -> String {
    if s.len() <= MODEL_OUTPUT_BYTES {
        return s.to_owned();
    }
    let mut end = MODEL_OUTPUT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes]", &s[..end], s.len() - end)
}

#[async_trait]
impl Tool for RunCode {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: Self::NAME.into(),
            description: "Run a Python or bash program in an isolated sandbox and get its \
                          exit status, stdout, stderr and structured result. In Python, \
                          `import agentd; agentd.result({...})` records a JSON result; in \
                          bash, `agentd_result '<json>'`. No network unless this agent's \
                          egress list allows hosts (through HTTP(S)_PROXY)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "language": {"type": "string", "enum": ["python", "bash"]},
                    "code": {"type": "string", "description": "The program text"},
                },
                "required": ["language", "code"],
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, ctx: &ToolContext, arguments: Value) -> ToolOutput {
        let args: Args = match serde_json::from_value(arguments) {
            Ok(a) => a,
            Err(e) => return ToolOutput::error(format!("INVALID_ARGUMENTS: {e}")),
        };
        let request = CreateRequest {
            code: args.code,
            language: args.language,
            limits: Default::default(),
            egress: self.egress.clone(),
            labels: [("run_id".to_owned(), ctx.run_id.clone())].into(),
            origin: origin(&ctx.tenant, &ctx.run_id),
            ceiling: self.ceiling.clone(),
        };
        let session = match self.service.create(request).await {
            Ok(s) => s,
            Err(e) => return ToolOutput::error(format!("SANDBOX_UNAVAILABLE: {e}")),
        };
        let mut frames = session.subscribe();
        loop {
            if session.frames_from(0).1 {
                break;
            }
            tokio::select! {
                changed = frames.changed() => if changed.is_err() { break },
                _ = ctx.cancel.cancelled() => {
                    session.teardown.cancel();
                    return ToolOutput::error("CANCELLED: the run was stopped");
                }
            }
        }
        let Some(r) = session.result() else {
            return ToolOutput::error("SANDBOX_FAILED: no result");
        };
        let body = json!({
            "sandbox_id": r.id,
            "phase": r.phase,
            "exit_code": r.exit_code,
            "kill_reason": r.kill_reason,
            "stdout": clip(&r.stdout),
            "stderr": clip(&r.stderr),
            "result": r.result,
            "result_error": r.result_error,
            "error": r.error,
        });
        let ok = r.phase == agentd_sandbox::Phase::Succeeded;
        ToolOutput {
            content: body.to_string(),
            is_error: !ok,
        }
    }
}

fn origin(tenant: &TenantId, run_id: &str) -> AuditOrigin {
    AuditOrigin {
        tenant: tenant.clone(),
        actor: format!("run:{run_id}"),
        actor_id: None,
        client_ip: None,
        request_id: None,
    }
}
