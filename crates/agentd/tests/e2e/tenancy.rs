//! Tenancy and scopes (issue 3): another tenant's objects answer 404 on every
//! route and stay unchanged; every route checks its scope; readers without
//! `runs:read_inputs` see redacted runs and events; secrets never reach an
//! event.

use std::time::Duration;

use fake_upstream::FakeUpstream;
use serde_json::{Value, json};

use crate::keys::mint;
use crate::support::*;

const EVERY_SCOPE: [&str; 11] = [
    "runs:read",
    "runs:write",
    "runs:read_inputs",
    "sessions:read",
    "sessions:write",
    "signals:write",
    "sandboxes:read",
    "sandboxes:write",
    "keys:admin",
    "audit:read",
    "chat",
];

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
    Delete,
}

async fn call(api: &Api, method: Method, path: &str, body: &Value) -> Reply {
    match method {
        Method::Get => api.get(path).await,
        Method::Post => api.post_idem(path, &agentd_key(), body).await,
        Method::Delete => api.delete(path).await,
    }
}

#[tokio::test]
async fn another_tenants_objects_answer_404_on_every_route_and_stay_unchanged() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(300);
    fake.behavior().set_delay(Duration::from_millis(10));
    let d = Daemon::start(&fake).await;
    let (_, a_key) = mint(&d.api(), "tenant-a", &EVERY_SCOPE).await;
    let (b_key_id, b_key) = mint(&d.api(), "tenant-b", &EVERY_SCOPE).await;
    let a = d.api().with_token(&a_key);
    let b = d.api().with_token(&b_key);

    assert_eq!(
        b.post("/v1/sessions", &json!({"session_id": "shared"}))
            .await
            .status,
        201
    );
    let run = b
        .post(
            "/v1/sessions/shared/runs",
            &json!({"input_items": [{"type": "text", "text": "b's"}]}),
        )
        .await;
    assert_eq!(run.status, 202);
    let run = run.body["run_id"].as_str().unwrap().to_owned();
    let before = b.get(&format!("/v1/runs/{run}")).await.body;

    let routes: Vec<(Method, String, Value)> = vec![
        (Method::Get, "/v1/sessions/shared".into(), Value::Null),
        (
            Method::Get,
            "/v1/sessions/shared/messages".into(),
            Value::Null,
        ),
        (
            Method::Post,
            "/v1/sessions/shared/runs".into(),
            json!({"input_items": [{"type": "text", "text": "a's"}]}),
        ),
        (Method::Delete, "/v1/sessions/shared".into(), Value::Null),
        (Method::Get, format!("/v1/runs/{run}"), Value::Null),
        (Method::Get, format!("/v1/runs/{run}/events"), Value::Null),
        (
            Method::Get,
            format!("/v1/runs/{run}/events/stream"),
            Value::Null,
        ),
        (Method::Get, format!("/v1/runs/{run}/stream"), Value::Null),
        (Method::Post, format!("/v1/runs/{run}/cancel"), json!({})),
        (
            Method::Post,
            format!("/v1/runs/{run}/signal"),
            json!({"action": "approve"}),
        ),
        (
            Method::Post,
            "/v1/runs".into(),
            json!({"input": {"user_query": "x"}, "session_id": "shared"}),
        ),
        (
            Method::Delete,
            format!("/v1/api-keys/{b_key_id}"),
            Value::Null,
        ),
        (
            Method::Post,
            format!("/v1/api-keys/{b_key_id}/rotate"),
            json!({}),
        ),
    ];
    for (method, path, body) in &routes {
        let r = call(&a, *method, path, body).await;
        let missing = call(
            &a,
            *method,
            &path
                .replace(&run, "run_missing")
                .replace("shared", "missing")
                .replace(&b_key_id, "key_missing"),
            body,
        )
        .await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.body);
        assert_eq!(
            r.reason(),
            missing.reason(),
            "{path}: same answer as a missing id"
        );
        assert_eq!(r.body["error"], missing.body["error"], "{path}");
    }

    // Lists never show another tenant's objects.
    for path in ["/v1/sessions", "/v1/runs", "/v1/api-keys"] {
        let r = a.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let text = r.body.to_string();
        assert!(
            !text.contains(&run) && !text.contains("shared") && !text.contains(&b_key_id),
            "{path}: {text}"
        );
    }
    let trail = a.get("/v1/audit?limit=100").await;
    assert!(
        !trail.body.to_string().contains(&run),
        "b's audit entries stay b's"
    );

    // A client-chosen id taken in another tenant is free here.
    assert_eq!(
        a.post("/v1/sessions", &json!({"session_id": "shared"}))
            .await
            .status,
        201
    );

    // Nothing of b's changed.
    let after = b.get(&format!("/v1/runs/{run}")).await.body;
    assert_eq!(after["status"], "running", "{after:?}");
    assert_eq!(after["created_at"], before["created_at"]);
    assert_eq!(b.get("/v1/sessions/shared").await.status, 200);
    assert_eq!(
        b.get("/v1/runs").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        b.get("/v1/api-keys").await.body["data"][0]["status"],
        "active"
    );
    assert_eq!(b.get("/v1/runs").await.status, 200, "b's key still works");
}

