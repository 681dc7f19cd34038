//! One configured MCP server, shared by every run: connected on first use,
//! its tool list cached for the connection's life, reconnected when the
//! connection is found dead.
//!
//! A call is never sent twice. A connection that died between calls is
//! replaced before the call goes out; one that fails during a call answers
//! that call `MCP_UNAVAILABLE` (the server may have run it: DESIGN §4's
//! "interrupted tools never rerun") and is replaced on the next use.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject, Tool};
use rmcp::service::{Peer, RoleClient, ServiceError};

use super::McpError;
use super::render::exposed_name;
use super::spec::{McpServerSpec, McpTransportSpec};
use super::transport::{self, Session};
use crate::agents::ApprovalPolicy;

pub struct McpServer {
    name: String,
    transport: McpTransportSpec,
    approval: ApprovalPolicy,
    timeout: Duration,
    /// Held while connecting, so concurrent runs share one connection.
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("approval", &self.approval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A live session and what it offered when it opened.
pub(super) struct Connection {
    peer: Peer<RoleClient>,
    /// Each tool with the name the model calls it by.
    pub tools: Vec<(String, Tool)>,
    /// Taken to close the session; dropping it also closes it (a stdio
    /// child is killed).
    session: Mutex<Option<Session>>,
}

impl Connection {
    fn is_closed(&self) -> bool {
        self.peer.is_transport_closed()
    }

    /// Closes the session: stdin closed, then SIGTERM, then SIGKILL for a
    /// stdio child (rmcp's graceful shutdown), bounded by `wait`.
    async fn close(&self, wait: Duration) {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut session) = session {
            let _ = session.close_with_timeout(wait).await;
        }
    }
}

/// How long closing a session may take at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl McpServer {
    pub fn new(name: &str, spec: &McpServerSpec) -> Result<McpServer, super::spec::McpConfigError> {
        Ok(McpServer {
            name: name.to_owned(),
            transport: spec.transport(name)?,
            approval: spec.approval,
            timeout: Duration::from_secs(spec.timeout_secs),
            current: tokio::sync::Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn approval(&self) -> ApprovalPolicy {
        self.approval
    }

    /// The live connection, opened (and its tools listed) if there is none
    /// or the last one died.
    pub(super) async fn connection(&self) -> Result<Arc<Connection>, McpError> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            tracing::info!(mcp = %self.name, "the connection closed; reconnecting");
        }
        if let Some(dead) = current.take() {
            dead.close(Duration::ZERO).await;
        }
        let conn = Arc::new(self.open().await?);
        *current = Some(conn.clone());
        Ok(conn)
    }

    async fn open(&self) -> Result<Connection, McpError> {
        let seconds = self.timeout.as_secs();
        let session =
            tokio::time::timeout(self.timeout, transport::open(&self.name, &self.transport))
                .await
                .map_err(|_| McpError::Timeout(seconds))??;
        let listed = tokio::time::timeout(self.timeout, session.peer().list_all_tools()).await;
        let listed = match listed {
            Ok(Ok(tools)) => tools,
            Ok(Err(e)) => {
                let _ = session.cancel().await;
                return Err(McpError::from_service(e));
            }
            Err(_) => {
                let _ = session.cancel().await;
                return Err(McpError::Timeout(seconds));
            }
        };
        let mut tools: Vec<(String, Tool)> = Vec::with_capacity(listed.len());
        for tool in listed {
            let exposed = exposed_name(&self.name, &tool.name, &|candidate| {
                tools.iter().any(|(taken, _)| taken == candidate)
            });
            tools.push((exposed, tool));
        }
        tracing::info!(mcp = %self.name, tools = tools.len(), "connected");
        Ok(Connection {
            peer: session.peer().clone(),
            tools,
            session: Mutex::new(Some(session)),
        })
    }

    /// Forgets `conn` if it is still the current one: the next use reconnects.
    async fn forget(&self, conn: &Arc<Connection>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
            drop(current);
            conn.close(Duration::ZERO).await;
        }
    }

    /// One `tools/call`, bounded by the server's `timeout_secs`. Dropping
    /// the future (cancel, timeout) tells the server the call is abandoned.
    pub async fn call(
        &self,
        tool: &str,
        arguments: JsonObject,
    ) -> Result<CallToolResult, McpError> {
        let conn = self.connection().await?;
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        match tokio::time::timeout(self.timeout, conn.peer.call_tool(params)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => {
                let e = McpError::from_service(e);
                if e.is_transport() {
                    self.forget(&conn).await;
                }
                Err(e)
            }
            Err(_) => Err(McpError::Timeout(self.timeout.as_secs())),
        }
    }

    /// Closes the connection, if any (a stdio child exits).
    pub async fn shutdown(&self) {
        let conn = self.current.lock().await.take();
        if let Some(conn) = conn {
            conn.close(CLOSE_WAIT).await;
        }
    }
}

impl McpError {
    fn from_service(e: ServiceError) -> McpError {
        match e {
            ServiceError::McpError(data) => McpError::Refused(data.message.into_owned()),
            ServiceError::Timeout { timeout } => McpError::Timeout(timeout.as_secs()),
            ServiceError::TransportSend(e) => McpError::Transport(e.to_string()),
            ServiceError::TransportClosed => McpError::Transport("the connection closed".into()),
            other => McpError::Protocol(other.to_string()),
        }
    }
}
