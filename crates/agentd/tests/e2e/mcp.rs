//! MCP servers' tools end to end: a real daemon, the fake model, and the
//! MCP fixture built on rmcp's server side — over stdio as the `fake-mcp`
//! binary the daemon spawns, and over streamable HTTP in this process.

use std::time::Duration;

use fake_upstream::mcp::{McpHttpServer, stdio_fixture_path};
use fake_upstream::{FakeUpstream, ScriptedTurn};
use serde_json::{Value, json};

use crate::startup::{assert_refuses, run_serve};
use crate::support::*;

/// The `tool.finished` payload of one call.
fn finished<'a>(evs: &'a [Value], call: &str) -> &'a Value {
    evs.iter()
        .find(|e| e["type"] == "tool.finished" && e["payload"]["value"]["tool_call_id"] == call)
        .map(|e| &e["payload"]["value"])
        .unwrap_or_else(|| panic!("no tool.finished for {call}"))
}

fn offered_tools(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| {
                    t["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

#[tokio::test]
async fn a_stdio_servers_tools_wait_for_approval_and_run_in_a_cleared_environment() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("c1", "fixture__echo", json!({"text": "hi from the model"}))
            .and_call("c2", "fixture__env", json!({}))
            .and_call(
                "c3",
                "fixture__echo",
                json!({"text": "the token is mcp-secret-0123456789"}),
            )
            .and_call("c4", "fixture__pid", json!({})),
        ScriptedTurn::text(&["done"]),
    ]);
    let config = format!(
        r#"{}
[mcp.fixture]
command = [{}]
env = {{ FIXTURE_TOKEN = "mcp-secret-0123456789" }}

[agents.assistant]
tools = ["mcp:fixture"]
"#,
        config_for(&fake),
        quoted(&stdio_fixture_path().to_string_lossy())
    );
    // Secrets in the daemon's own environment, beside AGENTD_ADMIN_TOKEN.
    let mut d = Daemon::start_with(
        &config,
        &[
            ("OPENAI_API_KEY", "sk-daemon-secret-key"),
            ("AGENTD_API_KEYS", "static-key-0123456789abcdef"),
        ],
    )
    .await;
    let api = d.api();
    let run = api.start_run("use the fixture").await;

    let paused = api.wait_status(&run, "awaiting_input").await;
    assert_eq!(paused["status"], "awaiting_input");
    let evs = api.events(&run).await;
    let awaiting = evs
        .iter()
        .find(|e| e["type"] == "run.awaiting_input")
        .expect("run.awaiting_input");
    let v = &awaiting["payload"]["value"];
    assert_eq!(v["input_kind"], "approval");
    let pending: Vec<(&str, &str)> = v["pending"]
        .as_array()
        .expect("pending")
        .iter()
        .map(|p| {
            (
                p["tool_call_id"].as_str().unwrap(),
                p["tool"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pending,
        [
            ("c1", "fixture__echo"),
            ("c2", "fixture__env"),
            ("c3", "fixture__echo"),
            ("c4", "fixture__pid")
        ]
    );
    assert!(
        !evs.iter().any(|e| e["type"] == "tool.started"),
        "nothing runs before approval"
    );

    // The model was offered every tool of the server, prefixed.
    let requests = fake.requests();
    assert_eq!(
        offered_tools(&requests[0]),
        [
            "fixture__echo",
            "fixture__add",
            "fixture__fail",
            "fixture__env",
            "fixture__image",
            "fixture__sleep",
            "fixture__weird_name_v1",
            "fixture__pid",
            "fixture__exit",
        ]
    );
    let echo = &requests[0]["tools"][0]["function"];
    assert_eq!(echo["description"], "Returns its text.");
    assert_eq!(echo["parameters"]["required"], json!(["text"]));

    let approved = api
        .post(
            &format!("/v1/runs/{run}/signal"),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(approved.status, 200, "{:?}", approved.body);
    assert_eq!(approved.body["resumed"], true);

    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    assert_eq!(done["output"]["text"], "done");
    let evs = api.events(&run).await;
    let c1 = finished(&evs, "c1");
    assert_eq!(
        (c1["content"].as_str(), c1["is_error"].as_bool()),
        (Some("hi from the model"), Some(false))
    );
    // Only PATH and the configured variable: no AGENTD_ADMIN_TOKEN,
    // OPENAI_API_KEY, AGENTD_API_KEYS, HOME or anything else of the daemon's.
    let env: Vec<String> =
        serde_json::from_str(finished(&evs, "c2")["content"].as_str().unwrap()).unwrap();
    assert_eq!(env, ["FIXTURE_TOKEN", "PATH"]);
    // A server's env values are secrets: scrubbed from what is recorded.
    assert_eq!(finished(&evs, "c3")["content"], "the token is [REDACTED]");

    // The model read the results.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let msgs = requests[1]["messages"].as_array().unwrap();
    let tool_msgs: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs[0]["tool_call_id"], "c1");
    assert_eq!(tool_msgs[0]["content"], "hi from the model");

    // The server process ends with the daemon.
    let pid: u32 = finished(&evs, "c4")["content"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("the server's pid");
    assert!(alive(pid), "the server stays up between runs");
    assert!(d.terminate().success());
    for _ in 0..200 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the MCP server {pid} outlived the daemon");
}

/// Whether a process runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn an_http_server_with_approval_never_runs_at_once_and_its_errors_reach_the_model() {
    let server = McpHttpServer::start().await;
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("c1", "calc__add", json!({"a": 2, "b": 40})),
        ScriptedTurn::call("c2", "calc__fail", json!({})),
        ScriptedTurn::text(&["the answer is 42"]),
    ]);
    let config = format!(
        r#"{}
[mcp.calc]
url = "{}"
approval = "never"

[agents.assistant]
tools = ["current_time", "mcp:calc"]
"#,
        config_for(&fake),
        server.url()
    );
    let d = Daemon::start_with_config(&config).await;
    let api = d.api();
    let run = api.start_run("add").await;
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    assert_eq!(done["output"]["text"], "the answer is 42");

    let evs = api.events(&run).await;
    assert!(
        !evs.iter().any(|e| e["type"] == "run.awaiting_input"),
        "approval = never: no pause"
    );
    let c1 = finished(&evs, "c1");
    assert_eq!(
        (c1["content"].as_str(), c1["is_error"].as_bool()),
        (Some("42.0"), Some(false))
    );
    let c2 = finished(&evs, "c2");
    assert_eq!(
        (c2["content"].as_str(), c2["is_error"].as_bool()),
        (Some("the fixture failed on purpose"), Some(true))
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let offered = offered_tools(&requests[0]);
    assert_eq!(offered[0], "current_time");
    assert!(offered.contains(&"calc__add".to_owned()), "{offered:?}");
    assert!(
        !offered.contains(&"calc__exit".to_owned()),
        "the HTTP fixture has no exit"
    );
    let last = requests[2]["messages"].as_array().unwrap();
    let tool = last.last().unwrap();
    assert_eq!(tool["tool_call_id"], "c2");
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("the fixture failed on purpose"),
        "{tool:?}"
    );
}

#[tokio::test]
async fn a_run_whose_server_cannot_be_reached_fails_with_mcp_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let fake = FakeUpstream::start().await;
    let config = format!(
        r#"{}
[mcp.down]
url = "http://{closed}/mcp"
timeout_secs = 5

[agents.assistant]
tools = ["mcp:down"]
"#,
        config_for(&fake),
    );
    let d = Daemon::start_with_config(&config).await;
    let api = d.api();
    let run = api.start_run("hello").await;
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "failed", "{done:?}");
    assert_eq!(done["reason_code"], "MCP_UNAVAILABLE", "{done:?}");
    assert!(
        done["error"].as_str().unwrap_or_default().contains("down"),
        "{done:?}"
    );
    assert!(fake.requests().is_empty(), "the model is never called");
}

