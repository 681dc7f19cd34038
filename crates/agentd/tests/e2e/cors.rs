//! Browser CORS against the real daemon (DESIGN §3, seed 000): the loopback
//! default, exact lists from the environment and the file, the chat
//! surface's own list, and startup refusing lists it must not serve.

use fake_upstream::FakeUpstream;
use reqwest::Method;
use serde_json::{Value, json};

use crate::startup::{Outcome, assert_refuses, run_serve};
use crate::support::*;

/// Sends one request with the admin token and extra headers, read whole.
async fn send(
    d: &Daemon,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let api = d.api();
    let mut r = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(TOKEN);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

async fn preflight(d: &Daemon, path: &str, origin: &str, method: &str) -> Reply {
    send(
        d,
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            (
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            ),
        ],
        None,
    )
    .await
}

/// An allowed answer: this origin echoed (or `*`), never credentials.
fn assert_allowed(r: &Reply, origin: &str) {
    assert_eq!(
        header(r, "access-control-allow-origin"),
        Some(origin),
        "{:?}",
        r.headers
    );
    assert_eq!(header(r, "access-control-allow-credentials"), None);
    if origin != "*" {
        assert!(
            r.headers.get_all("vary").iter().any(|v| v
                .to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("origin")),
            "Vary: Origin in {:?}",
            r.headers
        );
    }
}

/// A refusal: 403 `ORIGIN_NOT_ALLOWED` in the envelope, no CORS grant.
fn assert_refused(r: &Reply, origin: &str) {
    assert_eq!(r.status, 403, "{origin}: {:?}", r.body);
    assert_eq!(r.reason(), "ORIGIN_NOT_ALLOWED", "{origin}");
    assert_eq!(header(r, "access-control-allow-origin"), None, "{origin}");
    assert_eq!(header(r, "access-control-allow-credentials"), None);
}

fn config_with(fake: &FakeUpstream, server: &str) -> String {
    format!("{}\n[server]\n{server}\n", config_for(fake))
}

#[tokio::test]
async fn default_policy_allows_loopback_origins_on_v1() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    for (i, origin) in [
        "http://localhost:5173",
        "http://[::1]:8080",
        "http://127.0.0.1:3000",
    ]
    .into_iter()
    .enumerate()
    {
        let p = preflight(&d, "/v1/sessions", origin, "POST").await;
        assert_eq!(p.status, 204, "{origin}: {:?}", p.body);
        assert_allowed(&p, origin);
        let methods = header(&p, "access-control-allow-methods").unwrap();
        for m in ["GET", "POST", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{m} in {methods}");
        }
        let allowed = header(&p, "access-control-allow-headers").unwrap();
        for h in [
            "authorization",
            "content-type",
            "idempotency-key",
            "last-event-id",
            "x-agentd-daemon-token",
            "x-agentd-daemon-url",
        ] {
            assert!(allowed.split(", ").any(|a| a == h), "{h} in {allowed}");
        }
        assert!(header(&p, "access-control-max-age").is_some());

        let id = format!("cors-{i}");
        let created = send(
            &d,
            Method::POST,
            "/v1/sessions",
            &[("origin", origin)],
            Some(json!({"session_id": id})),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        assert_eq!(created.body["id"], id.as_str());
        assert_allowed(&created, origin);
        assert_eq!(
            header(&created, "access-control-expose-headers"),
            Some("x-request-id")
        );

        // An error answer from a handler still carries the grant, so the
        // page can read why.
        let missing = send(
            &d,
            Method::GET,
            "/v1/sessions/nope",
            &[("origin", origin)],
            None,
        )
        .await;
        assert_eq!(missing.status, 404);
        assert_allowed(&missing, origin);
    }
}

#[tokio::test]
async fn lookalike_origins_are_refused_before_any_handler() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let api = d.api();
    for (i, origin) in [
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.com",
        "http://evil.com#@localhost",
        "http://user@localhost",
        "http://localhost:5173/app",
        "https://example.com",
        "null",
    ]
    .into_iter()
    .enumerate()
    {
        assert_refused(&preflight(&d, "/v1/sessions", origin, "POST").await, origin);
        assert_refused(
            &send(&d, Method::GET, "/v1/sessions", &[("origin", origin)], None).await,
            origin,
        );
        // A "simple" cross-site POST needs no preflight: it must not act.
        let id = format!("evil-{i}");
        let post = send(
            &d,
            Method::POST,
            "/v1/sessions",
            &[("origin", origin)],
            Some(json!({"session_id": id})),
        )
        .await;
        assert_refused(&post, origin);
        let got = api.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(got.status, 404, "{origin} created a session");
    }
}

#[tokio::test]
async fn requests_without_origin_and_non_browser_paths_are_untouched() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let plain = send(&d, Method::GET, "/v1/sessions", &[], None).await;
    assert_eq!(plain.status, 200);
    assert_eq!(header(&plain, "access-control-allow-origin"), None);

    for path in ["/health", "/health/ready", "/openapi.json", "/metrics"] {
        let r = send(
            &d,
            Method::GET,
            path,
            &[("origin", "https://evil.example")],
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{path}");
    }
}

#[tokio::test]
async fn exact_list_from_env_switches_off_other_loopback_origins() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(
        &config_for(&fake),
        &[(
            "AGENTD_HTTP_CORS_ALLOW_ORIGINS",
            "http://localhost:5173, http://[::1]:8080",
        )],
    )
    .await;
    for origin in ["http://localhost:5173", "http://[::1]:8080"] {
        let p = preflight(&d, "/v1/runs", origin, "POST").await;
        assert_eq!(p.status, 204);
        assert_allowed(&p, origin);
    }
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1:5173",
        "https://localhost:5173",
    ] {
        assert_refused(&preflight(&d, "/v1/runs", origin, "POST").await, origin);
        assert_refused(
            &send(&d, Method::GET, "/v1/runs", &[("origin", origin)], None).await,
            origin,
        );
    }
}

