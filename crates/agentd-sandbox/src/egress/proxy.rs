//! The per-sandbox HTTP proxy. It accepts on the listener the sandbox sent
//! out (see [`super::bridge`]) and, for each connection, reads one request
//! head: `CONNECT host:port` (HTTPS) or an absolute-form `http://` request.
//! The host is matched against the effective list before any DNS lookup;
//! IP literals are refused; the port must be allowed; the name is resolved
//! once and every answer checked (loopback, private, link-local, CGNAT, ULA…
//! refused unless an operator block admits them); the connection goes to
//! that checked address. A tunnel must then open with a TLS ClientHello
//! whose SNI equals the CONNECT host. Bytes and time are capped; each
//! decision is reported to the observer (and so to the audit trail).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{EgressDecision, EgressPolicy, normalize_host, sni};
use crate::launch::Observer;

/// Longest request head read from the sandbox.
const MAX_HEAD: usize = 16 * 1024;
/// Time to send a request head, resolve, connect.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts until the task is aborted (when the sandbox ends).
pub async fn serve(ctl: OwnedFd, policy: Arc<EgressPolicy>, observer: Arc<dyn Observer>) {
    let Ok(Ok(listener)) =
        tokio::task::spawn_blocking(move || super::bridge::receive_listener(&ctl)).await
    else {
        return;
    };
    let Ok(listener) = listener
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpListener::from_std(listener))
    else {
        return;
    };
    let opened = Arc::new(AtomicU32::new(0));
    // Owned here, so aborting this task (the sandbox ended) ends every
    // connection it opened too.
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((conn, _)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        let (policy, observer, opened) = (policy.clone(), observer.clone(), opened.clone());
        connections.spawn(async move {
            if opened.fetch_add(1, Ordering::SeqCst) >= policy.max_connections {
                let d = denied(None, None, "CONNECTION_LIMIT", "too many connections");
                observer.egress(d);
                return;
            }
            handle(conn, &policy, &*observer).await;
        });
    }
}

fn denied(
    host: Option<&str>,
    port: Option<u16>,
    reason: &'static str,
    detail: impl Into<String>,
) -> EgressDecision {
    EgressDecision {
        allowed: false,
        host: host.map(str::to_owned),
        port,
        address: None,
        reason: Some(reason),
        detail: Some(detail.into()),
    }
}

/// A parsed request head.
struct Head {
    connect: bool,
    host: String,
    port: u16,
    /// For plain HTTP: the head rewritten to origin form.
    forward: Vec<u8>,
    /// Bytes read past the head.
    rest: Vec<u8>,
}

async fn read_head(conn: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large");
        }
        let n = conn.read(&mut chunk).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Err("closed before a request");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Splits `host:port` / `[v6]:port`; the port defaults to `default`.
fn split_authority(auth: &str, default: Option<u16>) -> Option<(String, u16)> {
    if let Some(rest) = auth.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default?,
        };
        return Some((format!("[{h}]"), port));
    }
    match auth.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((auth.to_owned(), default?)),
    }
}

fn parse_head(head: &[u8], rest: Vec<u8>) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m, t, v),
        _ => return Err("malformed request line"),
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, None).ok_or("malformed CONNECT target")?;
        return Ok(Head {
            connect: true,
            host,
            port,
            forward: Vec::new(),
            rest,
        });
    }
    let after = target
        .strip_prefix("http://")
        .ok_or("only absolute http:// requests and CONNECT are proxied")?;
    let (auth, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if auth.contains('@') {
        return Err("credentials in the URL");
    }
    let (host, port) = split_authority(auth, Some(80)).ok_or("malformed host")?;
    let mut forward = format!("{method} {path} {version}\r\n").into_bytes();
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        // The Host header is the URL's: a request cannot name one host in
        // its URL (checked) and another to the server behind the address.
        if name.starts_with("proxy-")
            || ["connection", "keep-alive", "host"].contains(&name.as_str())
        {
            continue;
        }
        forward.extend_from_slice(line.as_bytes());
        forward.extend_from_slice(b"\r\n");
    }
    forward.extend_from_slice(format!("Host: {auth}\r\nConnection: close\r\n\r\n").as_bytes());
    Ok(Head {
        connect: false,
        host,
        port,
        forward,
        rest,
    })
}

/// The host and port against the policy, then DNS once: the address to use.
async fn decide(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, EgressDecision> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Err(denied(
            Some(host),
            Some(port),
            "IP_LITERAL",
            "IP addresses are refused; name a host",
        ));
    }
    let name = normalize_host(host)
        .ok_or_else(|| denied(Some(host), Some(port), "HOST_INVALID", "not a host name"))?;
    if !policy.hosts.iter().any(|r| r.matches(&name)) {
        return Err(denied(
            Some(&name),
            Some(port),
            "HOST_NOT_ALLOWED",
            "not on the allow-list",
        ));
    }
    if !policy.ports.contains(&port) {
        return Err(denied(
            Some(&name),
            Some(port),
            "PORT_NOT_ALLOWED",
            format!("port {port} is not allowed"),
        ));
    }
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((name.as_str(), port)))
            .await
        {
            Ok(Ok(a)) => a.collect(),
            _ => {
                return Err(denied(
                    Some(&name),
                    Some(port),
                    "DNS_FAILED",
                    "the name did not resolve",
                ));
            }
        };
    if addrs.is_empty() {
        return Err(denied(
            Some(&name),
            Some(port),
            "DNS_FAILED",
            "no addresses",
        ));
    }
    // One refused answer refuses the name, so a mix cannot smuggle one in.
    for a in &addrs {
        if let Err(why) = (policy.check_addr)(a.ip()) {
            return Err(denied(
                Some(&name),
                Some(port),
                "ADDRESS_FORBIDDEN",
                format!("{}: {why}", a.ip()),
            ));
        }
    }
    Ok(addrs)
}

