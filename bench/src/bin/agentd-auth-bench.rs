//! Key checks in constant time: how long checking a presented API key takes
//! when it is valid, has the wrong secret, names an unknown key, or was
//! revoked, measured interleaved in one run against the real SQLite store.
//! The figures should be indistinguishable: a caller must not learn which
//! part of a guess was wrong from the time it took.
//!
//! `agentd-auth-bench [--rounds 20000]`

use std::time::Instant;

use agentd_core::time::now_millis;
use agentd_core::{Scope, TenantId};
use agentd_server::auth::keys::{KeyCheck, check_key, mint_secret};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use agentd_store::{ApiKey, Store};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Checks per case.
    #[arg(long, default_value_t = 20_000)]
    rounds: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("agentd-auth-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&SqliteConfig {
        data_dir: dir.clone(),
        fsync: false,
    })
    .await?;
    let key = |id: &str, revoked: bool| {
        let secret = mint_secret();
        let k = ApiKey {
            id: id.to_owned(),
            tenant_id: TenantId::default_tenant(),
            name: id.to_owned(),
            scopes: [Scope::RunsRead].into_iter().collect(),
            secret: secret.digest,
            previous: None,
            created_by: "bench".into(),
            created_at: now_millis(),
            expires_at: None,
            rotated_at: None,
            revoked_at: revoked.then(now_millis),
        };
        (k, secret.secret)
    };
    let (valid, valid_secret) = key("key_valid", false);
    let (revoked, revoked_secret) = key("key_revoked", true);
    store.create_api_key(valid).await?;
    store.create_api_key(revoked).await?;
    let wrong_secret = mint_secret().secret;

    let cases: [(&str, &str, &str, bool); 4] = [
        ("valid", "key_valid", &valid_secret, true),
        ("wrong secret", "key_valid", &wrong_secret, false),
        ("unknown key id", "key_unknown", &valid_secret, false),
        ("revoked", "key_revoked", &revoked_secret, false),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(args.rounds); cases.len()];
    // Warm the read pool and caches.
    for (_, id, secret, _) in &cases {
        for _ in 0..500 {
            check_key(&store, id, secret, now_millis()).await?;
        }
    }
    for round in 0..args.rounds {
        // Rotate the order each round so drift hits every case alike.
        for i in 0..cases.len() {
            let c = (i + round) % cases.len();
            let (_, id, secret, expect_valid) = cases[c];
            let t = Instant::now();
            let got = check_key(&store, id, secret, now_millis()).await?;
            samples[c].push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(matches!(got, KeyCheck::Valid { .. }), expect_valid);
        }
    }
    let stats: Vec<(f64, f64, f64)> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(|a, b| a.total_cmp(b));
            let pick = |q: f64| s[((s.len() - 1) as f64 * q) as usize];
            (pick(0.5), pick(0.9), pick(0.99))
        })
        .collect();
    let base = stats[0].0;
    println!(
        "key check time, {} rounds per case, interleaved (µs)",
        args.rounds
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>12}",
        "case", "p50", "p90", "p99", "p50 / valid"
    );
    for ((name, ..), (p50, p90, p99)) in cases.iter().zip(&stats) {
        println!(
            "{name:<16} {p50:>8.1} {p90:>8.1} {p99:>8.1} {:>12.3}",
            p50 / base
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
