//! Two PostgreSQL store instances on one schema, as two nodes see it: claims
//! never overlap, one node's commits and key changes reach the other's hub
//! through NOTIFY, and an idempotency key is honoured across nodes. Needs PostgreSQL (see `common`), so it always runs
//! on it, whatever `AGENTD_TEST_STORE` says.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentd_core::event::payload::content_delta;
use agentd_core::time::now_millis;
use agentd_core::{Run, Scopes, TenantId, new_id};
use agentd_store::{
    ApiKey, ClaimRequest, CreateRunOutcome, HubMessage, KeyChange, NewRun, SessionTarget, Store,
};
use serde_json::json;

mod common;
use common::{SchemaGuard, create, fresh_run, fresh_schema, open_pg};

/// Claims in small batches until nothing is left; returns what it got.
async fn drain(store: Arc<dyn Store>, owner: &'static str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let claimed = store
            .claim_runs(ClaimRequest {
                owner: Arc::from(owner),
                max: 7,
                lease_ms: 60_000,
            })
            .await
            .unwrap();
        if claimed.is_empty() {
            return got;
        }
        got.extend(claimed.into_iter().map(|c| c.run.id));
    }
}

#[tokio::test]
async fn two_nodes_claiming_at_once_never_take_the_same_run() {
    let schema = SchemaGuard(fresh_schema());
    let a: Arc<dyn Store> = Arc::new(open_pg(&schema.0).await);
    let b: Arc<dyn Store> = Arc::new(open_pg(&schema.0).await);
    let tenant = TenantId::default_tenant();
    let mut ids = HashSet::new();
    for _ in 0..100 {
        ids.insert(create(&*a, &tenant).await.id);
    }
    let (got_a, got_b) = tokio::join!(drain(a.clone(), "node-a"), drain(b.clone(), "node-b"));
    let set_a: HashSet<_> = got_a.iter().cloned().collect();
    let set_b: HashSet<_> = got_b.iter().cloned().collect();
    assert_eq!(set_a.len(), got_a.len(), "A claimed nothing twice");
    assert_eq!(set_b.len(), got_b.len(), "B claimed nothing twice");
    assert!(set_a.is_disjoint(&set_b), "no run claimed by both");
    let all: HashSet<_> = set_a.union(&set_b).cloned().collect();
    assert_eq!(all, ids, "every run claimed");
}

#[tokio::test]
async fn a_commit_on_one_node_reaches_readers_and_key_holders_on_another() {
    let schema = SchemaGuard(fresh_schema());
    let a = open_pg(&schema.0).await;
    let b = open_pg(&schema.0).await;
    let tenant = TenantId::default_tenant();
    let run = create(&a, &tenant).await;

    // A reader on A; the run executes on B.
    let mut sub = a.hub().subscribe(&run.id);
    let claimed = b
        .claim_runs(ClaimRequest {
            owner: Arc::from("node-b"),
            max: 1,
            lease_ms: 60_000,
        })
        .await
        .unwrap();
    let last = b
        .append(
            &claimed[0].lease,
            vec![content_delta("s", 1, "hello")],
            None,
        )
        .await
        .unwrap();
    let mut seen = 0;
    while seen < last {
        match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Ok(HubMessage::Upto(seq))) => seen = seen.max(seq),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("B's commit never reached A (saw up to {seen} of {last})"),
        }
    }
    let events = a.events_after(&tenant, &run.id, 0, 100).await.unwrap();
    assert_eq!(events.last().map(|e| e.seq), Some(last));

    // A key revoked on B is announced on A.
    let mut changes = a.hub().subscribe_key_changes();
    let key = ApiKey {
        id: new_id("key"),
        tenant_id: tenant.clone(),
        name: "k".into(),
        scopes: Scopes::all(),
        secret: [7; 32],
        previous: None,
        created_by: "admin".into(),
        created_at: now_millis(),
        expires_at: None,
        rotated_at: None,
        revoked_at: None,
    };
    a.create_api_key(key.clone()).await.unwrap();
    let revoked = b
        .revoke_api_key(&tenant, &key.id, now_millis())
        .await
        .unwrap();
    assert!(matches!(revoked, KeyChange::Changed(_)));
    let heard = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("the revocation reached A")
        .unwrap();
    assert_eq!(heard, key.id);
}