/// The first checked address that answers.
async fn connect_any(addrs: &[SocketAddr]) -> Option<TcpStream> {
    for a in addrs {
        if let Ok(Ok(s)) = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(a)).await {
            return Some(s);
        }
    }
    None
}

async fn handle(mut conn: TcpStream, policy: &EgressPolicy, observer: &dyn Observer) {
    let head = match tokio::time::timeout(STEP_TIMEOUT, read_head(&mut conn)).await {
        Ok(Ok((head, rest))) => parse_head(&head, rest),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out reading the request"),
    };
    let head = match head {
        Ok(h) => h,
        Err(why) => {
            observer.egress(denied(None, None, "BAD_REQUEST", why));
            let _ = conn
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
    };
    let addrs = match decide(policy, &head.host, head.port).await {
        Ok(a) => a,
        Err(d) => {
            let body = format!("egress denied: {}\n", d.detail.clone().unwrap_or_default());
            observer.egress(d);
            let reply = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            return;
        }
    };
    let name = normalize_host(&head.host).unwrap_or_default();
    let mut first = head.rest;
    if head.connect {
        if conn
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        match tokio::time::timeout(STEP_TIMEOUT, read_client_hello(&mut conn, first)).await {
            Ok(Some((record, server_name))) if server_name.eq_ignore_ascii_case(&name) => {
                first = record
            }
            Ok(Some((_, other))) => {
                observer.egress(denied(
                    Some(&name),
                    Some(head.port),
                    "SNI_MISMATCH",
                    format!("TLS server name {other:?} is not the CONNECT host"),
                ));
                return;
            }
            _ => {
                observer.egress(denied(
                    Some(&name),
                    Some(head.port),
                    "TLS_REQUIRED",
                    "a tunnel must start with a TLS ClientHello naming the host",
                ));
                return;
            }
        }
    }
    let upstream = match connect_any(&addrs).await {
        Some(s) => s,
        None => {
            observer.egress(denied(
                Some(&name),
                Some(head.port),
                "CONNECT_FAILED",
                "no checked address answered",
            ));
            if !head.connect {
                let _ = conn
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
                    .await;
            }
            return;
        }
    };
    observer.egress(EgressDecision {
        allowed: true,
        host: Some(name),
        port: Some(head.port),
        address: upstream.peer_addr().ok().map(|a| a.ip().to_string()),
        reason: None,
        detail: None,
    });
    let mut opening = head.forward;
    opening.extend_from_slice(&first);
    let _ = tokio::time::timeout(
        policy.max_connection_time,
        pump(conn, upstream, opening, policy.max_bytes_per_connection),
    )
    .await;
}

/// Reads the first TLS record and its server name.
async fn read_client_hello(conn: &mut TcpStream, mut buf: Vec<u8>) -> Option<(Vec<u8>, String)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(len) = sni::record_len(&buf) {
            if len > sni::MAX_RECORD {
                return None;
            }
            if buf.len() >= len {
                let name = sni::server_name(&buf[..len])?;
                return Some((buf, name));
            }
        } else if buf.len() >= 5 {
            return None;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Copies both ways until either side closes or `cap` bytes went through.
async fn pump(client: TcpStream, upstream: TcpStream, opening: Vec<u8>, cap: u64) {
    let (cr, cw) = client.into_split();
    let (ur, mut uw) = upstream.into_split();
    let used = Arc::new(std::sync::atomic::AtomicU64::new(opening.len() as u64));
    if uw.write_all(&opening).await.is_err() {
        return;
    }
    let copy = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                used: Arc<std::sync::atomic::AtomicU64>| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if used.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > cap {
                break;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let up = copy(cr, uw, used.clone());
    let down = copy(ur, cw, used);
    // Either direction ending (or the cap) ends the connection.
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let h = parse_head(
            b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            vec![],
        )
        .unwrap();
        assert!(h.connect);
        assert_eq!((h.host.as_str(), h.port), ("api.example.com", 443));
        let h = parse_head(
            b"GET http://a.test:8080/p?q=1 HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: x\r\n\r\n",
            vec![],
        )
        .unwrap();
        assert_eq!((h.host.as_str(), h.port), ("a.test", 8080));
        let fwd = String::from_utf8(h.forward).unwrap();
        assert!(fwd.starts_with("GET /p?q=1 HTTP/1.1\r\n"));
        assert!(!fwd.contains("Proxy-"));
        assert!(
            fwd.ends_with("Host: a.test:8080\r\nConnection: close\r\n\r\n"),
            "{fwd}"
        );
        let spoof = parse_head(
            b"GET http://a.test/ HTTP/1.1\r\nHost: internal\r\n\r\n",
            vec![],
        )
        .unwrap();
        assert!(
            !String::from_utf8(spoof.forward)
                .unwrap()
                .contains("internal")
        );
        assert!(parse_head(b"GET /local HTTP/1.1\r\n\r\n", vec![]).is_err());
        assert!(parse_head(b"GET http://u:p@a.test/ HTTP/1.1\r\n\r\n", vec![]).is_err());
    }
}
