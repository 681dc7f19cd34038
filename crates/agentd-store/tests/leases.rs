//! Fencing: a worker whose lease was taken over writes nothing, and the new
//! holder carries on from where the durable log ends.

use std::sync::Arc;

use agentd_core::event::payload::content_delta;
use agentd_core::time::now_millis;
use agentd_core::{EventType, Run, RunStatus, RunTransition, TenantId, new_id};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use agentd_store::{CreateRunOutcome, NewRun, NewSession, RunUpdate, SessionTarget, StoreError};
use serde_json::json;

mod common;
use common::{claim, create, on_postgres, open};

fn queued_run(tenant: &TenantId, session: &str) -> Run {
    Run::queued(
        tenant.clone(),
        session.to_owned(),
        "a".into(),
        "hi".into(),
        now_millis(),
    )
}

/// A new session for `run`, created with it.
fn new_session(run: &Run) -> SessionTarget {
    SessionTarget::New(NewSession {
        tenant_id: run.tenant_id.clone(),
        id: run.session_id.clone(),
        agent: "a".into(),
        metadata: json!({}),
        created_at: run.created_at,
    })
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_cannot_write() {
    let store = open().await;
    let tenant = TenantId::default_tenant();
    let run = create(&*store, &tenant).await;

    // A claims with a lease that lapses at once (as if A had stalled).
    let a = store.claim_runs(claim("worker-a", -1)).await.unwrap();
    assert_eq!(a.len(), 1);
    let lease_a = a[0].lease.clone();
    store
        .append(&lease_a, vec![content_delta("s", 1, "from A")], None)
        .await
        .unwrap();

    // B finds the lapsed lease and recovers the run.
    let b = store.claim_runs(claim("worker-b", 60_000)).await.unwrap();
    assert_eq!(b.len(), 1);
    assert!(b[0].recovered);
    assert!(b[0].lease.epoch() > lease_a.epoch());

    // A's writes now match nothing.
    let err = store
        .append(&lease_a, vec![content_delta("s", 1, "late A")], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost), "{err:?}");
    let err = store
        .append(
            &lease_a,
            vec![],
            Some(RunUpdate::new(RunTransition::Succeed)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost));

    // B writes on, and finishes the run.
    let mut done = RunUpdate::new(RunTransition::Succeed);
    done.output = Some(json!({"text": "B"}));
    store.append(&b[0].lease, vec![], Some(done)).await.unwrap();
    let events = store.events_after(&tenant, &run.id, 0, 100).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "gapless"
    );
    assert!(
        events
            .iter()
            .all(|e| e.value()["content_delta"] != "late A")
    );
    assert!(events.iter().any(|e| e.kind == EventType::WorkerRecovered));
    let stored = store.get_run(&tenant, &run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Succeeded);

    // Terminal is final: even the holder's lease no longer writes.
    let err = store
        .append(&b[0].lease, vec![content_delta("s", 2, "after")], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost));
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_change_nothing() {
    let store = open().await;
    let tenant = TenantId::default_tenant();
    let run = create(&*store, &tenant).await;
    let claimed = store.claim_runs(claim("w", 60_000)).await.unwrap();
    let err = store
        .append(
            &claimed[0].lease,
            vec![content_delta("s", 1, "x")],
            Some(RunUpdate::new(RunTransition::Resume)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition(_)), "{err:?}");
    let stored = store.get_run(&tenant, &run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);
    assert_eq!(stored.last_seq, 3, "the refused append wrote no event");
}

#[tokio::test]
async fn tenants_do_not_see_each_other() {
    let store = open().await;
    let a = TenantId::parse("a").unwrap();
    let b = TenantId::parse("b").unwrap();
    let run = create(&*store, &a).await;
    assert!(store.get_run(&b, &run.id).await.unwrap().is_none());
    assert!(
        store
            .events_after(&b, &run.id, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.cancel_run(&b, &run.id).await.unwrap().is_none());
    assert_eq!(
        store.get_run(&a, &run.id).await.unwrap().unwrap().status,
        RunStatus::Queued
    );
}

#[tokio::test]
async fn one_process_per_data_dir() {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: the data dir lock is SQLite's");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(&SqliteConfig {
        data_dir: dir.path().to_path_buf(),
        fsync: false,
    })
    .await
    .unwrap();
    let second = SqliteStore::open(&SqliteConfig {
        data_dir: dir.path().to_path_buf(),
        fsync: false,
    })
    .await;
    assert!(matches!(
        second,
        Err(agentd_store::sqlite::OpenError::Locked(_))
    ));
}

