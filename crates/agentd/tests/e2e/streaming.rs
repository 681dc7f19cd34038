//! Live streams: resume without gap, cancel mid-stream, one active run per
//! session, late readers, run_updated snapshots.

use std::time::Duration;

use fake_upstream::FakeUpstream;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn resume_mid_stream_by_last_event_id() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(40);
    fake.behavior().set_delay(Duration::from_millis(15));
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("resume").await;

    let mut s = api.sse(&format!("/v1/runs/{id}/events/stream"), &[]).await;
    let first = s.until(|seen| seen.len() == 6).await;
    drop(s);
    assert_gapless(&first, 1);

    // Last-Event-ID wins over ?after_seq=.
    let rest = api
        .sse(
            &format!("/v1/runs/{id}/events/stream?after_seq=1"),
            &[("last-event-id", "6")],
        )
        .await
        .collect()
        .await;
    let rest: Vec<_> = rest
        .into_iter()
        .filter(|m| m.event == "run_event")
        .collect();
    assert_gapless(&rest, 7);
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_gapless(&all, 1);
    assert_eq!(types(&all).last().unwrap(), "run.worker.succeeded");
    assert_eq!(reconstruct(&all), FakeUpstream::expected_text(40));

    // ?after_seq= alone works too, and a bad Last-Event-ID is a 400.
    let tail = api
        .sse(&format!("/v1/runs/{id}/events/stream?after_seq=3"), &[])
        .await
        .collect()
        .await;
    assert_eq!(tail[0].data["seq"], 4);
    let bad = api
        .http
        .get(format!("{}/v1/runs/{id}/events/stream", api.base))
        .bearer_auth(TOKEN)
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

/// The stream's bytes as written: the reconnect hint first, then one frame
/// per event, whose data is the envelope the events page serves.
#[tokio::test]
async fn the_stream_is_framed_as_server_sent_events() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("framed").await;
    api.wait_terminal(&id).await;
    let text = api
        .req(
            reqwest::Method::GET,
            &format!("/v1/runs/{id}/events/stream"),
        )
        .send()
        .await
        .expect("stream request")
        .text()
        .await
        .expect("stream body");
    let frames = text
        .strip_prefix("retry: 1000\n: stream open\n\n")
        .unwrap_or_else(|| panic!("no reconnect hint first: {text:?}"));
    let page = api.events(&id).await;
    let frames: Vec<&str> = frames.split_terminator("\n\n").collect();
    assert_eq!(frames.len(), page.len(), "{text}");
    for (frame, event) in frames.iter().zip(&page) {
        let head = format!("event: run_event\nid: {}\ndata: ", event["seq"]);
        let data = frame
            .strip_prefix(&head)
            .unwrap_or_else(|| panic!("frame {frame:?}"));
        assert!(!data.contains('\n'), "one data line: {frame:?}");
        let v: serde_json::Value = serde_json::from_str(data).expect("frame data is JSON");
        assert_eq!(&v, event);
    }
}

#[tokio::test]
async fn a_late_reader_gets_the_full_replay() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("late").await;
    api.wait_terminal(&id).await;
    let msgs = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await;
    assert_gapless(&msgs, 1);
    assert_eq!(types(&msgs).last().unwrap(), "run.worker.succeeded");
    let snap = api
        .sse(&format!("/v1/runs/{id}/stream"), &[])
        .await
        .collect()
        .await;
    assert_eq!(snap.len(), 1, "a finished run: one snapshot, then close");
    assert_eq!(snap[0].data["status"], "succeeded");
}

