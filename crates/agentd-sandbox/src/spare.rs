//! A helper started before anyone asked for it.
//!
//! Before a sandbox's own code can start, its helper must be spawned and
//! exec'd (a large binary), and moved into the sandbox's cgroup. On cgroup
//! v1 that move is a write to `cgroup.procs`, which takes the kernel's
//! cgroup-wide thread-group lock for writing and so waits out an RCU grace
//! period: measured at 5–9 ms on a 2-core EPYC, on top of 6–8 ms of spawn
//! and exec. None of that depends on the request, so the launcher keeps one
//! helper ready: spawned, in a group of its own with placeholder limits,
//! blocked reading its config. A request takes it, sets its own limits on
//! the group and sends the config; a new spare is started behind it. With
//! no spare ready (a burst), a request starts its helper itself, as before.
//!
//! A spare's group is named by [`crate::cgroup::spare_name`], not by a
//! sandbox id: the id is not known yet. The helper dies with the daemon
//! (parent-death signal); the empty group a dead daemon leaves is removed
//! by the next one when it opens the cgroup parent, like any group of a
//! gone daemon (`cgroup::is_stale`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cgroup::{CgroupLimits, CgroupParent, SandboxCgroup};
use crate::init::{CTL_FD, INIT_SUBCOMMAND, RESULT_FD, STATUS_FD};
use crate::launch::LaunchError;
use crate::spawn::Helper;

/// A helper in its cgroup, waiting for its config on stdin.
pub(crate) struct Prepared {
    pub cg: SandboxCgroup,
    pub child: Helper,
    /// Where `agentd.result()` arrives.
    pub result_r: OwnedFd,
    /// The helper's [`crate::init::Status`] lines.
    pub status_r: OwnedFd,
    /// The daemon's end of the control socket; only allow-list egress uses
    /// it (the child hands its proxy listener over it).
    pub ctl: OwnedFd,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

impl Prepared {
    /// Creates the group with `limits`, spawns the helper with its
    /// descriptors and moves it into the group.
    ///
    /// Runs on a runtime worker, not the blocking pool: the helper's
    /// parent-death signal follows the thread that spawned it, and a
    /// blocking-pool thread exits when idle. The slow cgroup move alone goes
    /// to the blocking pool.
    pub async fn start(
        exe: &Path,
        cgroups: &CgroupParent,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Prepared, LaunchError> {
        let spawn = LaunchError::Spawn;
        let cg = cgroups.create(name, limits)?;
        let (result_r, result_w) = pipe().map_err(spawn)?;
        let (status_r, status_w) = pipe().map_err(spawn)?;
        let (ctl, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| spawn(e.into()))?;
        let fds = [
            (result_w.as_raw_fd(), RESULT_FD),
            (status_w.as_raw_fd(), STATUS_FD),
            (theirs.as_raw_fd(), CTL_FD),
        ];
        let child = Helper::spawn(exe, &[INIT_SUBCOMMAND], &fds).map_err(spawn)?;
        drop((result_w, status_w, theirs));
        let pid = child.id();
        let (cg, added) = tokio::task::spawn_blocking(move || {
            let added = cg.add(pid);
            (cg, added)
        })
        .await
        .map_err(|e| spawn(std::io::Error::other(e)))?;
        let prepared = Prepared {
            cg,
            child,
            result_r,
            status_r,
            ctl,
        };
        match added {
            Ok(()) => Ok(prepared),
            Err(e) => {
                prepared.discard();
                Err(e.into())
            }
        }
    }

    /// Kills the helper, waits for it and removes its group.
    pub fn discard(mut self) {
        self.child.kill_and_wait();
        drop(self.cg);
    }
}

/// At most one prepared helper; shared by every clone of the launcher.
#[derive(Clone, Default)]
pub(crate) struct SpareSlot {
    inner: Arc<SlotInner>,
}

struct SlotInner {
    ready: Mutex<Option<Prepared>>,
    /// A spare is being started; do not start another.
    starting: AtomicBool,
    /// Numbers the spares' group names; starts at the clock, so a daemon
    /// that got the pid of one before it never meets that one's leftovers.
    made: AtomicU64,
}

impl Default for SlotInner {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        SlotInner {
            ready: Mutex::default(),
            starting: AtomicBool::default(),
            made: AtomicU64::new(now),
        }
    }
}

impl SpareSlot {
    /// The spare, if one is ready and still alive, with `limits` set on its
    /// group; a dead one or one whose limits cannot be set is discarded.
    pub fn take(&self, limits: &CgroupLimits) -> Option<Prepared> {
        let mut prepared = self.inner.ready.lock().ok()?.take()?;
        if prepared.child.has_exited() {
            prepared.discard();
            return None;
        }
        if let Err(e) = prepared.cg.set_limits(limits) {
            tracing::warn!(error = %e, "discarding the spare sandbox helper");
            prepared.discard();
            return None;
        }
        Some(prepared)
    }

    /// Starts a spare in the background unless one is ready or on its way.
    pub fn refill(&self, exe: PathBuf, cgroups: CgroupParent, limits: CgroupLimits) {
        if self
            .inner
            .ready
            .lock()
            .map(|ready| ready.is_some())
            .unwrap_or(true)
            || self.inner.starting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let name = crate::cgroup::spare_name(inner.made.fetch_add(1, Ordering::Relaxed));
            match Prepared::start(&exe, &cgroups, &name, &limits).await {
                Ok(prepared) => match inner.ready.lock() {
                    Ok(mut ready) if ready.is_none() => *ready = Some(prepared),
                    _ => prepared.discard(),
                },
                Err(e) => tracing::warn!(error = %e, "starting a spare sandbox helper"),
            }
            inner.starting.store(false, Ordering::Release);
        });
    }
}