#[tokio::test]
async fn every_route_checks_its_scope() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let admin = d.api().on_tenant("acme");
    assert_eq!(
        admin
            .post("/v1/sessions", &json!({"session_id": "s"}))
            .await
            .status,
        201
    );
    let run = admin.start_run("hi").await;
    admin.wait_terminal(&run).await;
    let (victim, _) = mint(&d.api(), "acme", &["keys:admin"]).await;

    let table: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::Post,
            "/v1/sessions".into(),
            json!({}),
            "sessions:write",
        ),
        (
            Method::Get,
            "/v1/sessions".into(),
            Value::Null,
            "sessions:read",
        ),
        (
            Method::Get,
            "/v1/sessions/s".into(),
            Value::Null,
            "sessions:read",
        ),
        (
            Method::Get,
            "/v1/sessions/s/messages".into(),
            Value::Null,
            "sessions:read",
        ),
        (
            Method::Delete,
            "/v1/sessions/nope".into(),
            Value::Null,
            "sessions:write",
        ),
        (
            Method::Post,
            "/v1/sessions/s/runs".into(),
            json!({"input_items": [{"type": "text", "text": "x"}]}),
            "runs:write",
        ),
        (
            Method::Post,
            "/v1/runs".into(),
            json!({"input": {"user_query": "x"}}),
            "runs:write",
        ),
        (Method::Get, "/v1/runs".into(), Value::Null, "runs:read"),
        (
            Method::Get,
            format!("/v1/runs/{run}"),
            Value::Null,
            "runs:read",
        ),
        (
            Method::Get,
            format!("/v1/runs/{run}/events"),
            Value::Null,
            "runs:read",
        ),
        (
            Method::Get,
            format!("/v1/runs/{run}/events/stream"),
            Value::Null,
            "runs:read",
        ),
        (
            Method::Get,
            format!("/v1/runs/{run}/stream"),
            Value::Null,
            "runs:read",
        ),
        (
            Method::Post,
            format!("/v1/runs/{run}/cancel"),
            json!({}),
            "runs:write",
        ),
        (
            Method::Post,
            format!("/v1/runs/{run}/signal"),
            json!({"action": "approve"}),
            "signals:write",
        ),
        (
            Method::Get,
            "/v1/api-keys".into(),
            Value::Null,
            "keys:admin",
        ),
        (
            Method::Post,
            "/v1/api-keys".into(),
            json!({"name": "n", "scopes": ["keys:admin"]}),
            "keys:admin",
        ),
        (
            Method::Post,
            format!("/v1/api-keys/{victim}/rotate"),
            json!({}),
            "keys:admin",
        ),
        (
            Method::Delete,
            format!("/v1/api-keys/{victim}"),
            Value::Null,
            "keys:admin",
        ),
        (Method::Get, "/v1/audit".into(), Value::Null, "audit:read"),
    ];
    for (method, path, body, scope) in &table {
        let all_but: Vec<&str> = EVERY_SCOPE.iter().copied().filter(|s| s != scope).collect();
        let (_, without) = mint(&d.api(), "acme", &all_but).await;
        let r = call(&d.api().with_token(&without), *method, path, body).await;
        assert_eq!(
            (r.status, r.reason()),
            (403, "AUTH_SCOPE_MISSING"),
            "{path} without {scope}"
        );
        assert!(
            r.body["error"].as_str().unwrap().contains(scope),
            "{:?}",
            r.body
        );

        let (_, only) = mint(&d.api(), "acme", &[scope]).await;
        let r = call(&d.api().with_token(&only), *method, path, body).await;
        assert_ne!(r.status, 403, "{path} with only {scope}: {:?}", r.body);
        assert_ne!(r.status, 401, "{path}");
    }
    // Operator routes take the admin token, never a key.
    let (_, everything) = mint(&d.api(), "acme", &EVERY_SCOPE).await;
    let r = d.api().with_token(&everything).get("/metrics").await;
    assert_eq!((r.status, r.reason()), (403, "AUTH_SCOPE_MISSING"));
    assert_eq!(d.api().get("/metrics").await.status, 200);
}

