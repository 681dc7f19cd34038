//! Agents and models as configured in `agentd.toml` (DESIGN §5), and the
//! snapshot a run keeps of its agent so a config change never alters it.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Chat Completions: OpenAI and every compatible server.
    Openai,
    Anthropic,
    Local,
}

/// One `[models.NAME]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub provider: Provider,
    #[serde(default)]
    pub base_url: Option<String>,
    pub model: String,
    /// The name of the variable holding the key, never the key itself.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Retries of a transient upstream failure (429, 5xx, reset) per step.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// First retry delay; doubled each time, with jitter.
    #[serde(default = "defaults::retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Longest silence from the upstream before the attempt counts as failed.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Anthropic extended thinking: the token budget for the model's
    /// reasoning (at least 1024, below the agent's `max_output_tokens`).
    /// Unset means no thinking is asked for; other providers ignore it.
    #[serde(default)]
    pub thinking_budget_tokens: Option<u32>,
    /// `local` only: a GGUF (or the model's PyPI wheel) on disk, used
    /// instead of the download, so a machine without network still works.
    #[serde(default)]
    pub model_path: Option<std::path::PathBuf>,
    /// `local` only: nucleus sampling; unset means the model's default.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// `local` only: the sampler's seed, so the same prompt gives the same
    /// answer (every generation starts from it).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// One `[agents.NAME]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// A key of `[models]`.
    #[serde(default = "defaults::model")]
    pub model: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub approval: IndexMap<String, String>,
    #[serde(default)]
    pub egress: Option<serde_json::Value>,
    #[serde(default = "defaults::max_steps")]
    pub max_steps: u32,
    #[serde(default = "defaults::max_output_tokens")]
    pub max_output_tokens: u32,
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "defaults::approval_timeout_secs")]
    pub approval_timeout_secs: u64,
}

mod defaults {
    pub fn max_retries() -> u32 {
        2
    }
    pub fn retry_backoff_ms() -> u64 {
        500
    }
    pub fn idle_timeout_secs() -> u64 {
        120
    }
    pub fn model() -> String {
        "default".into()
    }
    pub fn max_steps() -> u32 {
        16
    }
    pub fn max_output_tokens() -> u32 {
        4096
    }
    pub fn timeout_secs() -> u64 {
        600
    }
    pub fn approval_timeout_secs() -> u64 {
        86400
    }
}

/// Whether a tool's calls wait for a human (`approval = { tool = "always" }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalPolicy {
    Always,
    Never,
}

/// What a run keeps of its agent: everything the engine needs, resolved.
/// Fields added later default, so runs stored before them still load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub name: String,
    pub model_name: String,
    pub model: ModelSpec,
    pub instructions: String,
    pub tools: Vec<String>,
    /// Per tool; a tool not named here follows its own default.
    #[serde(default)]
    pub approval: IndexMap<String, ApprovalPolicy>,
    /// The agent's egress ceiling (`{ mode = "allow_list", allow = [...] }`).
    #[serde(default)]
    pub egress: Option<serde_json::Value>,
    pub max_steps: u32,
    pub max_output_tokens: u32,
    pub timeout_secs: u64,
    #[serde(default = "defaults::approval_timeout_secs")]
    pub approval_timeout_secs: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    #[error("agent {agent:?} names model {model:?}, which is not configured")]
    UnknownModel { agent: String, model: String },
    #[error("model {0:?}: provider {1:?} is not available in this build")]
    UnsupportedProvider(String, Provider),
    #[error("model {0:?}: provider openai needs base_url")]
    MissingBaseUrl(String),
    #[error("agent {agent:?}: {message}")]
    InvalidAgent { agent: String, message: String },
}

/// The configured agents, in file order; the first is the default.
#[derive(Clone, Debug)]
pub struct AgentCatalog {
    agents: IndexMap<String, AgentSnapshot>,
}

