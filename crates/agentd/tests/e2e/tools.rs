//! Agents that act (issue 4): tool calls streamed by the model, approval and
//! user input through signals, limits, and pauses that survive restarts.

use std::time::Duration;

use fake_upstream::{FakeUpstream, ScriptedTurn};
use serde_json::{Value, json};

use crate::support::*;

fn agent_config(fake: &FakeUpstream, agent: &str) -> String {
    format!(
        "{}\n[agents.assistant]\ntools = [\"current_time\", \"ask_user\"]\n{agent}\n",
        config_for(fake)
    )
}

/// Event types with step.progress content deltas dropped (their number
/// depends on timing).
fn shape(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            !(e["type"] == "step.progress" && e["payload"]["value"]["kind"] == "content_delta")
        })
        .map(|e| {
            let v = &e["payload"]["value"];
            match e["type"].as_str().unwrap() {
                t @ ("tool.started" | "tool.finished") => {
                    format!("{t}:{}", v["tool_call_id"].as_str().unwrap())
                }
                "step.progress" => format!("step.progress:{}", v["kind"].as_str().unwrap()),
                t => t.to_owned(),
            }
        })
        .collect()
}

async fn signal(api: &Api, run: &str, body: Value) -> Reply {
    api.post(&format!("/v1/runs/{run}/signal"), &body).await
}

#[tokio::test]
async fn a_tool_call_runs_and_the_model_reads_its_result() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("call_1", "current_time", json!({})).with_text(&["Let me check. "]),
        ScriptedTurn::text(&["It is ", "now."]),
    ]);
    let d = Daemon::start_with_config(&agent_config(&fake, "")).await;
    let api = d.api();
    let run = api.start_run("what time is it?").await;
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    assert_eq!(done["output"]["text"], "It is now.");

    let evs = api.events(&run).await;
    assert_eq!(
        shape(&evs),
        [
            "run.created",
            "run.queued",
            "run.worker.started",
            "step.started",
            "step.progress:tool_call",
            "step.done",
            "tool.started:call_1",
            "tool.finished:call_1",
            "step.started",
            "step.done",
            "run.worker.succeeded",
        ]
    );
    let finished = evs.iter().find(|e| e["type"] == "tool.finished").unwrap();
    assert_eq!(finished["payload"]["value"]["is_error"], false);
    assert!(
        finished["payload"]["value"]["content"]
            .as_str()
            .unwrap()
            .contains("utc")
    );

    // The second model call carried the call and its result.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "current_time");
    let msgs = requests[1]["messages"].as_array().unwrap();
    let assistant = &msgs[msgs.len() - 2];
    assert_eq!(assistant["tool_calls"][0]["id"], "call_1");
    assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], "{}");
    let tool = &msgs[msgs.len() - 1];
    assert_eq!(
        (tool["role"].as_str(), tool["tool_call_id"].as_str()),
        (Some("tool"), Some("call_1"))
    );
    assert_eq!(done["usage"]["model_calls"], 2);
}

