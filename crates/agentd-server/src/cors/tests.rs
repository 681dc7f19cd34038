//! The origin parser, the two policies, and the middleware on a tiny router
//! wrapped in the real request-id layer.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::middleware;
use axum::routing::get;
use tower::ServiceExt;

use super::*;

#[test]
fn origins_parse_strictly() {
    use OriginError::*;
    let cases: &[(&str, Result<&str, OriginError>)] = &[
        ("http://localhost:5173", Ok("http://localhost:5173")),
        ("http://localhost", Ok("http://localhost")),
        ("http://127.0.0.1:8080", Ok("http://127.0.0.1:8080")),
        ("http://[::1]:3000", Ok("http://[::1]:3000")),
        ("http://[0:0:0:0:0:0:0:1]:3000", Ok("http://[::1]:3000")),
        ("https://LOCALHOST:8443", Ok("https://localhost:8443")),
        ("HTTP://Example.COM", Ok("http://example.com")),
        ("https://app.example.com:443", Ok("https://app.example.com")),
        ("http://localhost:80", Ok("http://localhost")),
        ("http://localhost:65535", Ok("http://localhost:65535")),
        (
            "http://127.0.0.1.evil.example",
            Ok("http://127.0.0.1.evil.example"),
        ),
        ("*", Err(Wildcard)),
        ("https://*.example.com", Err(Wildcard)),
        ("", Err(Empty)),
        ("null", Err(Malformed("expected scheme://host[:port]"))),
        (
            "localhost:5173",
            Err(Malformed("expected scheme://host[:port]")),
        ),
        ("ftp://localhost", Err(Scheme)),
        ("file://localhost", Err(Scheme)),
        ("http://localhost:5173/app", Err(PathBearing)),
        ("http://localhost:5173/", Err(PathBearing)),
        ("http://evil.com#@localhost", Err(QueryOrFragment)),
        ("http://localhost?x=1", Err(QueryOrFragment)),
        ("http://user@localhost", Err(UserInfo)),
        ("http://user:pass@localhost:5173", Err(UserInfo)),
        ("http://localhost:0", Err(Port)),
        ("http://localhost:65536", Err(Port)),
        ("http://localhost:99999", Err(Port)),
        ("http://localhost:05173", Err(Port)),
        ("http://localhost:", Err(Port)),
        ("http://localhost:51a3", Err(Port)),
        ("http://localhost:5173:1", Err(Port)),
        ("http://", Err(Host)),
        ("http://:5173", Err(Host)),
        ("http://local_host", Err(Host)),
        ("http://localhost.", Err(Host)),
        ("http://-localhost", Err(Host)),
        ("http://[::1", Err(Host)),
        ("http://[::1]x", Err(Host)),
        ("http://[nope]:80", Err(Host)),
        ("http://localhost\\@evil.com", Err(UserInfo)),
        ("http://localhost\\evil.com", Err(Host)),
        (
            "http://localhost:5173 ",
            Err(Malformed(
                "only printable ASCII without spaces (punycode for other names)",
            )),
        ),
        (
            "http://bücher.example",
            Err(Malformed(
                "only printable ASCII without spaces (punycode for other names)",
            )),
        ),
    ];
    for (text, want) in cases {
        let got = Origin::parse(text).map(|o| o.to_string());
        let want = want.clone().map(str::to_owned);
        assert_eq!(got, want, "parsing {text:?}");
    }
}

#[test]
fn loopback_is_exactly_three_hosts() {
    for yes in [
        "http://localhost:1",
        "https://localhost",
        "http://127.0.0.1:9",
        "http://[::1]",
    ] {
        assert!(Origin::parse(yes).unwrap().is_loopback(), "{yes}");
    }
    for no in [
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.com",
        "http://evil-localhost",
        "http://127.0.0.2",
        "http://0.0.0.0",
        "http://[::2]",
        "http://[::ffff:127.0.0.1]",
    ] {
        assert!(!Origin::parse(no).unwrap().is_loopback(), "{no}");
    }
}

#[test]
fn default_policy_allows_loopback_and_refuses_lookalikes() {
    let p = CorsPolicy::loopback();
    for yes in [
        "http://localhost:5173",
        "http://[::1]:8080",
        "https://LOCALHOST:8443",
        "http://127.0.0.1",
    ] {
        assert!(p.allows(yes), "{yes}");
    }
    for no in [
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.com",
        "http://evil.com#@localhost",
        "http://user@localhost",
        "http://localhost:5173/app",
        "null",
        "https://example.com",
        "http://localhost:99999",
        "http://localhost:5173x",
        "",
    ] {
        assert!(!p.allows(no), "{no}");
    }
}

#[test]
fn api_list_is_exact_and_loopback_only() {
    let p = CorsPolicy::api(&["http://localhost:5173", " https://[::1]:8443 "]).unwrap();
    assert!(p.allows("http://localhost:5173"));
    assert!(p.allows("http://LocalHost:5173"));
    assert!(p.allows("https://[::1]:8443"));
    assert!(!p.allows("http://localhost:5174"));
    assert!(!p.allows("https://localhost:5173"));
    assert!(!p.allows("http://127.0.0.1:5173"));

    let refused = |entry: &str| CorsPolicy::api(&["http://localhost:1", entry]).unwrap_err();
    let cases = [
        ("*", OriginError::Wildcard),
        ("https://example.com", OriginError::NotLoopback),
        ("http://127.0.0.1.evil.example", OriginError::NotLoopback),
        ("http://localhost:5173/app", OriginError::PathBearing),
        ("http://localhost:0", OriginError::Port),
    ];
    for (entry, reason) in cases {
        let e = refused(entry);
        assert_eq!(e.entry, entry);
        assert_eq!(e.reason, reason, "{entry}");
        assert!(e.to_string().contains(entry), "{e}");
    }
    assert!(
        refused("*").to_string().contains("wildcard"),
        "the message names the problem"
    );
    assert!(
        refused("https://example.com")
            .to_string()
            .contains("loopback")
    );
    assert!(
        refused("http://localhost:5173/app")
            .to_string()
            .contains("path")
    );

    let none = CorsPolicy::api::<&str>(&[]).unwrap();
    assert!(
        !none.allows("http://localhost:5173"),
        "an empty list allows none"
    );
}

