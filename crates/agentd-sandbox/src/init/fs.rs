//! The sandbox's root filesystem, built in the child's private mount
//! namespace: a tmpfs holding read-only binds of the system directories, a
//! generated `/etc`, a fresh `/proc`, a minimal `/dev`, size-capped `/work`
//! and `/tmp`, and the program under `/opt/agentd`. Then `pivot_root` into it
//! and detach the host's tree, so no path leads back out.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{InitConfig, SANDBOX_UID};
use crate::spec::Language;

/// Where the new root is assembled (a mount point in the child's own
/// namespace; the host's directory is untouched).
const STAGING: &str = "/tmp";
/// System directories shared read-only (symlinks are recreated as such).
const SYSTEM_DIRS: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"];
/// Device nodes bound from the host (creating nodes is not allowed in a
/// user namespace, and these are harmless).
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
/// Read-only public certificates, so HTTPS through the proxy can verify.
const CERTS: &str = "/etc/ssl/certs";

/// The `agentd` Python helper module.
const PY_HELPER: &str = include_str!("../python/agentd.py");
/// Sourced by bash through `BASH_ENV`: defines `agentd_result`.
const SH_HELPER: &str = include_str!("../python/agentd.sh");

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn tmpfs(target: &Path, options: &str) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
    .map_err(err(format!("tmpfs {}", target.display())))
}

fn bind_ro(source: &Path, target: &Path) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format!("bind {}", source.display())))?;
    remount_ro(target)
}

fn remount_ro(target: &Path) -> Result<(), String> {
    let base = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    // A bind keeps its source's locked flags (nodev, noexec): retry with them.
    mount(None::<&str>, target, None::<&str>, base, None::<&str>)
        .or_else(|_| {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                base | MsFlags::MS_NODEV,
                None::<&str>,
            )
        })
        .map_err(err(format!("read-only {}", target.display())))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::write(path, text).map_err(err(path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(err(path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(err(format!("mkdir {}", path.display())))
}

pub(super) fn build_root(config: &InitConfig) -> Result<(), String> {
    // Nothing mounted here propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make / private"))?;
    let root = PathBuf::from(STAGING);
    tmpfs(&root, "size=16m,mode=0755")?;
    for dir in SYSTEM_DIRS {
        let host = Path::new(dir);
        let inside = root.join(&dir[1..]);
        match std::fs::symlink_metadata(host) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(host).map_err(err(dir))?;
                symlink(to, &inside).map_err(err(dir))?;
            }
            Ok(m) if m.is_dir() => {
                mkdir(&inside)?;
                bind_ro(host, &inside)?;
            }
            _ => {}
        }
    }
    build_etc(&root.join("etc"))?;
    let proc = root.join("proc");
    mkdir(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(err("mount /proc"))?;
    build_dev(&root.join("dev"))?;
    let disk = format!("size={},nr_inodes=16k", config.disk_bytes);
    let work = root.join("work");
    mkdir(&work)?;
    tmpfs(&work, &format!("{disk},mode=0700"))?;
    let tmp = root.join("tmp");
    mkdir(&tmp)?;
    tmpfs(&tmp, &format!("{disk},mode=1777"))?;
    let opt = root.join("opt/agentd");
    mkdir(&opt)?;
    write(&opt.join("agentd.py"), PY_HELPER, 0o444)?;
    write(&opt.join("agentd.sh"), SH_HELPER, 0o444)?;
    let main = match config.language {
        Language::Python => "main.py",
        Language::Bash => "main.sh",
    };
    write(&opt.join(main), &config.code, 0o444)?;

    // Into the new root; the old one is stacked under it and detached.
    nix::unistd::chdir(&root).map_err(err("chdir new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the host root"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    // The skeleton itself is read-only from now on; /work and /tmp are not.
    remount_ro(Path::new("/"))
}

fn build_etc(etc: &Path) -> Result<(), String> {
    mkdir(etc)?;
    let uid = SANDBOX_UID;
    write(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
             sandbox:x:{uid}:{uid}:sandbox:/work:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        0o444,
    )?;
    write(
        &etc.join("group"),
        &format!("root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n"),
        0o444,
    )?;
    write(
        &etc.join("hosts"),
        "127.0.0.1 localhost sandbox\n::1 localhost\n",
        0o444,
    )?;
    // No resolver: names are resolved by the egress proxy, never inside.
    write(&etc.join("resolv.conf"), "", 0o444)?;
    write(&etc.join("nsswitch.conf"), "hosts: files\n", 0o444)?;
    write(&etc.join("hostname"), "sandbox\n", 0o444)?;
    if Path::new(CERTS).is_dir() {
        let inside = etc.join("ssl/certs");
        mkdir(&inside)?;
        bind_ro(Path::new(CERTS), &inside)?;
    }
    Ok(())
}

fn build_dev(dev: &Path) -> Result<(), String> {
    mkdir(dev)?;
    tmpfs(dev, "size=64k,mode=0755")?;
    for name in DEVICES {
        let inside = dev.join(name);
        std::fs::File::create(&inside).map_err(err(inside.display()))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &inside,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err(format!("bind /dev/{name}")))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).map_err(err(link))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    tmpfs(&shm, "size=1m,mode=1777")?;
    // Nothing new under /dev (the nodes themselves stay usable).
    remount_ro(dev)
}
