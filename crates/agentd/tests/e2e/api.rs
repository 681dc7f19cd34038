//! The REST surface: seed 000 and seed 001 as written, idempotency, errors,
//! sessions, health and the OpenAPI document.

use fake_upstream::FakeUpstream;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn seed_000_flow_as_written() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();

    let s = api
        .post("/v1/sessions", &json!({"session_id": "demo"}))
        .await;
    assert_eq!(s.status, 201, "{:?}", s.body);
    assert_eq!(s.body["id"], "demo");
    let dup = api
        .post("/v1/sessions", &json!({"session_id": "demo"}))
        .await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.reason(), "SESSION_EXISTS");

    let run = api
        .post(
            "/v1/sessions/demo/runs",
            &json!({
                "input_items": [{"type": "text", "text": "Reply with exactly WEB_OK."}],
                "source_plugin": "web", "source_kind": "browser", "actor_id": "operator",
            }),
        )
        .await;
    assert_eq!(run.status, 202, "{:?}", run.body);
    let run_id = run.body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(run.body["id"], run_id);
    assert_eq!(run.body["actor_id"], "operator");

    let got = api.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["session_id"], "demo");

    let msgs = api
        .sse(&format!("/v1/runs/{run_id}/stream"), &[])
        .await
        .collect()
        .await;
    assert!(!msgs.is_empty());
    assert!(msgs.iter().all(|m| m.event == "run_updated"));
    assert!(msgs[0].data["status"].is_string(), "snapshot first");
    let last = &msgs.last().unwrap().data;
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["output"]["text"], FakeUpstream::expected_text(8));

    // The model saw the user's text.
    let seen = fake.requests();
    let user = seen.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(user["content"], "Reply with exactly WEB_OK.");

    let history = api.get("/v1/sessions/demo/messages").await;
    let roles: Vec<_> = history.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].clone())
        .collect();
    assert_eq!(roles, vec![json!("user"), json!("assistant")]);
}

