//! JWKS from a URL: fetched at startup, refetched on an unknown `kid` (at
//! most once a minute) and periodically, a failed refresh keeping the keys.

use super::*;

/// A JWKS endpoint whose answer the test changes, counting fetches.
struct JwksServer {
    url: String,
    body: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Served = (Arc<Mutex<(StatusCode, String)>>, Arc<AtomicUsize>);

async fn serve_jwks(status: StatusCode, body: &str) -> JwksServer {
    let served: Served = (
        Arc::new(Mutex::new((status, body.to_owned()))),
        Arc::new(AtomicUsize::new(0)),
    );
    let app = Router::new()
        .route(
            "/jwks.json",
            get(|State((body, hits)): State<Served>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                body.lock().unwrap().clone()
            }),
        )
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    JwksServer {
        url,
        body: served.0,
        hits: served.1,
        task,
    }
}

impl JwksServer {
    fn settings(&self) -> JwtSettings {
        JwtSettings {
            jwks_url: Some(self.url.clone()),
            ..settings(JwtAlgorithm::RS256)
        }
    }

    fn set(&self, status: StatusCode, body: &str) {
        *self.body.lock().unwrap() = (status, body.to_owned());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn wait_hits(&self, n: usize) {
        for _ in 0..200 {
            if self.hits() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("JWKS fetched {} times, expected {n}", self.hits());
    }
}

/// The fixture set with its RSA key published under another `kid`.
fn jwks_with_kid(kid: &str) -> String {
    JWKS.replace(KID, kid)
}

fn quiet() -> Timing {
    Timing {
        every: Duration::from_secs(3600),
        unknown_kid_gap: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn rs256_with_a_jwks_url_refetched_on_an_unknown_kid_at_most_once_a_minute() {
    let server = serve_jwks(StatusCode::OK, JWKS).await;
    let v = verifier_with(&server.settings(), quiet()).await.unwrap();
    assert_eq!(server.hits(), 1, "fetched at startup");
    let id = v.verify(&rs_token(&claims())).expect("valid token");
    assert_eq!(id.tenant.as_str(), "acme");

    // The provider rotates: the key is now published as "rotated".
    server.set(StatusCode::OK, &jwks_with_kid("rotated"));
    let rotated = rs_token_with(&claims(), Some("rotated"), PRIVATE_PEM);
    assert_eq!(
        v.verify(&rotated),
        Err(JwtError::UnknownKey(Some("rotated".into())))
    );
    server.wait_hits(2).await;
    let mut ok = false;
    for _ in 0..200 {
        if v.verify(&rotated).is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "the background refresh picked up the rotated key");

    // Another unknown kid within the minute: no fetch, sync or async.
    let forged = rs_token_with(&claims(), Some("forged"), PRIVATE_PEM);
    for _ in 0..5 {
        assert!(matches!(v.verify(&forged), Err(JwtError::UnknownKey(_))));
        assert!(matches!(
            v.verify_or_refresh(&forged).await,
            Err(JwtError::UnknownKey(_))
        ));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.hits(), 2, "at most one unknown-kid refetch a minute");
}

#[tokio::test]
async fn verify_or_refresh_accepts_a_rotated_key_on_the_first_request() {
    let server = serve_jwks(StatusCode::OK, JWKS).await;
    let v = verifier_with(&server.settings(), quiet()).await.unwrap();
    server.set(StatusCode::OK, &jwks_with_kid("rotated"));
    let rotated = rs_token_with(&claims(), Some("rotated"), PRIVATE_PEM);
    let id = v.verify_or_refresh(&rotated).await.expect("refetched");
    assert_eq!(id.tenant.as_str(), "acme");
    assert_eq!(server.hits(), 2);
    // The old kid is gone from the set now.
    assert!(matches!(
        v.verify(&rs_token(&claims())),
        Err(JwtError::UnknownKey(_))
    ));
}

#[tokio::test]
async fn a_jwks_url_is_refreshed_periodically_and_a_failed_refresh_keeps_the_keys() {
    let server = serve_jwks(StatusCode::OK, JWKS).await;
    let timing = Timing {
        every: Duration::from_millis(50),
        unknown_kid_gap: Duration::from_secs(60),
    };
    let v = verifier_with(&server.settings(), timing).await.unwrap();
    server.set(StatusCode::INTERNAL_SERVER_ERROR, "down");
    let before = server.hits();
    server.wait_hits(before + 2).await;
    assert!(v.verify(&rs_token(&claims())).is_ok(), "kept the keys");

    server.set(StatusCode::OK, &jwks_with_kid("periodic"));
    let token = rs_token_with(&claims(), Some("periodic"), PRIVATE_PEM);
    let mut ok = false;
    for _ in 0..200 {
        if v.verify_now(&token).is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "the periodic refresh picked up the new set");

    // Dropping the verifier stops its refresher.
    drop(v);
    // Let a fetch already on the wire land before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = server.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.hits(), after, "no fetch after the verifier is gone");
}

#[tokio::test]
async fn a_jwks_url_that_fails_at_startup_stops_startup() {
    let down = serve_jwks(StatusCode::SERVICE_UNAVAILABLE, "").await;
    let e = verifier_with(&down.settings(), quiet()).await.unwrap_err();
    assert!(matches!(e, JwtConfigError::JwksFetch { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");

    let no_rsa = serve_jwks(
        StatusCode::OK,
        r#"{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}"#,
    )
    .await;
    let e = verifier_with(&no_rsa.settings(), quiet())
        .await
        .unwrap_err();
    assert!(matches!(e, JwtConfigError::JwksNoKeys { .. }), "{e}");

    let weak = serve_jwks(
        StatusCode::OK,
        r#"{"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}"#,
    )
    .await;
    let e = verifier_with(&weak.settings(), quiet()).await.unwrap_err();
    assert!(matches!(e, JwtConfigError::JwksNoKeys { .. }), "{e}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let s = JwtSettings {
        jwks_url: Some(closed),
        ..settings(JwtAlgorithm::RS256)
    };
    let e = verifier_with(&s, quiet()).await.unwrap_err();
    assert!(matches!(e, JwtConfigError::JwksFetch { .. }), "{e}");
}
