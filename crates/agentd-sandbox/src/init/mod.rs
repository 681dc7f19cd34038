//! The helper process (`agentd __sandbox-init`): a fresh, single-threaded
//! re-exec of the daemon's binary that builds the sandbox and then gets out of
//! the way. Forking the namespaces from the daemon itself would mean doing
//! non-async-signal-safe work in the child of a multithreaded tokio process;
//! here nothing else runs.
//!
//! The helper stays outside every namespace (root in the host's user
//! namespace, so it may write the child's uid and gid maps), clones the child
//! into new user, pid, net, mount, ipc and uts namespaces, maps the child's
//! uid 1000 to an unprivileged host uid of the sandbox's own, and then only
//! waits and reports. The child sets up its filesystem and restrictions and
//! `execve`s the interpreter directly, so pid 1 inside is the interpreter:
//! no copy of the daemon's binary is mapped inside for the code to open.
//!
//! Descriptors the daemon hands over (see [`crate::launch`]): stdin carries
//! the [`InitConfig`] as JSON, stdout/stderr are the workload's,
//! [`RESULT_FD`] is where `agentd.result()` writes, [`STATUS_FD`] carries
//! [`Status`] lines back to the daemon, and [`CTL_FD`] (allow-list egress
//! only) is the Unix socket the child sends its proxy listener over.

mod child;
mod fs;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::spec::Language;

/// The hidden subcommand the daemon re-executes itself with.
pub const INIT_SUBCOMMAND: &str = "__sandbox-init";
/// Where the workload writes its structured result (`agentd.result`).
pub const RESULT_FD: i32 = 3;
/// Helper → daemon: one JSON [`Status`] per line.
pub const STATUS_FD: i32 = 4;
/// Child → daemon: the proxy listener inside the sandbox's netns (SCM_RIGHTS).
pub const CTL_FD: i32 = 5;
/// The uid and gid the code runs as inside its user namespace.
pub const SANDBOX_UID: u32 = 1000;
/// Exit status of a helper or child that failed before the workload started.
pub const SETUP_FAILED: i32 = 125;

/// Everything the helper needs, sent by the daemon over stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub language: Language,
    pub code: String,
    /// The unprivileged host uid (and gid) the sandbox's uid 1000 maps to.
    pub host_uid: u32,
    /// Size cap of `/work` and of `/tmp`, in bytes.
    pub disk_bytes: u64,
    /// Allow-list egress: the loopback port inside the netns where the
    /// daemon's proxy listens. `None` leaves the netns empty (deny_all).
    pub proxy_port: Option<u16>,
}

/// What the helper tells the daemon, one JSON object per line on [`STATUS_FD`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Status {
    /// The interpreter was exec'd inside the sandbox.
    Started,
    /// Setup failed before anything of the caller's ran.
    SetupError { message: String },
    /// The workload (pid 1 inside) exited with a code.
    Exited { code: i32 },
    /// The workload was killed by a signal.
    Signaled { signal: i32 },
}

/// The helper's entry point, called by `main` before any runtime starts.
/// Never returns: the process exits with the workload's status.
pub fn init_main() -> ! {
    // SAFETY: STATUS_FD is handed over by the daemon for this process alone.
    let status = unsafe { std::fs::File::from_raw_fd(STATUS_FD) };
    let code = match run(&status) {
        Ok(code) => code,
        Err(message) => {
            report(&status, &Status::SetupError { message });
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn report(mut out: &std::fs::File, status: &Status) {
    if let Ok(mut line) = serde_json::to_vec(status) {
        line.push(b'\n');
        let _ = out.write_all(&line);
    }
}

fn run(status: &std::fs::File) -> Result<i32, String> {
    // Killed with the daemon; and if it is already gone, do nothing.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    if nix::unistd::getppid() == Pid::from_raw(1) {
        return Err("the daemon is gone".into());
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .take(crate::spec::MAX_CODE_BYTES as u64 * 2 + 4096)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the config: {e}"))?;
    let config: InitConfig =
        serde_json::from_slice(&raw).map_err(|e| format!("bad config: {e}"))?;
    let devnull = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(devnull.as_fd()).map_err(|e| format!("stdin: {e}"))?;
    // Host root's supplementary groups must not follow the child in.
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;

    let (sync_r, sync_w) = cloexec_pipe()?;
    let (err_r, err_w) = cloexec_pipe()?;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let mut stack = vec![0u8; 1 << 20];
    let child_cfg = config.clone();
    // The child gets a copy of every descriptor, this pipe's write end too:
    // it closes that first, so a helper that dies before releasing it
    // (killed with the daemon) reads as end-of-file, not as a wait forever.
    let sync_w_fd = sync_w.as_raw_fd();
    let cb = Box::new(|| child::main(&child_cfg, &sync_r, sync_w_fd, &err_w));
    // SAFETY: this process is single-threaded (no runtime was started), so
    // the child may run ordinary Rust code; the stack outlives the call.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| format!("clone: {e}"))?;
    drop(err_w);
    drop(sync_r);
    let mapped = write_maps(pid, config.host_uid);
    if let Err(e) = mapped {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    // Release the child: its ids now exist.
    nix::unistd::write(&sync_w, b"1").map_err(|e| format!("sync: {e}"))?;
    drop(sync_w);
    // The error pipe closes without data when the exec succeeded.
    let mut setup_error = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut setup_error);
    if !setup_error.is_empty() {
        let _ = waitpid(pid, None);
        return Err(setup_error);
    }
    report(status, &Status::Started);
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                report(status, &Status::Exited { code });
                return Ok(code);
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                report(status, &Status::Signaled { signal: sig as i32 });
                return Ok(128 + sig as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// One uid and one gid: the sandbox's 1000 is `host_uid` outside, which owns
/// nothing on the host. `setgroups` is denied so the child cannot drop into
/// a group it was not given.
fn write_maps(pid: Pid, host_uid: u32) -> Result<(), String> {
    let proc = format!("/proc/{pid}");
    let write = |file: &str, text: String| {
        std::fs::write(format!("{proc}/{file}"), text).map_err(|e| format!("{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{SANDBOX_UID} {host_uid} 1\n"))?;
    write("gid_map", format!("{SANDBOX_UID} {host_uid} 1\n"))
}
