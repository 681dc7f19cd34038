//! Successful fetches: what the model gets back, what the server receives,
//! and how the tool reaches a name.

use crate::support::*;

#[tokio::test]
async fn fetches_from_an_allowed_server() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    let out = ok(&get(&tool, &server.url("/hello#frag")).await);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "hello");
    assert_eq!(out["truncated"], false);
    assert_eq!(out["url"], server.url("/hello"));
    assert_eq!(out["headers"]["content-type"], "text/plain");
    assert_eq!(out["headers"]["content-length"], "5");
    assert!(out["headers"].get("set-cookie").is_none(), "{out}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/hello");
    let ua = seen[0].headers["user-agent"].to_str().unwrap();
    assert!(ua.starts_with("agentd-http-fetch/"), "{ua}");

    // An error status is a response, not a tool error.
    let out = ok(&get(&tool, &server.url("/missing")).await);
    assert_eq!(out["status"], 404);
    assert_eq!(out["body"], "no such page");
}

#[tokio::test]
async fn localhost_is_reachable_through_the_system_resolver_when_opened() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    let url = format!("http://localhost:{}/hello", server.port());
    let out = ok(&get(&tool, &url).await);
    assert_eq!(out["body"], "hello");
    assert_eq!(
        server.seen()[0].headers["host"],
        format!("localhost:{}", server.port()).as_str()
    );
}

#[tokio::test]
async fn method_headers_and_body_are_delivered() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    let out = ok(&call(
        &tool,
        json!({
            "url": server.url("/echo?x=1"),
            "method": "PUT",
            "headers": {"X-Api-Key": "k123", "Content-Type": "application/json"},
            "body": "{\"a\":1}"
        }),
    )
    .await);
    assert_eq!(out["body"], "PUT {\"a\":1}");
    let seen = &server.seen()[0];
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/echo?x=1");
    assert_eq!(seen.body, "{\"a\":1}");
    assert_eq!(seen.headers["x-api-key"], "k123");
    assert_eq!(seen.headers["content-type"], "application/json");

    for method in ["POST", "PATCH", "DELETE"] {
        let out = ok(&call(
            &tool,
            json!({"url": server.url("/echo"), "method": method, "body": "b"}),
        )
        .await);
        assert_eq!(out["body"], format!("{method} b"));
    }
    let out = ok(&call(
        &tool,
        json!({"url": server.url("/hello"), "method": "HEAD"}),
    )
    .await);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "");
    assert_eq!(server.seen().last().unwrap().method, "HEAD");
}

#[tokio::test]
async fn names_are_resolved_once_and_the_connection_pinned() {
    let server = Server::start().await;
    let dns = FakeDns::with(&[
        ("pinned.test", &["127.0.0.1"]),
        ("mixed.test", &["93.184.216.34", "127.0.0.1"]),
        ("private.test", &["192.168.0.10"]),
        ("empty.test", &[]),
    ]);
    let policy = HttpFetchPolicy {
        allow_hosts: vec!["*.test".into()],
        ..server.policy()
    };
    let tool = HttpFetch::with_resolver(policy, dns.clone());
    let url = format!("http://pinned.test:{}/hello", server.port());
    let out = ok(&get(&tool, &url).await);
    assert_eq!(out["body"], "hello");
    assert_eq!(
        dns.lookups(),
        1,
        "the client must not look the name up again"
    );
    assert_eq!(
        server.seen()[0].headers["host"],
        format!("pinned.test:{}", server.port()).as_str()
    );

    let tool = HttpFetch::with_resolver(
        HttpFetchPolicy {
            allow_cidrs: vec![],
            ..tool.policy().clone()
        },
        dns.clone(),
    );
    let url = format!("http://mixed.test:{}/hello", server.port());
    let text = refused(&get(&tool, &url).await, "ADDRESS_FORBIDDEN");
    assert!(text.contains("127.0.0.1"), "{text}");
    let url = format!("http://private.test:{}/", server.port());
    refused(&get(&tool, &url).await, "ADDRESS_FORBIDDEN");
    let url = format!("http://empty.test:{}/", server.port());
    refused(&get(&tool, &url).await, "DNS_FAILED");
    let url = format!("http://unknown.test:{}/", server.port());
    refused(&get(&tool, &url).await, "DNS_FAILED");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn bad_arguments_name_the_field() {
    let tool = HttpFetch::new(HttpFetchPolicy::default());
    let out = call(&tool, json!({"url": "https://example.com", "header": {}})).await;
    assert!(refused(&out, "INVALID_ARGUMENTS").contains("\"header\""));
    let out = call(
        &tool,
        json!({"url": "https://example.com", "method": "TRACE"}),
    )
    .await;
    assert!(refused(&out, "INVALID_ARGUMENTS").contains("method"));
    let out = call(&tool, json!({"url": ["https://example.com"]})).await;
    assert!(refused(&out, "INVALID_ARGUMENTS").contains("url"));
}

#[tokio::test]
async fn spec_describes_the_arguments() {
    let spec = HttpFetch::new(HttpFetchPolicy::default()).spec();
    assert_eq!(spec.name, "http_fetch");
    let p = &spec.parameters;
    assert_eq!(p["required"], json!(["url"]));
    assert_eq!(p["additionalProperties"], false);
    assert_eq!(
        p["properties"]["method"]["enum"],
        json!(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    );
    assert_eq!(p["properties"]["body"]["type"], "string");
    assert_eq!(
        p["properties"]["headers"]["additionalProperties"]["type"],
        "string"
    );
}

#[tokio::test]
async fn egress_settings_build_the_policy() {
    let server = Server::start().await;
    let operator = OperatorEgress {
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        allowed_ports: vec![server.port()],
    };
    let egress = json!({"mode": "allow_list", "allow": ["127.0.0.1"]});
    let tool = HttpFetch::new(HttpFetchPolicy::from_egress(Some(&egress), &operator).unwrap());
    assert_eq!(
        ok(&get(&tool, &server.url("/hello")).await)["body"],
        "hello"
    );

    for egress in [
        json!({"mode": "deny_all"}),
        json!({"mode": "allow_list", "allow": []}),
    ] {
        let tool = HttpFetch::new(HttpFetchPolicy::from_egress(Some(&egress), &operator).unwrap());
        refused(&get(&tool, &server.url("/hello")).await, "EGRESS_DENIED");
    }
    let tool = HttpFetch::new(HttpFetchPolicy::from_egress(None, &operator).unwrap());
    refused(&get(&tool, &server.url("/hello")).await, "EGRESS_DENIED");
    assert_eq!(server.seen().len(), 1);

    let bad = json!({"mode": "allow_list", "allow": ["https://api.github.com"]});
    assert_eq!(
        HttpFetchPolicy::from_egress(Some(&bad), &operator).unwrap_err(),
        EgressConfigError::InvalidHost {
            index: 0,
            entry: "\"https://api.github.com\"".into()
        }
    );
}