#[test]
fn startup_refuses_bad_mcp_tables_and_unknown_servers() {
    let agent = |tools: &str| format!("[agents.a]\ntools = {tools}\n");
    let cases = [
        (
            "[mcp.both]\ncommand = [\"srv\"]\nurl = \"http://127.0.0.1:9/mcp\"\n".to_owned(),
            vec!["[mcp.both]", "not both"],
        ),
        (
            "[mcp.none]\napproval = \"never\"\n".to_owned(),
            vec!["[mcp.none]", "set command"],
        ),
        (
            "[mcp.empty]\ncommand = []\n".to_owned(),
            vec!["[mcp.empty]", "command is empty"],
        ),
        (
            "[mcp.ftp]\nurl = \"ftp://example.com/mcp\"\n".to_owned(),
            vec!["[mcp.ftp]", "http or https"],
        ),
        (
            "[mcp.typo]\ncommand = [\"srv\"]\naproval = \"never\"\n".to_owned(),
            vec!["unknown field", "aproval"],
        ),
        (
            agent("[\"mcp:unknown\"]"),
            vec!["mcp:unknown", "not configured"],
        ),
        (
            format!(
                "[mcp.known]\ncommand = [\"srv\"]\n{}",
                agent("[\"mcp:known\", \"mcp:other\"]")
            ),
            vec!["mcp:other", "not configured"],
        ),
    ];
    for (config, words) in cases {
        assert_refuses(run_serve(&[], &[], Some(&config)), &words);
    }
    // A valid table starts the daemon without starting the server.
    let fine = format!(
        "[mcp.lazy]\ncommand = [\"/nonexistent/server\"]\n{}",
        agent("[\"mcp:lazy\"]")
    );
    assert!(matches!(
        run_serve(&[], &[], Some(&fine)),
        crate::startup::Outcome::Listened
    ));
}
