//! Writing the audit trail from handlers. Acts that change state record
//! their entry before answering, so a client that saw success can find it.

use agentd_core::{AuditAction, AuditOutcome, AuditRecord};
use serde_json::Value;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

/// An entry for `principal`'s act on one object.
pub(crate) fn on_target(
    principal: &Principal,
    action: AuditAction,
    (target_type, target_id): (&str, &str),
    details: Value,
) -> AuditRecord {
    AuditRecord {
        target_type: Some(target_type.to_owned()),
        target_id: Some(target_id.to_owned()),
        ..principal.audit(action, AuditOutcome::Success, details)
    }
}

/// Records and waits until it is durable.
pub(crate) async fn record(state: &AppState, record: AuditRecord) -> Result<(), ApiError> {
    state.store().record_audit(vec![record]).await?;
    Ok(())
}
