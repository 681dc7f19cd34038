//! Refusals on the first hop: each one happens before any request reaches
//! the server, and those on the name before any DNS lookup.

use crate::support::*;

#[tokio::test]
async fn loopback_is_refused_without_the_operator_block_even_when_listed() {
    let server = Server::start().await;
    let policy = HttpFetchPolicy {
        allow_cidrs: vec![],
        ..server.policy()
    };
    let tool = HttpFetch::new(policy);
    let text = refused(
        &get(&tool, &server.url("/hello")).await,
        "ADDRESS_FORBIDDEN",
    );
    assert!(text.contains("loopback"), "{text}");
    // A name resolving to loopback is refused the same way.
    let url = format!("http://localhost:{}/hello", server.port());
    let text = refused(&get(&tool, &url).await, "ADDRESS_FORBIDDEN");
    assert!(
        text.contains("localhost") && text.contains("loopback"),
        "{text}"
    );
    // Another block does not open loopback.
    let tool = HttpFetch::new(HttpFetchPolicy {
        allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        ..server.policy()
    });
    refused(
        &get(&tool, &server.url("/hello")).await,
        "ADDRESS_FORBIDDEN",
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn hosts_off_the_allow_list_are_refused_before_dns_and_connection() {
    let server = Server::start().await;
    let dns = FakeDns::with(&[("other.test", &["127.0.0.1"])]);
    let policy = HttpFetchPolicy {
        allow_hosts: vec!["localhost".into()],
        ..server.policy()
    };
    let tool = HttpFetch::with_resolver(policy, dns.clone());
    let text = refused(&get(&tool, &server.url("/hello")).await, "EGRESS_DENIED");
    assert!(text.contains("127.0.0.1"), "{text}");
    let url = format!("http://other.test:{}/hello", server.port());
    refused(&get(&tool, &url).await, "EGRESS_DENIED");
    assert_eq!(dns.lookups(), 0, "a refused name must not be resolved");
    assert!(server.seen().is_empty());

    // Deny by default: an empty policy refuses everything.
    let tool = HttpFetch::new(HttpFetchPolicy::default());
    refused(&get(&tool, "https://example.com/").await, "EGRESS_DENIED");
}

#[tokio::test]
async fn every_ip_literal_spelling_is_checked_as_the_address_it_names() {
    let cases = [
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://127.0.0.1./", "loopback"),
        ("http://%31%32%37.0.0.1/", "loopback"),
        ("http://１２７.０.０.１/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[::127.0.0.1]/", "loopback"),
        ("http://[64:ff9b::7f00:1]/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://0xa000001/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://[fd00::1]/", "ULA"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://192.0.2.1/", "documentation"),
        ("http://198.18.0.1/", "benchmarking"),
    ];
    let dns = FakeDns::with(&[]);
    // Listed on the allow-list in their canonical spelling, so only the
    // address check stands between the URL and a connection.
    let listed: Vec<String> = [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "fd00::1",
        "fe80::1",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
    ]
    .map(String::from)
    .to_vec();
    let tool = HttpFetch::with_resolver(HttpFetchPolicy::allow_list(listed), dns.clone());
    for (url, class) in cases {
        let out = get(&tool, url).await;
        let text = refused(&out, "ADDRESS_FORBIDDEN");
        assert!(text.contains(class), "{url}: {text}");
    }
    // Not listed: refused on the name already.
    let tool = HttpFetch::with_resolver(HttpFetchPolicy::allow_list(["example.com"]), dns.clone());
    for (url, _) in cases {
        refused(&get(&tool, url).await, "EGRESS_DENIED");
    }
    assert_eq!(dns.lookups(), 0, "literals are never resolved");
}

#[tokio::test]
async fn odd_spellings_reach_the_address_they_name_when_it_is_allowed() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    for host in [
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
    ] {
        let url = format!("http://{host}:{}/hello", server.port());
        let policy = HttpFetchPolicy {
            allow_hosts: vec!["127.0.0.1".into(), "::ffff:127.0.0.1".into()],
            ..server.policy()
        };
        let out = ok(&get(&HttpFetch::new(policy), &url).await);
        assert_eq!(out["body"], "hello", "{url}");
    }
    assert_eq!(server.seen().len(), 5);
    // The IPv6-mapped form is its own literal on the allow-list.
    let url = format!("http://[::ffff:127.0.0.1]:{}/hello", server.port());
    refused(&get(&tool, &url).await, "EGRESS_DENIED");
}

#[tokio::test]
async fn other_schemes_userinfo_and_ports_are_refused() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1:70/",
        "data:text/plain,hello",
        "ws://127.0.0.1/",
    ] {
        refused(&get(&tool, url).await, "SCHEME_NOT_ALLOWED");
    }
    refused(&get(&tool, "not a url").await, "INVALID_URL");
    refused(&get(&tool, "/relative/path").await, "INVALID_URL");
    let port = server.port();
    for url in [
        format!("http://user:pw@127.0.0.1:{port}/hello"),
        format!("http://user@127.0.0.1:{port}/hello"),
        format!("http://:pw@127.0.0.1:{port}/hello"),
    ] {
        refused(&get(&tool, &url).await, "USERINFO_NOT_ALLOWED");
    }
    // Default ports only: the test server's port is refused.
    let tool = HttpFetch::new(HttpFetchPolicy {
        allowed_ports: HttpFetchPolicy::default().allowed_ports,
        ..server.policy()
    });
    let text = refused(&get(&tool, &server.url("/hello")).await, "PORT_NOT_ALLOWED");
    assert!(text.contains("80, 443"), "{text}");
    refused(
        &get(&tool, "https://127.0.0.1:8443/").await,
        "PORT_NOT_ALLOWED",
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn host_and_proxy_headers_are_refused_before_any_request() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    for header in [
        "Host",
        "Proxy-Authorization",
        "Connection",
        "Transfer-Encoding",
        "Upgrade",
        "TE",
        "Content-Length",
    ] {
        let out = call(
            &tool,
            json!({"url": server.url("/hello"), "headers": {header: "x"}}),
        )
        .await;
        let text = refused(&out, "HEADER_NOT_ALLOWED");
        assert!(text.contains(header), "{text}");
    }
    assert!(server.seen().is_empty());
}
