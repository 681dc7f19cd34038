//! Tokens minted here with the fixture keys (`tests/fixtures/`, test-only)
//! and a shared secret, verified by the real verifier: the good paths for
//! HS256, RS256 from a JWKS file and from a JWKS URL served by a tiny axum
//! server, and every refusal the configuration promises.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentd_core::{Scope, Scopes, TenantId};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::jwks::Timing;
use super::*;

const ISS: &str = "https://idp.example";
const AUD: &str = "agentd";
const SECRET_VAR: &str = "TEST_JWT_SECRET";
const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";
const KID: &str = "test-key-1";

const PRIVATE_PEM: &[u8] = include_bytes!("../../../tests/fixtures/jwt_rsa_private.pem");
const OTHER_PRIVATE_PEM: &[u8] =
    include_bytes!("../../../tests/fixtures/jwt_rsa_other_private.pem");
const PUBLIC_PEM: &[u8] = include_bytes!("../../../tests/fixtures/jwt_rsa_public.pem");
const JWKS: &str = include_str!("../../../tests/fixtures/jwt_jwks.json");

fn jwks_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt_jwks.json"
    ))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "exp": now() + 300,
        "sub": "user-1",
        "tenant": "acme",
        "scope": "runs:read runs:write billing:admin",
    })
}

/// `claims()` with fields replaced (`Value::Null` removes one).
fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn hs_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign HS256")
}

fn rs_token_with(claims: &Value, kid: Option<&str>, pem: &[u8]) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(pem).expect("fixture key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign RS256")
}

fn rs_token(claims: &Value) -> String {
    rs_token_with(claims, Some(KID), PRIVATE_PEM)
}

/// A token with this exact header, unsigned (an empty signature segment).
fn unsigned(header: &Value, claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", enc(header), enc(claims))
}

fn settings(algorithm: JwtAlgorithm) -> JwtSettings {
    JwtSettings {
        algorithm,
        issuer: ISS.into(),
        audience: AUD.into(),
        hs256_secret_env: None,
        jwks_file: None,
        jwks_url: None,
        tenant_claim: default_tenant_claim(),
        scopes_claim: default_scopes_claim(),
    }
}

fn hs_settings() -> JwtSettings {
    JwtSettings {
        hs256_secret_env: Some(SECRET_VAR.into()),
        ..settings(JwtAlgorithm::HS256)
    }
}

fn rs_file_settings() -> JwtSettings {
    JwtSettings {
        jwks_file: Some(jwks_path()),
        ..settings(JwtAlgorithm::RS256)
    }
}

fn lookup(name: &str) -> Option<String> {
    (name == SECRET_VAR).then(|| SECRET.to_owned())
}

async fn verifier_with(s: &JwtSettings, timing: Timing) -> Result<JwtVerifier, JwtConfigError> {
    JwtVerifier::build(s, &lookup, timing).await
}

async fn verifier(s: &JwtSettings) -> JwtVerifier {
    verifier_with(s, Timing::default()).await.expect("verifier")
}

fn scopes(list: &[Scope]) -> Scopes {
    list.iter().copied().collect()
}

#[tokio::test]
async fn hs256_token_maps_to_tenant_scopes_and_subject() {
    let v = verifier(&hs_settings()).await;
    let id = v.verify(&hs_token(&claims())).expect("valid token");
    assert_eq!(id.tenant, TenantId::parse("acme").unwrap());
    assert_eq!(id.scopes, scopes(&[Scope::RunsRead, Scope::RunsWrite]));
    assert_eq!(id.subject.as_deref(), Some("user-1"));

    // An `aud` array naming us, no `sub`, no scopes claim at all.
    let c = claims_with(json!({"aud": ["other", AUD], "sub": null, "scope": null}));
    let id = v.verify(&hs_token(&c)).expect("valid token");
    assert_eq!(id.subject, None);
    assert!(id.scopes.is_empty());

    // Inside the leeway, expired by a few seconds.
    let c = claims_with(json!({"exp": now() - 5}));
    assert!(v.verify(&hs_token(&c)).is_ok());
}

