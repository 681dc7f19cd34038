//! `agentd`: the command line. `serve` runs the daemon; `keys` manages API
//! keys through a running one.

mod config;
mod keys_cli;
mod models_cli;
mod sandbox;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentd",
    version,
    about = "A self-hosted runtime for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: HTTP API, workers and store.
    Serve(config::ServeArgs),
    /// Create, list and revoke API keys on a running daemon.
    Keys(keys_cli::KeysArgs),
    /// Fetch the built-in local models ahead of time.
    Models(models_cli::ModelsArgs),
}

fn main() -> anyhow::Result<()> {
    // The sandbox helper: before anything else starts (no runtime, no threads).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == agentd_sandbox::INIT_SUBCOMMAND)
    {
        agentd_sandbox::init_main();
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::serve(args)),
        Command::Keys(args) => runtime.block_on(keys_cli::run(args)),
        Command::Models(args) => runtime.block_on(models_cli::run(args)),
    }
}
