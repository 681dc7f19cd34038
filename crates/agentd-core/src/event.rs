//! The run event catalog (DESIGN §3) and the public event envelope of seed 001:
//! `{seq, type, timestamp, payload: {redacted, value}}`.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::time::{Millis, to_rfc3339};

/// Every event type a run can emit. The wire name is [`EventType::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    RunCreated,
    RunQueued,
    WorkerStarted,
    StepStarted,
    StepProgress,
    StepDone,
    ToolStarted,
    ToolFinished,
    AwaitingInput,
    SignalReceived,
    Resumed,
    WorkerRecovered,
    WorkerSucceeded,
    WorkerFailed,
    Cancelled,
    LimitExceeded,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::RunCreated,
        EventType::RunQueued,
        EventType::WorkerStarted,
        EventType::StepStarted,
        EventType::StepProgress,
        EventType::StepDone,
        EventType::ToolStarted,
        EventType::ToolFinished,
        EventType::AwaitingInput,
        EventType::SignalReceived,
        EventType::Resumed,
        EventType::WorkerRecovered,
        EventType::WorkerSucceeded,
        EventType::WorkerFailed,
        EventType::Cancelled,
        EventType::LimitExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunCreated => "run.created",
            EventType::RunQueued => "run.queued",
            EventType::WorkerStarted => "run.worker.started",
            EventType::StepStarted => "step.started",
            EventType::StepProgress => "step.progress",
            EventType::StepDone => "step.done",
            EventType::ToolStarted => "tool.started",
            EventType::ToolFinished => "tool.finished",
            EventType::AwaitingInput => "run.awaiting_input",
            EventType::SignalReceived => "run.signal_received",
            EventType::Resumed => "run.resumed",
            EventType::WorkerRecovered => "run.worker.recovered",
            EventType::WorkerSucceeded => "run.worker.succeeded",
            EventType::WorkerFailed => "run.worker.failed",
            EventType::Cancelled => "run.cancelled",
            EventType::LimitExceeded => "run.limit_exceeded",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The four events after which a run's stream has nothing more to say.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::WorkerSucceeded
                | EventType::WorkerFailed
                | EventType::Cancelled
                | EventType::LimitExceeded
        )
    }

    /// Whether a `run_updated` snapshot should follow this event: status and
    /// step changes do, token deltas do not (seed 000).
    pub fn changes_snapshot(self) -> bool {
        !matches!(self, EventType::StepProgress)
    }
}

/// An event about to be appended; the store gives it its seq and timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    /// Shared with the [`Event`] the store makes of it, not copied: a
    /// writer batch may be retried, so the store only borrows what it appends.
    pub value: Arc<Value>,
}

impl NewEvent {
    pub fn new(kind: EventType, value: Value) -> Self {
        NewEvent {
            kind,
            value: Arc::new(value),
        }
    }
}

/// A durable event. `seq` is gapless per run from 1.
///
/// Its payload is held twice, as a value (for the code that reads its
/// fields) and as the JSON text the store keeps: serialized once, when the
/// event is made, then shared by the row and every reader's stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub run_id: String,
    pub seq: i64,
    pub kind: EventType,
    pub created_at: Millis,
    value: Arc<Value>,
    json: Arc<str>,
}

/// The public envelope (seed 001). `redacted` is true when the caller may not
/// see inputs and `value` was stripped of them.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PublicEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub payload: EventPayload,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPayload {
    pub redacted: bool,
    #[schema(value_type = Object)]
    pub value: Value,
}

impl EventType {
    /// The payload fields that carry what a client sent (inputs, metadata,
    /// signal payloads): withheld from readers without `runs:read_inputs`.
    pub fn input_fields(self) -> &'static [&'static str] {
        match self {
            EventType::RunCreated => &["input", "metadata"],
            EventType::SignalReceived => &["payload"],
            _ => &[],
        }
    }
}

impl Event {
    /// A new event of `run_id`; its payload is serialized here.
    pub fn new(
        run_id: String,
        seq: i64,
        kind: EventType,
        created_at: Millis,
        value: Arc<Value>,
    ) -> Event {
        // Serializing a `Value` cannot fail (its keys are strings).
        let json = serde_json::to_string(&*value).unwrap_or_default().into();
        Event {
            run_id,
            seq,
            kind,
            created_at,
            value,
            json,
        }
    }

