//! One session's life after creation: the task that runs it, the observer
//! that turns progress into frames and audit entries, the ordered writer of
//! its record and audit trail, the untrusted result's parsing, and the
//! start-up probe.

use std::sync::Arc;

use agentd_core::ids::new_id;
use agentd_core::time::now_millis;
use agentd_core::{AuditAction, AuditOutcome, AuditRecord};
use agentd_store::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cgroup::CgroupParent;
use crate::egress::EgressDecision;
use crate::launch::{LaunchSpec, Launcher, Observer, Stream};
use crate::service::{AuditOrigin, HOST_UID_BASE, HOST_UID_SPAN, SandboxConfig};
use crate::session::{Finished, Phase, SandboxSession};
use crate::spec::Language;

pub(crate) fn audit_record(
    origin: &AuditOrigin,
    id: &str,
    action: AuditAction,
    outcome: AuditOutcome,
    details: Value,
) -> AuditRecord {
    AuditRecord {
        id: new_id("aud"),
        tenant_id: origin.tenant.clone(),
        created_at: now_millis(),
        actor: origin.actor.clone(),
        actor_id: origin.actor_id.clone(),
        action,
        target_type: Some("sandbox".to_owned()),
        target_id: Some(id.to_owned()),
        outcome,
        client_ip: origin.client_ip.clone(),
        request_id: origin.request_id.clone(),
        details,
    }
}

/// The session's observer: frames, phases and audit entries.
pub(crate) struct Auditor {
    pub(crate) origin: AuditOrigin,
    pub(crate) session: Arc<SandboxSession>,
    pub(crate) tx: mpsc::UnboundedSender<AuditRecord>,
}

impl Auditor {
    pub(crate) fn entry(&self, action: AuditAction, outcome: AuditOutcome, details: Value) {
        self.session
            .audit_frame(action.as_str(), outcome.as_str(), &details);
        let record = audit_record(
            &self.origin,
            &self.session.info.id,
            action,
            outcome,
            details,
        );
        let _ = self.tx.send(record);
    }
}

impl Observer for Auditor {
    fn started(&self) {
        self.session.set_phase(Phase::Running, None);
        self.entry(
            AuditAction::SandboxStarted,
            AuditOutcome::Success,
            json!({}),
        );
    }

    fn output(&self, stream: Stream, data: &[u8]) {
        self.session.output(stream, data);
    }

    fn egress(&self, decision: EgressDecision) {
        let (action, outcome) = if decision.allowed {
            (AuditAction::EgressAllowed, AuditOutcome::Success)
        } else {
            (AuditAction::EgressDenied, AuditOutcome::Denied)
        };
        self.entry(
            action,
            outcome,
            serde_json::to_value(&decision).unwrap_or_default(),
        );
    }
}

/// Writes the session's record with its audit entries, in order, one
/// transaction per wake-up (the store's writer groups them with everyone
/// else's); once the observer is gone, the final record. Returns whether
/// everything was stored.
pub(crate) async fn write_session(
    store: Arc<dyn Store>,
    session: Arc<SandboxSession>,
    mut rx: mpsc::UnboundedReceiver<AuditRecord>,
) -> bool {
    let mut ok = true;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        ok &= put(&*store, &session, batch).await;
    }
    // The result and final phase are set after the last entry is sent.
    ok & put(&*store, &session, Vec::new()).await
}

pub(crate) async fn put(
    store: &dyn Store,
    session: &SandboxSession,
    audit: Vec<AuditRecord>,
) -> bool {
    match store.put_sandbox(session.record(), audit).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(sandbox = %session.info.id, error = %e, "could not store the sandbox's record");
            false
        }
    }
}

/// Parses what the code wrote to the result descriptor: the last line must
/// be one JSON value. Untrusted: size and nesting are bounded by the reader
/// and serde_json's recursion limit.
fn parse_result(bytes: &[u8], overflow: bool) -> (Option<Value>, Option<String>) {
    if overflow {
        return (
            None,
            Some(format!(
                "result larger than {} bytes",
                crate::launch::MAX_RESULT_BYTES
            )),
        );
    }
    let Some(line) = bytes
        .split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
    else {
        return (None, None);
    };
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(format!("result is not JSON: {e}"))),
    }
}