#[tokio::test]
async fn claim_names_are_configurable_and_scopes_may_be_an_array() {
    let s = JwtSettings {
        tenant_claim: "https://example.com/org".into(),
        scopes_claim: "permissions".into(),
        ..hs_settings()
    };
    let v = verifier(&s).await;
    let c = claims_with(json!({
        "tenant": null,
        "https://example.com/org": "org_7",
        "permissions": ["sessions:read", "chat", "something:else"],
    }));
    let id = v.verify(&hs_token(&c)).expect("valid token");
    assert_eq!(id.tenant.as_str(), "org_7");
    assert_eq!(id.scopes, scopes(&[Scope::SessionsRead, Scope::Chat]));

    let c = claims_with(json!({"https://example.com/org": "org_7", "permissions": [1, 2]}));
    assert_eq!(
        v.verify(&hs_token(&c)),
        Err(JwtError::InvalidClaim("permissions".into()))
    );
}

#[tokio::test]
async fn rs256_with_a_jwks_file() {
    let v = verifier(&rs_file_settings()).await;
    let id = v.verify(&rs_token(&claims())).expect("valid token");
    assert_eq!(id.tenant.as_str(), "acme");
    assert_eq!(id.scopes, scopes(&[Scope::RunsRead, Scope::RunsWrite]));
    // The fixture set also holds an EC key, skipped: without a `kid` the one
    // RSA key is used.
    let id = v.verify(&rs_token_with(&claims(), None, PRIVATE_PEM));
    assert!(id.is_ok(), "{id:?}");
}

