//! `agentd serve`: open the store, start the workers, serve HTTP, and stop
//! cleanly on SIGTERM / Ctrl-C.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_engine::tools::OperatorEgress;
use agentd_engine::{AgentCatalog, Engine, EngineConfig, Scrubber, ToolRegistry};
use agentd_server::jwt::JwtVerifier;
use agentd_server::{
    AdminToken, AppState, AuthConfig, ChatConfig, ChatStateKey, FailureLimit, ServerConfig,
    StaticKeys, TrustedProxies,
};
use agentd_store::Store;
use agentd_store::postgres::{PgConfig, PgStore};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use rand::RngCore;

use crate::config::{ServeArgs, Settings, check_database_url};

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::resolve(args)?;
    check_database_url(settings.database_url.as_deref())?;
    let cors = settings.cors.policies()?;
    // Before the store opens: a bad section or an unreachable JWKS fails fast.
    let jwt = match &settings.auth.jwt {
        Some(s) => Some(Arc::new(
            JwtVerifier::new(s).await.context("cannot use [auth.jwt]")?,
        )),
        None => None,
    };
    // MCP tables are checked here; servers start when a run first needs them.
    let egress = OperatorEgress {
        allow_cidrs: settings
            .egress
            .allow_cidrs
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, _>>()
            .context("invalid [egress] allow_cidrs")?,
        allowed_ports: settings.egress.allowed_ports.clone(),
    };
    let tools = Arc::new(ToolRegistry::new(egress.clone(), settings.mcp.clone())?);
    let mcp_servers: Vec<&str> = tools.mcp_servers().collect();
    let catalog = AgentCatalog::new(&settings.models, &settings.agents, &mcp_servers)?;
    for agent in catalog.iter() {
        tools
            .validate(agent)
            .with_context(|| format!("agent {:?}", agent.name))?;
    }
    for agent in catalog.iter() {
        if let Some(var) = agent.model.api_key_env.as_deref()
            && std::env::var_os(var).is_none()
        {
            tracing::warn!(agent = %agent.name, variable = var, "the agent's model key is not set; its runs will fail until it is");
        }
    }
    let (admin, admin_secret) = admin_token(&settings)?;
    let static_keys: Vec<String> = std::env::var("AGENTD_API_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    let auth = AuthConfig {
        admin_token: admin,
        static_keys: StaticKeys::new(static_keys.iter().map(String::as_str)),
        trusted_proxies: TrustedProxies::parse(
            settings.auth.trusted_proxies.iter().map(String::as_str),
        )?,
        failure_limit: failure_limit(&settings),
    };
    let scrubber = Arc::new(Scrubber::new(secrets_to_scrub(
        &settings,
        &catalog,
        admin_secret,
        static_keys,
    )));

    let (store, store_kind): (Arc<dyn Store>, &'static str) = match &settings.database_url {
        Some(url) => {
            let store = PgStore::open(&PgConfig::new(url.clone())).await?;
            tracing::info!(schema = store.schema(), "using the PostgreSQL store");
            (Arc::new(store), "postgres")
        }
        None => {
            let store = SqliteStore::open(&SqliteConfig {
                data_dir: settings.data_dir.clone(),
                fsync: settings.fsync,
            })
            .await?;
            (Arc::new(store), "sqlite")
        }
    };
    let sandboxes = crate::sandbox::start(&settings, store.clone(), &egress)?;
    tools.set_sandbox(sandboxes.service.clone());

    let mut engine_config = EngineConfig::new(agentd_core::new_id("wkr"));
    let w = &settings.worker;
    engine_config.max_concurrent_runs = w
        .max_concurrent_runs
        .unwrap_or(engine_config.max_concurrent_runs);
    engine_config.lease_ms = w.lease_ms.unwrap_or(engine_config.lease_ms);
    engine_config.heartbeat_ms = w.heartbeat_ms.unwrap_or(engine_config.heartbeat_ms);
    engine_config.poll_ms = w.poll_ms.unwrap_or(engine_config.poll_ms);
    engine_config.scrubber = scrubber.clone();
    engine_config.tools = tools;
    // In the background: serve answers while the model downloads and loads.
    engine_config.local_models = crate::models_cli::start_local_models(&catalog);
    let engine = Engine::start(store.clone(), engine_config);

    let state = AppState::new(
        store,
        engine.clone(),
        catalog,
        ServerConfig {
            auth,
            scrubber,
            store_kind,
            cors,
            jwt,
            chat: ChatConfig {
                public: settings.chat.public.unwrap_or(false),
                state_key: chat_state_key(&settings)?,
            },
        },
    );
    state.set_sandboxes(sandboxes);
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find an ephemeral port.
    println!("agentd listening on http://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(addr = %local, ready_ms = started.elapsed().as_millis() as u64, "agentd ready");

    let app = agentd_server::router(state.clone());
    let drain = state.clone();
    let server = tokio::spawn(async move {
        // Small SSE writes must leave at once, not wait on Nagle.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                drain.begin_drain();
            })
            .await
    });
    // The server task ends only after the signal (or on a fatal error).
    shutdown_signal().await;
    tracing::info!("shutting down");
    state.begin_drain();
    engine
        .shutdown(Duration::from_secs(settings.shutdown_grace_secs))
        .await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn failure_limit(settings: &Settings) -> FailureLimit {
    let default = FailureLimit::default();
    FailureLimit {
        max_failures: settings.auth.max_failures.unwrap_or(default.max_failures),
        window: settings
            .auth
            .failure_window_secs
            .map(Duration::from_secs)
            .unwrap_or(default.window),
    }
}

