//! The cgroup v1 backend (these hosts are a v1 hybrid whose v2 side lacks
//! the memory and pids controllers). Each sandbox gets one
//! directory per controller under a shared parent, `agentd-sandboxes`,
//! created beneath the daemon's own cgroup (so any limit placed on the
//! daemon also bounds its sandboxes). The parent's `cpu.shares` is half
//! of the default, so spinning sandboxes cannot starve the daemon's streams;
//! each sandbox is also capped at one CPU by CFS quota.

use std::path::{Path, PathBuf};

use super::{CgroupError, CgroupLimits, PARENT, Usage, io, key, kill_listed};

/// The parent's CPU weight: half of one of the daemon's threads (1024
/// each), so all sandboxes together stay below the daemon. Shares only
/// matter under contention, but on a shared host they also weigh the
/// sandboxes against every other process: 256 made a lone `print(1)` wait
/// behind unrelated load (~64 ms added at p50 on a busy 2-core machine
/// against ~29 ms at 512; `bench/README.md`).
const PARENT_SHARES: u32 = 512;
/// CFS period; the per-sandbox quota equals it (one CPU).
const CFS_PERIOD_US: u64 = super::CFS_PERIOD_US;
pub(super) const CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// The shared parent, one directory per controller.
#[derive(Clone, Debug)]
pub struct V1Parent {
    /// Controller name → the parent's directory.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl V1Parent {
    /// Creates (or reuses) the parent under `root` (where the v1
    /// hierarchies are mounted) and sets its CPU share.
    pub fn open(root: &Path) -> Result<Self, CgroupError> {
        let mut dirs = Vec::new();
        for c in CONTROLLERS {
            let mount = root.join(c);
            if !mount.join("cgroup.procs").exists() {
                return Err(CgroupError::Missing(c));
            }
            let dir = mount
                .join(super::own_path(c).trim_start_matches('/'))
                .join(PARENT);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            dirs.push((c, dir));
        }
        let parent = V1Parent { dirs };
        parent.sweep();
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
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<V1Group, CgroupError> {
        let dirs: Vec<(&'static str, PathBuf)> =
            self.dirs.iter().map(|(c, d)| (*c, d.join(name))).collect();
        let cg = V1Group { dirs };
        for (_, d) in &cg.dirs {
            std::fs::create_dir(d).map_err(io(d))?;
        }
        cg.write("cpu", "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
        cg.write("cpu", "cpu.cfs_quota_us", &CFS_PERIOD_US.to_string())?;
        cg.set_limits(limits)?;
        Ok(cg)
    }

    /// Removes the groups gone daemons left (see [`super::is_stale`]).
    pub(super) fn sweep(&self) {
        for (_, d) in &self.dirs {
            super::sweep_stale_groups(d);
        }
    }
}

/// One sandbox's cgroups, one per controller. Removed on drop once empty.
#[derive(Debug)]
pub struct V1Group {
    dirs: Vec<(&'static str, PathBuf)>,
}

impl V1Group {
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

    /// Sets (or resets, for a spare helper's group) the memory and pids caps.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let memory = limits.memory_bytes.to_string();
        // memsw must stay at or above the memory limit, so the order of the
        // two writes depends on the direction of the change; try both.
        let memsw = |cg: &Self| cg.write("memory", "memory.memsw.limit_in_bytes", &memory);
        let swap_first = memsw(self).is_ok();
        self.write("memory", "memory.limit_in_bytes", &memory)?;
        if !swap_first {
            // Also the swap of the group, where the kernel accounts it.
            let _ = memsw(self);
        }
        self.write("pids", "pids.max", &limits.pids.to_string())
    }

    /// Moves `pid` (the helper, before it forks anything) into every controller.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for (c, _) in &self.dirs {
            self.write(c, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    pub fn usage(&self) -> Usage {
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
            oom_killed: key(&self.read("memory", "memory.oom_control"), "oom_kill") > 0,
            pids_hit: key(&self.read("pids", "pids.events"), "max") > 0,
        }
    }

    /// One pass: SIGKILLs every process now in the group; how many there were.
    pub fn kill_pass(&self) -> usize {
        kill_listed(&self.read("pids", "cgroup.procs"))
    }
}

impl Drop for V1Group {
    fn drop(&mut self) {
        for (_, d) in &self.dirs {
            // Fails only if a process is left; the kernel frees it then.
            let _ = std::fs::remove_dir(d);
        }
    }
}
