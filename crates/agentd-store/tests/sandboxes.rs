//! Sandbox records (DESIGN §6) on the store under test: upsert with audit
//! entries in one transaction, tenant-scoped reads and pages, and the end
//! of records a dead daemon left running.

use agentd_core::{AuditAction, AuditOutcome, AuditRecord, TenantId, new_id};
use agentd_store::{AuditFilter, PageRequest, SandboxRecord};
use serde_json::json;

mod common;
use common::open;

fn record(tenant: &TenantId, created_at: i64, deadline_at: i64) -> SandboxRecord {
    SandboxRecord {
        tenant_id: tenant.clone(),
        id: new_id("sbx"),
        phase: "running".into(),
        language: "python".into(),
        labels: json!({"k": "v"}),
        limits: json!({"memory_mb": 64}),
        egress: json!({"mode": "deny_all", "allow": [], "dropped": []}),
        kill_reason: None,
        exit_code: None,
        error: None,
        result: None,
        created_at,
        started_at: Some(created_at + 1),
        finished_at: None,
        torn_down_at: None,
        deadline_at,
    }
}

fn entry(r: &SandboxRecord) -> AuditRecord {
    AuditRecord {
        id: new_id("aud"),
        tenant_id: r.tenant_id.clone(),
        created_at: r.created_at,
        actor: "test".into(),
        actor_id: None,
        action: AuditAction::SandboxStarted,
        target_type: Some("sandbox".into()),
        target_id: Some(r.id.clone()),
        outcome: AuditOutcome::Success,
        client_ip: None,
        request_id: None,
        details: json!({}),
    }
}

fn page(limit: u32) -> PageRequest {
    PageRequest { limit, after: None }
}

#[tokio::test]
async fn records_are_upserted_with_their_audit_and_scoped_by_tenant() {
    let store = open().await;
    let a = TenantId::parse("acme").unwrap();
    let b = TenantId::parse("other").unwrap();
    let mut first = record(&a, 1_000, i64::MAX);
    store
        .put_sandbox(first.clone(), vec![entry(&first)])
        .await
        .unwrap();
    let second = record(&a, 2_000, i64::MAX);
    store.put_sandbox(second.clone(), vec![]).await.unwrap();

    // Rewritten whole: the end of the workload with its result.
    first.phase = "succeeded".into();
    first.exit_code = Some(0);
    first.finished_at = Some(1_500);
    first.result = Some(json!({"stdout": "hi\n", "result": {"ok": true}}));
    store.put_sandbox(first.clone(), vec![]).await.unwrap();
    assert_eq!(
        store.get_sandbox(&a, &first.id).await.unwrap(),
        Some(first.clone())
    );
    let trail = store
        .list_audit(
            &a,
            AuditFilter {
                target_id: Some(first.id.clone()),
                ..AuditFilter::default()
            },
            page(10),
        )
        .await
        .unwrap();
    assert_eq!(trail.items.len(), 1);

    // Newest first, by cursor; another tenant sees nothing.
    let p1 = store.list_sandboxes(&a, page(1)).await.unwrap();
    assert_eq!(p1.items, vec![second.clone()]);
    let p2 = store
        .list_sandboxes(
            &a,
            PageRequest {
                limit: 1,
                after: p1.next,
            },
        )
        .await
        .unwrap();
    assert_eq!(p2.items, vec![first.clone()]);
    assert!(p2.next.is_none());
    assert_eq!(store.get_sandbox(&b, &first.id).await.unwrap(), None);
    assert!(
        store
            .list_sandboxes(&b, page(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn only_unfinished_records_past_their_deadline_are_ended() {
    let store = open().await;
    let t = TenantId::default_tenant();
    let stale = record(&t, 1_000, 5_000);
    let live = record(&t, 1_000, 50_000);
    let mut done = record(&t, 1_000, 5_000);
    done.phase = "failed".into();
    for r in [&stale, &live, &done] {
        store.put_sandbox(r.clone(), vec![]).await.unwrap();
    }
    assert_eq!(store.end_orphaned_sandboxes(10_000).await.unwrap(), 1);
    let ended = store.get_sandbox(&t, &stale.id).await.unwrap().unwrap();
    assert_eq!(ended.phase, "killed");
    assert_eq!(ended.kill_reason.as_deref(), Some("daemon_restarted"));
    assert_eq!(ended.finished_at, Some(10_000));
    let still = store.get_sandbox(&t, &live.id).await.unwrap().unwrap();
    assert_eq!(still.phase, "running");
    let kept = store.get_sandbox(&t, &done.id).await.unwrap().unwrap();
    assert_eq!(kept, done);
}
