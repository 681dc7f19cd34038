//! The registry against the real fixture (rmcp's server side, from
//! `fake-upstream`): over streamable HTTP in this process, and over stdio
//! as the `fake-mcp` binary.

use std::time::{Duration, Instant};

use agentd_core::TenantId;
use fake_upstream::mcp::{McpHttpServer, stdio_fixture_path};
use indexmap::IndexMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::agents::AgentSnapshot;
use crate::tools::{ToolRegistry, ToolSet};

fn spec(table: Value) -> McpServerSpec {
    serde_json::from_value(table).expect("a valid [mcp] table")
}

fn registry(servers: &[(&str, Value)]) -> ToolRegistry {
    let map: IndexMap<String, McpServerSpec> = servers
        .iter()
        .map(|(name, table)| ((*name).to_owned(), spec(table.clone())))
        .collect();
    ToolRegistry::new(Default::default(), map).expect("valid servers")
}

fn agent(tools: &[&str]) -> AgentSnapshot {
    serde_json::from_value(json!({
        "name": "a",
        "model_name": "default",
        "model": {"provider": "openai", "base_url": "http://127.0.0.1:1", "model": "m"},
        "instructions": "",
        "tools": tools,
        "max_steps": 4,
        "max_output_tokens": 100,
        "timeout_secs": 60,
    }))
    .expect("an agent snapshot")
}

fn ctx() -> ToolContext {
    ToolContext {
        run_id: "run_test".into(),
        tenant: TenantId::default_tenant(),
        cancel: CancellationToken::new(),
    }
}

async fn call(set: &ToolSet, name: &str, args: Value) -> ToolOutput {
    let tool = set.get(name).unwrap_or_else(|| panic!("no tool {name}"));
    tool.call(&ctx(), args).await
}

fn stdio(env: Value) -> Value {
    json!({
        "command": [stdio_fixture_path().to_string_lossy()],
        "env": env,
    })
}

#[tokio::test]
async fn an_http_servers_tools_are_offered_prefixed_and_run() {
    let server = McpHttpServer::start().await;
    let reg = registry(&[("fx", json!({"url": server.url(), "approval": "never"}))]);
    let set = reg
        .for_agent(&agent(&["current_time", "mcp:fx"]))
        .await
        .expect("tools");
    let names: Vec<String> = set.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "current_time",
            "fx__echo",
            "fx__add",
            "fx__fail",
            "fx__env",
            "fx__image",
            "fx__sleep",
            "fx__weird_name_v1",
            "fx__pid",
        ]
    );
    let echo = set.specs().into_iter().nth(1).unwrap();
    assert_eq!(echo.description, "Returns its text.");
    assert_eq!(echo.parameters["required"], json!(["text"]));
    let add = set.get("fx__add").unwrap();
    assert!(
        !set.needs_approval("fx__add", add.as_ref()),
        "approval = never"
    );

    assert_eq!(
        call(&set, "fx__add", json!({"a": 2, "b": 3})).await,
        ToolOutput::ok("5.0")
    );
    assert_eq!(
        call(&set, "fx__fail", json!({})).await,
        ToolOutput::error("the fixture failed on purpose")
    );
    assert_eq!(
        call(&set, "fx__image", Value::Null).await,
        ToolOutput::ok("[image: image/png]\na tiny picture")
    );
    // The sanitized name still calls the tool by its own name.
    assert_eq!(
        call(&set, "fx__weird_name_v1", json!({})).await,
        ToolOutput::ok("ok")
    );
    let not_object = call(&set, "fx__echo", json!(["hi"])).await;
    assert_eq!(
        not_object,
        ToolOutput::error("arguments must be a JSON object")
    );
    let refused = call(&set, "fx__echo", json!({"text": 7})).await;
    assert!(refused.is_error);
    assert!(
        refused.content.starts_with("MCP_ERROR: MCP server \"fx\""),
        "{refused:?}"
    );
}

#[tokio::test]
async fn calls_need_approval_by_default_and_the_agent_can_waive_it() {
    let server = McpHttpServer::start().await;
    let reg = registry(&[("fx", json!({"url": server.url()}))]);
    let mut a = agent(&["mcp:fx"]);
    a.approval
        .insert("fx__echo".into(), crate::agents::ApprovalPolicy::Never);
    let set = reg.for_agent(&a).await.expect("tools");
    let add = set.get("fx__add").unwrap();
    assert!(set.needs_approval("fx__add", add.as_ref()));
    let echo = set.get("fx__echo").unwrap();
    assert!(!set.needs_approval("fx__echo", echo.as_ref()));
}