#[tokio::test]
async fn refusals() {
    let hs = verifier(&hs_settings()).await;
    let rs = verifier(&rs_file_settings()).await;
    let tampered_signature = {
        let t = rs_token(&claims());
        let (rest, sig) = t.rsplit_once('.').unwrap();
        let mut sig = sig.to_owned().into_bytes();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        format!("{rest}.{}", String::from_utf8(sig).unwrap())
    };
    let tampered_payload = {
        let t = rs_token(&claims());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims_with(json!({"tenant": "other"}))).unwrap());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let key_confusion = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(PUBLIC_PEM),
    )
    .unwrap();
    let crit = {
        let mut h = Header::new(Algorithm::HS256);
        h.crit = Some(vec!["b64".into()]);
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    let algorithm = |found: &str, expected| JwtError::Algorithm {
        found: found.into(),
        expected,
    };
    let missing = |c: &str| JwtError::MissingClaim(c.into());

    let cases: Vec<(&str, &JwtVerifier, String, JwtError)> = vec![
        (
            "RS256 token, HS256 pinned",
            &hs,
            rs_token(&claims()),
            algorithm("RS256", JwtAlgorithm::HS256),
        ),
        (
            "alg none against HS256",
            &hs,
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims()),
            algorithm("none", JwtAlgorithm::HS256),
        ),
        (
            "alg none against RS256",
            &rs,
            unsigned(&json!({"alg": "none"}), &claims()),
            algorithm("none", JwtAlgorithm::RS256),
        ),
        (
            "HS256 signed with the RS256 public key",
            &rs,
            key_confusion,
            algorithm("HS256", JwtAlgorithm::RS256),
        ),
        (
            "wrong aud",
            &hs,
            hs_token(&claims_with(json!({"aud": "someone-else"}))),
            JwtError::Audience,
        ),
        (
            "wrong aud array",
            &rs,
            rs_token(&claims_with(json!({"aud": ["a", "b"]}))),
            JwtError::Audience,
        ),
        (
            "wrong iss",
            &rs,
            rs_token(&claims_with(json!({"iss": "https://evil.example"}))),
            JwtError::Issuer,
        ),
        (
            "expired",
            &hs,
            hs_token(&claims_with(json!({"exp": now() - 120}))),
            JwtError::Expired,
        ),
        (
            "expired RS256",
            &rs,
            rs_token(&claims_with(json!({"exp": now() - 120}))),
            JwtError::Expired,
        ),
        (
            "not yet valid",
            &hs,
            hs_token(&claims_with(json!({"nbf": now() + 600}))),
            JwtError::NotYetValid,
        ),
        (
            "missing exp",
            &hs,
            hs_token(&claims_with(json!({"exp": null}))),
            missing("exp"),
        ),
        (
            "missing aud",
            &rs,
            rs_token(&claims_with(json!({"aud": null}))),
            missing("aud"),
        ),
        (
            "missing iss",
            &rs,
            rs_token(&claims_with(json!({"iss": null}))),
            missing("iss"),
        ),
        (
            "exp not a number",
            &hs,
            hs_token(&claims_with(json!({"exp": "tomorrow"}))),
            missing("exp"),
        ),
        (
            "missing tenant",
            &hs,
            hs_token(&claims_with(json!({"tenant": null}))),
            missing("tenant"),
        ),
        (
            "invalid tenant",
            &rs,
            rs_token(&claims_with(json!({"tenant": "a/b"}))),
            JwtError::InvalidTenant("tenant".into()),
        ),
        (
            "tenant not a string",
            &hs,
            hs_token(&claims_with(json!({"tenant": 7}))),
            JwtError::InvalidTenant("tenant".into()),
        ),
        (
            "scope not a string or array",
            &hs,
            hs_token(&claims_with(json!({"scope": {"runs": true}}))),
            JwtError::InvalidClaim("scope".into()),
        ),
        (
            "sub not a string",
            &hs,
            hs_token(&claims_with(json!({"sub": 42}))),
            JwtError::InvalidClaim("sub".into()),
        ),
        (
            "tampered signature",
            &rs,
            tampered_signature,
            JwtError::Signature,
        ),
        (
            "tampered payload",
            &rs,
            tampered_payload,
            JwtError::Signature,
        ),
        (
            "another key under a known kid",
            &rs,
            rs_token_with(&claims(), Some(KID), OTHER_PRIVATE_PEM),
            JwtError::Signature,
        ),
        (
            "HS256 with another secret",
            &hs,
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(),
                &EncodingKey::from_secret(b"another-secret-another-secret-another"),
            )
            .unwrap(),
            JwtError::Signature,
        ),
        (
            "unknown kid",
            &rs,
            rs_token_with(&claims(), Some("nope"), PRIVATE_PEM),
            JwtError::UnknownKey(Some("nope".into())),
        ),
        (
            "critical header extension",
            &hs,
            crit,
            JwtError::Malformed("critical header extensions"),
        ),
        (
            "not a JWT",
            &hs,
            "key_1:secret".into(),
            JwtError::Malformed("expected three base64url segments"),
        ),
        (
            "header not JSON",
            &hs,
            format!("eyJub3Q.{}.sig", URL_SAFE_NO_PAD.encode("{}")),
            JwtError::Malformed("header is not a JOSE header"),
        ),
    ];
    for (name, verifier, token, want) in cases {
        assert_eq!(verifier.verify(&token), Err(want), "{name}");
    }
}