#[tokio::test]
async fn readers_without_read_inputs_see_runs_and_events_redacted() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let admin = d.api().on_tenant("acme");
    let r = admin
        .post_idem(
            "/v1/runs",
            &agentd_key(),
            &json!({"input": {"user_query": "the private question"}, "metadata": {"order": 42}}),
        )
        .await;
    let run = r.body["id"].as_str().unwrap().to_owned();
    admin.wait_terminal(&run).await;
    let (_, reader) = mint(&d.api(), "acme", &["runs:read"]).await;
    let (_, full) = mint(&d.api(), "acme", &["runs:read", "runs:read_inputs"]).await;
    let reader = d.api().with_token(&reader);
    let full = d.api().with_token(&full);

    let got = reader.get(&format!("/v1/runs/{run}")).await.body;
    assert_eq!(
        (
            got["redacted"].clone(),
            got["input"].clone(),
            got["metadata"].clone()
        ),
        (json!(true), Value::Null, Value::Null)
    );
    assert_eq!(got["status"], "succeeded");
    assert!(got["output"]["text"].is_string(), "outputs are not inputs");
    let listed = reader.get("/v1/runs").await.body;
    assert_eq!(listed["data"][0]["redacted"], true);
    assert!(!listed.to_string().contains("private question"));

    let page = reader.get(&format!("/v1/runs/{run}/events")).await.body;
    let created = &page["data"][0];
    assert_eq!(created["type"], "run.created");
    assert_eq!(created["payload"]["redacted"], true);
    assert!(created["payload"]["value"].get("input").is_none());
    assert!(created["payload"]["value"].get("metadata").is_none());
    assert_eq!(
        created["payload"]["value"]["agent"], "assistant",
        "the rest stays"
    );
    assert_eq!(
        page["data"][1]["payload"]["redacted"], false,
        "nothing withheld there"
    );
    let streamed = reader
        .sse(&format!("/v1/runs/{run}/events/stream"), &[])
        .await
        .collect()
        .await;
    assert!(
        !serde_json::to_string(&streamed.iter().map(|m| m.data.clone()).collect::<Vec<_>>())
            .unwrap()
            .contains("private question")
    );
    let snapshot = reader
        .sse(&format!("/v1/runs/{run}/stream"), &[])
        .await
        .collect()
        .await;
    assert_eq!(snapshot[0].data["redacted"], true);

    let got = full.get(&format!("/v1/runs/{run}")).await.body;
    assert_eq!(got["redacted"], false);
    assert_eq!(got["input"]["user_query"], "the private question");
    let page = full.get(&format!("/v1/runs/{run}/events")).await.body;
    assert_eq!(page["data"][0]["payload"]["value"]["metadata"]["order"], 42);
}