#[tokio::test]
async fn cancel_while_streaming() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(1000);
    fake.behavior().set_delay(Duration::from_millis(10));
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("long").await;
    let mut s = api.sse(&format!("/v1/runs/{id}/events/stream"), &[]).await;
    let mut seen = s.until(last_is("step.progress")).await;
    let cancelled = api.post(&format!("/v1/runs/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.status, 200);
    assert_eq!(cancelled.body["status"], "cancelled");
    while let Some(m) = s.next().await {
        seen.push(m);
    }
    let seen: Vec<_> = seen
        .into_iter()
        .filter(|m| m.event == "run_event")
        .collect();
    assert_gapless(&seen, 1);
    assert_eq!(types(&seen).last().unwrap(), "run.cancelled");

    // Idempotent: a finished run comes back unchanged.
    let again = api.post(&format!("/v1/runs/{id}/cancel"), &json!({})).await;
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (200, Some("cancelled"))
    );
    assert_eq!(again.body["last_seq"], cancelled.body["last_seq"]);
    // A signal to a run that is not awaiting input is a conflict.
    let sig = api
        .post(
            &format!("/v1/runs/{id}/signal"),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!((sig.status, sig.reason()), (409, "RUN_STATE_CONFLICT"));
    let sig = api
        .post(
            &format!("/v1/runs/{id}/signal"),
            &json!({"action": "explode"}),
        )
        .await;
    assert_eq!(sig.status, 400);
}

#[tokio::test]
async fn cancel_a_queued_run() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(300);
    fake.behavior().set_delay(Duration::from_millis(10));
    let d = Daemon::start(&fake).await;
    let api = d.api();
    api.post("/v1/sessions", &json!({"session_id": "q"})).await;
    let a = api
        .post("/v1/sessions/q/runs", &json!({"content": "first"}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = api
        .post("/v1/sessions/q/runs", &json!({"content": "second"}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = api.post(&format!("/v1/runs/{b}/cancel"), &json!({})).await;
    assert_eq!(c.body["status"], "cancelled");
    let events = api.get(&format!("/v1/runs/{b}/events")).await;
    let t: Vec<_> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(t, ["run.created", "run.queued", "run.cancelled"]);
    api.post(&format!("/v1/runs/{a}/cancel"), &json!({})).await;
}

#[tokio::test]
async fn one_active_run_per_session_and_history_carries_over() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(10);
    fake.behavior().set_delay(Duration::from_millis(10));
    let d = Daemon::start(&fake).await;
    let api = d.api();
    api.post("/v1/sessions", &json!({"session_id": "chat"}))
        .await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for q in ["first question", "second question", "third question"] {
            let r = api
                .post("/v1/sessions/chat/runs", &json!({"content": q}))
                .await;
            v.push(r.body["id"].as_str().unwrap().to_owned());
        }
        v
    };
    let runs: Vec<_> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(api.wait_terminal(id).await);
        }
        v
    };
    for pair in runs.windows(2) {
        let finished = pair[0]["finished_at"].as_str().unwrap();
        let started = pair[1]["started_at"].as_str().unwrap();
        assert!(
            started >= finished,
            "a later run started before the earlier one finished"
        );
    }
    // The third call carried both earlier turns, in order.
    let reqs = fake.requests();
    let last: Vec<_> = reqs.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let text = FakeUpstream::expected_text(10);
    let want: Vec<(String, String)> = vec![
        ("system".into(), "You are a helpful assistant.".into()),
        ("user".into(), "first question".into()),
        ("assistant".into(), text.clone()),
        ("user".into(), "second question".into()),
        ("assistant".into(), text),
        ("user".into(), "third question".into()),
    ];
    assert_eq!(last, want);
    let history = api.get("/v1/sessions/chat/messages").await;
    assert_eq!(history.body["data"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn run_updated_sends_a_snapshot_per_status_or_step_change() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(30);
    fake.behavior().set_delay(Duration::from_millis(5));
    let d = Daemon::start(&fake).await;
    let api = d.api();
    api.post("/v1/sessions", &json!({"session_id": "u"})).await;
    let r = api
        .post("/v1/sessions/u/runs", &json!({"content": "go"}))
        .await;
    let id = r.body["id"].as_str().unwrap();
    let snaps = api
        .sse(&format!("/v1/runs/{id}/stream"), &[])
        .await
        .collect()
        .await;
    let statuses: Vec<_> = snaps
        .iter()
        .map(|m| m.data["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses.last().unwrap(), "succeeded");
    // Not one per token: 30 deltas, a handful of snapshots.
    assert!(snaps.len() <= 6, "{statuses:?}");
    let seqs: Vec<i64> = snaps
        .iter()
        .map(|m| m.data["last_seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]));
}

/// A process at its `max_concurrent_runs` takes no run as it is created: the
/// next waits `queued`, and its dispatcher starts it once room is free.
#[tokio::test]
async fn a_full_worker_leaves_new_runs_queued_until_it_has_room() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(20);
    fake.behavior().set_delay(Duration::from_millis(20));
    let config = config_for(&fake).replace("[worker]\n", "[worker]\nmax_concurrent_runs = 1\n");
    let d = Daemon::start_with_config(&config).await;
    let api = d.api();
    let first = api.start_run("first").await;
    api.wait_status(&first, "running").await;
    // Another session, so only the worker's room holds it back.
    let second = api.start_run("second").await;
    let now = api.get(&format!("/v1/runs/{second}")).await.body;
    assert_eq!(now["status"], "queued", "{now}");

    assert_eq!(api.wait_terminal(&first).await["status"], "succeeded");
    assert_eq!(api.wait_terminal(&second).await["status"], "succeeded");
    let ended = api.events(&first).await;
    let started = api.events(&second).await;
    let at = |events: &[serde_json::Value], kind: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind)
            .map(|e| e["timestamp"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert!(
        at(&started, "run.worker.started") >= at(&ended, "run.worker.succeeded"),
        "the second run started only after the first ended"
    );
}
