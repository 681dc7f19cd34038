//! The seccomp filter the child installs last, right before exec: an
//! allow-list in the spirit of Docker's default profile. Everything not
//! named fails with `EPERM`; among what is missing on purpose (DESIGN §6):
//! io_uring, userfaultfd, perf_event_open, process_vm_readv/writev, ptrace,
//! keyctl/add_key/request_key, bpf, mount/umount and the new mount API,
//! pivot_root, chroot, unshare, setns, kexec, module loading, reboot.
//! Argument filters: `clone` never with a namespace flag, `clone3` answers
//! `ENOSYS` (so libc falls back to `clone`, whose flags can be inspected),
//! sockets only `AF_UNIX`/`AF_INET`/`AF_INET6` (no netlink, packet, vsock),
//! `ioctl` never `TIOCSTI`/`TIOCLINUX`. A foreign architecture (a 32-bit
//! entry on x86_64) kills the process.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Allowed without conditions.
#[cfg(target_arch = "x86_64")]
const PLAIN: &[libc::c_long] = {
    use libc::*;
    &[
        SYS_read,
        SYS_write,
        SYS_open,
        SYS_close,
        SYS_stat,
        SYS_fstat,
        SYS_lstat,
        SYS_poll,
        SYS_lseek,
        SYS_mmap,
        SYS_mprotect,
        SYS_munmap,
        SYS_brk,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_pread64,
        SYS_pwrite64,
        SYS_readv,
        SYS_writev,
        SYS_access,
        SYS_pipe,
        SYS_select,
        SYS_sched_yield,
        SYS_mremap,
        SYS_msync,
        SYS_mincore,
        SYS_madvise,
        SYS_shmget,
        SYS_shmat,
        SYS_shmctl,
        SYS_dup,
        SYS_dup2,
        SYS_pause,
        SYS_nanosleep,
        SYS_getitimer,
        SYS_alarm,
        SYS_setitimer,
        SYS_getpid,
        SYS_sendfile,
        SYS_connect,
        SYS_accept,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_shutdown,
        SYS_bind,
        SYS_listen,
        SYS_getsockname,
        SYS_getpeername,
        SYS_setsockopt,
        SYS_getsockopt,
        SYS_fork,
        SYS_vfork,
        SYS_execve,
        SYS_exit,
        SYS_wait4,
        SYS_kill,
        SYS_uname,
        SYS_semget,
        SYS_semop,
        SYS_semctl,
        SYS_shmdt,
        SYS_msgget,
        SYS_msgsnd,
        SYS_msgrcv,
        SYS_msgctl,
        SYS_fcntl,
        SYS_flock,
        SYS_fsync,
        SYS_fdatasync,
        SYS_truncate,
        SYS_ftruncate,
        SYS_getdents,
        SYS_getcwd,
        SYS_chdir,
        SYS_fchdir,
        SYS_rename,
        SYS_mkdir,
        SYS_rmdir,
        SYS_creat,
        SYS_link,
        SYS_unlink,
        SYS_symlink,
        SYS_readlink,
        SYS_chmod,
        SYS_fchmod,
        SYS_chown,
        SYS_fchown,
        SYS_lchown,
        SYS_umask,
        SYS_gettimeofday,
        SYS_getrlimit,
        SYS_getrusage,
        SYS_sysinfo,
        SYS_times,
        SYS_getuid,
        SYS_getgid,
        SYS_setuid,
        SYS_setgid,
        SYS_geteuid,
        SYS_getegid,
        SYS_setpgid,
        SYS_getppid,
        SYS_getpgrp,
        SYS_setsid,
        SYS_setreuid,
        SYS_setregid,
        SYS_getgroups,
        SYS_setresuid,
        SYS_getresuid,
        SYS_setresgid,
        SYS_getresgid,
        SYS_getpgid,
        SYS_setfsuid,
        SYS_setfsgid,
        SYS_getsid,
        SYS_capget,
        SYS_rt_sigpending,
        SYS_rt_sigtimedwait,
        SYS_rt_sigqueueinfo,
        SYS_rt_sigsuspend,
        SYS_sigaltstack,
        SYS_utime,
        SYS_statfs,
        SYS_fstatfs,
        SYS_getpriority,
        SYS_setpriority,
        SYS_sched_setparam,
        SYS_sched_getparam,
        SYS_sched_setscheduler,
        SYS_sched_getscheduler,
        SYS_sched_get_priority_max,
        SYS_sched_get_priority_min,
        SYS_sched_rr_get_interval,
        SYS_mlock,
        SYS_munlock,
        SYS_prctl,
        SYS_arch_prctl,
        SYS_setrlimit,
        SYS_sync,
        SYS_gettid,
        SYS_readahead,
        SYS_getxattr,
        SYS_lgetxattr,
        SYS_fgetxattr,
        SYS_listxattr,
        SYS_llistxattr,
        SYS_flistxattr,
        SYS_tkill,
        SYS_time,
        SYS_futex,
        SYS_sched_setaffinity,
        SYS_sched_getaffinity,
        SYS_epoll_create,
        SYS_getdents64,
        SYS_set_tid_address,
        SYS_restart_syscall,
        SYS_semtimedop,
        SYS_fadvise64,
        SYS_timer_create,
        SYS_timer_settime,
        SYS_timer_gettime,
        SYS_timer_getoverrun,
        SYS_timer_delete,
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_clock_nanosleep,
        SYS_exit_group,
        SYS_epoll_wait,
        SYS_epoll_ctl,
        SYS_tgkill,
        SYS_utimes,
        SYS_waitid,
        SYS_inotify_init,
        SYS_inotify_add_watch,
        SYS_inotify_rm_watch,
        SYS_openat,
        SYS_mkdirat,
        SYS_fchownat,
        SYS_futimesat,
        SYS_newfstatat,
        SYS_unlinkat,
        SYS_renameat,
        SYS_linkat,
        SYS_symlinkat,
        SYS_readlinkat,
        SYS_fchmodat,
        SYS_faccessat,
        SYS_pselect6,
        SYS_ppoll,
        SYS_set_robust_list,
        SYS_get_robust_list,
        SYS_splice,
        SYS_tee,
        SYS_sync_file_range,
        SYS_vmsplice,
        SYS_utimensat,
        SYS_epoll_pwait,
        SYS_signalfd,
        SYS_timerfd_create,
        SYS_eventfd,
        SYS_fallocate,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        SYS_accept4,
        SYS_signalfd4,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_dup3,
        SYS_pipe2,
        SYS_inotify_init1,
        SYS_preadv,
        SYS_pwritev,
        SYS_rt_tgsigqueueinfo,
        SYS_recvmmsg,
        SYS_prlimit64,
        SYS_syncfs,
        SYS_sendmmsg,
        SYS_getcpu,
        SYS_sched_setattr,
        SYS_sched_getattr,
        SYS_renameat2,
        SYS_getrandom,
        SYS_memfd_create,
        SYS_execveat,
        SYS_membarrier,
        SYS_copy_file_range,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_statx,
        SYS_rseq,
        SYS_pidfd_open,
        SYS_pidfd_send_signal,
        SYS_close_range,
        SYS_openat2,
        SYS_faccessat2,
        SYS_epoll_pwait2,
        SYS_clone3,
    ]
};

