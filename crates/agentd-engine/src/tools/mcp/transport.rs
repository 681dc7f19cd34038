//! Opening an MCP session: a stdio child in a cleared environment, or a
//! streamable HTTP client that ignores the environment's proxies.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ServiceExt, service::ClientInitializeError};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::process::ChildStderr;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::McpError;
use super::spec::{McpTransportSpec, STDIO_PATH};

/// An initialized session with one server.
pub(super) type Session = RunningService<RoleClient, ()>;

/// The longest stderr line a server may log before it is cut.
const MAX_STDERR_LINE: usize = 4096;

/// Starts the server (or reaches it) and completes MCP's `initialize`.
pub(super) async fn open(server: &str, spec: &McpTransportSpec) -> Result<Session, McpError> {
    match spec {
        McpTransportSpec::Stdio { program, args, env } => {
            let mut cmd = tokio::process::Command::new(program);
            // Nothing of the daemon's environment (model keys, the admin
            // token, AGENTD_*): only PATH and what the operator listed.
            cmd.args(args)
                .env_clear()
                .env("PATH", STDIO_PATH)
                .envs(env)
                .kill_on_drop(true);
            let (child, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| McpError::Spawn(format!("{program:?}: {e}")))?;
            if let Some(stderr) = stderr {
                tokio::spawn(log_stderr(server.to_owned(), stderr));
            }
            ().serve(child).await.map_err(initialize_error)
        }
        McpTransportSpec::Http { url } => {
            let client = http_client()?;
            let transport = StreamableHttpClientTransport::with_client(
                client,
                StreamableHttpClientTransportConfig::with_uri(url.as_str()),
            );
            ().serve(transport).await.map_err(initialize_error)
        }
    }
}

fn initialize_error(e: ClientInitializeError) -> McpError {
    McpError::Initialize(e.to_string())
}

/// A client for one HTTP server. No proxy from the environment (DESIGN §5:
/// what agentd reaches is what the operator configured), no redirects (a
/// redirect could carry the session to another host; configure the final
/// URL), TLS through rustls with ring and the platform's trust roots.
fn http_client() -> Result<reqwest013::Client, McpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| McpError::Client(format!("TLS: {e}")))?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest013::Client::builder()
        .no_proxy()
        .redirect(reqwest013::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        // rmcp's own default: a reused connection whose last body was not
        // read to the end stalls on delayed ACKs.
        .pool_max_idle_per_host(0)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| McpError::Client(e.to_string()))
}

/// A stdio server's stderr is its log: kept in the daemon's, line by line,
/// cut at [`MAX_STDERR_LINE`] so a server cannot grow memory without bound.
async fn log_stderr(server: String, stderr: ChildStderr) {
    let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(MAX_STDERR_LINE));
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => tracing::info!(mcp = %server, "{line}"),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                tracing::info!(mcp = %server, "(a stderr line over {MAX_STDERR_LINE} bytes was dropped)")
            }
            Err(LinesCodecError::Io(_)) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_client_builds_with_ring_and_the_platform_roots() {
        http_client().expect("client");
    }
}
