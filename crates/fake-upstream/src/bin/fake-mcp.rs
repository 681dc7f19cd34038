//! `fake-mcp`: the MCP test fixture over stdio, as an operator's
//! `[mcp.NAME] command = [...]` would run it. Tools: see `fake_upstream::mcp`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match fake_upstream::mcp::serve_stdio().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-mcp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
