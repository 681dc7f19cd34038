//! Three nodes on one schema.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fake_upstream::FakeUpstream;
use futures::StreamExt;
use serde_json::Value;

use crate::support::*;

/// `config_for` with a `[worker]` section of our own (`max_concurrent_runs =
/// 0` makes an API-only node, so a test knows where runs execute).
pub(crate) fn node_config(fake: &FakeUpstream, max_concurrent_runs: usize) -> String {
    config_for(fake).replace(
        "[worker]\n",
        &format!("[worker]\nmax_concurrent_runs = {max_concurrent_runs}\n"),
    )
}

async fn node(fake: &FakeUpstream, schema: &Arc<PgSchema>, workers: usize) -> Daemon {
    Daemon::start_on(&node_config(fake, workers), &[], Some(schema.clone())).await
}

/// The worker named by each `run.worker.started` / `run.worker.recovered`.
fn workers_of(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "run.worker.started" || e["type"] == "run.worker.recovered")
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["payload"]["value"]["worker"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Every seq from 1 to the last exactly once, in order.
fn assert_each_seq_once(run: &str, events: &[Value]) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "run {run}: seqs");
}

#[tokio::test]
async fn two_hundred_runs_on_three_nodes_each_complete_exactly_once() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(4);
    let schema = PgSchema::new();
    // Leases long enough that no run is recovered because a loaded machine
    // delayed a heartbeat: here every run must be claimed exactly once.
    let config = node_config(&fake, 4096).replace("lease_ms = 2000", "lease_ms = 15000");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Daemon::start_on(&config, &[], Some(schema.clone())).await);
    }
    let apis: Vec<Api> = nodes.iter().map(Daemon::api).collect();

    // Created through all three nodes, 20 at a time.
    let ids: Vec<String> = futures::stream::iter(0..200)
        .map(|i| {
            let api = apis[i % 3].clone();
            async move { api.start_run(&format!("run {i}")).await }
        })
        .buffered(20)
        .collect()
        .await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 200);

    let mut executed_by: HashMap<String, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        // Read through another node than the one that created it.
        let api = &apis[(i + 1) % 3];
        let run = api.wait_terminal(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let events = api.events(id).await;
        assert_each_seq_once(id, &events);
        let workers = workers_of(&events);
        assert_eq!(workers.len(), 1, "run {id} claimed once: {workers:?}");
        assert_eq!(workers[0].0, "run.worker.started");
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "run.worker.succeeded")
                .count(),
            1,
            "run {id} finished once"
        );
        assert_eq!(run["output"]["text"], FakeUpstream::expected_text(4));
        *executed_by.entry(workers[0].1.clone()).or_default() += 1;
    }
    assert!(
        executed_by.len() >= 2,
        "runs were spread across nodes: {executed_by:?}"
    );
}

#[tokio::test]
async fn a_reader_on_one_node_follows_a_run_executed_on_another() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(40);
    fake.behavior().set_delay(Duration::from_millis(20));
    let schema = PgSchema::new();
    // A serves the API only; B executes.
    let a = node(&fake, &schema, 0).await;
    let b = node(&fake, &schema, 4096).await;

    let id = a.api().start_run("follow me across nodes").await;
    let stream = a
        .api()
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await;
    let all: Vec<Msg> = stream
        .collect()
        .await
        .into_iter()
        .filter(|m| m.event == "run_event")
        .collect();
    assert_gapless(&all, 1);
    assert_eq!(types(&all).last().unwrap(), "run.worker.succeeded");
    assert_eq!(reconstruct(&all), FakeUpstream::expected_text(40));

    let health = a.api().get("/health").await;
    assert_eq!(health.body["store"], "postgres", "{:?}", health.body);

    // It really ran on B: B's events name the same worker, and A has none.
    let events = b.api().events(&id).await;
    let workers = workers_of(&events);
    assert_eq!(workers.len(), 1);
    let on_a = a.get_metrics_worker_claims().await;
    assert_eq!(on_a, 0, "node A claimed nothing");
}

