//! Configuration: `agentd.toml`, `AGENTD_*` variables and flags, in that
//! order of increasing precedence (DESIGN §5), resolved into one [`Settings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentd_engine::{AgentSpec, McpServerSpec, ModelSpec, Provider};
use agentd_server::cors::{CorsPolicies, CorsPolicy};
use agentd_server::jwt::JwtSettings;
use anyhow::{Context, bail};
use clap::Args;
use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "AGENTD_ADDR")]
    pub addr: Option<String>,
    /// Where the embedded store and generated secrets live.
    #[arg(long, env = "AGENTD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The configuration file (default: ./agentd.toml when present).
    #[arg(long, env = "AGENTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// A PostgreSQL URL instead of the embedded SQLite store.
    #[arg(long, env = "AGENTD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A file holding the admin token (else AGENTD_ADMIN_TOKEN).
    #[arg(long, env = "AGENTD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Sync every commit to disk (survive power loss, not only a crash).
    #[arg(long, env = "AGENTD_FSYNC")]
    pub fsync: Option<bool>,
    /// Seconds in-flight steps get to finish at shutdown.
    #[arg(long, env = "AGENTD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// A browser origin allowed to call /v1 (repeat it, or separate with
    /// commas); replaces the default of every loopback origin. Loopback
    /// origins only: `*`, remote and path-bearing entries are refused.
    #[arg(
        long = "http-cors-allow-origin",
        env = "AGENTD_HTTP_CORS_ALLOW_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub http_cors_allow_origins: Vec<String>,
    /// A browser origin allowed on the chat surface (/api/chat, /api/info,
    /// /ws/chat), or `*` for any; repeatable or comma-separated.
    #[arg(
        long = "chat-cors-allow-origin",
        env = "AGENTD_CHAT_CORS_ALLOW_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub chat_cors_allow_origins: Vec<String>,
}

/// `agentd.toml`.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub worker: WorkerSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub redaction: RedactionSection,
    #[serde(default)]
    pub chat: ChatSection,
    #[serde(default)]
    pub egress: EgressSection,
    #[serde(default)]
    pub sandbox: SandboxSection,
    #[serde(default)]
    pub models: IndexMap<String, ModelSpec>,
    #[serde(default)]
    pub agents: IndexMap<String, AgentSpec>,
    /// `[mcp.NAME]`: MCP servers agents may list as `mcp:NAME`.
    #[serde(default)]
    pub mcp: IndexMap<String, McpServerSpec>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub fsync: Option<bool>,
    pub shutdown_grace_secs: Option<u64>,
    /// `/v1`'s exact origin list; absent means every loopback origin.
    pub cors_allow_origins: Option<Vec<String>>,
    /// The chat surface's origin list (`*` allowed); absent means loopback.
    pub chat_cors_allow_origins: Option<Vec<String>>,
}

/// Worker tuning; the defaults suit one node.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub max_concurrent_runs: Option<usize>,
    pub lease_ms: Option<i64>,
    pub heartbeat_ms: Option<u64>,
    pub poll_ms: Option<u64>,
}

/// `[auth]`: how callers are identified and throttled.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `[auth.jwt]`: accept user JWTs; absent means none are accepted.
    #[serde(default)]
    pub jwt: Option<JwtSettings>,
    /// Addresses or CIDR blocks whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Failed authentications one address may make per window before 429.
    pub max_failures: Option<u32>,
    pub failure_window_secs: Option<u64>,
}

/// `[egress]`: what the operator opens to tools beyond agents' host lists.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// Private, loopback or link-local blocks tools may reach (`10.1.0.0/16`).
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Ports tools may connect to; empty means 80 and 443.
    #[serde(default)]
    pub allowed_ports: Vec<u16>,
}

/// `[sandbox]`: code execution (DESIGN §6, docs/sandbox.md).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// The ceiling of hosts an API-created sandbox's `allow_list` may name
    /// (`api.example.com`, `*.example.com`); empty: none. `run_code` uses
    /// its agent's `egress` list instead.
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// Sandboxes running at once in this process.
    pub max_running: Option<usize>,
    /// `[sandbox.defaults]`: the limits a request that omits one gets.
    #[serde(default)]
    pub defaults: agentd_sandbox::LimitsRequest,
    /// `[sandbox.maximums]`: the most a request may ask; above is a 400
    /// naming the field.
    #[serde(default)]
    pub maximums: agentd_sandbox::LimitsRequest,
}

/// `[chat]`: the chat surface of seed 002.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ChatSection {
    /// Serve `/api/chat` and `/ws/chat` without a credential.
    pub public: Option<bool>,
    /// The variable holding the secret that signs chat `state` (nodes that
    /// share a store must share it); default: `<data-dir>/chat-secret`.
    pub state_secret_env: Option<String>,
}

