//! agentd's sandbox (DESIGN §6): runs code an agent or a client wrote, as
//! hostile, in Linux namespaces behind Landlock, seccomp and cgroup limits,
//! with egress only through a proxy of its own. Stands alone: the server
//! (the `/v1/sandboxes` routes) and the engine (the `run_code` tool) use it
//! through [`SandboxService`].
//!
//! The pieces, in the order a sandbox meets them: [`service`] checks a
//! request and keeps the session (in memory while it runs, in the store
//! through [`record`]); [`launch`] makes the cgroup
//! ([`cgroup`]) and starts the helper ([`init`]; `spawn` without a fork,
//! one kept ready ahead of the next request by `spare`), which clones the child
//! into its namespaces, where it builds its root, applies
//! [`landlock_rules`] and [`seccomp`] and execs the interpreter; for
//! allow-list egress the child hands a listener to the daemon's
//! [`egress::proxy`].

pub mod cgroup;
pub mod egress;
pub mod init;
pub mod landlock_rules;
pub mod launch;
pub mod record;
mod runner;
pub mod seccomp;
pub mod service;
pub mod session;
mod spare;
mod spawn;
pub mod spec;

pub use egress::{EgressDecision, EgressPolicy, HostRule};
pub use init::{INIT_SUBCOMMAND, init_main};
pub use launch::{KillReason, Stream};
pub use service::{
    AuditEntry, CreateError, CreateRequest, EgressCeiling, EgressRequest, Found, SandboxConfig,
    SandboxService, TeardownOutcome,
};
pub use session::{Frame, Phase, SandboxResult, SandboxSession, SandboxView};
pub use spec::{Language, LimitPolicy, Limits, LimitsRequest, PolicyError};
