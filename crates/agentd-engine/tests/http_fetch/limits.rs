//! Size, time and cancellation limits.

use crate::support::*;

#[tokio::test]
async fn bodies_over_the_limit_are_truncated() {
    let server = Server::start().await;
    let tool = HttpFetch::new(HttpFetchPolicy {
        max_response_bytes: 1000,
        ..server.policy()
    });
    let out = ok(&get(&tool, &server.url("/big?n=300000")).await);
    assert_eq!(out["truncated"], true);
    assert_eq!(out["body"].as_str().unwrap().len(), 1000);
    assert_eq!(out["headers"]["content-length"], "300000");
    let out = ok(&get(&tool, &server.url("/big?n=1000")).await);
    assert_eq!(out["truncated"], false);
    assert_eq!(out["body"].as_str().unwrap().len(), 1000);
}

#[tokio::test]
async fn slow_servers_time_out() {
    let server = Server::start().await;
    let tool = HttpFetch::new(HttpFetchPolicy {
        timeout: Duration::from_millis(500),
        ..server.policy()
    });
    let started = Instant::now();
    let text = refused(&get(&tool, &server.url("/slow")).await, "TIMEOUT");
    assert!(text.contains("500ms"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cancellation_aborts_promptly() {
    let server = Server::start().await;
    let tool = HttpFetch::new(server.policy());
    let ctx = ctx();
    let cancel = ctx.cancel.clone();
    let seen = server.seen.clone();
    // Cancel once the request is in the server's hands.
    tokio::spawn(async move {
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
    });
    let started = Instant::now();
    let out = tool.call(&ctx, json!({"url": server.url("/slow")})).await;
    refused(&out, "CANCELLED");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Already cancelled: nothing is sent.
    let out = tool.call(&ctx, json!({"url": server.url("/hello")})).await;
    refused(&out, "CANCELLED");
    assert_eq!(server.seen().len(), 1);
}
