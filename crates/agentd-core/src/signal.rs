//! Pausing for a human and resuming (DESIGN §3 "Signals"): the requests a
//! paused run waits on, and the decisions that answer them. Both live in the
//! run's events (`run.awaiting_input`, `run.signal_received`), so the store,
//! the server and the engine all read the same truth.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{Event, EventType};

/// What a paused run waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A tool call that policy says a human must approve.
    Approval,
    /// `ask_user`: the model asked a question.
    Input,
}

impl InputKind {
    pub fn reason_code(self) -> &'static str {
        match self {
            InputKind::Approval => "AWAITING_APPROVAL",
            InputKind::Input => "AWAITING_INPUT",
        }
    }
}

/// One thing a paused run waits on, as `run.awaiting_input` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingRequest {
    /// Picks this request in a signal.
    pub request_id: String,
    pub tool_call_id: String,
    pub tool: String,
    pub kind: InputKind,
    /// The call's arguments (approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Value>,
    /// The model's question (`ask_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
}

impl PendingRequest {
    /// Stable across replays: the same call always gets the same id.
    pub fn id_for(tool_call_id: &str) -> String {
        format!("req_{tool_call_id}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalAction {
    Approve,
    Reject,
    SubmitInput,
}

impl SignalAction {
    pub fn answers(self, kind: InputKind) -> bool {
        match self {
            SignalAction::Approve | SignalAction::Reject => kind == InputKind::Approval,
            SignalAction::SubmitInput => kind == InputKind::Input,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignalAction::Approve => "approve",
            SignalAction::Reject => "reject",
            SignalAction::SubmitInput => "submit_input",
        }
    }
}

/// A human's answer to one request, as `run.signal_received` records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub request_id: String,
    pub action: SignalAction,
    /// `reject`'s `{reason}`, `submit_input`'s `{input}`.
    #[serde(default)]
    pub payload: Value,
}

/// The `run.awaiting_input` payload for these requests.
pub fn awaiting_payload(pending: &[PendingRequest]) -> Value {
    let kind = if pending.iter().any(|p| p.kind == InputKind::Approval) {
        InputKind::Approval
    } else {
        InputKind::Input
    };
    json!({
        "input_kind": kind,
        "reason_code": kind.reason_code(),
        "pending": pending,
    })
}

/// What the latest pause asked for and what has been answered since, read
/// from a run's events in seq order (other event types are skipped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PauseState {
    pub requested: Vec<PendingRequest>,
    pub decisions: Vec<Decision>,
}

impl PauseState {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> PauseState {
        let mut state = PauseState::default();
        for e in events {
            state.observe(e);
        }
        state
    }

    /// Folds one event in: a new pause starts a fresh request list.
    pub fn observe(&mut self, e: &Event) {
        match e.kind {
            EventType::AwaitingInput => {
                self.requested =
                    serde_json::from_value(e.value()["pending"].clone()).unwrap_or_default();
                self.decisions.clear();
            }
            EventType::SignalReceived => {
                if let Ok(d) = serde_json::from_value::<Decision>(e.value().clone()) {
                    self.decisions.push(d);
                }
            }
            _ => {}
        }
    }

    /// Requests not answered yet.
    pub fn outstanding(&self) -> Vec<&PendingRequest> {
        self.requested
            .iter()
            .filter(|r| !self.decisions.iter().any(|d| d.request_id == r.request_id))
            .collect()
    }

    pub fn decision(&self, request_id: &str) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.request_id == request_id)
    }
}

/// Why a signal cannot be applied (a 409 to the client).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalRefused {
    #[error("no pending request {0:?}")]
    UnknownRequest(String),
    #[error("request {request_id:?} waits for {kind:?}, which {action:?} does not answer")]
    WrongAction {
        request_id: String,
        kind: InputKind,
        action: SignalAction,
    },
    #[error("no pending request that {0:?} answers")]
    NothingToAnswer(SignalAction),
    #[error("submit_input needs `payload.input`")]
    MissingInput,
}

/// The decisions a signal makes: the one request it names, or every
/// outstanding request its action answers.
pub fn decide(
    state: &PauseState,
    action: SignalAction,
    request_id: Option<&str>,
    payload: &Value,
) -> Result<Vec<Decision>, SignalRefused> {
    if action == SignalAction::SubmitInput && payload.get("input").is_none() {
        return Err(SignalRefused::MissingInput);
    }
    let outstanding = state.outstanding();
    let targets: Vec<&PendingRequest> = match request_id {
        Some(id) => {
            let r = outstanding
                .iter()
                .find(|r| r.request_id == id)
                .ok_or_else(|| SignalRefused::UnknownRequest(id.to_owned()))?;
            if !action.answers(r.kind) {
                return Err(SignalRefused::WrongAction {
                    request_id: id.to_owned(),
                    kind: r.kind,
                    action,
                });
            }
            vec![*r]
        }
        None => outstanding
            .into_iter()
            .filter(|r| action.answers(r.kind))
            .collect(),
    };
    if targets.is_empty() {
        return Err(SignalRefused::NothingToAnswer(action));
    }
    Ok(targets
        .into_iter()
        .map(|r| Decision {
            request_id: r.request_id.clone(),
            action,
            payload: payload.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, value: Value) -> Event {
        Event::new("run_1".into(), 1, kind, 0, value.into())
    }

    fn pending(call: &str, kind: InputKind) -> PendingRequest {
        PendingRequest {
            request_id: PendingRequest::id_for(call),
            tool_call_id: call.into(),
            tool: if kind == InputKind::Input {
                "ask_user"
            } else {
                "http_fetch"
            }
            .into(),
            kind,
            arguments: None,
            question: None,
        }
    }

    #[test]
    fn signals_answer_what_is_outstanding() {
        let pause = event(
            EventType::AwaitingInput,
            awaiting_payload(&[
                pending("a", InputKind::Approval),
                pending("b", InputKind::Approval),
                pending("q", InputKind::Input),
            ]),
        );
        assert_eq!(pause.value()["input_kind"], "approval");
        let mut state = PauseState::from_events([&pause]);
        assert_eq!(state.outstanding().len(), 3);

        let one = decide(&state, SignalAction::Approve, Some("req_a"), &Value::Null).unwrap();
        assert_eq!(one.len(), 1);
        state.observe(&event(
            EventType::SignalReceived,
            serde_json::to_value(&one[0]).unwrap(),
        ));
        assert_eq!(state.outstanding().len(), 2);
        assert_eq!(
            decide(&state, SignalAction::Approve, Some("req_a"), &Value::Null),
            Err(SignalRefused::UnknownRequest("req_a".into()))
        );
        assert!(matches!(
            decide(&state, SignalAction::Approve, Some("req_q"), &Value::Null),
            Err(SignalRefused::WrongAction { .. })
        ));
        assert_eq!(
            decide(&state, SignalAction::SubmitInput, None, &json!({})),
            Err(SignalRefused::MissingInput)
        );
        let all = decide(&state, SignalAction::Reject, None, &json!({"reason": "no"})).unwrap();
        assert_eq!(
            all.iter()
                .map(|d| d.request_id.as_str())
                .collect::<Vec<_>>(),
            ["req_b"]
        );
        let input = decide(
            &state,
            SignalAction::SubmitInput,
            None,
            &json!({"input": 4}),
        )
        .unwrap();
        assert_eq!(input[0].request_id, "req_q");
    }
}
