//! Redirects, followed by the tool one checked hop at a time.

use crate::support::*;

#[tokio::test]
async fn redirects_to_allowed_targets_are_followed() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    let out = ok(&get(&tool, &server.url("/redirect?to=/hello")).await);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "hello");
    assert_eq!(out["url"], server.url("/hello"));
    let seen: Vec<String> = server.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/redirect?to=/hello", "/hello"]);
}

#[tokio::test]
async fn redirect_methods_bodies_and_credentials() {
    let server = Server::start().await;
    let dns = FakeDns::with(&[("localhost", &["127.0.0.1"])]);
    let tool = HttpFetch::with_resolver(server.policy(), dns);
    let post = |url: String| {
        json!({"url": url, "method": "POST", "body": "payload",
               "headers": {"Content-Type": "text/plain", "Authorization": "Bearer t"}})
    };
    // 303: GET without the body.
    let out = ok(&call(&tool, post(server.url("/redirect?status=303&to=/echo"))).await);
    assert_eq!(out["body"], "GET ");
    let seen = server.seen();
    assert!(seen[1].headers.get("content-type").is_none());
    // Same origin: credentials kept.
    assert_eq!(seen[1].headers["authorization"], "Bearer t");
    // 307: the method and body are kept.
    let out = ok(&call(&tool, post(server.url("/redirect?status=307&to=/echo"))).await);
    assert_eq!(out["body"], "POST payload");
    // Another origin (localhost is not 127.0.0.1): credentials dropped.
    let to = format!("http://localhost:{}/echo", server.port());
    let url = server.url(&format!("/redirect?status=308&to={to}"));
    let out = ok(&call(&tool, post(url)).await);
    assert_eq!(out["body"], "POST payload");
    let last = server.seen().pop().unwrap();
    assert!(last.headers.get("authorization").is_none(), "{last:?}");
    assert_eq!(last.headers["content-type"], "text/plain");
}

#[tokio::test]
async fn redirects_to_denied_targets_are_refused_naming_the_hop() {
    let server = Server::start().await;
    let dns = FakeDns::with(&[
        ("evil.test", &["127.0.0.1"]),
        ("internal.test", &["10.1.2.3"]),
    ]);
    let policy = HttpFetchPolicy {
        allow_hosts: vec![
            "127.0.0.1".into(),
            "10.0.0.1".into(),
            "169.254.169.254".into(),
            "internal.test".into(),
        ],
        allowed_ports: vec![server.port(), 80],
        ..server.policy()
    };
    let tool = HttpFetch::with_resolver(policy, dns.clone());

    let evil = format!("http://evil.test:{}/hello", server.port());
    let out = get(&tool, &server.url(&format!("/redirect?to={evil}"))).await;
    let text = refused(&out, "EGRESS_DENIED");
    assert!(text.contains(&format!("(redirect 1 to {evil})")), "{text}");
    assert_eq!(dns.lookups(), 0);

    for (to, class) in [
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://internal.test/", "private"),
    ] {
        let out = get(&tool, &server.url(&format!("/redirect?to={to}"))).await;
        let text = refused(&out, "ADDRESS_FORBIDDEN");
        assert!(
            text.contains(class) && text.contains("redirect 1"),
            "{text}"
        );
    }
    // A redirect to a scheme or port that is not allowed.
    let out = get(&tool, &server.url("/redirect?to=file:///etc/passwd")).await;
    refused(&out, "SCHEME_NOT_ALLOWED");
    let out = get(&tool, &server.url("/redirect?to=http://127.0.0.1:1/")).await;
    assert!(refused(&out, "PORT_NOT_ALLOWED").contains("redirect 1"));
    // The second hop is the one named.
    let inner = server.url("/redirect?to=http://10.0.0.1/");
    let encoded: String = url::form_urlencoded::byte_serialize(inner.as_bytes()).collect();
    let out = get(&tool, &server.url(&format!("/redirect?to={encoded}"))).await;
    assert!(refused(&out, "ADDRESS_FORBIDDEN").contains("redirect 2 to http://10.0.0.1/"));
    // Only the redirecting pages were ever requested.
    assert!(server.seen().iter().all(|s| s.uri.starts_with("/redirect")));
}

#[tokio::test]
async fn redirect_chains_stop_at_the_limit() {
    let server = Server::start().await;
    let tool = HttpFetch::new(HttpFetchPolicy {
        max_redirects: 3,
        ..server.policy()
    });
    let text = refused(
        &get(&tool, &server.url("/loop")).await,
        "TOO_MANY_REDIRECTS",
    );
    assert!(text.contains('3'), "{text}");
    assert_eq!(server.seen().len(), 4);
}