pub(crate) async fn run(
    launcher: Launcher,
    spec: LaunchSpec,
    observer: Arc<Auditor>,
    writer: tokio::task::JoinHandle<bool>,
) {
    let session = observer.session.clone();
    let teardown = session.teardown.clone();
    let outcome = launcher.run(spec, observer.clone(), teardown).await;
    let finished = match outcome {
        Err(e) => Finished {
            error: Some(e.to_string()),
            ..Finished::default()
        },
        Ok(o) => {
            let (result, result_error) = parse_result(&o.result, o.result_overflow);
            Finished {
                kill_reason: o.kill_reason,
                exit_code: o.exit_code,
                signal: o.signal,
                error: o.setup_error.map(|e| format!("sandbox setup failed: {e}")),
                result,
                result_error,
                usage: o.usage,
                duration_ms: o.duration.as_millis() as u64,
            }
        }
    };
    let phase = if finished.kill_reason.is_some() {
        Phase::Killed
    } else if finished.error.is_none() && finished.exit_code == Some(0) {
        Phase::Succeeded
    } else {
        Phase::Failed
    };
    let kill_reason = finished.kill_reason;
    observer.entry(
        AuditAction::WorkloadExited,
        if phase == Phase::Succeeded {
            AuditOutcome::Success
        } else {
            AuditOutcome::Failure
        },
        json!({
            "exit_code": finished.exit_code,
            "signal": finished.signal,
            "kill_reason": kill_reason,
            "error": finished.error,
            "cpu_ms": finished.usage.cpu_nanos / 1_000_000,
            "memory_peak_bytes": finished.usage.memory_peak_bytes,
        }),
    );
    let collected = finished.result.is_some() || finished.result_error.is_some();
    if collected {
        observer.entry(
            AuditAction::ResultCollected,
            if finished.result_error.is_none() {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failure
            },
            json!({"error": finished.result_error}),
        );
    }
    session.finish(finished);
    session.set_phase(phase, kill_reason);
    // Every entry, and the final record, is durable before the stream says
    // `end`; from then on reads go to the store.
    drop(observer);
    if writer.await.unwrap_or(false) {
        session.mark_stored();
    }
    session.end();
}

/// Opens the cgroup parent and runs `exit 0` in a real sandbox: the only
/// honest answer to "does isolation work here".
pub(crate) async fn probe(config: &SandboxConfig) -> Result<Launcher, String> {
    if !crate::landlock_rules::available() {
        return Err("Landlock is not available on this kernel".into());
    }
    let cgroups = CgroupParent::open().map_err(|e| e.to_string())?;
    let launcher = Launcher::new(config.exe.clone(), cgroups);
    struct Quiet;
    impl Observer for Quiet {
        fn started(&self) {}
        fn output(&self, _: Stream, _: &[u8]) {}
        fn egress(&self, _: EgressDecision) {}
    }
    let mut limits = config.limits.defaults.clone();
    limits.wall_clock_secs = 10;
    let spec = LaunchSpec {
        name: new_id("probe"),
        language: Language::Bash,
        code: "exit 0\n".into(),
        limits,
        host_uid: HOST_UID_BASE + HOST_UID_SPAN,
        egress: None,
    };
    let o = launcher
        .run(spec, Arc::new(Quiet), Default::default())
        .await
        .map_err(|e| e.to_string())?;
    match (o.setup_error, o.exit_code) {
        (Some(e), _) => Err(format!("probe sandbox failed: {e}")),
        (None, Some(0)) => Ok(launcher),
        (None, code) => Err(format!("probe sandbox exited with {code:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_result;
    use serde_json::json;

    #[test]
    fn results_are_parsed_as_untrusted_json() {
        assert_eq!(
            parse_result(b"{\"a\":1}\n{\"ok\":true}\n", false).0,
            Some(json!({"ok": true}))
        );
        assert!(parse_result(b"not json\n", false).1.is_some());
        assert_eq!(parse_result(b"", false), (None, None));
        assert!(parse_result(b"{}", true).1.is_some());
    }
}