impl AgentCatalog {
    /// Validates that every agent's model exists and can be served, and
    /// that every tool it lists is a built-in or `mcp:NAME` for one of the
    /// configured `mcp_servers`.
    pub fn new(
        models: &IndexMap<String, ModelSpec>,
        agents: &IndexMap<String, AgentSpec>,
        mcp_servers: &[&str],
    ) -> Result<AgentCatalog, CatalogError> {
        let mut out = IndexMap::new();
        for (name, agent) in agents {
            let model = models
                .get(&agent.model)
                .ok_or_else(|| CatalogError::UnknownModel {
                    agent: name.clone(),
                    model: agent.model.clone(),
                })?;
            match model.provider {
                Provider::Openai if model.base_url.is_none() => {
                    return Err(CatalogError::MissingBaseUrl(agent.model.clone()));
                }
                Provider::Openai => {}
                // Anthropic's own endpoint is the default base.
                Provider::Anthropic => {}
                Provider::Local => {}
            }
            let invalid = |message: String| CatalogError::InvalidAgent {
                agent: name.clone(),
                message,
            };
            if model.provider == Provider::Local {
                crate::models::local::check_spec(model).map_err(invalid)?;
            }
            if let Some(budget) = model.thinking_budget_tokens {
                // Anthropic's own rules for extended thinking, checked here
                // rather than refused by the API on every run.
                if model.provider != Provider::Anthropic {
                    return Err(invalid(
                        "thinking_budget_tokens is for anthropic models".into(),
                    ));
                }
                if budget < 1024 || budget >= agent.max_output_tokens {
                    return Err(invalid(format!(
                        "thinking_budget_tokens ({budget}) must be at least 1024 and below max_output_tokens ({})",
                        agent.max_output_tokens
                    )));
                }
                if model.temperature.is_some() {
                    return Err(invalid(
                        "temperature cannot be set together with thinking_budget_tokens".into(),
                    ));
                }
            }
            let mut approval = IndexMap::new();
            for (tool, policy) in &agent.approval {
                let policy = match policy.as_str() {
                    "always" => ApprovalPolicy::Always,
                    "never" => ApprovalPolicy::Never,
                    other => {
                        return Err(invalid(format!(
                            "approval for {tool:?} must be \"always\" or \"never\", not {other:?}"
                        )));
                    }
                };
                approval.insert(tool.clone(), policy);
            }
            for tool in &agent.tools {
                if let Some(server) = tool.strip_prefix(crate::tools::mcp::TOOL_PREFIX) {
                    if !mcp_servers.contains(&server) {
                        return Err(invalid(format!(
                            "tool {tool:?} names MCP server {server:?}, which is not configured (add an [mcp.{server}] table)"
                        )));
                    }
                } else if !crate::tools::BUILTIN_TOOLS.contains(&tool.as_str()) {
                    return Err(invalid(format!(
                        "unknown tool {tool:?} (available: {}, or mcp:NAME for an [mcp.NAME] server)",
                        crate::tools::BUILTIN_TOOLS.join(", ")
                    )));
                }
            }
            if agent.max_steps == 0 || agent.max_output_tokens == 0 || agent.timeout_secs == 0 {
                return Err(invalid(
                    "max_steps, max_output_tokens and timeout_secs must be positive".into(),
                ));
            }
            out.insert(
                name.clone(),
                AgentSnapshot {
                    name: name.clone(),
                    model_name: agent.model.clone(),
                    model: model.clone(),
                    instructions: agent.instructions.clone(),
                    tools: agent.tools.clone(),
                    approval,
                    egress: agent.egress.clone(),
                    max_steps: agent.max_steps,
                    max_output_tokens: agent.max_output_tokens,
                    timeout_secs: agent.timeout_secs,
                    approval_timeout_secs: agent.approval_timeout_secs,
                },
            );
        }
        Ok(AgentCatalog { agents: out })
    }

    /// The agent used when none is named; `None` only for an empty catalog.
    pub fn default_agent(&self) -> Option<&AgentSnapshot> {
        self.agents.values().next()
    }

    pub fn get(&self, name: &str) -> Option<&AgentSnapshot> {
        self.agents.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AgentSnapshot> {
        self.agents.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(model: &str, agent: &str) -> Result<AgentCatalog, CatalogError> {
        let models: IndexMap<String, ModelSpec> =
            toml::from_str(&format!("[default]\n{model}")).expect("model table");
        let agents: IndexMap<String, AgentSpec> =
            toml::from_str(&format!("[assistant]\n{agent}")).expect("agent table");
        AgentCatalog::new(&models, &agents, &[])
    }

    #[test]
    fn anthropic_thinking_rules_are_checked_at_startup() {
        let anthropic = "provider = \"anthropic\"\nmodel = \"m\"\n";
        assert!(catalog(&format!("{anthropic}thinking_budget_tokens = 2048"), "").is_ok());
        for (model, agent, why) in [
            (format!("{anthropic}thinking_budget_tokens = 512"), "", "at least 1024"),
            (format!("{anthropic}thinking_budget_tokens = 4096"), "", "below max_output_tokens"),
            (format!("{anthropic}thinking_budget_tokens = 2048\ntemperature = 0.5"), "", "temperature"),
            (
                "provider = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\nthinking_budget_tokens = 2048".to_owned(),
                "",
                "anthropic",
            ),
        ] {
            let e = catalog(&model, agent).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn local_models_are_checked_at_startup() {
        assert!(
            catalog(
                "provider = \"local\"\nmodel = \"smollm2-135m-instruct\"",
                ""
            )
            .is_ok()
        );
        assert!(
            catalog(
                "provider = \"local\"\nmodel = \"mine\"\nmodel_path = \"/srv/m.gguf\"",
                ""
            )
            .is_ok()
        );
        for (model, why) in [
            (
                "provider = \"local\"\nmodel = \"gpt-5\"",
                "unknown local model",
            ),
            (
                "provider = \"local\"\nmodel = \"smollm2-135m-instruct\"\ntop_p = 1.5",
                "top_p",
            ),
        ] {
            let e = catalog(model, "").unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn unknown_tools_and_bad_approvals_are_refused() {
        let openai = "provider = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"";
        let e = catalog(openai, "tools = [\"rm_rf\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown tool"), "{e}");
        let e = catalog(openai, "tools = [\"mcp:nope\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not configured"), "{e}");
        let e = catalog(openai, "approval = { http_fetch = \"sometimes\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("always"), "{e}");
    }
}
