//! Child processes (the fake upstream and `agentd serve`) and what /proc says
//! about them. Everything is read from /proc or done with stock tools (`kill`,
//! `taskset`, `prlimit`, `getconf`) so the bench needs no libc bindings.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long a child gets to print its "listening" line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary built next to this one (`cargo build --release -p …` puts them all
/// in the same target directory, wherever CARGO_TARGET_DIR points).
pub fn sibling_bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it first: cargo build --release -p {name}",
            path.display()
        );
    }
    Ok(path)
}

pub fn has_tool(name: &str) -> bool {
    std::process::Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Waits for the line starting with `prefix` on a child's stdout and returns
/// the rest of it, then keeps draining stdout in the background so the child
/// never blocks (or dies of SIGPIPE) writing to a pipe nobody reads.
async fn await_line(stdout: ChildStdout, prefix: &str) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(Some(rest.trim().to_owned()));
            }
        }
        Ok::<_, std::io::Error>(None)
    })
    .await
    .with_context(|| format!("no {prefix:?} line within {READY_TIMEOUT:?}"))??;
    let Some(rest) = found else {
        bail!("the process exited before printing {prefix:?}");
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(rest)
}

/// Spawns `fake-upstream`, pinned to CPU 1 with `taskset` when available so
/// the model's own cost stays off the core agentd is most likely to use.
/// Returns the child, its base URL (`http://…/v1`) and whether it is pinned.
pub async fn spawn_fake(
    bin: &Path,
    tokens: usize,
    delay_ms: u64,
    pin: bool,
) -> anyhow::Result<(Child, String)> {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("1").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(["--addr", "127.0.0.1:0", "--tokens"])
        .arg(tokens.to_string())
        .arg("--delay-ms")
        .arg(delay_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("fake stdout")?;
    let url = await_line(stdout, "fake-upstream listening on ").await?;
    Ok((child, url))
}

/// Spawns `agentd serve` against `data_dir` (which must hold `agentd.toml`)
/// and returns it with the time from spawn to its "listening" line — the
/// startup cost a user sees, fresh SQLite migrations included. Its log goes to
/// `data_dir/agentd.log` so warnings can be reported after the run.
pub async fn spawn_agentd(
    bin: &Path,
    data_dir: &Path,
    token: &str,
) -> anyhow::Result<(Child, String, Duration)> {
    let log = std::fs::File::create(data_dir.join("agentd.log")).context("agentd.log")?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("serve")
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .arg("--config")
        .arg(data_dir.join("agentd.toml"))
        .env("AGENTD_ADMIN_TOKEN", token)
        // Plain log lines, so the WARN/ERROR scan at the end can match them.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("agentd stdout")?;
    let url = await_line(stdout, "agentd listening on ")
        .await
        .with_context(|| format!("agentd did not start; see {}", log_tail(data_dir)))?;
    Ok((child, url, started.elapsed()))
}

/// The last lines of agentd's log, for setup-failure messages.
pub fn log_tail(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("agentd.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "log tail:\n{}",
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

/// SIGTERM (agentd drains in-flight runs on it), then up to `grace` to exit,
/// then SIGKILL. Returns how long the graceful stop took, if it happened.
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<Duration> {
    let pid = child.id()?;
    let started = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// Resident set size in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Name and utime + stime from a /proc stat line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    // The name (field 2) is in parentheses and may hold spaces or ")".
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut fields = stat.get(close + 2..)?.split_whitespace();
    // After ")" come state(3) … utime(14), stime(15): indices 11 and 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((stat[open + 1..close].to_owned(), utime + stime))
}

/// utime + stime of the whole process (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, t)| t)
}

/// Clock ticks per second for /proc/PID/stat (100 on every common Linux).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Samples a process's RSS every 100 ms and keeps the peak: VmHWM would give
/// the all-time peak, but we want the peak of each phase.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
            }
        });
        RssSampler { peak, task }
    }

    /// Stops sampling; returns the peak in KiB.
    pub fn stop(self, pid: u32) -> u64 {
        self.task.abort();
        let last = rss_kib(pid).unwrap_or(0);
        self.peak.load(Ordering::Relaxed).max(last)
    }
}