#[tokio::test]
async fn secrets_and_credential_headers_are_scrubbed_before_events_are_written() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_script(&[
        "the key is sk-test-",
        "abcdef0123456789, ",
        "and the header is Authorization: Bearer eyJhbGciOi.payload.sig ",
        "done",
    ]);
    let config = format!(
        "{}\n[redaction]\nsecret_env = [\"PAYMENTS_KEY\", \"OPENAI_API_KEY\"]\n",
        config_for(&fake)
    );
    let d = Daemon::start_with(
        &config,
        &[
            ("PAYMENTS_KEY", "sk-test-abcdef0123456789"),
            ("OPENAI_API_KEY", "sk-model-key-000111"),
        ],
    )
    .await;
    let api = d.api();
    let r = api
        .post_idem(
            "/v1/runs",
            &agentd_key(),
            &json!({"input": {"user_query": "use sk-model-key-000111 and x-api-key: hunter2hunter2"}}),
        )
        .await;
    let run = r.body["id"].as_str().unwrap().to_owned();
    let done = api.wait_terminal(&run).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");

    let events = api
        .get(&format!("/v1/runs/{run}/events?limit=1000"))
        .await
        .body
        .to_string();
    let output = done["output"]["text"].as_str().unwrap().to_owned();
    let run_body = done.to_string();
    for leaked in [
        "sk-model-key-000111",
        "hunter2hunter2",
        "eyJhbGciOi.payload.sig",
    ] {
        assert!(!events.contains(leaked), "{leaked} in events: {events}");
        assert!(!run_body.contains(leaked), "{leaked} in the run");
    }
    assert!(events.contains("[REDACTED]"));
    assert!(output.contains("Authorization: [REDACTED]"), "{output}");
    // The output is assembled from the deltas; a secret split across two
    // chunks is caught in the whole answer.
    assert!(!output.contains("sk-test-abcdef0123456789"), "{output}");
    // The model itself was sent the real input: scrubbing is for what is stored.
    let sent = fake.requests().last().unwrap().to_string();
    assert!(sent.contains("sk-model-key-000111"));
}

#[tokio::test]
async fn user_jwts_map_to_a_tenant_and_scopes_and_bad_ones_are_refused() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
    let fake = FakeUpstream::start().await;
    let config = format!(
        "{}\n[auth.jwt]\nalgorithm = \"HS256\"\nissuer = \"https://idp.test/\"\naudience = \"agentd\"\nhs256_secret_env = \"JWT_SECRET\"\ntenant_claim = \"org\"\n",
        config_for(&fake)
    );
    let d = Daemon::start_with(&config, &[("JWT_SECRET", SECRET)]).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |patch: Value| {
        let mut c = json!({"iss": "https://idp.test/", "aud": "agentd", "exp": now + 300,
                           "sub": "user-1", "org": "acme", "scope": "runs:read runs:write other:thing"});
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let sign = |c: &Value, alg: Algorithm, secret: &str| {
        encode(
            &Header::new(alg),
            c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };

    let good = sign(&claims(json!({})), Algorithm::HS256, SECRET);
    let user = d.api().with_token(&good);
    let run = user.start_run("from a user").await;
    assert_eq!(user.get(&format!("/v1/runs/{run}")).await.status, 200);
    // The run landed in the claim's tenant.
    assert_eq!(
        d.api()
            .on_tenant("acme")
            .get(&format!("/v1/runs/{run}"))
            .await
            .status,
        200
    );
    assert_eq!(d.api().get(&format!("/v1/runs/{run}")).await.status, 404);
    let denied = user.post("/v1/sessions", &json!({})).await;
    assert_eq!(
        (denied.status, denied.reason()),
        (403, "AUTH_SCOPE_MISSING")
    );
    let trail =
        crate::keys::audit_entries(&d.api().on_tenant("acme"), "action=run_created", 1).await;
    assert_eq!(trail[0]["actor"], "jwt:user-1");

    let refused = [
        (
            "wrong audience",
            sign(&claims(json!({"aud": "other"})), Algorithm::HS256, SECRET),
        ),
        (
            "wrong issuer",
            sign(
                &claims(json!({"iss": "https://evil/"})),
                Algorithm::HS256,
                SECRET,
            ),
        ),
        (
            "expired",
            sign(&claims(json!({"exp": now - 120})), Algorithm::HS256, SECRET),
        ),
        (
            "no exp",
            sign(&claims(json!({"exp": null})), Algorithm::HS256, SECRET),
        ),
        (
            "no tenant",
            sign(&claims(json!({"org": null})), Algorithm::HS256, SECRET),
        ),
        (
            "wrong key",
            sign(
                &claims(json!({})),
                Algorithm::HS256,
                "another-secret-of-32-bytes-or-more!!",
            ),
        ),
        (
            "wrong algorithm",
            sign(&claims(json!({})), Algorithm::HS512, SECRET),
        ),
        ("alg none", {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(claims(json!({})).to_string())
            )
        }),
    ];
    for (what, token) in refused {
        let r = d.api().with_token(&token).get("/v1/runs").await;
        assert_eq!((r.status, r.reason()), (401, "AUTH_KEY_INVALID"), "{what}");
    }
}
