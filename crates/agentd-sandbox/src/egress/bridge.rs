//! The proxy's door into the sandbox. The netns of an allow-list sandbox is
//! empty but for loopback; its child binds a TCP listener on
//! `127.0.0.1:PORT` there and hands the listening socket to the daemon over
//! the Unix socket [`crate::init::CTL_FD`] (SCM_RIGHTS). The daemon's proxy
//! accepts on it: connections start inside the sandbox's netns and end in
//! the daemon's, where every decision is made. Nothing else crosses.

use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// In the child: bring loopback up, listen, send the socket out, close it.
pub(crate) fn listen_inside(port: u16, ctl_fd: i32) -> Result<(), String> {
    loopback_up()?;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("proxy listener: {e}"))?;
    let fds = [listener.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        ctl_fd,
        &[IoSlice::new(b"L")],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("sending the proxy listener: {e}"))?;
    // SAFETY: CTL_FD was handed to this process; nothing else uses it.
    drop(unsafe { OwnedFd::from_raw_fd(ctl_fd) });
    Ok(())
}

/// In the daemon: receive the listener the child sent.
pub fn receive_listener(ctl: &OwnedFd) -> std::io::Result<std::net::TcpListener> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        ctl.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { std::net::TcpListener::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::other("the sandbox sent no listener"))
}

/// A new network namespace's loopback starts down.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket and ioctl calls on a buffer we own.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        let e = std::io::Error::last_os_error();
        libc::close(sock);
        if rc != 0 {
            return Err(format!("loopback up: {e}"));
        }
    }
    Ok(())
}
