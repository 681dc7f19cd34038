//! Per-sandbox limits through cgroup v1 (these hosts are a v1 hybrid whose
//! v2 side lacks the memory and pids controllers). Each sandbox gets one
//! directory per controller under a shared parent, `agentd-sandboxes`,
//! created beneath the daemon's own cgroup (so any limit placed on the
//! daemon also bounds its sandboxes). The parent's `cpu.shares` is half
//! of the default, so spinning sandboxes cannot starve the daemon's streams;
//! each sandbox is also capped at one CPU by CFS quota.

use std::path::{Path, PathBuf};

/// Where cgroup v1 hierarchies are mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// The parent of every sandbox's cgroup.
const PARENT: &str = "agentd-sandboxes";
/// The parent's CPU weight: half of one of the daemon's threads (1024
/// each), so all sandboxes together stay below the daemon. Shares only
/// matter under contention, but on a shared host they also weigh the
/// sandboxes against every other process: 256 made a lone `print(1)` wait
/// behind unrelated load (~64 ms added at p50 on a busy 2-core machine
/// against ~29 ms at 512; `bench/README.md`).
const PARENT_SHARES: u32 = 512;
/// CFS period; the per-sandbox quota equals it (one CPU).
const CFS_PERIOD_US: u64 = 100_000;
const CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v1 controller {0} is not mounted at {ROOT}/{0}")]
    Missing(&'static str),
    #[error("cgroup {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The daemon's cgroup path in `controller`'s hierarchy (`/proc/self/cgroup`).
fn own_path(controller: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
        .next()
        .unwrap_or_else(|| "/".to_owned())
}

/// The shared parent, one directory per controller.
#[derive(Clone, Debug)]
pub struct CgroupParent {
    /// Controller name → the parent's directory.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl CgroupParent {
    /// Creates (or reuses) the parent and sets its CPU share.
    pub fn open() -> Result<Self, CgroupError> {
        let mut dirs = Vec::new();
        for c in CONTROLLERS {
            let mount = Path::new(ROOT).join(c);
            if !mount.join("cgroup.procs").exists() {
                return Err(CgroupError::Missing(c));
            }
            let dir = mount.join(own_path(c).trim_start_matches('/')).join(PARENT);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            dirs.push((c, dir));
        }
        let parent = CgroupParent { dirs };
        parent.write("cpu", "cpu.shares", &PARENT_SHARES.to_string())?;
        Ok(parent)
    }

    fn dir(&self, controller: &str) -> &Path {
        &self
            .dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .expect("every controller has a directory")
            .1
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir(controller).join(file);
        std::fs::write(&path, value).map_err(io(&path))
    }

    /// A fresh cgroup for one sandbox with its limits set.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<SandboxCgroup, CgroupError> {
        let dirs: Vec<(&'static str, PathBuf)> =
            self.dirs.iter().map(|(c, d)| (*c, d.join(name))).collect();
        let cg = SandboxCgroup { dirs };
        for (_, d) in &cg.dirs {
            std::fs::create_dir(d).map_err(io(d))?;
        }
        cg.write(
            "memory",
            "memory.limit_in_bytes",
            &limits.memory_bytes.to_string(),
        )?;
        // Also the swap of the group, where the kernel accounts it.
        let _ = cg.write(
            "memory",
            "memory.memsw.limit_in_bytes",
            &limits.memory_bytes.to_string(),
        );
        cg.write("cpu", "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
        cg.write("cpu", "cpu.cfs_quota_us", &CFS_PERIOD_US.to_string())?;
        cg.write("pids", "pids.max", &limits.pids.to_string())?;
        Ok(cg)
    }
}

/// What [`CgroupParent::create`] sets.
#[derive(Clone, Copy, Debug)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// One sandbox's cgroups. Removed on drop once empty.
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<(&'static str, PathBuf)>,
}

/// Counters read back to explain an end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_nanos: u64,
    pub memory_peak_bytes: u64,
    /// The OOM killer fired in this group.
    pub oom_killed: bool,
    /// A fork or clone was refused at `pids.max`.
    pub pids_hit: bool,
}

impl SandboxCgroup {
    fn dir(&self, controller: &str) -> &Path {
        &self
            .dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .expect("every controller has a directory")
            .1
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir(controller).join(file);
        std::fs::write(&path, value).map_err(io(&path))
    }

    fn read(&self, controller: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir(controller).join(file)).unwrap_or_default()
    }

    /// Moves `pid` (the helper, before it forks anything) into every controller.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for (c, _) in &self.dirs {
            self.write(c, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    pub fn usage(&self) -> Usage {
        let key = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Usage {
            cpu_nanos: self
                .read("cpuacct", "cpuacct.usage")
                .trim()
                .parse()
                .unwrap_or(0),
            memory_peak_bytes: self
                .read("memory", "memory.max_usage_in_bytes")
                .trim()
                .parse()
                .unwrap_or(0),
            oom_killed: key(&self.read("memory", "memory.oom_control"), "oom_kill ") > 0,
            pids_hit: key(&self.read("pids", "pids.events"), "max ") > 0,
        }
    }

    /// The processes still in the group.
    pub fn pids(&self) -> Vec<i32> {
        self.read("pids", "cgroup.procs")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// One pass: SIGKILLs every process now in the group; how many there were.
    pub fn kill_pass(&self) -> usize {
        let pids = self.pids();
        for &pid in &pids {
            // SAFETY: plain kill(2) on a pid read from our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        pids.len()
    }

    /// Passes until none is left (a fork bomb may race the first pass;
    /// `pids.max` bounds how many it takes). Blocking: sleeps between passes.
    pub fn kill_all(&self) {
        for _ in 0..100 {
            if self.kill_pass() == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        for (_, d) in &self.dirs {
            // Fails only if a process is left; the kernel frees it then.
            let _ = std::fs::remove_dir(d);
        }
    }
}