#[tokio::test]
async fn approving_one_of_two_parallel_calls_by_request_id_then_rejecting_the_other() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("c1", "current_time", json!({})).and_call(
            "c2",
            "current_time",
            json!({}),
        ),
        ScriptedTurn::text(&["done"]),
    ]);
    let d = Daemon::start_with_config(&agent_config(
        &fake,
        "approval = { current_time = \"always\" }",
    ))
    .await;
    let api = d.api();
    let run = api.start_run("twice").await;
    let paused = api.wait_status(&run, "awaiting_input").await;
    assert_eq!(paused["status"], "awaiting_input");
    let evs = api.events(&run).await;
    let awaiting = evs
        .iter()
        .find(|e| e["type"] == "run.awaiting_input")
        .unwrap();
    let v = &awaiting["payload"]["value"];
    assert_eq!(
        (v["input_kind"].as_str(), v["reason_code"].as_str()),
        (Some("approval"), Some("AWAITING_APPROVAL"))
    );
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0]["tool_call_id"], "c1");
    assert_eq!(pending[0]["tool"], "current_time");
    assert_eq!(pending[0]["arguments"], json!({}));
    let (r1, r2) = (
        pending[0]["request_id"].as_str().unwrap(),
        pending[1]["request_id"].as_str().unwrap(),
    );
    assert!(
        !evs.iter().any(|e| e["type"] == "tool.started"),
        "nothing ran before approval"
    );

    let first = signal(&api, &run, json!({"action": "approve", "request_id": r1})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["accepted"], json!([r1]));
    assert_eq!(
        (
            first.body["resumed"].as_bool(),
            first.body["status"].as_str()
        ),
        (Some(false), Some("awaiting_input"))
    );
    let second = signal(
        &api,
        &run,
        json!({"action": "reject", "request_id": r2, "payload": {"reason": "once is enough"}}),
    )
    .await;
    assert_eq!(second.body["resumed"], true);

    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded");
    let evs = api.events(&run).await;
    let tail: Vec<String> = shape(&evs)
        .into_iter()
        .skip_while(|t| t != "run.awaiting_input")
        .collect();
    assert_eq!(
        tail,
        [
            "run.awaiting_input",
            "run.signal_received",
            "run.signal_received",
            "run.resumed",
            "run.worker.started",
            "tool.started:c1",
            "tool.finished:c1",
            "tool.finished:c2",
            "step.started",
            "step.done",
            "run.worker.succeeded",
        ]
    );
    let rejected = evs
        .iter()
        .rev()
        .find(|e| e["type"] == "tool.finished")
        .unwrap();
    assert_eq!(rejected["payload"]["value"]["is_error"], true);
    assert!(
        rejected["payload"]["value"]["content"]
            .as_str()
            .unwrap()
            .contains("once is enough")
    );
    let msgs = fake.requests()[1]["messages"].as_array().unwrap().clone();
    let results: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(results.len(), 2, "the model hears about both calls");
}

#[tokio::test]
async fn ask_user_pauses_for_input_and_submit_input_answers_it() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("q1", "ask_user", json!({"question": "Which city?"})),
        ScriptedTurn::text(&["Paris it is."]),
    ]);
    let d = Daemon::start_with_config(&agent_config(&fake, "")).await;
    let api = d.api();
    let run = api.start_run("plan a trip").await;
    api.wait_status(&run, "awaiting_input").await;
    let evs = api.events(&run).await;
    let v = &evs
        .iter()
        .find(|e| e["type"] == "run.awaiting_input")
        .unwrap()["payload"]["value"];
    assert_eq!(
        (v["input_kind"].as_str(), v["reason_code"].as_str()),
        (Some("input"), Some("AWAITING_INPUT"))
    );
    assert_eq!(v["pending"][0]["question"], "Which city?");

    let wrong = signal(&api, &run, json!({"action": "approve"})).await;
    assert_eq!((wrong.status, wrong.reason()), (409, "RUN_STATE_CONFLICT"));
    let missing = signal(&api, &run, json!({"action": "submit_input"})).await;
    assert_eq!((missing.status, missing.reason()), (400, "INVALID_REQUEST"));
    let ok = signal(
        &api,
        &run,
        json!({"action": "submit_input", "payload": {"input": "Paris"}}),
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["output"]["text"], "Paris it is.");
    let msgs = fake.requests()[1]["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.last().unwrap()["content"], "Paris");
}

