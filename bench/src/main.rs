//! `agentd-bench`: measures what agentd adds on top of its model. It starts a
//! fake OpenAI-style upstream and a real `agentd serve` as separate processes,
//! then at each concurrency level drives the fake directly (the floor) and
//! through agentd (runs followed over SSE), and prints throughput, added
//! time-to-first-token, errors, agentd CPU per run and agentd RSS.

mod load;
mod procs;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;

use load::{Agentd, PhaseResult};
use stats::{diff, fmt_opt};

#[derive(Parser)]
#[command(about = "Load generator: agentd beside its fake upstream measured directly")]
struct Args {
    /// Seconds each phase (floor, agentd) runs at each level.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Concurrent clients per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,500,1000")]
    concurrency: Vec<usize>,
    /// Content chunks per fake answer.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Pause before each fake chunk, in milliseconds.
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Where `agentd` and `fake-upstream` are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Serve the fake inside this process instead of as its own process (it
    /// then competes with the clients for CPU; use only if the binary is missing).
    #[arg(long)]
    in_process_fake: bool,
    /// Don't pin the fake upstream to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// A turn taking longer than this counts as a "timeout" error.
    #[arg(long, default_value_t = 60)]
    turn_timeout_secs: u64,
    /// Keep agentd's data dir (database and agentd.log) instead of removing it.
    #[arg(long)]
    keep_data: bool,
    /// What a turn through agentd is: a run (`POST /v1/runs` + its event
    /// stream) or a chat turn (`POST /api/chat`, streaming).
    #[arg(long, value_enum, default_value_t = Surface::Runs)]
    surface: Surface,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Surface {
    Runs,
    Chat,
}

/// Removes the temporary data dir however the bench ends.
struct DataDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One phase's row.
struct Row {
    runs_per_s: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
    cpu_ms_per_run: Option<f64>,
    peak_rss_mb: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentd-bench: setup failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) || args.secs == 0 {
        bail!("--concurrency needs positive levels and --secs a positive duration");
    }
    let max_c = *args.concurrency.iter().max().unwrap_or(&1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match procs::raise_nofile() {
        // Floor + agentd phases keep ~3 sockets per client here, agentd as many.
        Some(n) if n < (4 * max_c + 256) as u64 => println!(
            "WARNING: open files limit is {n}; {max_c} clients need ~{}: run under `ulimit -n 65536`",
            4 * max_c + 256
        ),
        Some(n) => println!("open files limit: {n}"),
        None => println!("WARNING: cannot read the open files limit"),
    }
    let bin_dir = match args.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let agentd_bin = procs::sibling_bin(&bin_dir, "agentd")?;
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();

    // The fake upstream.
    let mut fake_child = None;
    let mut pinned = false;
    let (fake_url, fake_pid) = if args.in_process_fake {
        let fake = fake_upstream::FakeUpstream::start_on("127.0.0.1:0".parse()?, false).await;
        fake.behavior().set_tokens(args.tokens);
        fake.behavior()
            .set_delay(Duration::from_millis(args.delay_ms));
        println!("fake upstream: {} (in this process)", fake.base_url());
        (fake.base_url(), None)
    } else {
        let bin = procs::sibling_bin(&bin_dir, "fake-upstream")?;
        let pin = !args.no_pin && cpus > 1 && procs::has_tool("taskset");
        let (child, url) = procs::spawn_fake(&bin, args.tokens, args.delay_ms, pin).await?;
        let pid = child.id().context("fake pid")?;
        pinned = pin;
        let how = if pin {
            "pinned to CPU 1 with taskset -c 1"
        } else {
            "not pinned"
        };
        println!("fake upstream: {url} (pid {pid}, {how})");
        fake_child = Some(child);
        (url, Some(pid))
    };
    println!(
        "fake answers: {} tokens, {} ms before each; {} s per phase; {cpus} CPUs",
        args.tokens, args.delay_ms, args.secs
    );

    // agentd in a fresh data dir.
    let dir = DataDir {
        path: std::env::temp_dir().join(format!("agentd-bench-{}-{nonce}", std::process::id())),
        keep: args.keep_data,
    };
    std::fs::create_dir_all(&dir.path)?;
    std::fs::write(
        dir.path.join("agentd.toml"),
        format!(
            "[models.default]\nprovider = \"openai\"\nbase_url = \"{fake_url}\"\nmodel = \"fake\"\nmax_retries = 0\n"
        ),
    )?;
    let token = format!("bench-admin-token-{nonce:032x}");
    let (mut agentd, agentd_url, ready) =
        procs::spawn_agentd(&agentd_bin, &dir.path, &token).await?;
    let pid = agentd.id().context("agentd pid")?;
    println!(
        "agentd: {agentd_url} (pid {pid}), ready in {} ms",
        ready.as_millis()
    );
    // Let startup work (migrations, first allocations) settle before "idle".
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_mb = procs::rss_kib(pid).context("agentd RSS")? as f64 / 1024.0;
    println!("agentd idle RSS: {idle_rss_mb:.1} MB");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let floor_url: Arc<str> = format!("{fake_url}/chat/completions").into();
    let target = Arc::new(Agentd {
        base: agentd_url,
        auth: format!("Bearer {token}"),
        nonce,
        chat: args.surface == Surface::Chat,
    });
    // One turn of each first: a setup problem (wrong config, refused auth)
    // should fail loudly here, not show up as a wall of errors in the table.
    let smoke = load::floor_turn(client.clone(), floor_url.clone());
    match tokio::time::timeout(Duration::from_secs(30), smoke).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!(
            "smoke turn against the fake failed: {} {}",
            e.kind,
            e.detail
        ),
        Err(_) => bail!("smoke turn against the fake timed out"),
    }
    let smoke = load::agentd_turn(
        client.clone(),
        target.clone(),
        format!("bench-smoke-{nonce}"),
    );
    match tokio::time::timeout(Duration::from_secs(30), smoke).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!(
            "smoke run through agentd failed: {} {}\n{}",
            e.kind,
            e.detail,
            procs::log_tail(&dir.path)
        ),
        Err(_) => bail!(
            "smoke run through agentd timed out\n{}",
            procs::log_tail(&dir.path)
        ),
    }

