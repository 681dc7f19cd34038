//! The cloned child, inside its new namespaces: wait for the uid map, build
//! the root filesystem, restrict itself, exec the interpreter. Any failure is
//! written to the error pipe and the child exits with `SETUP_FAILED`; the
//! caller's code never runs unconfined.

use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};

use nix::unistd::{Gid, Uid};

use super::{CTL_FD, InitConfig, RESULT_FD, SANDBOX_UID, SETUP_FAILED, fs};
use crate::spec::Language;

/// Runs in the child; returns only on failure (as the exit status).
/// `sync_w` is this process's copy of the sync pipe's write end.
pub(super) fn main(config: &InitConfig, sync: &OwnedFd, sync_w: RawFd, err: &OwnedFd) -> isize {
    // SAFETY: closes this process's own copy (the fd table was copied at
    // clone); the helper keeps its end.
    unsafe { libc::close(sync_w) };
    let e = match setup_and_exec(config, sync) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Best effort: the helper also sees the exit status.
    let _ = nix::unistd::write(err, e.as_bytes());
    SETUP_FAILED as isize
}

enum Never {}

fn setup_and_exec(config: &InitConfig, sync: &OwnedFd) -> Result<Never, String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(step("pdeathsig"))?;
    // Wait until the helper has written the uid and gid maps. A helper that
    // died before (and so before the death signal above was armed) closed
    // its end: end-of-file, and this child gives up.
    let mut byte = [0u8; 1];
    match nix::unistd::read(sync, &mut byte) {
        Ok(1) => {}
        other => return Err(format!("waiting for the uid map: {other:?}")),
    }
    // The creator of a user namespace keeps its capabilities inside it
    // across this change of ids (the namespace has no uid 0 to fall from).
    let gid = Gid::from_raw(SANDBOX_UID);
    let uid = Uid::from_raw(SANDBOX_UID);
    nix::unistd::setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    nix::unistd::sethostname("sandbox").map_err(step("sethostname"))?;

    fs::build_root(config)?;
    if let Some(port) = config.proxy_port {
        crate::egress::bridge::listen_inside(port, CTL_FD)?;
    }
    nix::unistd::chdir("/work").map_err(step("chdir /work"))?;
    set_rlimits(config)?;
    nix::sys::prctl::set_no_new_privs().map_err(step("no_new_privs"))?;
    // Reset by execve for an ordinary binary; seccomp (ptrace,
    // process_vm_*) and the pid namespace are what keep others out.
    nix::sys::prctl::set_dumpable(false).map_err(step("dumpable"))?;
    crate::landlock_rules::restrict(config.proxy_port)?;
    close_inherited_fds()?;
    let (program, argv) = command(config.language);
    let env = environment(config);
    let program = cstr(program)?;
    let argv = argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    // Last: from here on only the allow-list's system calls work.
    crate::seccomp::apply()?;
    let e = nix::unistd::execve(&program, &argv, &env).unwrap_err();
    Err(format!("execve {program:?}: {e}"))
}

fn step(what: &'static str) -> impl Fn(nix::errno::Errno) -> String {
    move |e| format!("{what}: {e}")
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("NUL byte in {s:?}"))
}

/// The interpreter and its arguments; the program is a read-only file.
fn command(language: Language) -> (&'static str, Vec<&'static str>) {
    match language {
        // -B: nothing written next to the code; sys.path[0] is /opt/agentd,
        // where the `agentd` helper module lives.
        Language::Python => (
            "/usr/bin/python3",
            vec!["python3", "-B", "/opt/agentd/main.py"],
        ),
        Language::Bash => (
            "/bin/bash",
            vec!["bash", "--noprofile", "--norc", "/opt/agentd/main.sh"],
        ),
    }
}

/// A fresh environment: nothing of the daemon's is passed on.
fn environment(config: &InitConfig) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        "HOME=/work".to_owned(),
        "TMPDIR=/tmp".to_owned(),
        "LANG=C.UTF-8".to_owned(),
        "USER=sandbox".to_owned(),
        "PYTHONDONTWRITEBYTECODE=1".to_owned(),
        "PYTHONUNBUFFERED=1".to_owned(),
        format!("AGENTD_RESULT_FD={RESULT_FD}"),
        // Non-interactive bash reads this file first: it defines agentd_result.
        "BASH_ENV=/opt/agentd/agentd.sh".to_owned(),
    ];
    if let Some(port) = config.proxy_port {
        let proxy = format!("http://127.0.0.1:{port}");
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push(format!("{name}={proxy}"));
        }
    }
    env
}

fn set_rlimits(config: &InitConfig) -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    let set = |r: Resource, v: u64| setrlimit(r, v, v).map_err(|e| format!("rlimit {r:?}: {e}"));
    set(Resource::RLIMIT_CORE, 0)?;
    set(Resource::RLIMIT_NOFILE, 1024)?;
    // One file cannot exceed the disk cap even before tmpfs refuses it.
    set(Resource::RLIMIT_FSIZE, config.disk_bytes)?;
    Ok(())
}

/// Keeps 0–2 and the result descriptor; every other inherited descriptor
/// is closed at exec (the error pipe must stay open until then).
fn close_inherited_fds() -> Result<(), String> {
    let first = (RESULT_FD + 1) as libc::c_uint;
    // SAFETY: plain system call; marks descriptors close-on-exec.
    let rc =
        unsafe { libc::close_range(first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if rc != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    // The result pipe is the only descriptor besides stdio that survives exec.
    let flags = nix::fcntl::fcntl(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(RESULT_FD) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    );
    flags.map(|_| ()).map_err(|e| format!("result fd: {e}"))?;
    Ok(())
}