#[tokio::test]
async fn signals_are_refused_in_the_wrong_state_and_replayed_by_idempotency_key() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([ScriptedTurn::call(
        "q1",
        "ask_user",
        json!({"question": "?"}),
    )]);
    let d = Daemon::start_with_config(&agent_config(&fake, "")).await;
    let api = d.api();
    let run = api.start_run("ask me").await;
    api.wait_status(&run, "awaiting_input").await;

    let unknown = signal(
        &api,
        &run,
        json!({"action": "submit_input", "request_id": "req_nope", "payload": {"input": 1}}),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.reason()),
        (409, "RUN_STATE_CONFLICT")
    );
    let bad = signal(&api, &run, json!({"action": "maybe"})).await;
    assert_eq!((bad.status, bad.reason()), (400, "INVALID_REQUEST"));
    let missing = api
        .post("/v1/runs/run_missing/signal", &json!({"action": "approve"}))
        .await;
    assert_eq!((missing.status, missing.reason()), (404, "RUN_NOT_FOUND"));

    let body = json!({"action": "submit_input", "payload": {"input": {"city": "Oslo"}}});
    let first = api
        .post_idem(&format!("/v1/runs/{run}/signal"), "sig-1", &body)
        .await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = api
        .post_idem(&format!("/v1/runs/{run}/signal"), "sig-1", &body)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["request_id"], first.body["request_id"]);
    let other = api
        .post_idem(
            &format!("/v1/runs/{run}/signal"),
            "sig-1",
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(
        (other.status, other.reason()),
        (409, "IDEMPOTENCY_KEY_REUSED")
    );

    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded");
    let late = signal(&api, &run, json!({"action": "approve"})).await;
    assert_eq!((late.status, late.reason()), (409, "RUN_STATE_CONFLICT"));
    let received: Vec<Value> = api
        .events(&run)
        .await
        .into_iter()
        .filter(|e| e["type"] == "run.signal_received")
        .collect();
    assert_eq!(received.len(), 1, "the replay changed nothing");
    assert_eq!(
        received[0]["payload"]["value"]["payload"]["input"]["city"],
        "Oslo"
    );
    let trail = crate::keys::audit_entries(&api, "action=signal_received", 1).await;
    assert_eq!(trail[0]["target_id"], run.as_str());
}

#[tokio::test]
async fn a_paused_run_survives_a_restart_and_resumes_on_its_signal() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("c1", "current_time", json!({})),
        ScriptedTurn::text(&["after restart"]),
    ]);
    let mut d = Daemon::start_with_config(&agent_config(
        &fake,
        "approval = { current_time = \"always\" }",
    ))
    .await;
    let run = d.api().start_run("pause me").await;
    d.api().wait_status(&run, "awaiting_input").await;
    d.kill9();
    d.restart().await;
    let api = d.api();
    assert_eq!(
        api.get(&format!("/v1/runs/{run}")).await.body["status"],
        "awaiting_input"
    );
    // A new message on the session while approval is pending approves nothing.
    let session = api.get(&format!("/v1/runs/{run}")).await.body["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let later = api
        .post_idem(
            "/v1/runs",
            &agentd_key(),
            &json!({"input": {"user_query": "yes, approve it"}, "session_id": session}),
        )
        .await;
    assert_eq!(later.status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.get(&format!("/v1/runs/{run}")).await.body["status"],
        "awaiting_input"
    );
    let later_id = later.body["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/runs/{later_id}")).await.body["status"],
        "queued"
    );

    assert_eq!(
        signal(&api, &run, json!({"action": "approve"}))
            .await
            .status,
        200
    );
    let done = api.wait_terminal(&run).await;
    assert_eq!(
        (done["status"].as_str(), done["output"]["text"].as_str()),
        (Some("succeeded"), Some("after restart"))
    );
    let evs = api.events(&run).await;
    assert_eq!(
        evs.iter().filter(|e| e["type"] == "tool.started").count(),
        1
    );
    assert!(
        !evs.iter().any(|e| e["type"] == "run.worker.recovered"),
        "a resume is not a recovery"
    );
    api.wait_terminal(later_id).await;
}

