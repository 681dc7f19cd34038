//! `agentd keys create|list|revoke`: key management for operators, through a
//! running daemon's API with the admin token (the daemon owns the store, so
//! the CLI never opens it behind its back).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    /// The daemon's base URL.
    #[arg(
        long,
        env = "AGENTD_URL",
        default_value = "http://127.0.0.1:4000",
        global = true
    )]
    url: String,
    /// A file holding the admin token (else AGENTD_ADMIN_TOKEN, else
    /// `<data-dir>/admin-token`).
    #[arg(long, env = "AGENTD_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<PathBuf>,
    /// Where a generated admin token is found.
    #[arg(
        long,
        env = "AGENTD_DATA_DIR",
        default_value = ".agentd",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Mint a key; prints it (with its secret, shown this once) as JSON.
    Create {
        #[arg(long)]
        name: String,
        /// The tenant (`customer_id`) the key acts on.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Comma-separated scopes, e.g. `runs:read,runs:write`.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Revoke a key at once; its open streams close.
    Revoke {
        key_id: String,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let token = admin_token(&args)?;
    let http = reqwest::Client::new();
    let base = args.url.trim_end_matches('/');
    let send = |method: reqwest::Method, path: String, tenant: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(&token)
            .header("x-agentd-tenant", tenant)
    };
    let (request, tenant) = match &args.command {
        KeysCommand::Create {
            name,
            tenant,
            scopes,
            expires_at,
        } => {
            let mut body = json!({"name": name, "customer_id": tenant, "scopes": scopes});
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            (
                send(reqwest::Method::POST, "/v1/api-keys".into(), tenant).json(&body),
                tenant,
            )
        }
        KeysCommand::List { tenant } => (
            send(
                reqwest::Method::GET,
                "/v1/api-keys?limit=100".into(),
                tenant,
            ),
            tenant,
        ),
        KeysCommand::Revoke { key_id, tenant } => (
            send(
                reqwest::Method::DELETE,
                format!("/v1/api-keys/{key_id}"),
                tenant,
            ),
            tenant,
        ),
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach agentd at {base}; is it running?"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("agentd answered {status}: {text}");
    }
    let out = match &args.command {
        KeysCommand::Revoke { key_id, .. } => json!({"revoked": key_id, "customer_id": tenant}),
        _ => serde_json::from_str::<Value>(&text).context("agentd sent invalid JSON")?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn admin_token(args: &KeysArgs) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("AGENTD_ADMIN_TOKEN") {
        return Ok(t.trim().to_owned());
    }
    let path = args
        .admin_token_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin-token"));
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no admin token: set AGENTD_ADMIN_TOKEN or --admin-token-file (tried {})",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}