#[test]
fn chat_list_takes_any_origin_or_star_but_still_refuses_paths() {
    let p = CorsPolicy::chat(&["https://app.example.com", "http://localhost:3000"]).unwrap();
    assert!(p.allows("https://app.example.com"));
    assert!(p.allows("http://localhost:3000"));
    assert!(!p.allows("https://app.example.com.evil.example"));
    assert!(!p.allows("http://localhost:3001"));

    let any = CorsPolicy::chat(&["*"]).unwrap();
    assert!(any.allows("https://anything.example"));
    assert!(
        any.allows("null"),
        "a sandboxed iframe may embed a public chat"
    );

    let e = CorsPolicy::chat(&["https://app.example.com/chat"]).unwrap_err();
    assert_eq!(e.reason, OriginError::PathBearing);
    let e = CorsPolicy::chat(&["https://*.example.com"]).unwrap_err();
    assert_eq!(e.reason, OriginError::Wildcard);
}

#[test]
fn surfaces_are_chosen_by_path() {
    assert_eq!(Surface::of("/v1/sessions"), Some(Surface::Api));
    assert_eq!(Surface::of("/v1"), Some(Surface::Api));
    assert_eq!(Surface::of("/v1x"), None);
    assert_eq!(Surface::of("/api/chat"), Some(Surface::Chat));
    assert_eq!(Surface::of("/api/info"), Some(Surface::Chat));
    assert_eq!(Surface::of("/ws/chat"), Some(Surface::Chat));
    for none in ["/health", "/health/ready", "/openapi.json", "/metrics", "/"] {
        assert_eq!(Surface::of(none), None, "{none}");
    }
}

fn app(policies: CorsPolicies) -> Router {
    Router::new()
        .route(
            "/v1/things",
            get(|| async { "things" }).post(|| async { "made" }),
        )
        .route("/api/info", get(|| async { "info" }))
        .route("/health", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(Arc::new(policies), layer))
        .layer(middleware::from_fn(crate::request_id::layer))
}

async fn send(app: &Router, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn json_body(r: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn allowed_origin_is_echoed_and_varies() {
    let app = app(CorsPolicies::default());
    let r = send(
        &app,
        "GET",
        "/v1/things",
        &[("origin", "http://localhost:5173")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    assert_eq!(header(&r, "vary"), Some("origin"));
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn preflight_from_allowed_origin_is_answered_here() {
    let app = app(CorsPolicies::default());
    let r = send(
        &app,
        "OPTIONS",
        "/v1/things",
        &[
            ("origin", "http://[::1]:8080"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, idempotency-key",
            ),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("http://[::1]:8080")
    );
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST, DELETE, OPTIONS")
    );
    let allowed = header(&r, "access-control-allow-headers").unwrap();
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
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert!(header(&r, "x-request-id").is_some());
}

#[tokio::test]
async fn refused_origin_gets_403_envelope_preflight_or_not() {
    let app = app(CorsPolicies::default());
    for origin in [
        "http://127.0.0.1.evil.example",
        "null",
        "http://evil.com#@localhost",
    ] {
        for (method, extra) in [
            ("OPTIONS", Some(("access-control-request-method", "POST"))),
            ("POST", None),
            ("GET", None),
        ] {
            let mut headers = vec![("origin", origin)];
            headers.extend(extra);
            let r = send(&app, method, "/v1/things", &headers).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} from {origin}");
            assert_eq!(header(&r, "access-control-allow-origin"), None);
            assert_eq!(header(&r, "access-control-allow-credentials"), None);
            let rid = header(&r, "x-request-id").unwrap().to_owned();
            let body = json_body(r).await;
            assert_eq!(body["reason_code"], "ORIGIN_NOT_ALLOWED");
            assert_eq!(body["request_id"], rid.as_str());
            assert!(body["error"].is_string());
        }
    }
}

#[tokio::test]
async fn two_origin_headers_are_refused() {
    let app = app(CorsPolicies::default());
    let r = send(
        &app,
        "GET",
        "/v1/things",
        &[
            ("origin", "http://localhost:1"),
            ("origin", "http://localhost:2"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn requests_without_origin_and_other_paths_pass_untouched() {
    let app = app(CorsPolicies::default());
    let r = send(&app, "GET", "/v1/things", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(header(&r, "vary"), None);

    let r = send(
        &app,
        "GET",
        "/health",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn chat_star_answers_star_while_v1_stays_loopback() {
    let app = app(CorsPolicies {
        api: CorsPolicy::loopback(),
        chat: CorsPolicy::chat(&["*"]).unwrap(),
    });
    let r = send(
        &app,
        "GET",
        "/api/info",
        &[("origin", "https://site.example")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&r, "access-control-allow-credentials"), None);

    let r = send(
        &app,
        "OPTIONS",
        "/api/info",
        &[
            ("origin", "https://site.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));

    let r = send(
        &app,
        "GET",
        "/v1/things",
        &[("origin", "https://site.example")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