#[tokio::test]
async fn kill_9_of_a_node_mid_run_its_runs_finish_on_the_others() {
    let fake = FakeUpstream::start().await;
    // 300 chunks 25 ms apart: each answer takes 7.5 s, so C is mid-run
    // when it dies even on a slow machine.
    fake.behavior().set_tokens(300);
    fake.behavior().set_delay(Duration::from_millis(25));
    let schema = PgSchema::new();
    // C alone at first, so it holds every run when it dies.
    let mut c = node(&fake, &schema, 4096).await;
    let api_c = c.api();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(api_c.start_run(&format!("doomed {i}")).await);
    }
    for id in &ids {
        let mut s = api_c
            .sse(&format!("/v1/runs/{id}/events/stream"), &[])
            .await;
        s.until(|seen| seen.iter().any(|m| m.data["type"] == "step.progress"))
            .await;
    }
    let a = node(&fake, &schema, 4096).await;
    let b = node(&fake, &schema, 4096).await;
    let doomed_worker = workers_of(&api_c.events(&ids[0]).await)[0].1.clone();
    for id in &ids {
        let run = api_c.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(run.body["status"], "running", "mid-run when C dies");
    }
    c.kill9();

    for (i, id) in ids.iter().enumerate() {
        let api = if i % 2 == 0 { a.api() } else { b.api() };
        let run = api.wait_terminal(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let events = api.events(id).await;
        assert_each_seq_once(id, &events);
        let workers = workers_of(&events);
        assert_eq!(
            workers[0],
            ("run.worker.started".into(), doomed_worker.clone())
        );
        // Recovered by a live node (on a loaded machine a live node's lease
        // may lapse too, and the run be recovered again: still each seq once).
        assert!(workers.len() >= 2, "recovered: {workers:?}");
        assert!(
            workers[1..]
                .iter()
                .all(|(kind, worker)| kind == "run.worker.recovered" && *worker != doomed_worker),
            "by live nodes: {workers:?}"
        );
        assert_eq!(run["output"]["text"], FakeUpstream::expected_text(300));
    }
}

#[tokio::test]
async fn a_key_revoked_on_one_node_closes_its_streams_on_another() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(400);
    fake.behavior().set_delay(Duration::from_millis(20));
    let schema = PgSchema::new();
    let a = node(&fake, &schema, 4096).await;
    let b = node(&fake, &schema, 4096).await;
    let minted = a
        .api()
        .post(
            "/v1/api-keys",
            &serde_json::json!({"name": "k", "customer_id": "acme", "scopes": ["runs:read", "runs:write"]}),
        )
        .await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let id = minted.body["key_id"].as_str().unwrap().to_owned();
    let key = minted.body["key"].as_str().unwrap().to_owned();
    let api_a = a.api().with_token(&key);
    let run = api_a.start_run("a long answer").await;
    let mut stream = api_a
        .sse(&format!("/v1/runs/{run}/events/stream"), &[])
        .await;
    stream
        .until(|m| m.iter().any(|m| m.data["type"] == "step.progress"))
        .await;

    // Revoked through B: A closes the stream it serves.
    let revoked = b
        .api()
        .on_tenant("acme")
        .delete(&format!("/v1/api-keys/{id}"))
        .await;
    assert_eq!(revoked.status, 204, "{:?}", revoked.body);
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while stream.next().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the revoked key's stream on A closed");
    assert_eq!(api_a.get(&format!("/v1/runs/{run}")).await.status, 401);
}

impl Daemon {
    /// Runs this node's workers claimed, from `/metrics`.
    async fn get_metrics_worker_claims(&self) -> u64 {
        let text = self.api().get("/metrics").await.body;
        let text = text.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find(|l| l.starts_with("agentd_runs_claimed_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no claims counter in /metrics:\n{text}"))
    }
}
