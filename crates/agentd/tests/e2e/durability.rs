//! Crashes, restarts and upstream failures.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use fake_upstream::FakeUpstream;

use crate::support::*;

#[tokio::test]
async fn kill_9_mid_stream_recovers_and_resumes_without_gap() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(60);
    fake.behavior().set_delay(Duration::from_millis(25));
    let mut d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("survive").await;

    let mut s = api.sse(&format!("/v1/runs/{id}/events/stream"), &[]).await;
    let before = s
        .until(|seen| seen.len() >= 8 && last_is("step.progress")(seen))
        .await;
    d.kill9();
    drop(s);
    d.restart().await;
    let api = d.api();

    let last = before.last().unwrap().id.clone();
    let after = api
        .sse(
            &format!("/v1/runs/{id}/events/stream"),
            &[("last-event-id", &last)],
        )
        .await
        .collect()
        .await;
    let after: Vec<_> = after
        .into_iter()
        .filter(|m| m.event == "run_event")
        .collect();
    let all: Vec<_> = before.iter().cloned().chain(after).collect();
    assert_gapless(&all, 1);
    let t = types(&all);
    let recovered = t
        .iter()
        .position(|t| t == "run.worker.recovered")
        .expect("recovered event");
    // The orphaned attempt is closed with retry_step before recovery is announced.
    let done = &all[recovered - 1].data["payload"]["value"];
    assert_eq!(all[recovered - 1].data["type"], "step.done");
    assert_eq!(done["outcome"], "retry_step");
    assert_eq!(done["attempt"], 1);
    let restarted = &all[recovered + 1].data["payload"]["value"];
    assert_eq!(all[recovered + 1].data["type"], "step.started");
    assert_eq!(restarted["attempt"], 2);
    assert_eq!(t.last().unwrap(), "run.worker.succeeded");

    // The answer is whole: not doubled, not cut.
    let expected = FakeUpstream::expected_text(60);
    assert_eq!(reconstruct(&all), expected);
    let run = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run.body["status"], "succeeded");
    assert_eq!(run.body["output"]["text"], expected);
    let history = api
        .get(&format!(
            "/v1/sessions/{}/messages",
            run.body["session_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        history.body["data"].as_array().unwrap().len(),
        2,
        "the turn is recorded once"
    );
}

#[tokio::test]
async fn upstream_failing_twice_then_succeeding_retries_the_step() {
    let fake = FakeUpstream::start().await;
    fake.behavior().fail_next(2, 500);
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("flaky").await;
    let msgs = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await;
    assert_gapless(&msgs, 1);
    let done: Vec<_> = msgs
        .iter()
        .filter(|m| m.data["type"] == "step.done")
        .map(|m| {
            let v = &m.data["payload"]["value"];
            (
                v["attempt"].as_u64().unwrap(),
                v["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        done,
        [
            (1, "retry_step".to_owned()),
            (2, "retry_step".to_owned()),
            (3, "succeeded".to_owned())
        ]
    );
    let run = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run.body["status"], "succeeded");
    assert_eq!(run.body["usage"]["model_calls"], 3);
}

#[tokio::test]
async fn upstream_always_failing_fails_the_run_with_a_reason() {
    let fake = FakeUpstream::start().await;
    fake.behavior().fail_next(1000, 503);
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("doomed").await;
    let msgs = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await;
    let last = msgs.last().unwrap();
    assert_eq!(last.data["type"], "run.worker.failed");
    assert_eq!(
        last.data["payload"]["value"]["reason_code"],
        "UPSTREAM_UNAVAILABLE"
    );
    let outcomes: Vec<_> = msgs
        .iter()
        .filter(|m| m.data["type"] == "step.done")
        .map(|m| {
            m.data["payload"]["value"]["outcome"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(outcomes, ["retry_step", "retry_step", "fail_run"]);
    let run = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run.body["status"], "failed");
    assert_eq!(run.body["reason_code"], "UPSTREAM_UNAVAILABLE");

    // A 4xx is not retried.
    fake.behavior().fail_next(1, 400);
    let id = api.start_run("refused").await;
    let run = api.wait_terminal(&id).await;
    assert_eq!(run["reason_code"], "UPSTREAM_REJECTED");
}

#[tokio::test]
async fn sigterm_lets_in_flight_runs_finish() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(20);
    fake.behavior().set_delay(Duration::from_millis(25));
    let mut d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("graceful").await;
    let mut s = api.sse(&format!("/v1/runs/{id}/events/stream"), &[]).await;
    s.until(last_is("step.progress")).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = d.terminate();
        (status, d)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "clean exit: {:?}", status.0);
    let mut d = status.1;
    d.restart().await;
    let run = d.api().get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        run.body["status"], "succeeded",
        "finished within the grace period"
    );
    let events = d
        .api()
        .get(&format!("/v1/runs/{id}/events?limit=1000"))
        .await;
    let t: Vec<_> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !t.contains(&"run.worker.recovered".to_owned()),
        "no recovery needed: {t:?}"
    );
}

#[tokio::test]
async fn generated_admin_token_and_bind_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_agentd");

    // Non-loopback without a token: refuses to start.
    let out = std::process::Command::new(exe)
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env_remove("AGENTD_ADMIN_TOKEN")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));

    // Loopback without one: generated into <data-dir>/admin-token, 0600, and it works.
    let mut child = std::process::Command::new(exe)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("AGENTD_ADMIN_TOKEN")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(stdout).read_line(&mut l).unwrap();
        l
    })
    .await
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("agentd listening on ")
        .unwrap()
        .to_owned();
    let token_path = data.join("admin-token");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_path).unwrap();
    let r = reqwest::Client::new()
        .get(format!("{url}/v1/runs"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A second process on the same data dir is refused.
    let second = std::process::Command::new(exe)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("AGENTD_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_model_key_is_read_from_the_named_variable() {
    let fake = FakeUpstream::start().await;
    let config = config_for(&fake).replace(
        "model = \"fake\"",
        "model = \"fake\"\napi_key_env = \"AGENTD_TEST_MODEL_KEY\"",
    );
    let d = Daemon::start_with(&config, &[("AGENTD_TEST_MODEL_KEY", "sk-test-123")]).await;
    let id = d.api().start_run("keyed").await;
    assert_eq!(d.api().wait_terminal(&id).await["status"], "succeeded");
    assert_eq!(
        fake.authorizations(),
        [Some("Bearer sk-test-123".to_owned())]
    );

    // A named variable that is unset fails the run with a clear reason.
    let config = config_for(&fake).replace(
        "model = \"fake\"",
        "model = \"fake\"\napi_key_env = \"AGENTD_TEST_UNSET_KEY_VAR\"",
    );
    let d = Daemon::start_with_config(&config).await;
    let id = d.api().start_run("unkeyed").await;
    let run = d.api().wait_terminal(&id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["reason_code"], "MODEL_API_KEY_MISSING");
    assert_eq!(fake.requests().len(), 1, "no request left without its key");
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_retried_and_the_answer_is_whole() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(30);
    fake.behavior().cut_next(1, 10);
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("cut").await;
    let msgs = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await;
    assert_gapless(&msgs, 1);
    let retried = msgs
        .iter()
        .find(|m| m.data["type"] == "step.done")
        .expect("a step.done");
    assert_eq!(retried.data["payload"]["value"]["outcome"], "retry_step");
    assert_eq!(
        retried.data["payload"]["value"]["reason_code"],
        "UPSTREAM_CLOSED"
    );
    // The cut attempt streamed deltas that the retry must not double.
    let partial: String = msgs
        .iter()
        .take_while(|m| m.data["type"] != "step.done")
        .filter_map(|m| m.data["payload"]["value"]["content_delta"].as_str())
        .collect();
    assert!(!partial.is_empty(), "the cut attempt streamed something");
    assert!(FakeUpstream::expected_text(10).starts_with(&partial));
    let expected = FakeUpstream::expected_text(30);
    assert_eq!(reconstruct(&msgs), expected);
    let run = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run.body["output"]["text"], expected);
    assert_eq!(fake.requests().len(), 2);
}