/// `[redaction]`: secrets scrubbed from events as they are written.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RedactionSection {
    /// Names of environment variables whose values are secrets. Model keys
    /// (`api_key_env`), the admin token and static keys are always included.
    #[serde(default)]
    pub secret_env: Vec<String>,
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub fsync: bool,
    pub shutdown_grace_secs: u64,
    pub cors: CorsSettings,
    pub worker: WorkerSection,
    pub auth: AuthSection,
    pub redaction: RedactionSection,
    pub chat: ChatSection,
    pub egress: EgressSection,
    pub models: IndexMap<String, ModelSpec>,
    pub agents: IndexMap<String, AgentSpec>,
    pub mcp: IndexMap<String, McpServerSpec>,
    pub sandbox: SandboxSection,
}

const DEFAULT_CONFIG: &str = "agentd.toml";

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let file = load_file(args.config.as_deref())?;
        let addr_text = args
            .addr
            .or(file.server.addr)
            .unwrap_or_else(|| "127.0.0.1:4000".to_owned());
        let addr: SocketAddr = addr_text
            .parse()
            .with_context(|| format!("invalid listen address {addr_text:?}"))?;
        let mut models = file.models;
        if !models.contains_key("default") {
            models.insert("default".into(), default_model());
        }
        let mut agents = file.agents;
        if agents.is_empty() {
            agents.insert("assistant".into(), default_agent());
        }
        Ok(Settings {
            addr,
            data_dir: args
                .data_dir
                .or(file.server.data_dir)
                .unwrap_or_else(|| PathBuf::from(".agentd")),
            database_url: args.database_url.or(file.server.database_url),
            admin_token_file: args.admin_token_file.or(file.server.admin_token_file),
            fsync: args.fsync.or(file.server.fsync).unwrap_or(false),
            shutdown_grace_secs: args
                .shutdown_grace_secs
                .or(file.server.shutdown_grace_secs)
                .unwrap_or(10),
            cors: CorsSettings {
                api: OriginList::pick(
                    args.http_cors_allow_origins,
                    "--http-cors-allow-origin / AGENTD_HTTP_CORS_ALLOW_ORIGINS",
                    file.server.cors_allow_origins,
                    "[server] cors_allow_origins",
                ),
                chat: OriginList::pick(
                    args.chat_cors_allow_origins,
                    "--chat-cors-allow-origin / AGENTD_CHAT_CORS_ALLOW_ORIGINS",
                    file.server.chat_cors_allow_origins,
                    "[server] chat_cors_allow_origins",
                ),
            },
            worker: file.worker,
            auth: file.auth,
            redaction: file.redaction,
            chat: file.chat,
            egress: file.egress,
            models,
            agents,
            mcp: file.mcp,
            sandbox: file.sandbox,
        })
    }
}

/// The two CORS origin lists as configured; `None` is the loopback default.
#[derive(Debug)]
pub struct CorsSettings {
    pub api: Option<OriginList>,
    pub chat: Option<OriginList>,
}

/// An origin list and the setting it came from, so a refusal names both.
#[derive(Debug)]
pub struct OriginList {
    pub entries: Vec<String>,
    pub source: &'static str,
}

impl OriginList {
    /// Flag or variable (clap already prefers the flag) over the file. An
    /// empty flag or variable counts as unset; an empty list in the file is
    /// kept: it is how an operator shuts browsers out entirely.
    fn pick(
        cli: Vec<String>,
        cli_source: &'static str,
        file: Option<Vec<String>>,
        file_source: &'static str,
    ) -> Option<OriginList> {
        let cli: Vec<String> = cli
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if !cli.is_empty() {
            return Some(OriginList {
                entries: cli,
                source: cli_source,
            });
        }
        file.map(|entries| OriginList {
            entries,
            source: file_source,
        })
    }
}

impl CorsSettings {
    /// The policies the server enforces; a bad entry stops startup with the
    /// entry, the setting and the reason.
    pub fn policies(&self) -> anyhow::Result<CorsPolicies> {
        let mut policies = CorsPolicies::default();
        if let Some(list) = &self.api {
            policies.api = CorsPolicy::api(&list.entries)
                .with_context(|| format!("invalid /v1 CORS origin list ({})", list.source))?;
        }
        if let Some(list) = &self.chat {
            policies.chat = CorsPolicy::chat(&list.entries)
                .with_context(|| format!("invalid chat CORS origin list ({})", list.source))?;
        }
        Ok(policies)
    }
}

fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// With nothing configured: the built-in local model (docs/models.md), so
/// agentd works with no key and no network beyond the first download.
fn default_model() -> ModelSpec {
    ModelSpec {
        provider: Provider::Local,
        base_url: None,
        model: agentd_engine::models::local::fetch::DEFAULT_MODEL.into(),
        api_key_env: None,
        max_retries: 2,
        retry_backoff_ms: 500,
        idle_timeout_secs: 120,
        temperature: None,
        thinking_budget_tokens: None,
        model_path: None,
        top_p: None,
        seed: None,
    }
}

fn default_agent() -> AgentSpec {
    toml::from_str(r#"instructions = "You are a helpful assistant.""#)
        .expect("the built-in agent parses")
}

/// Refuses a database URL this build cannot serve.
pub fn check_database_url(url: Option<&str>) -> anyhow::Result<()> {
    match url {
        None => Ok(()),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(()),
        Some(u) => bail!("unsupported database URL {u:?}: expected postgres://…"),
    }
}
