//! Per-sandbox limits through cgroups (DESIGN §6): v2 where the host's
//! unified hierarchy has the `cpu`, `memory` and `pids` controllers, v1
//! otherwise (these development hosts are a v1 hybrid whose v2 side has
//! none of them), and no sandboxes at all where neither works. Both
//! backends sit behind [`CgroupParent`] / [`SandboxCgroup`]: create a
//! group with its limits, add the helper, read the counters that explain an
//! end, kill everything in it, remove it (on drop).

mod v1;
mod v2;

use std::path::{Path, PathBuf};

pub use v1::{V1Group, V1Parent};
pub use v2::{V2Group, V2Parent};

/// Where cgroup hierarchies are mounted.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The parent of every sandbox's cgroup, beneath the daemon's own.
const PARENT: &str = "agentd-sandboxes";
/// CFS period; each sandbox's quota equals it (one CPU).
const CFS_PERIOD_US: u64 = 100_000;
/// The controllers v2 must offer to be used.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v1 controller {0} is not mounted at {ROOT}/{0}")]
    Missing(&'static str),
    #[error(
        "no usable cgroups: neither a cgroup v2 hierarchy with the cpu, memory and pids \
         controllers nor the v1 memory, cpu, cpuacct and pids controllers under {0}"
    )]
    Unusable(String),
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

/// The number after `name ` on its line of a flat-keyed file
/// (`memory.events`, `pids.events`, `cpu.stat`, `memory.oom_control`).
fn key(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The daemon's cgroup path in `controller`'s v1 hierarchy, or (`""`) its
/// v2 path, from `/proc/self/cgroup`.
fn own_path(controller: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own_path_in(&text, controller)
}

fn own_path_in(text: &str, controller: &str) -> String {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if controller.is_empty() {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == controller)
            };
            hit.then(|| path.to_owned())
        })
        .next()
        .unwrap_or_else(|| "/".to_owned())
}

/// Which backend a host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    /// The cgroup2 mount to use (`/sys/fs/cgroup`, or the hybrid's
    /// `/sys/fs/cgroup/unified`).
    V2(PathBuf),
    /// Where the v1 hierarchies are mounted.
    V1(PathBuf),
}

/// v2 at `root` or its `unified` mount when it is cgroup2 and lists the
/// three controllers; else v1 when its four controllers are mounted under
/// `root`; else nothing. `is_cgroup2` tells a cgroup2 mount (the file
/// system's magic on a real host).
pub fn detect(root: &Path, is_cgroup2: &dyn Fn(&Path) -> bool) -> Option<Detected> {
    for candidate in [root.to_path_buf(), root.join("unified")] {
        if !is_cgroup2(&candidate) {
            continue;
        }
        let listed =
            std::fs::read_to_string(candidate.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| listed.split_whitespace().any(|x| x == c);
        if V2_CONTROLLERS.iter().all(|c| has(c)) {
            return Some(Detected::V2(candidate));
        }
    }
    v1::CONTROLLERS
        .iter()
        .all(|c| root.join(c).join("cgroup.procs").exists())
        .then(|| Detected::V1(root.to_path_buf()))
}

/// Whether `path` is the root of a cgroup2 mount.
pub fn is_cgroup2_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The shared parent of every sandbox's group.
#[derive(Clone, Debug)]
pub enum CgroupParent {
    V1(V1Parent),
    V2(V2Parent),
}

/// What [`CgroupParent::create`] sets.
#[derive(Clone, Copy, Debug)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
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

impl CgroupParent {
    /// Detects the host's backend and creates (or reuses) the parent.
    pub fn open() -> Result<Self, CgroupError> {
        match detect(Path::new(ROOT), &is_cgroup2_mount) {
            Some(Detected::V2(mount)) => {
                V2Parent::open(&mount, &own_path(""), std::process::id()).map(CgroupParent::V2)
            }
            Some(Detected::V1(root)) => V1Parent::open(&root).map(CgroupParent::V1),
            None => Err(CgroupError::Unusable(ROOT.into())),
        }
    }

    /// `v1` or `v2`, for `/health` and logs.
    pub fn version(&self) -> &'static str {
        match self {
            CgroupParent::V1(_) => "v1",
            CgroupParent::V2(_) => "v2",
        }
    }

    /// A fresh group for one sandbox with its limits set, named `name`
    /// behind this daemon's pid (see [`owned_name`]).
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<SandboxCgroup, CgroupError> {
        let name = owned_name(name);
        Ok(match self {
            CgroupParent::V1(p) => SandboxCgroup::V1(p.create(&name, limits)?),
            CgroupParent::V2(p) => SandboxCgroup::V2(p.create(&name, limits)?),
        })
    }
}

/// One sandbox's group. Removed on drop once empty.
#[derive(Debug)]
pub enum SandboxCgroup {
    V1(V1Group),
    V2(V2Group),
}

impl SandboxCgroup {
    /// Sets the memory and pids caps: a spare helper's group gets the
    /// request's limits when it is handed a sandbox.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        match self {
            SandboxCgroup::V1(g) => g.set_limits(limits),
            SandboxCgroup::V2(g) => g.set_limits(limits),
        }
    }

    /// Moves `pid` (the helper, before it forks anything) into the group.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        match self {
            SandboxCgroup::V1(g) => g.add(pid),
            SandboxCgroup::V2(g) => g.add(pid),
        }
    }

    pub fn usage(&self) -> Usage {
        match self {
            SandboxCgroup::V1(g) => g.usage(),
            SandboxCgroup::V2(g) => g.usage(),
        }
    }

    /// One pass: SIGKILLs every process now in the group; how many there were.
    pub fn kill_pass(&self) -> usize {
        match self {
            SandboxCgroup::V1(g) => g.kill_pass(),
            SandboxCgroup::V2(g) => g.kill_pass(),
        }
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

/// The name of a spare helper's group (one started ahead of a request,
/// [`crate::launch`]); `n` numbers the spares.
pub fn spare_name(n: u64) -> String {
    format!("spare-{n}")
}

/// A group's directory: `<daemon pid>-<name>`. Everything in a group dies
/// with its daemon (the helper has a parent-death signal, the workload one
/// on the helper), but the empty directory stays; the prefix lets a later
/// daemon tell those from the groups of a live daemon sharing the parent.
fn owned_name(name: &str) -> String {
    format!("{}-{name}", std::process::id())
}

/// Whether `name` is a group a gone daemon left: its pid prefix names no
/// process. Names without the prefix are never touched, nor are this
/// process's own (a daemon before it may have had its pid, but so do the
/// groups it is making).
fn is_stale(name: &str) -> bool {
    let Some(pid) = name
        .split_once('-')
        .and_then(|(pid, _)| pid.parse::<i32>().ok())
        .filter(|pid| *pid > 0 && *pid != std::process::id() as i32)
    else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Removes, under `parent`, the groups gone daemons left. Called when the
/// parent is opened, before this daemon made any group. `rmdir` refuses a
/// group that still holds a process, so a wrong guess removes nothing.
fn sweep_stale_groups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().is_dir() && e.file_name().to_str().is_some_and(is_stale) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// SIGKILLs each pid listed in a `cgroup.procs` text; how many.
fn kill_listed(procs: &str) -> usize {
    let pids: Vec<i32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for &pid in &pids {
        // SAFETY: plain kill(2) on a pid read from our own cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    pids.len()
}

#[cfg(test)]
mod tests;