#[tokio::test]
async fn settings_combinations_are_checked_at_startup() {
    let hs = hs_settings();
    let rs = rs_file_settings();
    let cases: Vec<(&str, JwtSettings, &str)> = vec![
        (
            "HS256 without a secret variable",
            JwtSettings {
                hs256_secret_env: None,
                ..hs.clone()
            },
            "needs hs256_secret_env",
        ),
        (
            "HS256 with a JWKS",
            JwtSettings {
                jwks_file: Some(jwks_path()),
                ..hs.clone()
            },
            "remove jwks_file",
        ),
        (
            "RS256 without keys",
            JwtSettings {
                jwks_file: None,
                ..rs.clone()
            },
            "exactly one of jwks_file and jwks_url",
        ),
        (
            "RS256 with both key sources",
            JwtSettings {
                jwks_url: Some("https://idp.example/jwks.json".into()),
                ..rs.clone()
            },
            "exactly one of jwks_file and jwks_url",
        ),
        (
            "RS256 with a secret",
            JwtSettings {
                hs256_secret_env: Some(SECRET_VAR.into()),
                ..rs.clone()
            },
            "hs256_secret_env is for HS256",
        ),
        (
            "empty issuer",
            JwtSettings {
                issuer: " ".into(),
                ..hs.clone()
            },
            "issuer must not be empty",
        ),
        (
            "empty audience",
            JwtSettings {
                audience: String::new(),
                ..rs.clone()
            },
            "audience must not be empty",
        ),
        (
            "secret variable unset",
            JwtSettings {
                hs256_secret_env: Some("UNSET_VAR".into()),
                ..hs.clone()
            },
            "UNSET_VAR is not set",
        ),
        (
            "JWKS file missing",
            JwtSettings {
                jwks_file: Some("/nonexistent/jwks.json".into()),
                ..rs.clone()
            },
            "cannot read the JWKS file /nonexistent/jwks.json",
        ),
        (
            "JWKS file not JSON",
            JwtSettings {
                jwks_file: Some(jwks_path().with_file_name("jwt_rsa_public.pem")),
                ..rs.clone()
            },
            "invalid JWKS",
        ),
        (
            "JWKS over plain http to a remote host",
            JwtSettings {
                jwks_file: None,
                jwks_url: Some("http://idp.example/jwks.json".into()),
                ..rs.clone()
            },
            "plain http is allowed only to a loopback host",
        ),
        (
            "JWKS URL of another scheme",
            JwtSettings {
                jwks_file: None,
                jwks_url: Some("file:///etc/jwks.json".into()),
                ..rs.clone()
            },
            "the scheme must be https",
        ),
    ];
    for (name, s, words) in cases {
        let e = verifier_with(&s, Timing::default())
            .await
            .expect_err(name)
            .to_string();
        assert!(e.contains(words), "{name}: {e}");
    }

    let short = |_: &str| Some("too-short".to_owned());
    let e = JwtVerifier::build(&hs, &short, Timing::default())
        .await
        .expect_err("short secret");
    assert!(
        matches!(e, JwtConfigError::SecretTooShort(ref v) if v == SECRET_VAR),
        "{e}"
    );
}

#[test]
fn settings_deserialize_with_defaults_and_refuse_unknown_keys() {
    let s: JwtSettings = serde_json::from_value(json!({
        "algorithm": "RS256", "issuer": ISS, "audience": AUD,
        "jwks_url": "https://idp.example/.well-known/jwks.json",
    }))
    .unwrap();
    assert_eq!(s.algorithm, JwtAlgorithm::RS256);
    assert_eq!(s.tenant_claim, "tenant");
    assert_eq!(s.scopes_claim, "scope");
    assert!(s.validate().is_ok());

    for bad in [
        json!({"algorithm": "none", "issuer": ISS, "audience": AUD}),
        json!({"algorithm": "ES256", "issuer": ISS, "audience": AUD}),
        json!({"algorithm": "HS256", "issuer": ISS}),
        json!({"algorithm": "HS256", "audience": AUD, "issuer": ISS, "hs256_secret": "x"}),
    ] {
        assert!(
            serde_json::from_value::<JwtSettings>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn jwt_shapes_are_told_from_api_keys() {
    let good = hs_token(&claims());
    assert!(looks_like_jwt(&good));
    assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJ0ZW5hbnQiOiJhIn0."));
    for not in [
        "key_01:secret",
        "agentd_admin_0123",
        "eyJa.eyJb",
        "eyJa.eyJb.c.d",
        "abc.eyJb.c",
        "eyJa..c",
        "eyJa.eyJb.c d",
        "eyJa.eyJ+b.c",
        "eyJa.eyJb.c=",
        "",
    ] {
        assert!(!looks_like_jwt(not), "{not:?}");
    }
}

#[test]
fn debug_output_names_the_policy_not_the_key() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v = rt.block_on(verifier(&hs_settings()));
    let text = format!("{v:?}");
    assert!(text.contains("HS256") && text.contains(ISS), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        !text.contains(&format!("{:?}", SECRET.as_bytes())),
        "{text}"
    );
}

mod jwks_url;