#[tokio::test]
async fn seed_001_flow_as_written() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();

    let created = api
        .post_idem(
            "/v1/runs",
            "key-1",
            &json!({"input": {"user_query": "Summarize the key findings"}, "metadata": {}}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["status"], "queued");
    assert!(
        created.body["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    let id = created.body["id"].as_str().unwrap().to_owned();

    let msgs = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await;
    assert_gapless(&msgs, 1);
    let t = types(&msgs);
    assert_eq!(
        &t[..5],
        [
            "run.created",
            "run.queued",
            "run.worker.started",
            "step.started",
            "step.progress"
        ]
    );
    assert_eq!(t[t.len() - 2..], ["step.done", "run.worker.succeeded"]);
    for m in &msgs {
        assert_eq!(m.data["payload"]["redacted"], false);
        assert!(m.data["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let terminal = &msgs.last().unwrap().data["payload"]["value"];
    assert_eq!(terminal["output"]["text"], FakeUpstream::expected_text(8));
    assert_eq!(reconstruct(&msgs), FakeUpstream::expected_text(8));

    let run = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run.body["status"], "succeeded");
    assert_eq!(run.body["usage"]["output_tokens"], 8);
    assert_eq!(run.body["usage"]["model_calls"], 1);
    assert_eq!(run.body["last_seq"], msgs.len() as i64);

    // The page endpoint returns the same events.
    let page = api
        .get(&format!("/v1/runs/{id}/events?after_seq=2&limit=3"))
        .await;
    let seqs: Vec<i64> = page.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(page.body["next_cursor"], "5");
}

#[tokio::test]
async fn idempotent_create_replays_and_refuses_mismatch() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let body = json!({"input": {"user_query": "q", "n": [1, 2]}, "metadata": {"a": 1, "b": 2}});
    let first = api.post_idem("/v1/runs", "same", &body).await;
    assert_eq!(first.status, 201);
    assert!(first.body.get("replayed").is_none());

    // Same object, other key order: a replay of the original answer.
    let reordered = r#"{"metadata": {"b": 2, "a": 1}, "input": {"n": [1, 2], "user_query": "q"}}"#;
    let again = api
        .post_raw(
            "/v1/runs",
            reordered,
            &[
                ("idempotency-key", "same"),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(
        again.body["request_id"], first.body["request_id"],
        "the original request id inside"
    );
    assert_ne!(
        again.headers["x-request-id"], first.headers["x-request-id"],
        "a fresh header"
    );

    let other = api
        .post_idem(
            "/v1/runs",
            "same",
            &json!({"input": {"user_query": "different"}}),
        )
        .await;
    assert_eq!(other.status, 409);
    assert_eq!(other.reason(), "IDEMPOTENCY_KEY_REUSED");

    let missing = api.post("/v1/runs", &body).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.reason(), "IDEMPOTENCY_KEY_REQUIRED");

    // A validation failure is not remembered: the key stays free.
    let bad = api
        .post_idem("/v1/runs", "fresh", &json!({"input": 5}))
        .await;
    assert_eq!(bad.status, 400);
    let good = api
        .post_idem("/v1/runs", "fresh", &json!({"input": {"user_query": "ok"}}))
        .await;
    assert_eq!(good.status, 201);
}

#[tokio::test]
async fn twenty_concurrent_identical_requests_create_one_run() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let body = json!({"input": {"user_query": "once"}});
    let replies = futures::future::join_all((0..20).map(|_| {
        let api = api.clone();
        let body = body.clone();
        async move { api.post_idem("/v1/runs", "race", &body).await }
    }))
    .await;
    let ids: std::collections::HashSet<_> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.body.get("replayed").is_none())
            .count(),
        1
    );
    let all = api.get("/v1/runs?limit=100").await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let json_headers = [
        ("idempotency-key", "x"),
        ("content-type", "application/json"),
    ];

    let malformed = api
        .post_raw("/v1/runs", "{\"input\": ", &json_headers)
        .await;
    assert_eq!(
        (malformed.status, malformed.reason()),
        (400, "INVALID_REQUEST")
    );

    let wrong_type = api
        .post_idem(
            "/v1/runs",
            "x",
            &json!({"input": {"user_query": "q"}, "metadata": 7}),
        )
        .await;
    assert_eq!(wrong_type.status, 400);
    assert!(
        wrong_type.body["error"]
            .as_str()
            .unwrap()
            .contains("metadata"),
        "{:?}",
        wrong_type.body
    );

    let unknown_field = api
        .post_idem("/v1/runs", "x", &json!({"input": {}, "inptu": 1}))
        .await;
    assert_eq!(unknown_field.status, 400);
    assert!(
        unknown_field.body["error"]
            .as_str()
            .unwrap()
            .contains("inptu")
    );

    let wrong_item = api.post("/v1/sessions", &json!({"session_id": "s"})).await;
    assert_eq!(wrong_item.status, 201);
    let r = api
        .post(
            "/v1/sessions/s/runs",
            &json!({"input_items": [{"type": "text", "text": 3}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("input_items[0].text")
    );
    let empty = api
        .post("/v1/sessions/s/runs", &json!({"input_items": []}))
        .await;
    assert_eq!(empty.status, 400);

    let big = format!(
        "{{\"input\": {{\"user_query\": \"{}\"}}}}",
        "a".repeat(2 * 1024 * 1024)
    );
    let too_big = api.post_raw("/v1/runs", big, &json_headers).await;
    assert_eq!(
        (too_big.status, too_big.reason()),
        (413, "PAYLOAD_TOO_LARGE")
    );

    for path in [
        "/v1/runs/run_nope",
        "/v1/runs/run_nope/events",
        "/v1/sessions/nope",
        "/v1/sessions/nope/messages",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        r.reason();
    }
    let r = api
        .post("/v1/sessions/nope/runs", &json!({"content": "hi"}))
        .await;
    assert_eq!((r.status, r.reason()), (404, "SESSION_NOT_FOUND"));
    let r = api.post("/v1/runs/run_nope/cancel", &json!({})).await;
    assert_eq!((r.status, r.reason()), (404, "RUN_NOT_FOUND"));
    let r = api.get("/v1/nothing-here").await;
    assert_eq!(r.status, 404);
    r.reason();
    let r = api.get("/v1/runs?limit=500").await;
    assert_eq!((r.status, r.reason()), (400, "INVALID_REQUEST"));
    let r = api.get("/v1/runs?status=sleeping").await;
    assert_eq!(r.status, 400);
    let r = api
        .post("/v1/sessions", &json!({"session_id": "has/slash"}))
        .await;
    assert_eq!(r.status, 400);
    let r = api.post("/v1/sessions", &json!({"agent": "nobody"})).await;
    assert_eq!((r.status, r.reason()), (400, "AGENT_NOT_FOUND"));

    // Nothing above created a run, and only the one session exists.
    assert_eq!(
        api.get("/v1/runs").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        api.get("/v1/sessions").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn admin_token_is_required() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let none = d.api().without_token().get("/v1/runs").await;
    assert_eq!((none.status, none.reason()), (401, "AUTH_MISSING_HEADER"));
    let wrong = d.api().with_token("not-the-token").get("/v1/runs").await;
    assert_eq!((wrong.status, wrong.reason()), (401, "AUTH_KEY_INVALID"));
    assert_eq!(wrong.body["error"], "Invalid API key");
    // Probes need no credentials.
    for path in ["/health", "/health/ready", "/api/info", "/openapi.json"] {
        assert_eq!(
            d.api().without_token().get(path).await.status,
            200,
            "{path}"
        );
    }
    // The tenant header must name a valid tenant; another tenant sees nothing.
    let id = d.api().start_run("mine").await;
    let other = d
        .api()
        .http
        .get(format!("{}/v1/runs/{id}", d.url))
        .bearer_auth(TOKEN)
        .header("x-agentd-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
}

#[tokio::test]
async fn sessions_list_page_and_delete() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    for i in 0..5 {
        assert_eq!(
            api.post("/v1/sessions", &json!({"session_id": format!("s{i}")}))
                .await
                .status,
            201
        );
    }
    let p1 = api.get("/v1/sessions?limit=2").await;
    let ids: Vec<_> = p1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["s4", "s3"], "newest first");
    let cursor = p1.body["next_cursor"].as_str().unwrap();
    let p2 = api
        .get(&format!("/v1/sessions?limit=2&cursor={cursor}"))
        .await;
    let ids: Vec<_> = p2.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["s2", "s1"]);
    let p3 = api
        .get(&format!(
            "/v1/sessions?limit=2&cursor={}",
            p2.body["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(p3.body["data"].as_array().unwrap().len(), 1);
    assert!(p3.body["next_cursor"].is_null());
    assert_eq!(api.get("/v1/sessions?cursor=%%%").await.status, 400);

    let del = api.delete("/v1/sessions/s0").await;
    assert_eq!(del.status, 204);
    assert_eq!(api.get("/v1/sessions/s0").await.status, 404);
    assert_eq!(api.delete("/v1/sessions/s0").await.status, 404);
}

#[tokio::test]
async fn deleting_a_session_cancels_its_runs() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(500);
    fake.behavior()
        .set_delay(std::time::Duration::from_millis(20));
    let d = Daemon::start(&fake).await;
    let api = d.api();
    api.post("/v1/sessions", &json!({"session_id": "busy"}))
        .await;
    let a = api
        .post("/v1/sessions/busy/runs", &json!({"content": "one"}))
        .await;
    let b = api
        .post("/v1/sessions/busy/runs", &json!({"content": "two"}))
        .await;
    let (a, b) = (
        a.body["id"].as_str().unwrap().to_owned(),
        b.body["id"].as_str().unwrap().to_owned(),
    );
    // Wait until the first is streaming, so both a running and a queued run are cancelled.
    let mut s = api.sse(&format!("/v1/runs/{a}/events/stream"), &[]).await;
    s.until(last_is("step.progress")).await;
    assert_eq!(api.delete("/v1/sessions/busy").await.status, 204);
    assert_eq!(api.wait_terminal(&a).await["status"], "cancelled");
    assert_eq!(api.wait_terminal(&b).await["status"], "cancelled");
}

#[tokio::test]
async fn health_info_agents_and_openapi() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let h = api.get("/health").await;
    assert_eq!(h.body["status"], "ok");
    assert!(h.body["version"].is_string());
    assert!(h.body["sandbox"]["backend"].is_string());
    let r = api.get("/health/ready").await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ready")));
    let info = api.get("/api/info").await;
    assert_eq!(info.body["agent"], "assistant");
    assert_eq!(info.body["auth_required"], true);
    let agents = api.get("/v1/agents").await;
    assert_eq!(agents.body["data"][0]["name"], "assistant");
    assert_eq!(agents.body["data"][0]["default"], true);

    let doc = api.get("/openapi.json").await;
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc.body["paths"].as_object().unwrap();
    for p in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/events/stream",
        "/v1/runs/{id}/stream",
        "/v1/runs/{id}/cancel",
        "/v1/sessions",
        "/v1/sessions/{id}/runs",
        "/v1/agents",
        "/health",
        "/v1/runs/{id}/signal",
        "/v1/api-keys",
        "/v1/api-keys/{key_id}",
        "/v1/api-keys/{key_id}/rotate",
        "/v1/audit",
        "/api/chat",
        "/ws/chat",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    for schema in [
        "SignalReceipt",
        "MintedKey",
        "KeyView",
        "AuditView",
        "ChatRequest",
    ] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "openapi lacks schema {schema}"
        );
    }
    assert!(doc.body["components"]["schemas"]["RunView"].is_object());
}

#[tokio::test]
async fn metrics_count_the_work_for_the_operator() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    let id = api.start_run("counted").await;
    api.wait_terminal(&id).await;
    let r = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("agentd_runs_claimed_total"), 1);
    assert_eq!(value("agentd_runs_recovered_total"), 0);
    assert!(value("agentd_events_appended_total") >= 6);
    assert!(value("agentd_store_jobs_total") >= value("agentd_store_transactions_total"));
    assert_eq!(value("agentd_store_failed_batches_total"), 0);
    let anonymous = api.clone().without_token().get("/metrics").await;
    assert_eq!(
        (anonymous.status, anonymous.reason()),
        (401, "AUTH_MISSING_HEADER")
    );
}
