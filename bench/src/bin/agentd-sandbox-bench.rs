//! Sandbox cold start: how long `POST /v1/sandboxes` → result takes for a
//! trivial Python program, beside a bare `python3 -c` measured in the same
//! run (interleaved, so both see the same machine), and whether N sandboxes
//! at once all finish. Prints figures; never fails on time.
//!
//! `agentd-sandbox-bench [--rounds 100] [--concurrent 20] [--bin-dir DIR]`
//! (as root: the sandbox needs namespaces and cgroups).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Sequential samples of each (bare python, sandbox).
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Sandboxes started at once in the concurrency phase.
    #[arg(long, default_value_t = 20)]
    concurrent: usize,
    /// Where `agentd` is (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const TOKEN: &str = "sandbox-bench-admin-token-0123456789";
const PROGRAM: &str = "print(1)";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Daemon {
    child: std::process::Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_daemon(bin: &std::path::Path) -> anyhow::Result<Daemon> {
    let dir = std::env::temp_dir().join(format!("agentd-sandbox-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("agentd.toml"), "[sandbox]\nmax_running = 256\n")?;
    let mut child = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(dir.join("agentd.toml"))
        .env("AGENTD_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("agentd listening on ")
        .context("agentd did not print its address")?
        .to_owned();
    Ok(Daemon { child, url, dir })
}

/// Create → follow the stream to `end` → read the result.
async fn sandbox(http: &reqwest::Client, url: &str, code: &str) -> anyhow::Result<Value> {
    let auth = format!("Bearer {TOKEN}");
    let created: Value = http
        .post(format!("{url}/v1/sandboxes"))
        .header("authorization", &auth)
        .json(&json!({"code": code, "language": "python"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("no id")?;
    // The stream closes after its `end` frame.
    http.get(format!("{url}/v1/sandboxes/{id}/stream"))
        .header("authorization", &auth)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let result: Value = http
        .get(format!("{url}/v1/sandboxes/{id}/result"))
        .header("authorization", &auth)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .to_owned(),
    };
    let daemon = start_daemon(&bin_dir.join("agentd"))?;
    let http = reqwest::Client::new();
    let health: Value = http
        .get(format!("{}/health", daemon.url))
        .send()
        .await?
        .json()
        .await?;
    if health["sandbox"]["healthy"] != true {
        bail!("the sandbox is unavailable here: {}", health["sandbox"]);
    }
    // Warm both paths once.
    sandbox(&http, &daemon.url, PROGRAM).await?;
    let (mut bare, mut boxed) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let t = Instant::now();
        let ok = Command::new("/usr/bin/python3")
            .args(["-c", PROGRAM])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("bare python3 failed");
        }
        bare.push(t.elapsed());
        let t = Instant::now();
        let r = sandbox(&http, &daemon.url, PROGRAM).await?;
        if r["phase"] != "succeeded" || r["stdout"] != "1\n" {
            bail!("sandbox run failed: {r}");
        }
        boxed.push(t.elapsed());
    }
    bare.sort();
    boxed.sort();
    println!(
        "cold start, {} rounds each, interleaved ({PROGRAM:?}):",
        args.rounds
    );
    println!("  {:<28} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    for (name, v) in [
        ("bare python3 -c", &bare),
        ("sandbox create→result", &boxed),
    ] {
        println!(
            "  {name:<28} {:>9.1} {:>9.1}",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99))
        );
    }
    let (b50, s50) = (percentile(&bare, 0.5), percentile(&boxed, 0.5));
    println!(
        "  added p50: {:.1} ms ({:.2}x bare)",
        ms(s50.saturating_sub(b50)),
        s50.as_secs_f64() / b50.as_secs_f64()
    );

    let t = Instant::now();
    let runs = futures::future::join_all((0..args.concurrent).map(|i| {
        let http = http.clone();
        let url = daemon.url.clone();
        async move {
            let code = format!("import agentd\nagentd.result({{'i': {i}}})");
            sandbox(&http, &url, &code).await
        }
    }))
    .await;
    let ok = runs
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            r.as_ref()
                .is_ok_and(|r| r["phase"] == "succeeded" && r["result"]["i"] == *i)
        })
        .count();
    println!(
        "{} sandboxes at once: {ok} succeeded, {} failed, all done in {:.0} ms",
        args.concurrent,
        args.concurrent - ok,
        ms(t.elapsed())
    );
    for r in runs.iter().filter_map(|r| r.as_ref().err()) {
        println!("  error: {r:#}");
    }
    Ok(())
}