    /// An event read back from the store, its payload text `json` kept as stored.
    pub fn stored(
        run_id: String,
        seq: i64,
        kind: EventType,
        created_at: Millis,
        json: String,
    ) -> Result<Event, serde_json::Error> {
        let value = serde_json::from_str(&json)?;
        Ok(Event {
            run_id,
            seq,
            kind,
            created_at,
            value: Arc::new(value),
            json: json.into(),
        })
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The payload as JSON text (what the store keeps); cheap to clone.
    pub fn json(&self) -> &Arc<str> {
        &self.json
    }

    pub fn to_public(&self) -> PublicEvent {
        self.to_public_for(true)
    }

    /// About the length of [`Event::write_public_json`]'s text: the stored
    /// payload plus the envelope around it (seq, type, timestamp, flags).
    pub fn public_json_len_hint(&self) -> usize {
        self.json.len() + 112
    }

    /// Appends `to_public_for` as JSON text to `out`. When nothing is withheld the payload
    /// is the stored text, copied, not serialized again: the hot path (every
    /// event, to every reader).
    pub fn write_public_json(&self, read_inputs: bool, out: &mut String) {
        if !read_inputs && !self.kind.input_fields().is_empty() {
            out.push_str(&serde_json::to_string(&self.to_public_for(false)).unwrap_or_default());
            return;
        }
        out.reserve(self.public_json_len_hint());
        // Field order and spelling as `PublicEvent` serializes them.
        let _ = write!(
            out,
            r#"{{"seq":{},"type":"{}","timestamp":"{}","payload":{{"redacted":false,"value":"#,
            self.seq,
            self.kind.as_str(),
            to_rfc3339(self.created_at),
        );
        out.push_str(&self.json);
        out.push_str("}}");
    }

    /// The envelope as a reader sees it: without `read_inputs`, the input
    /// fields are removed and `redacted` says so.
    pub fn to_public_for(&self, read_inputs: bool) -> PublicEvent {
        let mut value = Value::clone(&self.value);
        let mut redacted = false;
        if !read_inputs && let Value::Object(map) = &mut value {
            for field in self.kind.input_fields() {
                redacted |= map.remove(*field).is_some();
            }
        }
        PublicEvent {
            seq: self.seq,
            kind: self.kind.as_str().to_owned(),
            timestamp: to_rfc3339(self.created_at),
            payload: EventPayload { redacted, value },
        }
    }
}

/// Constructors for the payloads the store and engine emit, so every producer
/// spells a given event the same way.
pub mod payload {
    use super::*;

    /// Whether a step was a model call or a tool call.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum StepKind {
        Model,
        Tool,
    }

    /// How a step ended (seed 001: never a generic "failed").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum StepOutcome {
        Succeeded,
        /// Drop this attempt's partial deltas; the step runs again.
        RetryStep,
        FailRun,
    }

    pub fn step_started(step_id: &str, attempt: u32, kind: StepKind) -> NewEvent {
        NewEvent::new(
            EventType::StepStarted,
            json!({"step_id": step_id, "attempt": attempt, "kind": kind}),
        )
    }

    pub fn content_delta(step_id: &str, attempt: u32, delta: &str) -> NewEvent {
        NewEvent::new(
            EventType::StepProgress,
            json!({"step_id": step_id, "attempt": attempt, "kind": "content_delta", "content_delta": delta}),
        )
    }

    pub fn thinking_delta(step_id: &str, attempt: u32, delta: &str) -> NewEvent {
        NewEvent::new(
            EventType::StepProgress,
            json!({"step_id": step_id, "attempt": attempt, "kind": "thinking_delta", "thinking_delta": delta}),
        )
    }

    /// The model asked for a tool call (its arguments complete).
    pub fn tool_call(step_id: &str, attempt: u32, call: Value) -> NewEvent {
        NewEvent::new(
            EventType::StepProgress,
            json!({"step_id": step_id, "attempt": attempt, "kind": "tool_call", "tool_call": call}),
        )
    }

    /// A tool call begins: written (durably) before the tool runs, so a
    /// crash mid-call is seen and the call is never run twice.
    pub fn tool_started(tool_call_id: &str, tool: &str, arguments: &Value) -> NewEvent {
        NewEvent::new(
            EventType::ToolStarted,
            json!({"step_id": tool_call_id, "attempt": 1, "kind": StepKind::Tool,
                   "tool_call_id": tool_call_id, "tool": tool, "arguments": arguments}),
        )
    }

    /// A tool call ended; `content` is what the model reads.
    pub fn tool_finished(
        tool_call_id: &str,
        tool: &str,
        content: &str,
        is_error: bool,
        reason_code: Option<&str>,
    ) -> NewEvent {
        let mut v = json!({"step_id": tool_call_id, "attempt": 1, "kind": StepKind::Tool,
                           "tool_call_id": tool_call_id, "tool": tool,
                           "content": content, "is_error": is_error});
        if let Some(code) = reason_code {
            v["reason_code"] = json!(code);
        }
        NewEvent::new(EventType::ToolFinished, v)
    }

    pub fn step_done(
        step_id: &str,
        attempt: u32,
        outcome: StepOutcome,
        reason_code: Option<&str>,
        extra: Value,
    ) -> NewEvent {
        let mut v = json!({"step_id": step_id, "attempt": attempt, "outcome": outcome});
        if let Some(code) = reason_code {
            v["reason_code"] = json!(code);
        }
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        NewEvent::new(EventType::StepDone, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::ALL.iter().filter(|t| t.is_terminal()).count(), 4);
    }

    #[test]
    fn public_json_matches_the_envelope() {
        for (kind, read) in [
            (EventType::StepProgress, false),
            (EventType::RunCreated, true),
            (EventType::RunCreated, false),
        ] {
            let e = Event::new(
                "run_x".into(),
                7,
                kind,
                1_700_000_000_123,
                Arc::new(
                    json!({"input": {"q": "a \"quoted\" line\n"}, "metadata": {}, "agent": "a", "kind": "content_delta"}),
                ),
            );
            let mut written = String::new();
            e.write_public_json(read, &mut written);
            assert_eq!(
                written,
                serde_json::to_string(&e.to_public_for(read)).unwrap()
            );
        }
    }

    #[test]
    fn public_envelope_shape() {
        let e = Event::new(
            "run_x".into(),
            3,
            EventType::StepProgress,
            0,
            Arc::new(json!({"kind": "content_delta"})),
        );
        let v = serde_json::to_value(e.to_public()).unwrap();
        assert_eq!(v["type"], "step.progress");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["payload"]["redacted"], false);
    }
}
