//! The daemon's side of one execution: make the cgroup, start the helper
//! (`agentd __sandbox-init`) with its descriptors, feed it the config, then
//! watch: output bytes, CPU, pids, OOM and the wall clock, killing the whole
//! group with a reason when a limit is crossed. Returns what happened.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::cgroup::{CgroupLimits, CgroupParent, Usage};
use crate::egress::{EgressDecision, EgressPolicy};
use crate::init::{InitConfig, Status};
use crate::spare::{Prepared, SpareSlot};
use crate::spec::{Language, Limits};

/// Largest result accepted from inside; more is refused as invalid.
pub const MAX_RESULT_BYTES: usize = 1 << 20;
/// How often the cgroup counters are read.
const POLL: Duration = Duration::from_millis(20);
/// The loopback port the proxy listens on inside an allow-list sandbox.
pub const PROXY_PORT: u16 = 3128;

/// Why the daemon killed a sandbox (DESIGN §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    CpuExceeded,
    MemoryExceeded,
    WallClockExceeded,
    PidsExceeded,
    OutputExceeded,
    /// Torn down (DELETE) while running.
    TornDown,
    /// The daemon stopped while it ran (the workload died with it); set on
    /// the stored record when the next start finds it unfinished.
    DaemonRestarted,
}

impl KillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::CpuExceeded => "cpu_exceeded",
            KillReason::MemoryExceeded => "memory_exceeded",
            KillReason::WallClockExceeded => "wall_clock_exceeded",
            KillReason::PidsExceeded => "pids_exceeded",
            KillReason::OutputExceeded => "output_exceeded",
            KillReason::TornDown => "torn_down",
            KillReason::DaemonRestarted => "daemon_restarted",
        }
    }
}

/// Which of the workload's streams a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Told of progress while a sandbox runs (frames and audit live here).
pub trait Observer: Send + Sync + 'static {
    /// The interpreter was exec'd inside the sandbox.
    fn started(&self);
    /// A chunk of output, already cut to the output cap.
    fn output(&self, stream: Stream, data: &[u8]);
    /// The egress proxy allowed or refused a connection.
    fn egress(&self, decision: EgressDecision);
}

/// One execution to perform.
pub struct LaunchSpec {
    /// The cgroup directory name (the sandbox id).
    pub name: String,
    pub language: Language,
    pub code: String,
    pub limits: Limits,
    /// The unprivileged host uid the sandbox's user maps to.
    pub host_uid: u32,
    /// Allow-list egress; `None` is deny_all (an empty netns).
    pub egress: Option<Arc<EgressPolicy>>,
}

/// How an execution ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub kill_reason: Option<KillReason>,
    /// Setup failed before the caller's code ran.
    pub setup_error: Option<String>,
    /// The raw bytes written to the result descriptor (untrusted).
    pub result: Vec<u8>,
    /// More than [`MAX_RESULT_BYTES`] was written.
    pub result_overflow: bool,
    pub usage: Usage,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("starting the sandbox helper: {0}")]
    Spawn(std::io::Error),
}

/// Where the helper binary is and where sandboxes' cgroups go.
#[derive(Clone)]
pub struct Launcher {
    /// The daemon's own executable, re-run as `agentd __sandbox-init`.
    pub exe: PathBuf,
    pub cgroups: CgroupParent,
    /// A helper started ahead of the next request ([`crate::spare`]).
    pub(crate) spare: SpareSlot,
}

impl Launcher {
    pub fn new(exe: PathBuf, cgroups: CgroupParent) -> Launcher {
        Launcher {
            exe,
            cgroups,
            spare: SpareSlot::default(),
        }
    }
}

/// Fired to kill a running sandbox (DELETE, a cancelled run).
pub type Teardown = tokio_util::sync::CancellationToken;