#[tokio::test]
async fn a_stdio_server_sees_only_path_and_its_configured_env() {
    // The test process has variables of its own (cargo sets many), none of
    // which may reach the server.
    assert!(std::env::vars_os().count() > 2);
    let reg = registry(&[("fx", stdio(json!({"FIXTURE_MODE": "test"})))]);
    let set = reg.for_agent(&agent(&["mcp:fx"])).await.expect("tools");
    let env = call(&set, "fx__env", json!({})).await;
    assert_eq!(env, ToolOutput::ok(r#"["FIXTURE_MODE","PATH"]"#));
    assert_eq!(
        call(&set, "fx__echo", json!({"text": "héllo"})).await,
        ToolOutput::ok("héllo")
    );
    reg.shutdown().await;
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_dead_stdio_server_fails_the_call_in_flight_and_is_restarted_for_the_next() {
    let reg = registry(&[("fx", stdio(json!({})))]);
    let set = reg.for_agent(&agent(&["mcp:fx"])).await.expect("tools");
    let first: u32 = call(&set, "fx__pid", json!({}))
        .await
        .content
        .parse()
        .unwrap();
    assert!(alive(first));

    let died = call(&set, "fx__exit", json!({})).await;
    assert!(died.is_error);
    assert!(
        died.content
            .starts_with("MCP_UNAVAILABLE: MCP server \"fx\""),
        "{died:?}"
    );
    // Not retried: the call may have had effects before the server died.
    let second: u32 = call(&set, "fx__pid", json!({}))
        .await
        .content
        .parse()
        .unwrap();
    assert_ne!(first, second, "a new process answers");

    reg.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(second) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(second), "the server exits at shutdown");
}

#[tokio::test]
async fn a_slow_call_times_out_and_a_cancelled_one_stops_at_once() {
    let server = McpHttpServer::start().await;
    let reg = registry(&[("fx", json!({"url": server.url(), "timeout_secs": 1}))]);
    let set = reg.for_agent(&agent(&["mcp:fx"])).await.expect("tools");
    let slow = call(&set, "fx__sleep", json!({"ms": 5000})).await;
    assert_eq!(
        slow,
        ToolOutput::error("MCP_UNAVAILABLE: MCP server \"fx\": no answer within 1 s")
    );

    let c = ctx();
    let tool = set.get("fx__sleep").unwrap().clone();
    let started = Instant::now();
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let out = tool.call(&c, json!({"ms": 5000})).await;
    assert!(
        out.is_error && out.content.starts_with("CANCELLED"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(900));
    // The server is still usable after both.
    assert_eq!(
        call(&set, "fx__echo", json!({"text": "still here"})).await,
        ToolOutput::ok("still here")
    );
}

#[tokio::test]
async fn unreachable_servers_fail_the_setup_with_mcp_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let reg = registry(&[
        (
            "down",
            json!({"url": format!("http://{closed}/mcp"), "timeout_secs": 5}),
        ),
        ("missing", json!({"command": ["/nonexistent/mcp-server"]})),
        (
            "quits",
            json!({"command": ["sh", "-c", "exit 0"], "timeout_secs": 5}),
        ),
    ]);
    for server in ["down", "missing", "quits"] {
        let err = match reg.for_agent(&agent(&[&format!("mcp:{server}")])).await {
            Ok(_) => panic!("{server} should be unreachable"),
            Err(e) => e,
        };
        assert_eq!(err.reason_code, MCP_UNAVAILABLE, "{server}: {err}");
        assert!(err.to_string().contains(server), "{err}");
    }
    let unknown = match reg.for_agent(&agent(&["mcp:nope"])).await {
        Ok(_) => panic!("nope is not configured"),
        Err(e) => e,
    };
    assert_eq!(unknown.reason_code, "AGENT_CONFIG_INVALID");
}

#[tokio::test]
async fn an_http_server_restarted_on_its_port_is_reached_again() {
    let server = McpHttpServer::start().await;
    let addr = server.addr();
    let reg = registry(&[("fx", json!({"url": server.url(), "timeout_secs": 5}))]);
    let set = reg.for_agent(&agent(&["mcp:fx"])).await.expect("tools");
    assert_eq!(
        call(&set, "fx__echo", json!({"text": "one"})).await,
        ToolOutput::ok("one")
    );
    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _again = McpHttpServer::start_on(addr).await;
    // The old session is gone with the old process: rmcp opens a new one
    // before the call is sent, so the call succeeds.
    assert_eq!(
        call(&set, "fx__echo", json!({"text": "two"})).await,
        ToolOutput::ok("two")
    );
}