    let tck = procs::clk_tck() as f64;
    let turn_timeout = Duration::from_secs(args.turn_timeout_secs);
    let pids = Pids {
        agentd: pid,
        fake: fake_pid,
    };
    println!(
        "\n{:<7} {:>5} {:>8} {:>9} {:>9} {:>7} {:>8} {:>9}   cpu% agentd/fake/bench/other",
        "phase", "conc", "runs/s", "ttft p50", "ttft p99", "errors", "cpu/run", "peak RSS"
    );
    println!(
        "{:<7} {:>5} {:>8} {:>9} {:>9} {:>7} {:>8} {:>9}",
        "", "", "", "ms", "ms", "", "ms", "MB"
    );
    let secs = args.secs;
    let mut levels = Vec::new();
    for &c in &args.concurrency {
        let (client2, url) = (client.clone(), floor_url.clone());
        let floor = measure("floor", c, tck, pids, async move {
            load::run_phase(c, secs, turn_timeout, move |_, _| {
                load::floor_turn(client2.clone(), url.clone())
            })
            .await
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (client2, t) = (client.clone(), target.clone());
        let through = measure("agentd", c, tck, pids, async move {
            load::run_phase(c, secs, turn_timeout, move |w, n| {
                let key = format!("bench-{c}-{w}-{n}-{}", t.nonce);
                load::agentd_turn(client2.clone(), t.clone(), key)
            })
            .await
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        levels.push((c, floor, through));
    }

    let stopped = procs::terminate(&mut agentd, Duration::from_secs(20)).await;
    if let Some(mut f) = fake_child {
        let _ = f.kill().await;
    }

    println!(
        "\n== summary: {} tokens x {} ms, {} s per phase, {cpus} CPUs{}",
        args.tokens,
        args.delay_ms,
        args.secs,
        if pinned { ", fake pinned to CPU 1" } else { "" }
    );
    println!(
        "agentd ready in {} ms; idle RSS {idle_rss_mb:.1} MB; stopped {}",
        ready.as_millis(),
        match stopped {
            Some(d) => format!("{} ms after SIGTERM", d.as_millis()),
            None => "only by SIGKILL (no exit within 20 s of SIGTERM)".to_owned(),
        }
    );
    println!(
        "{:>5} {:>12} {:>13} {:>7} {:>13} {:>13} {:>7} {:>11} {:>12}",
        "conc",
        "floor runs/s",
        "agentd runs/s",
        "ratio%",
        "+ttft p50 ms",
        "+ttft p99 ms",
        "errors",
        "cpu ms/run",
        "peak RSS MB"
    );
    for (c, f, a) in &levels {
        let ratio = (f.runs_per_s > 0.0).then(|| 100.0 * a.runs_per_s / f.runs_per_s);
        println!(
            "{c:>5} {:>12.1} {:>13.1} {:>7} {:>13} {:>13} {:>7} {:>11} {:>12.1}",
            f.runs_per_s,
            a.runs_per_s,
            fmt_opt(ratio, 1),
            fmt_opt(diff(a.p50, f.p50), 1),
            fmt_opt(diff(a.p99, f.p99), 1),
            a.errors + f.errors,
            fmt_opt(a.cpu_ms_per_run, 2),
            a.peak_rss_mb,
        );
    }
    procs::report_log(&dir.path);
    Ok(())
}

#[derive(Clone, Copy)]
struct Pids {
    agentd: u32,
    fake: Option<u32>,
}

/// Runs one phase while recording CPU of every process and agentd's peak
/// RSS, prints its row (and any errors), and returns it.
async fn measure(
    name: &str,
    c: usize,
    tck: f64,
    pids: Pids,
    phase: impl Future<Output = PhaseResult>,
) -> Row {
    let me = std::process::id();
    let ticks = |p: Option<u32>| p.and_then(procs::cpu_ticks);
    let snapshot = || {
        [
            ticks(Some(pids.agentd)),
            ticks(pids.fake),
            ticks(Some(me)),
            procs::system_busy_ticks(),
        ]
    };
    let before = snapshot();
    let agentd_task = format!("/proc/{}/task", pids.agentd);
    let threads_before = procs::ticks_in(&agentd_task);
    let procs_before = procs::ticks_in("/proc");
    let sampler = procs::RssSampler::start(pids.agentd);
    let mut r = phase.await;
    let peak_kib = sampler.stop(pids.agentd);
    let after = snapshot();
    let threads_after = procs::ticks_in(&agentd_task);
    let procs_after = procs::ticks_in("/proc");
    let secs = r.elapsed.as_secs_f64();
    let mut used: Vec<Option<f64>> = (0..4)
        .map(|i| Some((after[i]?.saturating_sub(before[i]?)) as f64 / tck))
        .collect();
    // "Other" is the machine's busy time minus ours (the fake counts as 0
    // when it runs inside the bench).
    used[3] = used[3].map(|all| (all - (0..3).filter_map(|i| used[i]).sum::<f64>()).max(0.0));
    let pct = |i: usize| used[i].map(|s| 100.0 * s / secs);
    // CPU per run only means something when the runs went through agentd.
    let cpu_ms_per_run = (name == "agentd" && r.ok > 0)
        .then(|| used[0].map(|s| 1000.0 * s / r.ok as f64))
        .flatten();
    let row = Row {
        runs_per_s: r.runs_per_s,
        p50: r.ttft.percentile_ms(50.0),
        p99: r.ttft.percentile_ms(99.0),
        errors: r.errors.total(),
        cpu_ms_per_run,
        peak_rss_mb: peak_kib as f64 / 1024.0,
    };
    println!(
        "{name:<7} {c:>5} {:>8.1} {:>9} {:>9} {:>7} {:>8} {:>9.1}   {}/{}/{}/{}   ({} ok, {:.1} s with drain)",
        row.runs_per_s,
        fmt_opt(row.p50, 1),
        fmt_opt(row.p99, 1),
        row.errors,
        fmt_opt(row.cpu_ms_per_run, 2),
        row.peak_rss_mb,
        fmt_opt(pct(0), 0),
        fmt_opt(pct(1), 0),
        fmt_opt(pct(2), 0),
        fmt_opt(pct(3), 0),
        r.ok,
        secs,
    );
    if let Some(other) = pct(3).filter(|p| *p > 25.0) {
        println!(
            "        WARNING: other processes used {other:.0}% CPU during this phase; its figures are disturbed"
        );
        let ours = [Some(pids.agentd), pids.fake, Some(me)];
        let ours: Vec<u32> = ours.into_iter().flatten().collect();
        let others = procs::busiest(&procs_before, &procs_after, &ours, tck, secs);
        println!("        busiest others: {others}");
    }
    if name == "agentd" {
        let busiest = procs::busiest(&threads_before, &threads_after, &[], tck, secs);
        println!("        agentd threads: {busiest}");
    }
    for (kind, n, detail) in r.errors.iter() {
        let detail: String = detail.chars().take(300).collect();
        println!("        error x{n}: {kind}: {detail}");
    }
    row
}