/// A create under `key` whose answer names `run`.
fn idempotent(key: &str, session: SessionTarget, run: Run) -> NewRun {
    NewRun {
        idempotency: Some(agentd_store::IdempotencyRecord {
            route: "POST /v1/runs".into(),
            key: key.into(),
            fingerprint: "f1".into(),
            status: 201,
            body: json!({"id": run.id}),
        }),
        run,
        session,
        audit: None,
        claim: None,
    }
}

#[tokio::test]
async fn the_same_idempotent_create_on_two_nodes_at_once_makes_one_run() {
    let schema = SchemaGuard(fresh_schema());
    let a = open_pg(&schema.0).await;
    let b = open_pg(&schema.0).await;
    let tenant = TenantId::default_tenant();
    for round in 0..20 {
        let key = format!("key-{round}");
        let (run_a, ses_a) = fresh_run(&tenant);
        let (run_b, ses_b) = fresh_run(&tenant);
        let (x, y) = tokio::join!(
            a.create_run(idempotent(&key, ses_a, run_a)),
            b.create_run(idempotent(&key, ses_b, run_b)),
        );
        let ids: Vec<String> = [x.unwrap(), y.unwrap()]
            .into_iter()
            .map(|o| match o {
                CreateRunOutcome::Created { run, .. } => run.id.clone(),
                CreateRunOutcome::Replayed { body, .. } => body["id"].as_str().unwrap().into(),
            })
            .collect();
        assert_eq!(ids[0], ids[1], "round {round}: both answers name one run");
    }
    let all = a
        .list_runs(
            &tenant,
            agentd_store::RunFilter::default(),
            agentd_store::PageRequest {
                limit: 100,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 20, "one run per key");
}

#[tokio::test]
async fn a_refused_idempotent_create_leaves_its_key_unused() {
    let schema = SchemaGuard(fresh_schema());
    let a = open_pg(&schema.0).await;
    let tenant = TenantId::default_tenant();
    let (run, _) = fresh_run(&tenant);
    let missing = SessionTarget::Existing("ses_missing".into());
    let refused = a
        .create_run(idempotent("k", missing, run))
        .await
        .unwrap_err();
    assert!(matches!(refused, agentd_store::StoreError::SessionNotFound));
    let (run, session) = fresh_run(&tenant);
    let id = run.id.clone();
    match a.create_run(idempotent("k", session, run)).await.unwrap() {
        CreateRunOutcome::Created { run, .. } => assert_eq!(run.id, id),
        other => panic!("the key was remembered for a refused request: {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_plain_appends_are_fenced_and_numbered_per_run() {
    let schema = SchemaGuard(fresh_schema());
    let store: Arc<dyn Store> = Arc::new(open_pg(&schema.0).await);
    let tenant = TenantId::default_tenant();
    for _ in 0..40 {
        create(&*store, &tenant).await;
    }
    let mut claimed = store
        .claim_runs(ClaimRequest {
            owner: Arc::from("w"),
            max: 40,
            lease_ms: 60_000,
        })
        .await
        .unwrap();
    // One run's lease lapses and another worker takes it: the old lease is stale.
    let stolen = claimed.pop().unwrap();
    store
        .release_run("w", stolen.lease.run_id(), stolen.lease.epoch())
        .await
        .unwrap();
    let taken = store
        .claim_runs(ClaimRequest {
            owner: Arc::from("other"),
            max: 1,
            lease_ms: 60_000,
        })
        .await
        .unwrap();
    assert_eq!(taken[0].run.id, stolen.run.id);

    let mut tasks = Vec::new();
    for c in claimed.iter().cloned().chain([stolen.clone()]) {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..20 {
                let delta = content_delta("s", 1, &format!("{i}"));
                results.push(store.append(&c.lease, vec![delta], None).await);
            }
            (c.run.id, results)
        }));
    }
    for task in tasks {
        let (run, results) = task.await.unwrap();
        let events = store.events_after(&tenant, &run, 0, 1000).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless");
        if run == stolen.run.id {
            assert!(
                results
                    .iter()
                    .all(|r| matches!(r, Err(agentd_store::StoreError::LeaseLost))),
                "the stale lease wrote nothing"
            );
            assert_eq!(
                events.len(),
                4,
                "created, queued, started, recovered-or-started"
            );
        } else {
            let last: Vec<i64> = results.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(last, (4..24).collect::<Vec<_>>(), "each append's last seq");
            assert_eq!(events.len(), 23);
        }
    }
}