/// Not written for other architectures: everything is refused there, so
/// the start-up probe fails and `/health` reports the sandbox unusable.
#[cfg(not(target_arch = "x86_64"))]
const PLAIN: &[libc::c_long] = &[];

/// Namespace-creating clone flags. `CLONE_NEWTIME` (0x80) shares its bit
/// with the exit signal in `clone`'s first argument, so it is left out.
const NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, Len::Qword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

fn allow_list() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = PLAIN.iter().map(|&nr| (nr, vec![])).collect();
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, Op::MaskedEq(NS_FLAGS), 0)?])?],
    );
    let domains = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];
    rules.insert(
        libc::SYS_socket,
        domains
            .iter()
            .map(|&d| rule(vec![cond(0, Op::Eq, d as u64)?]))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(
        libc::SYS_socketpair,
        vec![rule(vec![cond(0, Op::Eq, libc::AF_UNIX as u64)?])?],
    );
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![
            SeccompCondition::new(1, Len::Dword, Op::Ne, libc::TIOCSTI)
                .map_err(|e| e.to_string())?,
            SeccompCondition::new(1, Len::Dword, Op::Ne, libc::TIOCLINUX)
                .map_err(|e| e.to_string())?,
        ])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// `clone3` carries its flags in memory a filter cannot read: answer
/// `ENOSYS` so libc falls back to `clone`. Installed before the allow-list
/// (which lists `clone3` only so that this answer, an error, takes
/// precedence over its allow).
fn clone3_fallback() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, vec![])]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Installs both filters on the calling thread (the child is single-threaded).
/// Requires `no_new_privs`, which the child sets first.
pub(crate) fn apply() -> Result<(), String> {
    let allow = allow_list()?;
    let clone3 = clone3_fallback()?;
    seccompiler::apply_filter(&clone3).map_err(|e| format!("seccomp clone3: {e}"))?;
    seccompiler::apply_filter(&allow).map_err(|e| format!("seccomp: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile() {
        assert!(super::allow_list().unwrap().len() > 100);
        assert!(!super::clone3_fallback().unwrap().is_empty());
    }
}