async fn read_chunks<R: AsyncRead + Unpin>(
    mut r: R,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send((stream, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
}

impl Launcher {
    /// Runs one sandbox to its end. `teardown` kills it early.
    pub async fn run(
        &self,
        spec: LaunchSpec,
        observer: Arc<dyn Observer>,
        teardown: Teardown,
    ) -> Result<Outcome, LaunchError> {
        let started = Instant::now();
        let limits = CgroupLimits {
            memory_bytes: spec.limits.memory_mb << 20,
            pids: spec.limits.pids,
        };
        let prepared = match self.spare.take(&limits) {
            Some(p) => p,
            None => Prepared::start(&self.exe, &self.cgroups, &spec.name, &limits).await?,
        };
        self.spare
            .refill(self.exe.clone(), self.cgroups.clone(), limits);
        let Prepared {
            cg,
            mut child,
            result_r,
            status_r,
            ctl,
        } = prepared;
        let cg = Arc::new(cg);
        // Without allow-list egress nothing listens on the control socket.
        let ours = spec.egress.as_ref().map(|_| ctl);
        tracing::debug!(sandbox = %spec.name, us = started.elapsed().as_micros() as u64, "helper ready");
        let config = InitConfig {
            language: spec.language,
            code: spec.code,
            host_uid: spec.host_uid,
            disk_bytes: spec.limits.disk_mb << 20,
            proxy_port: spec.egress.as_ref().map(|_| PROXY_PORT),
        };
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = serde_json::to_vec(&config).unwrap_or_default();
            // A helper that died early shows up in its status; nothing to do here.
            let _ = stdin.write_all(&bytes).await;
        }

        let (tx, mut rx) = mpsc::channel(64);
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_chunks(s, Stream::Stdout, tx.clone())));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_chunks(s, Stream::Stderr, tx.clone())));
        drop(tx);
        let result_task = tokio::spawn(read_result(result_r));
        let (status_tx, mut status_rx) = mpsc::channel(4);
        tokio::spawn(read_status(status_r, status_tx));
        let proxy = match (ours, spec.egress.clone()) {
            (Some(ctl), Some(policy)) => Some(tokio::spawn(crate::egress::proxy::serve(
                ctl,
                policy,
                observer.clone(),
            ))),
            _ => None,
        };

        let mut outcome = Outcome::default();
        let mut written: u64 = 0;
        // Output and the helper's status come through separate pipes and
        // tasks, so the first output can overtake `Started`. Output means the
        // workload runs (the helper reports `Started` before it execs it), so
        // whichever comes first marks the start, once.
        let mut seen_start = false;
        let mark_started = |seen: &mut bool| {
            if !std::mem::replace(seen, true) {
                observer.started();
            }
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(spec.limits.wall_clock_secs);
        let cpu_cap = spec.limits.cpu_secs.saturating_mul(1_000_000_000);
        let mut tick = tokio::time::interval(POLL);
        let mut output_open = true;
        let mut status_open = true;
        // The first reason wins; a pass kills what is there now, and every
        // tick repeats it until the helper is gone.
        let kill = |outcome: &mut Outcome, reason: KillReason| {
            outcome.kill_reason.get_or_insert(reason);
            cg.kill_pass();
        };
        let exit = loop {
            let live = outcome.kill_reason.is_none();
            tokio::select! {
                chunk = rx.recv(), if output_open => match chunk {
                    Some((stream, data)) => {
                        let room = spec.limits.output_bytes.saturating_sub(written);
                        let take = (data.len() as u64).min(room) as usize;
                        written += take as u64;
                        if take > 0 {
                            mark_started(&mut seen_start);
                            observer.output(stream, &data[..take]);
                        }
                        if take < data.len() {
                            kill(&mut outcome, KillReason::OutputExceeded);
                        }
                    }
                    None => output_open = false,
                },
                status = status_rx.recv(), if status_open => match status {
                    Some(Status::Started) => {
                        tracing::debug!(sandbox = %spec.name, us = started.elapsed().as_micros() as u64, "workload started");
                        mark_started(&mut seen_start);
                    }
                    Some(Status::SetupError { message }) => outcome.setup_error = Some(message),
                    Some(Status::Exited { code }) => outcome.exit_code = Some(code),
                    Some(Status::Signaled { signal }) => outcome.signal = Some(signal),
                    None => status_open = false,
                },
                _ = tick.tick() => {
                    if !live {
                        cg.kill_pass();
                        continue;
                    }
                    let usage = cg.usage();
                    if usage.cpu_nanos >= cpu_cap {
                        kill(&mut outcome, KillReason::CpuExceeded);
                    } else if usage.oom_killed {
                        kill(&mut outcome, KillReason::MemoryExceeded);
                    } else if usage.pids_hit {
                        kill(&mut outcome, KillReason::PidsExceeded);
                    }
                }
                _ = tokio::time::sleep_until(deadline), if live => {
                    kill(&mut outcome, KillReason::WallClockExceeded);
                }
                _ = teardown.cancelled(), if live => kill(&mut outcome, KillReason::TornDown),
                status = child.wait() => break status,
            }
        };
        tracing::debug!(sandbox = %spec.name, us = started.elapsed().as_micros() as u64, "helper exited");
        // pid 1 inside is gone, so its namespace is too; sweep stragglers anyway.
        let cg2 = cg.clone();
        let _ = tokio::task::spawn_blocking(move || cg2.kill_all()).await;
        // Drain what the workload wrote before it ended.
        while let Ok(Some((stream, data))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            let room = spec.limits.output_bytes.saturating_sub(written);
            let take = (data.len() as u64).min(room) as usize;
            written += take as u64;
            if take > 0 {
                mark_started(&mut seen_start);
                observer.output(stream, &data[..take]);
            }
            if take < data.len() {
                outcome
                    .kill_reason
                    .get_or_insert(KillReason::OutputExceeded);
            }
        }
        while let Ok(Some(s)) =
            tokio::time::timeout(Duration::from_millis(200), status_rx.recv()).await
        {
            match s {
                Status::Started => mark_started(&mut seen_start),
                Status::SetupError { message } => outcome.setup_error = Some(message),
                Status::Exited { code } => outcome.exit_code = Some(code),
                Status::Signaled { signal } => outcome.signal = Some(signal),
            }
        }
        for t in [out, err].into_iter().flatten() {
            t.abort();
        }
        if let Some(p) = proxy {
            p.abort();
        }
        if outcome.exit_code.is_none() && outcome.signal.is_none() && outcome.setup_error.is_none()
        {
            // The helper itself was killed (teardown, a limit): report its status.
            if let Ok(s) = exit {
                use std::os::unix::process::ExitStatusExt;
                outcome.exit_code = s.code();
                outcome.signal = s.signal();
            }
        }
        if let Ok(Ok((bytes, overflow))) =
            tokio::time::timeout(Duration::from_millis(500), result_task).await
        {
            outcome.result = bytes;
            outcome.result_overflow = overflow;
        }
        outcome.usage = cg.usage();
        if outcome.kill_reason.is_none() && outcome.setup_error.is_none() {
            if outcome.usage.oom_killed {
                outcome.kill_reason = Some(KillReason::MemoryExceeded);
            } else if outcome.usage.pids_hit {
                outcome.kill_reason = Some(KillReason::PidsExceeded);
            } else if outcome.usage.cpu_nanos >= cpu_cap {
                outcome.kill_reason = Some(KillReason::CpuExceeded);
            }
        }
        outcome.duration = started.elapsed();
        tracing::debug!(sandbox = %spec.name, us = outcome.duration.as_micros() as u64, "outcome ready");
        // Removing the group (its drop) is off the result's path: a v1 memory
        // group's rmdir may wait on the kernel, and nothing is left to limit.
        tokio::task::spawn_blocking(move || drop(cg));
        Ok(outcome)
    }
}

async fn read_result(fd: OwnedFd) -> (Vec<u8>, bool) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return (Vec::new(), false);
    };
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let mut overflow = false;
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if data.len() + n > MAX_RESULT_BYTES {
            overflow = true;
            continue;
        }
        data.extend_from_slice(&buf[..n]);
    }
    (data, overflow)
}

async fn read_status(fd: OwnedFd, tx: mpsc::Sender<Status>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut lines = BufReader::new(pipe.take(64 * 1024)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(s) = serde_json::from_str::<Status>(&line)
            && tx.send(s).await.is_err()
        {
            break;
        }
    }
}