#[tokio::test]
async fn env_list_beats_the_file_and_the_file_applies_alone() {
    let fake = FakeUpstream::start().await;
    let config = config_with(&fake, r#"cors_allow_origins = ["http://localhost:1111"]"#);

    let file_only = Daemon::start_with(&config, &[]).await;
    let r = preflight(&file_only, "/v1/sessions", "http://localhost:1111", "GET").await;
    assert_allowed(&r, "http://localhost:1111");
    let r = preflight(&file_only, "/v1/sessions", "http://localhost:2222", "GET").await;
    assert_refused(&r, "http://localhost:2222");
    drop(file_only);

    let env_wins = Daemon::start_with(
        &config,
        &[("AGENTD_HTTP_CORS_ALLOW_ORIGINS", "http://localhost:2222")],
    )
    .await;
    let r = preflight(&env_wins, "/v1/sessions", "http://localhost:2222", "GET").await;
    assert_allowed(&r, "http://localhost:2222");
    let r = preflight(&env_wins, "/v1/sessions", "http://localhost:1111", "GET").await;
    assert_refused(&r, "http://localhost:1111");
}

#[tokio::test]
async fn chat_list_with_star_opens_only_the_chat_surface() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(
        &config_with(&fake, r#"chat_cors_allow_origins = ["*"]"#),
        &[],
    )
    .await;
    let site = "https://shop.example.com";
    let info = send(&d, Method::GET, "/api/info", &[("origin", site)], None).await;
    assert_eq!(info.status, 200, "{:?}", info.body);
    assert_allowed(&info, "*");
    let p = preflight(&d, "/api/chat", site, "POST").await;
    assert_eq!(p.status, 204);
    assert_allowed(&p, "*");
    // `/v1` keeps its own (loopback) list.
    assert_refused(&preflight(&d, "/v1/sessions", site, "POST").await, site);
}

#[tokio::test]
async fn chat_surface_defaults_to_loopback_and_takes_an_exact_list_from_env() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start(&fake).await;
    let r = send(
        &d,
        Method::GET,
        "/api/info",
        &[("origin", "http://localhost:3000")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_allowed(&r, "http://localhost:3000");
    let r = send(
        &d,
        Method::GET,
        "/api/info",
        &[("origin", "https://shop.example.com")],
        None,
    )
    .await;
    assert_refused(&r, "https://shop.example.com");
    drop(d);

    let d = Daemon::start_with(
        &config_for(&fake),
        &[("AGENTD_CHAT_CORS_ALLOW_ORIGINS", "https://shop.example.com")],
    )
    .await;
    let r = send(
        &d,
        Method::GET,
        "/api/info",
        &[("origin", "https://shop.example.com")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_allowed(&r, "https://shop.example.com");
    let r = send(
        &d,
        Method::GET,
        "/api/info",
        &[("origin", "https://shop.example.com.evil.example")],
        None,
    )
    .await;
    assert_refused(&r, "https://shop.example.com.evil.example");
}

#[test]
fn startup_refuses_wildcard_remote_and_path_bearing_api_origins() {
    let var = "AGENTD_HTTP_CORS_ALLOW_ORIGINS";
    let cases = [
        ("*", "wildcard"),
        ("https://example.com", "not a loopback origin"),
        ("http://127.0.0.1.evil.example", "not a loopback origin"),
        ("http://localhost:5173/app", "no path"),
        ("http://localhost:99999", "port"),
        ("http://localhost:5173,*", "wildcard"),
    ];
    for (value, why) in cases {
        let bad = value.rsplit(',').next().unwrap();
        assert_refuses(
            run_serve(&[], &[(var, value)], None),
            &[&format!("{bad:?}"), why, var],
        );
    }
}

#[test]
fn startup_refuses_bad_entries_from_the_flag_and_the_file() {
    assert_refuses(
        run_serve(
            &["--http-cors-allow-origin", "https://example.com"],
            &[],
            None,
        ),
        &["\"https://example.com\"", "not a loopback origin"],
    );
    assert_refuses(
        run_serve(
            &[],
            &[],
            Some("[server]\ncors_allow_origins = [\"http://localhost:5173/app\"]\n"),
        ),
        &[
            "\"http://localhost:5173/app\"",
            "no path",
            "[server] cors_allow_origins",
        ],
    );
    // The chat list takes `*` and remote origins, never a path.
    assert_refuses(
        run_serve(
            &[],
            &[(
                "AGENTD_CHAT_CORS_ALLOW_ORIGINS",
                "*,https://shop.example.com/chat",
            )],
            None,
        ),
        &["\"https://shop.example.com/chat\"", "no path"],
    );
}

#[test]
fn the_flag_beats_the_variable() {
    let env = [("AGENTD_HTTP_CORS_ALLOW_ORIGINS", "*")];
    assert!(matches!(
        run_serve(
            &["--http-cors-allow-origin", "http://localhost:5173"],
            &env,
            None
        ),
        Outcome::Listened
    ));
    assert_refuses(run_serve(&[], &env, None), &["wildcard"]);
    let chat = [("AGENTD_CHAT_CORS_ALLOW_ORIGINS", "*")];
    assert!(matches!(run_serve(&[], &chat, None), Outcome::Listened));
}
