//! Runs and their state machine (DESIGN §2).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::TenantId;
use crate::time::Millis;

/// Where a run is in its life. Terminal states are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted and durable; waits for a worker, and for earlier runs of its
    /// session to finish (one active run per session).
    Queued,
    /// A worker holds its lease and drives it. A lapsed lease leaves it
    /// `running` until another worker recovers it.
    Running,
    /// Paused for a human (approval or input). Holds no lease and no worker.
    AwaitingInput,
    /// Finished with an output.
    Succeeded,
    /// Finished with a `reason_code`.
    Failed,
    /// Stopped by a client.
    Cancelled,
    /// Stopped by one of its agent's limits.
    LimitExceeded,
}

/// Every way a run's status can change. Passed to [`RunStatus::apply`], the one
/// place that decides what is legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunTransition {
    /// A worker takes a queued run, or recovers a running one whose lease lapsed.
    Claim,
    /// The agent needs a human before it can go on.
    AwaitInput,
    /// A signal arrived for a paused run.
    Resume,
    Succeed,
    Fail,
    Cancel,
    ExceedLimit,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a {from:?} run cannot {transition:?}")]
pub struct IllegalTransition {
    pub from: RunStatus,
    pub transition: RunTransition,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        match self {
            RunStatus::Queued | RunStatus::Running | RunStatus::AwaitingInput => false,
            RunStatus::Succeeded
            | RunStatus::Failed
            | RunStatus::Cancelled
            | RunStatus::LimitExceeded => true,
        }
    }

    /// The state machine: the status after `t`, or why `t` is not allowed.
    pub fn apply(self, t: RunTransition) -> Result<RunStatus, IllegalTransition> {
        use RunStatus::*;
        use RunTransition::*;
        let next = match (self, t) {
            (Queued | Running, Claim) => Some(Running),
            (Running, AwaitInput) => Some(AwaitingInput),
            (AwaitingInput, Resume) => Some(Running),
            (Running, Succeed) => Some(Succeeded),
            (Running, Fail) => Some(Failed),
            (Running, ExceedLimit) => Some(LimitExceeded),
            (AwaitingInput, ExceedLimit) => Some(LimitExceeded),
            (Queued | Running | AwaitingInput, Cancel) => Some(Cancelled),
            (Queued, AwaitInput | Resume | Succeed | Fail | ExceedLimit) => None,
            (Running, Resume) => None,
            (AwaitingInput, Claim | AwaitInput | Succeed | Fail) => None,
            (Succeeded | Failed | Cancelled | LimitExceeded, _) => None,
        };
        next.ok_or(IllegalTransition {
            from: self,
            transition: t,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::AwaitingInput => "awaiting_input",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::LimitExceeded => "limit_exceeded",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "awaiting_input" => RunStatus::AwaitingInput,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "limit_exceeded" => RunStatus::LimitExceeded,
            _ => return None,
        })
    }
}

/// A run's input as its `run.created` event shows it: attachments keep their
/// name, type and size but not their bytes, which stay on the run alone
/// (events are streamed and replayed to every reader; megabytes of base64
/// in them would be paid for again and again).
pub fn input_for_event(input: &serde_json::Value) -> serde_json::Value {
    let mut v = input.clone();
    if let Some(items) = v.get_mut("attachments").and_then(|a| a.as_array_mut()) {
        for item in items {
            if let Some(obj) = item.as_object_mut()
                && let Some(data) = obj.remove("data")
            {
                let chars = data.as_str().map_or(0, str::len);
                obj.insert("bytes".into(), serde_json::json!(chars / 4 * 3));
            }
        }
    }
    v
}

/// Tokens a run consumed, summed over its model calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Model calls made, retries included.
    pub model_calls: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
        self.model_calls += other.model_calls;
    }
}

/// Who asked for a run, as seed 000 records it (`source_plugin`, `source_kind`,
/// `actor_id`). The actor is as claimed by the client, not verified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
}

/// A run as stored. The wire shape is built from this by the server.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: String,
    pub tenant_id: TenantId,
    pub session_id: String,
    pub agent: String,
    pub status: RunStatus,
    /// The input exactly as the client sent it (seed 000 items or seed 001 object).
    pub input: serde_json::Value,
    /// What the model sees as the user's turn, derived from `input` at creation.
    pub user_message: String,
    pub metadata: serde_json::Value,
    pub source: RunSource,
    /// The agent's configuration when the run was created: a config change
    /// never alters a run in flight.
    pub agent_config: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub usage: Usage,
    pub reason_code: Option<String>,
    pub error: Option<String>,
    /// Highest event seq appended so far (0: none).
    pub last_seq: i64,
    /// Bumped by every claim; writes are conditional on it (fencing).
    pub lease_epoch: i64,
    /// The request that created it, kept so an idempotent replay can return it.
    pub request_id: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

impl Run {
    /// A new `queued` run with a fresh id, empty input, metadata and
    /// snapshot; callers fill in what they know with struct update syntax.
    pub fn queued(
        tenant_id: TenantId,
        session_id: String,
        agent: String,
        user_message: String,
        now: Millis,
    ) -> Run {
        Run {
            id: crate::ids::new_id("run"),
            tenant_id,
            session_id,
            agent,
            status: RunStatus::Queued,
            input: serde_json::json!({}),
            user_message,
            metadata: serde_json::json!({}),
            source: RunSource::default(),
            agent_config: serde_json::json!({}),
            output: None,
            usage: Usage::default(),
            reason_code: None,
            error: None,
            last_seq: 0,
            lease_epoch: 0,
            request_id: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::AwaitingInput,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::LimitExceeded,
    ];

    #[test]
    fn terminal_states_are_final() {
        use RunTransition::*;
        for s in ALL.into_iter().filter(|s| s.is_terminal()) {
            for t in [
                Claim,
                AwaitInput,
                Resume,
                Succeed,
                Fail,
                Cancel,
                ExceedLimit,
            ] {
                assert!(s.apply(t).is_err(), "{s:?} accepted {t:?}");
            }
        }
    }

    #[test]
    fn happy_paths() {
        use RunTransition::*;
        let s = RunStatus::Queued.apply(Claim).unwrap();
        let s = s.apply(AwaitInput).unwrap();
        assert_eq!(s, RunStatus::AwaitingInput);
        let s = s.apply(Resume).unwrap();
        assert_eq!(s.apply(Succeed).unwrap(), RunStatus::Succeeded);
        assert_eq!(
            RunStatus::Queued.apply(Cancel).unwrap(),
            RunStatus::Cancelled
        );
        assert!(RunStatus::Queued.apply(Succeed).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for s in ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
