//! Starting the helper process without `fork`.
//!
//! `fork` copies the daemon's page tables, and the daemon is large: with the
//! built-in model loaded it holds about 290 MB, and forking it took 14–22 ms
//! against 1–4 ms without the model (measured on a 2-core EPYC). That is most
//! of a sandbox's cold start. `posix_spawn` (glibc: `clone(CLONE_VM |
//! CLONE_VFORK)`) shares the parent's memory until the exec, so its cost does
//! not grow with the daemon. Its file actions place the helper's descriptors,
//! which is what `pre_exec` was used for (and `pre_exec` forces a fork).
//!
//! The exit is watched through a pidfd: nothing else in the process waits
//! for this pid (tokio's own reaper only waits on the children it spawned),
//! so the pid stays ours until [`Helper::wait`] reaps it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Sources are moved at or above this before the file actions run, so no
/// source can be one of the targets (0–2 and the helper's 3–5) that an
/// earlier `dup2` of the same spawn overwrote.
const FIRST_SOURCE_FD: RawFd = 10;

/// A running helper process, killed and reaped if dropped before it exited.
pub(crate) struct Helper {
    pid: Pid,
    /// Readable once the process has exited.
    pidfd: AsyncFd<OwnedFd>,
    /// Set once `waitpid` returned it: the pid may be reused after.
    exited: Option<ExitStatus>,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl Helper {
    /// Starts `exe` with `args`, an empty environment, piped stdio, and each
    /// `(fd, target)` of `extra` as descriptor `target` in the child. Every
    /// other descriptor of the daemon is close-on-exec and stays behind.
    pub fn spawn(exe: &Path, args: &[&str], extra: &[(RawFd, RawFd)]) -> io::Result<Helper> {
        let (stdin_r, stdin_w) = pipe_pair()?;
        let (stdout_r, stdout_w) = pipe_pair()?;
        let (stderr_r, stderr_w) = pipe_pair()?;
        // Every source goes high, the pipes' child ends too (a daemon whose
        // stdin is closed would get 0 for a new pipe).
        let stdio = [
            (stdin_r.as_raw_fd(), 0),
            (stdout_w.as_raw_fd(), 1),
            (stderr_w.as_raw_fd(), 2),
        ];
        let placed = stdio
            .iter()
            .chain(extra)
            .map(|&(fd, target)| Ok((dup_high(fd)?, target)))
            .collect::<io::Result<Vec<_>>>()?;
        drop((stdin_r, stdout_w, stderr_w));

        let mut actions = PosixSpawnFileActions::init()?;
        for (fd, target) in &placed {
            actions.add_dup2(fd.as_raw_fd(), *target)?;
        }
        // As std's Command does: a clean signal mask, SIGPIPE back to default.
        let mut attr = PosixSpawnAttr::init()?;
        attr.set_sigmask(&SigSet::empty())?;
        let mut defaults = SigSet::empty();
        defaults.add(Signal::SIGPIPE);
        attr.set_sigdefault(&defaults)?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )?;

        let program = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the helper's path"))?;
        let mut argv = vec![program.clone()];
        for a in args {
            argv.push(
                CString::new(*a).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "NUL in an argument")
                })?,
            );
        }
        let env: [CString; 0] = [];
        let pid = posix_spawn(program.as_c_str(), &actions, &attr, &argv, &env)?;
        drop(placed);

        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                kill_and_reap(pid);
                return Err(e);
            }
        };
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it from here on.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| {
                    kill_and_reap(pid);
                    io::Error::from(e)
                })?;
        Ok(Helper {
            pid,
            pidfd,
            exited: None,
            stdin: Some(pipe::Sender::from_owned_fd(stdin_w)?),
            stdout: Some(pipe::Receiver::from_owned_fd(stdout_r)?),
            stderr: Some(pipe::Receiver::from_owned_fd(stderr_r)?),
        })
    }

    pub fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Whether it has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        !matches!(try_reap(self.pid, &mut self.exited), Ok(None))
    }

    /// SIGKILL and a blocking wait: for a helper that is idle (a spare),
    /// whose exit is immediate.
    pub fn kill_and_wait(&mut self) {
        if self.exited.is_none() {
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
            self.exited = Some(ExitStatus::from_raw(libc::SIGKILL));
        }
    }

    /// Waits for the exit and reaps the process. Cancel-safe (it is one arm
    /// of the launcher's `select!` loop); once it returned, it returns the
    /// same status at once.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = try_reap(self.pid, &mut self.exited)? {
                return Ok(status);
            }
            // Readable means exited.
            let mut ready = self.pidfd.readable().await?;
            if let Some(status) = try_reap(self.pid, &mut self.exited)? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

/// The status if `pid` has exited (reaping it), kept in `exited`.
fn try_reap(pid: Pid, exited: &mut Option<ExitStatus>) -> io::Result<Option<ExitStatus>> {
    if exited.is_some() {
        return Ok(*exited);
    }
    let mut status = 0;
    // SAFETY: plain system call on our own child.
    let rc = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        rc if rc < 0 => Err(io::Error::last_os_error()),
        _ => {
            *exited = Some(ExitStatus::from_raw(status));
            Ok(*exited)
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.exited.is_none() {
            kill_and_reap(self.pid);
        }
    }
}

/// SIGKILL, then reap off the async threads (the exit is a moment away).
fn kill_and_reap(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let reap = move || {
        let _ = nix::sys::wait::waitpid(pid, None);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(reap)),
        Err(_) => reap(),
    }
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// A close-on-exec copy of `fd` at or above [`FIRST_SOURCE_FD`].
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor the caller owns; the result is new and ours.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_SOURCE_FD) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the result is a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
