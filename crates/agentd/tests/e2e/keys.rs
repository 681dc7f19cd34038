//! API keys (issue 3): minting, every auth reason code, rotation and
//! revocation taking effect at once, the grant rules for tenant keys, rate
//! limiting, static keys, the audit trail and the `agentd keys` CLI.

use std::time::Duration;

use fake_upstream::FakeUpstream;
use serde_json::{Value, json};

use crate::support::*;

/// Mints a key with the admin token; returns (key_id, "key_id:secret").
pub async fn mint(api: &Api, tenant: &str, scopes: &[&str]) -> (String, String) {
    let r = api
        .post(
            "/v1/api-keys",
            &json!({"name": format!("{tenant} key"), "customer_id": tenant, "scopes": scopes}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    (
        r.body["key_id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    )
}

/// Polls the audit trail (failures are recorded off the request path).
pub async fn audit_entries(api: &Api, query: &str, want: usize) -> Vec<Value> {
    for _ in 0..100 {
        let r = api.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let data = r.body["data"].as_array().unwrap().clone();
        if data.len() >= want {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {want} audit entries for {query}");
}

#[tokio::test]
async fn keys_are_minted_shown_once_and_checked_with_every_reason_code() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let admin = d.api();

    let r = admin
        .post(
            "/v1/api-keys",
            &json!({"name": "ci", "customer_id": "acme", "scopes": ["runs:read", "runs:write"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let key_id = r.body["key_id"].as_str().unwrap().to_owned();
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("key_"));
    assert_eq!(r.body["key"], format!("{key_id}:{secret}"));
    assert_eq!(r.body["customer_id"], "acme");
    assert_eq!(r.body["scopes"], json!(["runs:read", "runs:write"]));
    assert_eq!(r.body["status"], "active");

    // Listed in its tenant, never with a secret.
    let list = admin.clone().on_tenant("acme").get("/v1/api-keys").await;
    assert_eq!(list.status, 200);
    let listed = &list.body["data"][0];
    assert_eq!(listed["key_id"], key_id.as_str());
    assert!(listed.get("secret").is_none() && listed.get("key").is_none());
    assert!(!list.body.to_string().contains(&secret));
    let other = admin.get("/v1/api-keys").await;
    assert_eq!(other.body["data"], json!([]), "the default tenant has none");

    // The key works as seed 001 uses it.
    let key = d.api().with_token(&format!("{key_id}:{secret}"));
    let run = key.start_run("hello").await;
    let got = key.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(got.status, 200);
    key.wait_terminal(&run).await;

    // Every reason code.
    let none = d.api().without_token().get("/v1/runs").await;
    assert_eq!((none.status, none.reason()), (401, "AUTH_MISSING_HEADER"));
    for bad in [
        format!("{key_id}:wrong"),
        format!("{key_id}:{secret}x"),
        format!("key_01aaaaaaaaaaaaaaaaaaaaaaaa:{secret}"),
        "not-a-key".to_owned(),
    ] {
        let r = d.api().with_token(&bad).get("/v1/runs").await;
        assert_eq!((r.status, r.reason()), (401, "AUTH_KEY_INVALID"), "{bad}");
        assert_eq!(r.body["error"], "Invalid API key");
    }
    let denied = key.post("/v1/sessions", &json!({})).await;
    assert_eq!(
        (denied.status, denied.reason()),
        (403, "AUTH_SCOPE_MISSING")
    );

    // Bad requests name the field and create nothing.
    for (body, field) in [
        (json!({"name": "x", "scopes": ["runs:nope"]}), "scopes"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "", "scopes": ["runs:read"]}), "name"),
        (
            json!({"name": "x", "scopes": ["runs:read"], "customer_id": "a/b"}),
            "customer_id",
        ),
        (
            json!({"name": "x", "scopes": ["runs:read"], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["runs:read"], "extra": 1}),
            "extra",
        ),
    ] {
        let r = admin.post("/v1/api-keys", &body).await;
        assert_eq!((r.status, r.reason()), (400, "INVALID_REQUEST"), "{body}");
        assert!(
            r.body["error"].as_str().unwrap().contains(field),
            "{:?}",
            r.body
        );
    }
    assert_eq!(admin.get("/v1/api-keys").await.body["data"], json!([]));

    // Expired keys answer like unknown ones.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let r = admin
        .post(
            "/v1/api-keys",
            &json!({"name": "short", "scopes": ["runs:read"], "expires_at": soon.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let short = d.api().with_token(r.body["key"].as_str().unwrap());
    assert_eq!(short.get("/v1/runs").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let expired = short.get("/v1/runs").await;
    assert_eq!(
        (expired.status, expired.reason()),
        (401, "AUTH_KEY_INVALID")
    );

    // Revoked keys too, at once; revoking again is a no-op.
    let revoke = admin
        .clone()
        .on_tenant("acme")
        .delete(&format!("/v1/api-keys/{key_id}"))
        .await;
    assert_eq!(revoke.status, 204, "{:?}", revoke.body);
    let r = key.get("/v1/runs").await;
    assert_eq!((r.status, r.reason()), (401, "AUTH_KEY_INVALID"));
    let again = admin
        .clone()
        .on_tenant("acme")
        .delete(&format!("/v1/api-keys/{key_id}"))
        .await;
    assert_eq!(again.status, 204);
    let missing = admin.delete("/v1/api-keys/key_nope").await;
    assert_eq!((missing.status, missing.reason()), (404, "KEY_NOT_FOUND"));
}

#[tokio::test]
async fn rotation_replaces_the_secret_at_once_or_after_a_grace_period() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let admin = d.api().on_tenant("acme");
    let (id, old) = mint(&d.api(), "acme", &["runs:read"]).await;

    let r = admin
        .post(&format!("/v1/api-keys/{id}/rotate"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new = r.body["key"].as_str().unwrap().to_owned();
    assert!(new.starts_with(&format!("{id}:")) && new != old);
    assert_eq!(d.api().with_token(&old).get("/v1/runs").await.status, 401);
    assert_eq!(d.api().with_token(&new).get("/v1/runs").await.status, 200);

    let r = admin
        .post(
            &format!("/v1/api-keys/{id}/rotate"),
            &json!({"grace_period_secs": 60}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let newest = r.body["key"].as_str().unwrap().to_owned();
    assert!(r.body["previous_secret_valid_until"].is_string());
    assert_eq!(
        d.api().with_token(&new).get("/v1/runs").await.status,
        200,
        "in grace"
    );
    assert_eq!(
        d.api().with_token(&newest).get("/v1/runs").await.status,
        200
    );
    assert_eq!(d.api().with_token(&old).get("/v1/runs").await.status, 401);

    // Revoking ends the grace too; a revoked key cannot be rotated back.
    assert_eq!(
        admin.delete(&format!("/v1/api-keys/{id}")).await.status,
        204
    );
    assert_eq!(d.api().with_token(&new).get("/v1/runs").await.status, 401);
    assert_eq!(
        d.api().with_token(&newest).get("/v1/runs").await.status,
        401
    );
    let r = admin
        .post(&format!("/v1/api-keys/{id}/rotate"), &json!({}))
        .await;
    assert_eq!((r.status, r.reason()), (409, "KEY_REVOKED"));
    let r = admin
        .post(
            &format!("/v1/api-keys/{id}/rotate"),
            &json!({"grace_period_secs": -1}),
        )
        .await;
    assert_eq!((r.status, r.reason()), (400, "INVALID_REQUEST"));
}

#[tokio::test]
async fn revoking_or_rotating_a_key_closes_its_open_streams() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(400);
    fake.behavior().set_delay(Duration::from_millis(20));
    let d = Daemon::start(&fake).await;
    let admin = d.api().on_tenant("acme");
    let (id, key) = mint(&d.api(), "acme", &["runs:read", "runs:write"]).await;
    let (other_id, other_key) = mint(&d.api(), "acme", &["runs:read"]).await;
    let api = d.api().with_token(&key);
    let run = api.start_run("a long answer").await;

    let mut mine = api.sse(&format!("/v1/runs/{run}/events/stream"), &[]).await;
    let mut updates = api.sse(&format!("/v1/runs/{run}/stream"), &[]).await;
    let mut theirs = d
        .api()
        .with_token(&other_key)
        .sse(&format!("/v1/runs/{run}/events/stream"), &[])
        .await;
    mine.until(|m| m.iter().any(|m| m.data["type"] == "step.progress"))
        .await;

    assert_eq!(
        admin.delete(&format!("/v1/api-keys/{id}")).await.status,
        204
    );
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while mine.next().await.is_some() {}
        while updates.next().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the revoked key's streams closed");
    // Another key's stream on the same run goes on.
    let more = tokio::time::timeout(Duration::from_millis(500), theirs.next()).await;
    assert!(
        matches!(more, Ok(Some(_))),
        "the other key's stream is open"
    );

    // Rotation without grace closes streams opened with the old secret.
    let r = admin
        .post(&format!("/v1/api-keys/{other_id}/rotate"), &json!({}))
        .await;
    assert_eq!(r.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while theirs.next().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the rotated-away secret's stream closed");
    let status = admin.get(&format!("/v1/runs/{run}")).await.body["status"].clone();
    assert_eq!(status, "running", "the run itself is untouched");
}

#[tokio::test]
async fn a_tenant_key_mints_only_within_its_tenant_and_scopes() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let (_, manager) = mint(&d.api(), "acme", &["keys:admin", "runs:read"]).await;
    let (strong_id, _) = mint(&d.api(), "acme", &["runs:read", "runs:write"]).await;
    let (foreign_id, _) = mint(&d.api(), "globex", &["runs:read"]).await;
    let m = d.api().with_token(&manager);

    let ok = m
        .post(
            "/v1/api-keys",
            &json!({"name": "reader", "scopes": ["runs:read"]}),
        )
        .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    assert_eq!(ok.body["customer_id"], "acme");
    let same = m
        .post(
            "/v1/api-keys",
            &json!({"name": "r2", "customer_id": "acme", "scopes": ["runs:read"]}),
        )
        .await;
    assert_eq!(same.status, 201);

    for body in [
        json!({"name": "x", "customer_id": "globex", "scopes": ["runs:read"]}),
        json!({"name": "x", "scopes": ["runs:write"]}),
        json!({"name": "x", "scopes": ["runs:read", "audit:read"]}),
    ] {
        let r = m.post("/v1/api-keys", &body).await;
        assert_eq!(
            (r.status, r.reason()),
            (403, "AUTH_SCOPE_MISSING"),
            "{body}"
        );
    }
    // No power over a stronger key of its tenant, none at all over another's.
    let r = m
        .post(&format!("/v1/api-keys/{strong_id}/rotate"), &json!({}))
        .await;
    assert_eq!((r.status, r.reason()), (403, "AUTH_SCOPE_MISSING"));
    let r = m.delete(&format!("/v1/api-keys/{strong_id}")).await;
    assert_eq!((r.status, r.reason()), (403, "AUTH_SCOPE_MISSING"));
    let r = m.delete(&format!("/v1/api-keys/{foreign_id}")).await;
    assert_eq!((r.status, r.reason()), (404, "KEY_NOT_FOUND"));
    let r = m
        .post(&format!("/v1/api-keys/{foreign_id}/rotate"), &json!({}))
        .await;
    assert_eq!((r.status, r.reason()), (404, "KEY_NOT_FOUND"));

    let listed = m.get("/v1/api-keys").await;
    let tenants: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants.len(), 4, "{:?}", listed.body);
    assert!(tenants.iter().all(|t| *t == "acme"));
    let globex = d.api().on_tenant("globex").get("/v1/api-keys").await;
    assert_eq!(
        globex.body["data"].as_array().unwrap().len(),
        1,
        "nothing minted there"
    );
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_rate_limited() {
    let fake = FakeUpstream::start().await;
    let config = format!(
        "{}\n[auth]\nmax_failures = 3\nfailure_window_secs = 60\ntrusted_proxies = [\"127.0.0.1\"]\n",
        config_for(&fake)
    );
    let d = Daemon::start_with_config(&config).await;
    let attacker = d
        .api()
        .with_token("wrong-token")
        .with_header("x-forwarded-for", "203.0.113.1");
    for _ in 0..3 {
        assert_eq!(attacker.get("/v1/runs").await.status, 401);
    }
    let limited = attacker.get("/v1/runs").await;
    assert_eq!(
        (limited.status, limited.reason()),
        (429, "AUTH_RATE_LIMITED")
    );
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Even the right credential waits: guessing must not be confirmable.
    let same_addr = d.api().with_header("x-forwarded-for", "203.0.113.1");
    assert_eq!(same_addr.get("/v1/runs").await.status, 429);
    // Another client behind the same trusted proxy is not affected.
    let other = d.api().with_header("x-forwarded-for", "203.0.113.2");
    assert_eq!(other.get("/v1/runs").await.status, 200);
    let other_bad = d
        .api()
        .with_token("wrong")
        .with_header("x-forwarded-for", "203.0.113.2");
    assert_eq!(other_bad.get("/v1/runs").await.status, 401);
}

#[tokio::test]
async fn static_keys_from_the_environment_carry_only_the_chat_scope() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(
        &config_for(&fake),
        &[(
            "AGENTD_API_KEYS",
            "static-chat-key-one, static-chat-key-two",
        )],
    )
    .await;
    let k = d.api().with_token("static-chat-key-two");
    assert_eq!(k.get("/v1/agents").await.status, 200);
    let r = k.get("/v1/runs").await;
    assert_eq!((r.status, r.reason()), (403, "AUTH_SCOPE_MISSING"));
    let r = d
        .api()
        .with_token("static-chat-key")
        .get("/v1/agents")
        .await;
    assert_eq!((r.status, r.reason()), (401, "AUTH_KEY_INVALID"));
}

#[tokio::test]
async fn every_security_relevant_act_is_audited() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(200);
    fake.behavior().set_delay(Duration::from_millis(10));
    let d = Daemon::start(&fake).await;
    let admin = d.api().on_tenant("acme");
    let (id, key) = mint(
        &d.api(),
        "acme",
        &["runs:read", "runs:write", "sessions:write"],
    )
    .await;
    let k = d.api().with_token(&key);

    assert_eq!(
        admin
            .post(
                &format!("/v1/api-keys/{id}/rotate"),
                &json!({"grace_period_secs": 60})
            )
            .await
            .status,
        200
    );
    // A run made the seed 000 way carries the client's claimed actor.
    assert_eq!(
        k.post("/v1/sessions", &json!({"session_id": "s"}))
            .await
            .status,
        201
    );
    let run = k
        .post(
            "/v1/sessions/s/runs",
            &json!({"input_items": [{"type": "text", "text": "hi"}], "actor_id": "operator"}),
        )
        .await;
    assert_eq!(run.status, 202, "{:?}", run.body);
    let run_id = run.body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        k.post(&format!("/v1/runs/{run_id}/cancel"), &json!({}))
            .await
            .status,
        200
    );
    assert_eq!(k.get("/v1/audit").await.status, 403, "scope denied");
    assert_eq!(
        d.api()
            .with_token(&format!("{id}:bad"))
            .get("/v1/runs")
            .await
            .status,
        401
    );
    assert_eq!(
        admin.delete(&format!("/v1/api-keys/{id}")).await.status,
        204
    );

    let all = audit_entries(&admin, "limit=100", 7).await;
    let find = |action: &str| {
        all.iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {all:#?}"))
            .clone()
    };
    let created = find("key_created");
    assert_eq!(
        (created["actor"].as_str(), created["target_id"].as_str()),
        (Some("admin"), Some(id.as_str()))
    );
    assert_eq!(find("key_rotated")["details"]["grace_period_secs"], 60);
    assert_eq!(find("key_revoked")["target_id"], id.as_str());
    let run_created = find("run_created");
    assert_eq!(run_created["actor"], id.as_str());
    assert_eq!(run_created["actor_id"], "operator");
    assert_eq!(run_created["target_id"], run_id.as_str());
    assert_eq!(find("run_cancelled")["target_id"], run_id.as_str());
    let denied = find("scope_denied");
    assert_eq!(
        (
            denied["outcome"].as_str(),
            denied["details"]["scope"].as_str()
        ),
        (Some("denied"), Some("audit:read"))
    );
    let failed = find("auth_failed");
    assert_eq!(failed["actor"], id.as_str());
    assert_eq!(failed["details"]["reason_code"], "AUTH_KEY_INVALID");
    assert!(
        failed["client_ip"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1")
    );
    for e in &all {
        assert_eq!(e["customer_id"], "acme");
        assert!(e["request_id"].as_str().unwrap().starts_with("req_"));
    }

    // Filters and the cursor.
    let mine = audit_entries(&admin, &format!("actor={id}"), 1).await;
    assert!(mine.iter().all(|e| e["actor"] == id.as_str()));
    let revoked = audit_entries(&admin, "action=key_revoked", 1).await;
    assert_eq!(revoked.len(), 1);
    let page = admin.get("/v1/audit?limit=2").await;
    assert_eq!(page.body["data"].as_array().unwrap().len(), 2);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let next = admin
        .get(&format!("/v1/audit?limit=100&cursor={cursor}"))
        .await;
    assert_eq!(next.body["data"].as_array().unwrap().len(), all.len() - 2);
    let future = admin.get("/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future.body["data"], json!([]));
    let bad = admin.get("/v1/audit?action=nope").await;
    assert_eq!((bad.status, bad.reason()), (400, "INVALID_REQUEST"));
    // Another tenant's trail is its own.
    let other = d.api().on_tenant("globex").get("/v1/audit").await;
    assert_eq!(other.body["data"], json!([]));
}

#[tokio::test]
async fn operators_manage_keys_from_the_command_line() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
            .arg("keys")
            .args(args)
            .args(["--url", &d.url])
            .env("AGENTD_ADMIN_TOKEN", TOKEN)
            .output()
            .expect("agentd keys runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON on stdout")
    };
    let created = cli(&[
        "create",
        "--name",
        "ops",
        "--tenant",
        "acme",
        "--scopes",
        "runs:read,audit:read",
    ]);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["key_id"].as_str().unwrap().to_owned();
    assert_eq!(d.api().with_token(&key).get("/v1/runs").await.status, 200);
    let listed = cli(&["list", "--tenant", "acme"]);
    assert_eq!(listed["data"][0]["key_id"], id.as_str());
    let revoked = cli(&["revoke", &id, "--tenant", "acme"]);
    assert_eq!(revoked["revoked"], id.as_str());
    assert_eq!(d.api().with_token(&key).get("/v1/runs").await.status, 401);
}