/// Every secret value agentd knows of: scrubbed from events when written.
/// MCP servers' `env` values count: that is where their tokens go.
fn secrets_to_scrub(
    settings: &Settings,
    catalog: &AgentCatalog,
    admin_token: String,
    static_keys: Vec<String>,
) -> Vec<String> {
    let vars = settings
        .redaction
        .secret_env
        .iter()
        .map(String::as_str)
        .chain(
            catalog
                .iter()
                .filter_map(|a| a.model.api_key_env.as_deref()),
        );
    let mcp_env = settings.mcp.values().flat_map(|s| s.env.values().cloned());
    vars.filter_map(|v| std::env::var(v).ok())
        .chain([admin_token])
        .chain(static_keys)
        .chain(mcp_env)
        .collect()
}

/// `AGENTD_ADMIN_TOKEN`, else `--admin-token-file`, else — on a loopback bind
/// only — a token generated once into `<data-dir>/admin-token` (0600).
/// Returns the token's verifier and the token itself (to scrub).
fn admin_token(settings: &Settings) -> anyhow::Result<(AdminToken, String)> {
    let token = admin_token_text(settings)?;
    Ok((AdminToken::new(&token), token))
}

fn admin_token_text(settings: &Settings) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("AGENTD_ADMIN_TOKEN") {
        if token.trim().len() < 16 {
            bail!("AGENTD_ADMIN_TOKEN must be at least 16 characters");
        }
        return Ok(token.trim().to_owned());
    }
    if let Some(path) = &settings.admin_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read admin token file {}", path.display()))?;
        if token.trim().len() < 16 {
            bail!(
                "the admin token in {} must be at least 16 characters",
                path.display()
            );
        }
        return Ok(token.trim().to_owned());
    }
    if !settings.addr.ip().is_loopback() {
        bail!(
            "refusing to listen on non-loopback {} without an admin token: set AGENTD_ADMIN_TOKEN or --admin-token-file",
            settings.addr
        );
    }
    let path = settings.data_dir.join("admin-token");
    let token = read_or_generate(&path, "agentd_admin_")?;
    eprintln!(
        "admin token: {} (use it as `Authorization: Bearer <token>`)",
        path.display()
    );
    Ok(token)
}

/// The key that signs chat `state`: from the variable `[chat]
/// state_secret_env` names (share it between nodes), else generated once
/// into `<data-dir>/chat-secret`.
fn chat_state_key(settings: &Settings) -> anyhow::Result<ChatStateKey> {
    use sha2::{Digest, Sha256};
    let secret = match &settings.chat.state_secret_env {
        Some(var) => {
            let v = std::env::var(var).with_context(|| {
                format!("[chat] state_secret_env names {var}, which is not set")
            })?;
            if v.len() < 32 {
                bail!("{var} must hold at least 32 characters");
            }
            v
        }
        None => read_or_generate(&settings.data_dir.join("chat-secret"), "agentd_chat_")?,
    };
    Ok(ChatStateKey::new(Sha256::digest(secret.as_bytes()).into()))
}

fn read_or_generate(path: &Path, prefix: &str) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && existing.trim().len() >= 16
    {
        return Ok(existing.trim().to_owned());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("{prefix}{}", hex::encode(bytes));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}