#[tokio::test]
async fn each_limit_ends_the_run_naming_it() {
    let fake = FakeUpstream::start().await;
    let looping = || {
        (0..5)
            .map(|i| ScriptedTurn::call(&format!("c{i}"), "current_time", json!({})))
            .collect::<Vec<_>>()
    };
    // max_steps
    fake.behavior().push_turns(looping());
    let d = Daemon::start_with_config(&agent_config(&fake, "max_steps = 2")).await;
    let run = d.api().start_run("loop").await;
    let done = d.api().wait_terminal(&run).await;
    assert_eq!(done["status"], "limit_exceeded", "{done:?}");
    let last = d.api().events(&run).await.pop().unwrap();
    assert_eq!(
        (
            last["type"].as_str(),
            last["payload"]["value"]["limit"].as_str()
        ),
        (Some("run.limit_exceeded"), Some("max_steps"))
    );
    drop(d);

    // max_output_tokens: each scripted call costs one output token.
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns(looping());
    let d = Daemon::start_with_config(&agent_config(&fake, "max_output_tokens = 2")).await;
    let run = d.api().start_run("loop").await;
    d.api().wait_terminal(&run).await;
    let last = d.api().events(&run).await.pop().unwrap();
    assert_eq!(last["payload"]["value"]["limit"], "max_output_tokens");
    assert_eq!(
        fake.requests()[1]["max_tokens"],
        1,
        "each call gets what is left"
    );
    drop(d);

    // timeout_secs: running time.
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(200);
    fake.behavior().set_delay(Duration::from_millis(20));
    let d = Daemon::start_with_config(&agent_config(&fake, "timeout_secs = 1")).await;
    let run = d.api().start_run("slow").await;
    let done = d.api().wait_terminal(&run).await;
    assert_eq!(done["status"], "limit_exceeded");
    let last = d.api().events(&run).await.pop().unwrap();
    assert_eq!(last["payload"]["value"]["limit"], "timeout_secs");
    drop(d);

    // approval_timeout_secs: the wait for a human.
    let fake = FakeUpstream::start().await;
    fake.behavior()
        .push_turns([ScriptedTurn::call("c1", "current_time", json!({}))]);
    let d = Daemon::start_with_config(&agent_config(
        &fake,
        "approval = { current_time = \"always\" }\napproval_timeout_secs = 1",
    ))
    .await;
    let run = d.api().start_run("wait").await;
    let done = d.api().wait_terminal(&run).await;
    assert_eq!(
        (done["status"].as_str(), done["reason_code"].as_str()),
        (Some("limit_exceeded"), Some("APPROVAL_TIMEOUT"))
    );
    let last = d.api().events(&run).await.pop().unwrap();
    assert_eq!(last["payload"]["value"]["limit"], "approval_timeout_secs");
}

#[tokio::test]
async fn cancel_works_while_awaiting_input() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([ScriptedTurn::call(
        "q1",
        "ask_user",
        json!({"question": "?"}),
    )]);
    let d = Daemon::start_with_config(&agent_config(&fake, "")).await;
    let api = d.api();
    let run = api.start_run("ask").await;
    api.wait_status(&run, "awaiting_input").await;
    let r = api
        .post(&format!("/v1/runs/{run}/cancel"), &json!({}))
        .await;
    assert_eq!(r.body["status"], "cancelled");
    let last = api.events(&run).await.pop().unwrap();
    assert_eq!(last["type"], "run.cancelled");
    let late = signal(
        &api,
        &run,
        json!({"action": "submit_input", "payload": {"input": 1}}),
    )
    .await;
    assert_eq!(late.status, 409);
}

