//! The local server, scripted DNS and helpers the `http_fetch` tests share.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
pub use std::time::{Duration, Instant};

use agentd_core::TenantId;
pub use agentd_engine::tools::http_fetch::{
    EgressConfigError, HostResolver, HttpFetch, HttpFetchPolicy, OperatorEgress,
};
pub use agentd_engine::tools::{Tool, ToolContext, ToolOutput};
use async_trait::async_trait;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
pub use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
}

pub struct Server {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub async fn start() -> Server {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let app = Router::new().fallback(move |req: Request| handle(log.clone(), req));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, seen }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Reaches this server by `127.0.0.1` or `localhost`: both listed, the
    /// loopback blocks opened, the server's port allowed.
    pub fn policy(&self) -> HttpFetchPolicy {
        HttpFetchPolicy {
            allow_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            allow_cidrs: vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()],
            allowed_ports: vec![self.port()],
            ..HttpFetchPolicy::default()
        }
    }
}

pub async fn handle(seen: Arc<Mutex<Vec<Seen>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| query.get(k).cloned().unwrap_or_default();
    match parts.uri.path() {
        "/hello" => (
            [
                ("content-type", "text/plain"),
                ("set-cookie", "session=secret"),
            ],
            "hello",
        )
            .into_response(),
        "/echo" => format!("{} {}", parts.method, String::from_utf8_lossy(&body)).into_response(),
        "/redirect" => {
            let status = param("status").parse().unwrap_or(302);
            (
                StatusCode::from_u16(status).unwrap(),
                [("location", param("to"))],
            )
                .into_response()
        }
        "/loop" => (StatusCode::FOUND, [("location", "/loop")]).into_response(),
        "/big" => "a".repeat(param("n").parse().unwrap_or(0)).into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late".into_response()
        }
        _ => (StatusCode::NOT_FOUND, "no such page").into_response(),
    }
}

/// A scripted DNS that counts its lookups.
#[derive(Default)]
pub struct FakeDns {
    answers: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicUsize,
}

impl FakeDns {
    pub fn with(entries: &[(&str, &[&str])]) -> Arc<FakeDns> {
        let answers = entries
            .iter()
            .map(|(name, ips)| {
                (
                    name.to_string(),
                    ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                )
            })
            .collect();
        Arc::new(FakeDns {
            answers,
            lookups: AtomicUsize::new(0),
        })
    }

    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl HostResolver for FakeDns {
    async fn lookup(&self, host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.answers
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
    }
}

pub fn ctx() -> ToolContext {
    ToolContext {
        run_id: "run_test".into(),
        tenant: TenantId::default_tenant(),
        cancel: CancellationToken::new(),
    }
}

pub async fn call(tool: &HttpFetch, args: Value) -> ToolOutput {
    tool.call(&ctx(), args).await
}

pub async fn get(tool: &HttpFetch, url: &str) -> ToolOutput {
    call(tool, json!({ "url": url })).await
}

/// The parsed JSON of a successful call.
pub fn ok(out: &ToolOutput) -> Value {
    assert!(!out.is_error, "expected success, got {}", out.content);
    serde_json::from_str(&out.content).unwrap()
}

/// Asserts an error output with `code`, returning its text.
pub fn refused(out: &ToolOutput, code: &str) -> String {
    assert!(
        out.is_error,
        "expected {code}, got success: {}",
        out.content
    );
    assert!(
        out.content.starts_with(&format!("{code}: ")),
        "expected {code}, got {}",
        out.content
    );
    out.content.clone()
}
