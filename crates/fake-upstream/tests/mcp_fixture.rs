//! The stdio MCP fixture, checked with `rmcp`'s own client, so a failure in
//! agentd's tests points at agentd and not at the fixture. (The HTTP side is
//! exercised by the engine's tests: rmcp's default HTTP client cannot be
//! built here, where the workspace's reqwest 0.13 has TLS without a default
//! crypto provider.)

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ContentBlock, JsonObject};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

fn args(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}

fn text_of(content: &[ContentBlock]) -> Vec<String> {
    content
        .iter()
        .filter_map(|c| match c {
            ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_stdio_fixture_lists_and_runs_its_tools_in_a_cleared_environment() {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-mcp"));
    cmd.env_clear().env("ONLY_THIS", "1");
    let client =
        ().serve(TokioChildProcess::new(cmd).expect("spawn fake-mcp"))
            .await
            .expect("initialize");
    let tools = client.peer().list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "echo",
            "add",
            "fail",
            "env",
            "image",
            "sleep",
            "weird.name/v1",
            "pid",
            "exit"
        ]
    );

    let echo = client
        .peer()
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "hi"}))))
        .await
        .expect("echo");
    assert_eq!(text_of(&echo.content), ["hi"]);
    assert_ne!(echo.is_error, Some(true));

    let fail = client
        .peer()
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .expect("fail answers");
    assert_eq!(fail.is_error, Some(true));

    let env = client
        .peer()
        .call_tool(CallToolRequestParams::new("env"))
        .await
        .expect("env");
    assert_eq!(text_of(&env.content), [r#"["ONLY_THIS"]"#]);
    client.cancel().await.expect("close");
}
