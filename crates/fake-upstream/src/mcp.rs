//! A small MCP server for tests, built on `rmcp`'s server side so agentd's
//! client is checked against the official SDK rather than a mock of itself.
//!
//! The same tools are served two ways: over stdio by the `fake-mcp` binary
//! (what an operator's `command = [...]` runs) and over streamable HTTP in
//! the test's own process ([`McpHttpServer`]).
//!
//! Tools: `echo {text}` → the text; `add {a, b}` → the sum; `fail {}` → an
//! `isError` result; `env {}` → the names of the variables the process sees
//! (proves a stdio server's environment was cleared); `image {}` → an image
//! block and a text block; `sleep {ms}` → `slept` after that long (timeouts,
//! cancellation); `weird.name/v1 {}` → `ok` (a name that must be sanitized);
//! `pid {}` → the serving process's id; and, over stdio only, `exit {}` →
//! the process exits mid-call (transport failure, reconnection).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The fixture's tool handler. `stdio` adds `exit`, which would end the
/// test process itself if served in-process.
#[derive(Clone, Debug, Default)]
pub struct FixtureMcp {
    stdio: bool,
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn no_arguments() -> Arc<JsonObject> {
    schema(json!({"type": "object", "properties": {}}))
}

impl FixtureMcp {
    pub fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            Tool::new(
                "echo",
                "Returns its text.",
                schema(json!({
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                    "required": ["text"],
                })),
            ),
            Tool::new(
                "add",
                "Adds two numbers.",
                schema(json!({
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                })),
            ),
            Tool::new("fail", "Always fails.", no_arguments()),
            Tool::new(
                "env",
                "Names of the environment variables the server sees.",
                no_arguments(),
            ),
            Tool::new("image", "A picture and a caption.", no_arguments()),
            Tool::new(
                "sleep",
                "Answers after `ms` milliseconds.",
                schema(json!({
                    "type": "object",
                    "properties": {"ms": {"type": "integer"}},
                    "required": ["ms"],
                })),
            ),
            Tool::new(
                "weird.name/v1",
                "A name models may not use.",
                no_arguments(),
            ),
            Tool::new("pid", "The server's process id.", no_arguments()),
        ];
        if self.stdio {
            tools.push(Tool::new(
                "exit",
                "Ends the server process.",
                no_arguments(),
            ));
        }
        tools
    }

    async fn call(&self, name: &str, args: &JsonObject) -> Result<CallToolResult, ErrorData> {
        let text = |s: String| Ok(CallToolResult::success(vec![ContentBlock::text(s)]));
        match name {
            "echo" => match args.get("text") {
                Some(Value::String(s)) => text(s.clone()),
                _ => Err(ErrorData::invalid_params("text must be a string", None)),
            },
            "add" => match (
                args.get("a").and_then(Value::as_f64),
                args.get("b").and_then(Value::as_f64),
            ) {
                (Some(a), Some(b)) => text(json!(a + b).to_string()),
                _ => Err(ErrorData::invalid_params("a and b must be numbers", None)),
            },
            "fail" => Ok(CallToolResult::error(vec![ContentBlock::text(
                "the fixture failed on purpose",
            )])),
            "env" => {
                let mut names: Vec<String> = std::env::vars_os()
                    .map(|(k, _)| k.to_string_lossy().into_owned())
                    .collect();
                names.sort();
                text(json!(names).to_string())
            }
            "image" => Ok(CallToolResult::success(vec![
                ContentBlock::image("iVBORw0KGgo=", "image/png"),
                ContentBlock::text("a tiny picture"),
            ])),
            "sleep" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text("slept".into())
            }
            "weird.name/v1" => text("ok".into()),
            "pid" => text(std::process::id().to_string()),
            "exit" if self.stdio => std::process::exit(3),
            other => Err(ErrorData::invalid_params(
                format!("no tool named {other:?}"),
                None,
            )),
        }
    }
}

impl ServerHandler for FixtureMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        Ok(self.call(&request.name, &args).await?.into())
    }
}

/// Serves the fixture on stdin/stdout until the client goes away.
pub async fn serve_stdio() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = FixtureMcp { stdio: true }
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}

/// The fixture over streamable HTTP on 127.0.0.1, in the calling process;
/// stopped when dropped.
pub struct McpHttpServer {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl McpHttpServer {
    pub async fn start() -> McpHttpServer {
        Self::start_on("127.0.0.1:0".parse().expect("a socket address")).await
    }

    /// On a given address: a restart on the same port tests reconnection.
    pub async fn start_on(addr: SocketAddr) -> McpHttpServer {
        let cancel = CancellationToken::new();
        let config =
            StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token());
        let service: StreamableHttpService<FixtureMcp, LocalSessionManager> =
            StreamableHttpService::new(|| Ok(FixtureMcp::default()), Default::default(), config);
        let app = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the MCP fixture");
        let addr = listener.local_addr().expect("local address");
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        McpHttpServer { addr, cancel }
    }

    /// `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for McpHttpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Where cargo put the `fake-mcp` binary: beside the test executable's
/// `deps/` folder (`target/debug/fake-mcp`). Another package's binary has no
/// `CARGO_BIN_EXE_*`; `cargo test --workspace` builds this one because this
/// package has integration tests. Running one package's tests alone needs
/// `cargo build -p fake-upstream --bins` first.
pub fn stdio_fixture_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join("fake-mcp");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p fake-upstream --bins` (cargo test --workspace builds it)",
        path.display()
    );
    path
}