#[tokio::test]
async fn a_cancel_for_a_dead_worker_reaches_the_one_that_recovers_the_run() {
    let store = open().await;
    let tenant = TenantId::default_tenant();
    let run = create(&*store, &tenant).await;
    let a = store.claim_runs(claim("worker-a", -1)).await.unwrap();
    assert!(a[0].controls.is_empty());

    // The run is running, so cancel leaves a control row for its holder.
    let asked = store.cancel_run(&tenant, &run.id).await.unwrap().unwrap();
    assert_eq!(asked.status, RunStatus::Running);

    // A never heartbeats again; B recovers the run and gets the request.
    let b = store.claim_runs(claim("worker-b", 60_000)).await.unwrap();
    assert!(b[0].recovered);
    assert_eq!(b[0].controls.len(), 1);
    assert_eq!(b[0].controls[0].kind, agentd_store::ControlKind::Cancel);
    let beat = store.heartbeat("worker-b", 60_000).await.unwrap();
    assert_eq!(
        beat.controls.len(),
        1,
        "and its heartbeat keeps returning it until handled"
    );
}

#[tokio::test]
async fn a_run_that_can_start_at_once_is_claimed_as_it_is_created() {
    let store = open().await;
    let tenant = TenantId::default_tenant();
    let session = new_id("ses");
    // Creates `run` asking the store to claim it for worker A.
    let create_claiming = async |run: Run, target: SessionTarget| {
        let new = NewRun {
            run,
            session: target,
            idempotency: None,
            audit: None,
            claim: Some(agentd_store::ClaimOnCreate {
                owner: Arc::from("worker-a"),
                lease_ms: 60_000,
            }),
        };
        match store.create_run(new).await.unwrap() {
            CreateRunOutcome::Created { run, claimed } => (*run, claimed),
            other => panic!("{other:?}"),
        }
    };
    let claimable = async || store.claim_runs(claim("worker-b", 60_000)).await.unwrap();

    let first = queued_run(&tenant, &session);
    let target = new_session(&first);
    let (run, claimed) = create_claiming(first, target).await;
    assert_eq!(
        run.status,
        RunStatus::Queued,
        "the answer is the run as created"
    );
    let stored = store.get_run(&tenant, &run.id).await.unwrap().unwrap();
    if on_postgres() {
        // Declined: the dispatchers claim it.
        assert!(claimed.is_none());
        assert_eq!(stored.status, RunStatus::Queued);
        return;
    }
    let first = claimed.expect("claimed in the creating commit");
    assert_eq!(first.lease.epoch(), 1);
    assert!(!first.recovered);
    assert_eq!(first.run.last_seq, 3);
    assert_eq!(stored.status, RunStatus::Running);
    let kinds: Vec<EventType> = store
        .events_after(&tenant, &run.id, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventType::RunCreated,
            EventType::RunQueued,
            EventType::WorkerStarted
        ]
    );
    // Nothing is left for a dispatcher, and the lease writes.
    assert!(claimable().await.is_empty());
    store
        .append(&first.lease, vec![content_delta("s", 1, "hi")], None)
        .await
        .unwrap();

    // A second run of the busy session waits its turn.
    let (second, claimed) = create_claiming(
        queued_run(&tenant, &session),
        SessionTarget::Existing(session.clone()),
    )
    .await;
    assert!(claimed.is_none(), "its session has an active run");
    assert!(claimable().await.is_empty());
    store
        .append(
            &first.lease,
            vec![],
            Some(RunUpdate::new(RunTransition::Succeed)),
        )
        .await
        .unwrap();
    let next = claimable().await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].run.id, second.id);
}