/// Raises this process's soft open-files limit to the hard one with
/// `prlimit` (children inherit it): 1000 streaming clients need ~3000
/// descriptors here and as many in agentd. Returns the resulting soft limit.
pub fn raise_nofile() -> Option<u64> {
    let read = || -> Option<(u64, Option<u64>)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line["Max open files".len()..].split_whitespace();
        let soft = f.next()?.parse().ok()?;
        let hard = f.next()?.parse().ok(); // "unlimited" → None
        Some((soft, hard))
    };
    let (soft, hard) = read()?;
    let target = hard.unwrap_or(1 << 20);
    if soft < target {
        let _ = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!(
                "--nofile={target}:{}",
                hard.map_or("unlimited".into(), |h| h.to_string())
            ))
            .stderr(Stdio::null())
            .status();
    }
    read().map(|(soft, _)| soft)
}

/// agentd's own complaints during the bench: WARN/ERROR log lines grouped by
/// level, target and message (the `key=value` fields after it vary per run),
/// with the first line of each group and when the group ended.
pub fn report_log(dir: &Path) {
    let text = std::fs::read_to_string(dir.join("agentd.log")).unwrap_or_default();
    // (key, count, first line, last timestamp)
    let mut groups: Vec<(String, u64, String, String)> = Vec::new();
    for line in text.lines() {
        let Some(pos) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
            continue;
        };
        let key = line[pos..]
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect::<Vec<_>>()
            .join(" ");
        let ts = line.split_whitespace().next().unwrap_or("").to_owned();
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => {
                g.1 += 1;
                g.3 = ts;
            }
            None => groups.push((key, 1, line.to_owned(), ts)),
        }
    }
    if groups.is_empty() {
        println!("agentd log: no WARN or ERROR lines");
        return;
    }
    let total: u64 = groups.iter().map(|g| g.1).sum();
    println!("agentd log: {total} WARN/ERROR lines:");
    for (key, n, first, last) in groups.iter().take(10) {
        let first: String = first.chars().take(240).collect();
        println!("  x{n}: {key} (last at {last})\n      first: {first}");
    }
}

/// `(id, name, ticks)` of every numeric entry of `dir`: the threads of a
/// process with `/proc/PID/task`, or every process with `/proc`.
pub fn ticks_in(dir: &str) -> Vec<(u32, String, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (name, ticks) = parse_stat(&stat)?;
            Some((id, name, ticks))
        })
        .collect()
}

/// The busiest threads or processes between two [`ticks_in`] snapshots, as
/// "name/id NN%" (100% = one core), leaving out `skip`. For agentd's threads
/// it shows a single-thread bottleneck the process total hides; for the whole
/// machine, who else competed with the bench.
pub fn busiest(
    before: &[(u32, String, u64)],
    after: &[(u32, String, u64)],
    skip: &[u32],
    tck: f64,
    secs: f64,
) -> String {
    let mut used: Vec<(u64, String)> = after
        .iter()
        .filter(|(id, _, _)| !skip.contains(id))
        .map(|(tid, name, t)| {
            let b = before.iter().find(|x| x.0 == *tid).map_or(0, |x| x.2);
            (t.saturating_sub(b), format!("{name}/{tid}"))
        })
        .filter(|(d, _)| *d > 0)
        .collect();
    used.sort_unstable_by_key(|u| std::cmp::Reverse(u.0));
    used.iter()
        .take(5)
        .map(|(d, n)| format!("{n} {:.0}%", 100.0 * *d as f64 / tck / secs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU time the machine spent running processes (user, nice and system in
/// the first line of /proc/stat), in clock ticks: minus our three processes,
/// it shows whether something else (a build, say) competed with the bench.
/// Interrupt and softirq time are left out: loopback networking lands there
/// and belongs to the bench's own traffic.
pub fn system_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some(v.iter().sum())
}
