//! The cgroup v2 backend, for hosts whose unified hierarchy has the `cpu`,
//! `memory` and `pids` controllers. Not exercised on a real kernel on the
//! development hosts (a v1 hybrid whose v2 side has none of them): its
//! writes and its reading of kill reasons are tested against a directory
//! laid out like cgroupfs (`tests.rs`).
//!
//! v2 forbids processes in a group that hands controllers to its children,
//! so beneath the daemon's own group `D` agentd makes two leaves:
//! `D/agentd-daemon`, where the daemon moves itself, and
//! `D/agentd-sandboxes`, the parent of every sandbox's group, whose
//! `cpu.weight` is half the daemon leaf's (the v1 `cpu.shares` 512 against
//! 1024). Each sandbox's group has `memory.max`, `memory.swap.max` = 0,
//! `cpu.max` of one CPU and `pids.max`; its end is explained by
//! `memory.events` `oom_kill`, `pids.events` `max` and `cpu.stat`
//! `usage_usec`, and it is killed whole through `cgroup.kill`.

use std::path::{Path, PathBuf};

use super::{CFS_PERIOD_US, CgroupError, CgroupLimits, PARENT, Usage, io, key, kill_listed};

/// The leaf the daemon moves into.
const DAEMON_LEAF: &str = "agentd-daemon";
/// `cpu.weight` of the daemon's leaf (the kernel's default) and of the
/// sandboxes' parent: all sandboxes together weigh half the daemon.
pub(super) const DAEMON_WEIGHT: u32 = 100;
pub(super) const SANDBOXES_WEIGHT: u32 = 50;
/// What each level enables for the level below.
const SUBTREE: &str = "+cpu +memory +pids";

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io(&path))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// `D/agentd-sandboxes`, set up as above.
#[derive(Clone, Debug)]
pub struct V2Parent {
    dir: PathBuf,
}

impl V2Parent {
    /// `mount`: the cgroup2 mount; `own`: the daemon's group in it (from
    /// `/proc/self/cgroup`); `pid`: the daemon, moved to its leaf.
    pub fn open(mount: &Path, own: &str, pid: u32) -> Result<Self, CgroupError> {
        let base = mount.join(own.trim_start_matches('/'));
        // The controllers must reach `base` from the root: enable them on
        // each ancestor that does not pass them down yet (the root always
        // may; a delegated subtree (systemd `Delegate=yes`) already does).
        let mut ancestors: Vec<PathBuf> = base
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(mount))
            .map(Path::to_path_buf)
            .collect();
        ancestors.reverse();
        for dir in ancestors {
            let enabled = read(&dir, "cgroup.subtree_control");
            let missing = ["cpu", "memory", "pids"]
                .iter()
                .any(|c| !enabled.split_whitespace().any(|e| e == *c));
            if missing {
                write(&dir, "cgroup.subtree_control", SUBTREE)?;
            }
        }
        let daemon = base.join(DAEMON_LEAF);
        let parent = base.join(PARENT);
        for d in [&daemon, &parent] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        // Out of `base`, so `base` may hand its controllers down.
        write(&daemon, "cgroup.procs", &pid.to_string())?;
        write(&base, "cgroup.subtree_control", SUBTREE)?;
        write(&daemon, "cpu.weight", &DAEMON_WEIGHT.to_string())?;
        write(&parent, "cpu.weight", &SANDBOXES_WEIGHT.to_string())?;
        write(&parent, "cgroup.subtree_control", SUBTREE)?;
        super::sweep_stale_groups(&parent);
        Ok(V2Parent { dir: parent })
    }

    /// A fresh group for one sandbox with its limits set.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<V2Group, CgroupError> {
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let group = V2Group { dir };
        // v2 counts swap apart from memory: none at all, as v1's memsw cap.
        // Absent where the kernel has no swap accounting.
        let _ = write(&group.dir, "memory.swap.max", "0");
        write(
            &group.dir,
            "cpu.max",
            &format!("{CFS_PERIOD_US} {CFS_PERIOD_US}"),
        )?;
        group.set_limits(limits)?;
        Ok(group)
    }
}

/// One sandbox's group. Removed on drop once empty.
#[derive(Debug)]
pub struct V2Group {
    dir: PathBuf,
}

impl V2Group {
    /// Sets (or resets, for a spare helper's group) the memory and pids caps.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        write(&self.dir, "memory.max", &limits.memory_bytes.to_string())?;
        write(&self.dir, "pids.max", &limits.pids.to_string())
    }

    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        write(&self.dir, "cgroup.procs", &pid.to_string())
    }

    pub fn usage(&self) -> Usage {
        let d = &self.dir;
        // `memory.peak` since Linux 5.19; before it, the current use is the
        // best there is.
        let peak = read(d, "memory.peak");
        let peak = if peak.trim().is_empty() {
            read(d, "memory.current")
        } else {
            peak
        };
        Usage {
            cpu_nanos: key(&read(d, "cpu.stat"), "usage_usec").saturating_mul(1000),
            memory_peak_bytes: peak.trim().parse().unwrap_or(0),
            oom_killed: key(&read(d, "memory.events"), "oom_kill") > 0,
            pids_hit: key(&read(d, "pids.events"), "max") > 0,
        }
    }

    /// One pass: kills every process in the group through `cgroup.kill`
    /// (Linux 5.14; a signal to each listed pid before); how many there were.
    pub fn kill_pass(&self) -> usize {
        let procs = read(&self.dir, "cgroup.procs");
        let listed = procs.lines().filter(|l| !l.trim().is_empty()).count();
        if listed == 0 {
            return 0;
        }
        if self.dir.join("cgroup.kill").exists() && write(&self.dir, "cgroup.kill", "1").is_ok() {
            return listed;
        }
        kill_listed(&procs)
    }
}

impl Drop for V2Group {
    fn drop(&mut self) {
        // Fails only if a process is left; the kernel frees it then.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
