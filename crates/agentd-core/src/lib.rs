//! agentd's domain vocabulary, shared by every other crate.
//!
//! Nothing here does I/O: these are the types the store persists, the engine
//! drives and the server puts on the wire, plus the one function that decides
//! which run state changes are legal ([`run::RunStatus::apply`]).

pub mod audit;
pub mod event;
pub mod ids;
pub mod net;
pub mod run;
pub mod scope;
pub mod session;
pub mod signal;
pub mod time;

pub use audit::{AuditAction, AuditOutcome, AuditRecord};
pub use event::{Event, EventPayload, EventType, NewEvent};
pub use ids::{TenantId, new_id};
pub use run::{IllegalTransition, Run, RunStatus, RunTransition, Usage};
pub use scope::{Scope, Scopes};
pub use session::{Message, Session};