#[tokio::test]
async fn the_tool_loop_runs_on_anthropic_keeping_thinking_signatures() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("toolu_1", "current_time", json!({}))
            .with_thinking(&["I should ", "check the clock."]),
        ScriptedTurn::text(&["It is late."]),
    ]);
    let config = format!(
        r#"
[models.default]
provider = "anthropic"
base_url = "{}"
model = "claude-test"
api_key_env = "ANTHROPIC_TEST_KEY"
max_retries = 1
retry_backoff_ms = 20

[worker]
poll_ms = 100

[agents.assistant]
tools = ["current_time"]
"#,
        fake.base_url()
    );
    let d = Daemon::start_with(&config, &[("ANTHROPIC_TEST_KEY", "sk-ant-test-000")]).await;
    let api = d.api();
    let run = api.start_run("time?").await;
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    assert_eq!(done["output"]["text"], "It is late.");
    let evs = api.events(&run).await;
    let thinking: String = evs
        .iter()
        .filter(|e| e["payload"]["value"]["kind"] == "thinking_delta")
        .map(|e| {
            e["payload"]["value"]["thinking_delta"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(thinking, "I should check the clock.");
    // The second call sent the signed thinking back with the tool turn.
    let second = &fake.requests()[1];
    let assistant = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap()
        .clone();
    assert_eq!(assistant["content"][0]["type"], "thinking");
    assert!(
        assistant["content"][0]["signature"]
            .as_str()
            .unwrap()
            .starts_with("sig-")
    );
    assert_eq!(assistant["content"][1]["type"], "tool_use");
    let results = second["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(results["content"][0]["type"], "tool_result");
    assert_eq!(results["content"][0]["tool_use_id"], "toolu_1");
}

/// An agent that may fetch from the fake upstream's own pages (loopback,
/// opened by the operator).
fn fetch_config(fake: &FakeUpstream, agent: &str) -> String {
    format!(
        "{}\n[egress]\nallow_cidrs = [\"127.0.0.1/32\"]\nallowed_ports = [{port}]\n\n[agents.assistant]\ntools = [\"http_fetch\"]\negress = {{ mode = \"allow_list\", allow = [\"127.0.0.1\"] }}\n{agent}\n",
        config_for(fake),
        port = fake.addr.port()
    )
}

#[tokio::test]
async fn http_fetch_reads_allowed_pages_and_refuses_the_rest() {
    let fake = FakeUpstream::start().await;
    let page = format!("{}/web/page", fake.base_url().trim_end_matches("/v1"));
    fake.behavior().push_turns([
        ScriptedTurn::call("f1", "http_fetch", json!({"url": page}))
            .and_call("f2", "http_fetch", json!({"url": "http://example.com/"}))
            .and_call(
                "f3",
                "http_fetch",
                json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            ),
        ScriptedTurn::text(&["read it"]),
    ]);
    let d = Daemon::start_with_config(&fetch_config(&fake, "")).await;
    let api = d.api();
    let run = api.start_run("fetch").await;
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    let evs = api.events(&run).await;
    let result = |id: &str| {
        evs.iter()
            .find(|e| e["type"] == "tool.finished" && e["payload"]["value"]["tool_call_id"] == id)
            .unwrap()["payload"]["value"]
            .clone()
    };
    let ok = result("f1");
    assert_eq!(ok["is_error"], false);
    assert!(
        ok["content"]
            .as_str()
            .unwrap()
            .contains("hello from the page"),
        "{ok}"
    );
    let denied = result("f2");
    assert!(
        denied["content"]
            .as_str()
            .unwrap()
            .starts_with("EGRESS_DENIED"),
        "{denied}"
    );
    let metadata = result("f3");
    assert_eq!(metadata["is_error"], true, "{metadata}");
    assert_eq!(fake.web_hits(), 1);
}

#[tokio::test]
async fn a_tool_interrupted_by_a_crash_is_not_run_twice() {
    let fake = FakeUpstream::start().await;
    let slow = format!(
        "{}/web/slow?ms=20000",
        fake.base_url().trim_end_matches("/v1")
    );
    fake.behavior().push_turns([
        ScriptedTurn::call("s1", "http_fetch", json!({"url": slow})),
        ScriptedTurn::text(&["the fetch was interrupted"]),
    ]);
    let mut d = Daemon::start_with_config(&fetch_config(&fake, "")).await;
    let run = d.api().start_run("slow fetch").await;
    for _ in 0..200 {
        if fake.web_hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.web_hits(), 1, "the tool started");
    d.kill9();
    d.restart().await;
    let api = d.api();
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    assert_eq!(fake.web_hits(), 1, "never run a second time");
    let evs = api.events(&run).await;
    let finished: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "tool.finished")
        .collect();
    assert_eq!(finished.len(), 1);
    assert!(
        finished[0]["payload"]["value"]["content"]
            .as_str()
            .unwrap()
            .starts_with("TOOL_INTERRUPTED")
    );
    assert!(evs.iter().any(|e| e["type"] == "run.worker.recovered"));
    let msgs = fake.requests()[1]["messages"].to_string();
    assert!(msgs.contains("TOOL_INTERRUPTED"), "the model was told");
}

#[tokio::test]
async fn cancel_stops_a_run_mid_tool() {
    let fake = FakeUpstream::start().await;
    let slow = format!(
        "{}/web/slow?ms=20000",
        fake.base_url().trim_end_matches("/v1")
    );
    fake.behavior()
        .push_turns([ScriptedTurn::call("s1", "http_fetch", json!({"url": slow}))]);
    let d = Daemon::start_with_config(&fetch_config(&fake, "")).await;
    let api = d.api();
    let run = api.start_run("slow").await;
    for _ in 0..200 {
        if fake.web_hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let started = std::time::Instant::now();
    let r = api
        .post(&format!("/v1/runs/{run}/cancel"), &json!({}))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{:?}", r.body);
    assert!(started.elapsed() < Duration::from_secs(5));
    let last = api.events(&run).await.pop().unwrap();
    assert_eq!(last["type"], "run.cancelled");
}
