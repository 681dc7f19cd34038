//! One sandbox session (seed 004): its phase, the frames its stream carries,
//! the captured output and the structured result. Kept in memory by the
//! [`crate::SandboxService`] while it runs (and for a while after, so late
//! streams still get every frame); its record ([`SandboxSession::record`])
//! and audit trail are what the store keeps (`crate::record`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use agentd_core::TenantId;
use agentd_core::time::{Millis, now_millis, to_rfc3339};
use agentd_store::SandboxRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cgroup::Usage;
use crate::launch::{KillReason, Stream};
use crate::spec::{Language, Limits};

/// `pending → running → succeeded | failed | killed → torn_down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Killed,
    TornDown,
}

impl Phase {
    /// The workload is over (a result can be read).
    pub fn is_finished(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Killed => "killed",
            Phase::TornDown => "torn_down",
        }
    }

    /// The stored spelling back; `None` for anything else.
    pub fn parse(text: &str) -> Option<Phase> {
        serde_json::from_value(Value::String(text.to_owned())).ok()
    }
}

/// One frame of the stream; `type` is also the SSE event name.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    /// 1, 2, … within the session; the SSE `id`.
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub timestamp: String,
    /// The frame's own fields (`phase`, `data`, `result`, …), flattened.
    #[serde(flatten)]
    pub body: serde_json::Map<String, Value>,
}

/// The effective egress of a session, as shown to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressView {
    /// `deny_all` or `allow_list`.
    pub mode: String,
    /// The effective list (request ∩ ceiling).
    pub allow: Vec<String>,
    /// Requested entries the ceiling did not admit.
    pub dropped: Vec<String>,
}

/// What stays fixed from creation.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: String,
    pub tenant: TenantId,
    pub language: Language,
    pub limits: Limits,
    pub egress: EgressView,
    pub labels: BTreeMap<String, String>,
    pub created_at: Millis,
}

/// What changes as it runs.
#[derive(Debug, Default)]
struct State {
    phase: Option<Phase>,
    kill_reason: Option<KillReason>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error: Option<String>,
    started_at: Option<Millis>,
    finished_at: Option<Millis>,
    torn_down_at: Option<Millis>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    result: Option<Value>,
    result_error: Option<String>,
    usage: Usage,
    duration_ms: u64,
    frames: Vec<Frame>,
    /// Bytes of a stream held back because they end mid UTF-8 character.
    partial: [Vec<u8>; 2],
    ended: bool,
}

/// A session shared by its run task, the API and streams.
#[derive(Debug)]
pub struct SandboxSession {
    pub info: SessionInfo,
    state: Mutex<State>,
    /// The number of frames so far; followers wait on it.
    frames_tx: watch::Sender<usize>,
    /// Fired by teardown: kills the workload.
    pub teardown: CancellationToken,
    /// The store holds this session's final record: reads go there.
    stored: AtomicBool,
}

/// `GET /v1/sandboxes/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxView {
    pub id: String,
    pub customer_id: String,
    pub language: Language,
    pub phase: Phase,
    pub kill_reason: Option<KillReason>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub limits: Limits,
    pub egress: EgressView,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub torn_down_at: Option<String>,
}

/// `GET /v1/sandboxes/{id}/result`; also the stored record's `result`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxResult {
    pub id: String,
    pub phase: Phase,
    pub kill_reason: Option<KillReason>,
    pub exit_code: Option<i32>,
    /// The signal that ended the workload, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// What the code passed to `agentd.result(...)`, parsed; null if nothing.
    pub result: Option<Value>,
    /// Why a written result was not accepted (not JSON, too large).
    pub result_error: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub usage: UsageView,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UsageView {
    pub cpu_ms: u64,
    pub memory_peak_bytes: u64,
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Splits off the longest valid UTF-8 prefix, keeping an incomplete tail;
/// invalid bytes become U+FFFD.
fn take_text(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(s) => {
                out.push_str(s);
                pending.clear();
                return out;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&pending[..good]).unwrap_or_default());
                match e.error_len() {
                    None => {
                        pending.drain(..good);
                        return out;
                    }
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        pending.drain(..good + bad);
                    }
                }
            }
        }
    }
}

impl SandboxSession {
    pub fn new(info: SessionInfo) -> Self {
        let session = SandboxSession {
            info,
            state: Mutex::new(State::default()),
            frames_tx: watch::channel(0).0,
            teardown: CancellationToken::new(),
            stored: AtomicBool::new(false),
        };
        session.set_phase(Phase::Pending, None);
        session
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, state: &mut State, kind: &'static str, body: Value) {
        if state.ended {
            return;
        }
        let seq = state.frames.len() as u64 + 1;
        let body = match body {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        state.frames.push(Frame {
            seq,
            kind,
            timestamp: to_rfc3339(now_millis()),
            body,
        });
        if kind == "end" {
            state.ended = true;
        }
        let n = state.frames.len();
        self.frames_tx.send_replace(n);
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase.unwrap_or(Phase::Pending)
    }

    pub(crate) fn set_phase(&self, phase: Phase, kill_reason: Option<KillReason>) {
        let mut s = self.lock();
        s.phase = Some(phase);
        match phase {
            Phase::Running => s.started_at = Some(now_millis()),
            Phase::TornDown => s.torn_down_at = Some(now_millis()),
            p if p.is_finished() => s.finished_at = Some(now_millis()),
            _ => {}
        }
        let body = json!({"phase": phase, "kill_reason": kill_reason});
        self.push(&mut s, "phase", body);
    }

    pub(crate) fn output(&self, stream: Stream, data: &[u8]) {
        let mut s = self.lock();
        let i = stream_index(stream);
        match stream {
            Stream::Stdout => s.stdout.extend_from_slice(data),
            Stream::Stderr => s.stderr.extend_from_slice(data),
        }
        s.partial[i].extend_from_slice(data);
        let text = take_text(&mut s.partial[i]);
        if !text.is_empty() {
            let kind = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            self.push(&mut s, kind, json!({"data": text}));
        }
    }

    pub(crate) fn audit_frame(&self, action: &str, outcome: &str, details: &Value) {
        let mut s = self.lock();
        self.push(
            &mut s,
            "audit",
            json!({"action": action, "outcome": outcome, "details": details}),
        );
    }

    /// Records the end of the workload and emits `result` (not yet `end`).
    pub(crate) fn finish(&self, end: Finished) {
        let mut s = self.lock();
        s.kill_reason = end.kill_reason;
        s.exit_code = end.exit_code;
        s.signal = end.signal;
        s.error = end.error;
        s.result = end.result;
        s.result_error = end.result_error;
        s.usage = end.usage;
        s.duration_ms = end.duration_ms;
        let body =
            json!({"result": s.result, "result_error": s.result_error, "exit_code": s.exit_code});
        self.push(&mut s, "result", body);
    }

    pub(crate) fn end(&self) {
        let mut s = self.lock();
        let phase = s.phase;
        self.push(&mut s, "end", json!({"phase": phase}));
    }

    /// Frames from index `from` on, and whether the stream has ended.
    pub fn frames_from(&self, from: usize) -> (Vec<Frame>, bool) {
        let s = self.lock();
        (s.frames.get(from..).unwrap_or_default().to_vec(), s.ended)
    }

    /// Wakes when frames are added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.frames_tx.subscribe()
    }

    pub fn view(&self) -> SandboxView {
        let s = self.lock();
        let i = &self.info;
        SandboxView {
            id: i.id.clone(),
            customer_id: i.tenant.to_string(),
            language: i.language,
            phase: s.phase.unwrap_or(Phase::Pending),
            kill_reason: s.kill_reason,
            exit_code: s.exit_code,
            error: s.error.clone(),
            limits: i.limits.clone(),
            egress: i.egress.clone(),
            labels: i.labels.clone(),
            created_at: to_rfc3339(i.created_at),
            started_at: s.started_at.map(to_rfc3339),
            finished_at: s.finished_at.map(to_rfc3339),
            torn_down_at: s.torn_down_at.map(to_rfc3339),
        }
    }

    /// The result, once the workload is over.
    pub fn result(&self) -> Option<SandboxResult> {
        let s = self.lock();
        let phase = s.phase.unwrap_or(Phase::Pending);
        if !phase.is_finished() || !s.ended && phase != Phase::TornDown {
            return None;
        }
        Some(self.result_of(&s))
    }

    fn result_of(&self, s: &State) -> SandboxResult {
        SandboxResult {
            id: self.info.id.clone(),
            phase: s.phase.unwrap_or(Phase::Pending),
            kill_reason: s.kill_reason,
            exit_code: s.exit_code,
            signal: s.signal,
            stdout: String::from_utf8_lossy(&s.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&s.stderr).into_owned(),
            result: s.result.clone(),
            result_error: s.result_error.clone(),
            error: s.error.clone(),
            duration_ms: s.duration_ms,
            usage: UsageView {
                cpu_ms: s.usage.cpu_nanos / 1_000_000,
                memory_peak_bytes: s.usage.memory_peak_bytes,
            },
        }
    }

    /// The session as the store keeps it, now; the result body once the
    /// workload has ended.
    pub fn record(&self) -> SandboxRecord {
        let s = self.lock();
        let i = &self.info;
        let phase = s.phase.unwrap_or(Phase::Pending);
        SandboxRecord {
            tenant_id: i.tenant.clone(),
            id: i.id.clone(),
            phase: phase.as_str().to_owned(),
            language: i.language.as_str().to_owned(),
            labels: json_of(&i.labels),
            limits: json_of(&i.limits),
            egress: json_of(&i.egress),
            kill_reason: s.kill_reason.map(|k| k.as_str().to_owned()),
            exit_code: s.exit_code,
            error: s.error.clone(),
            result: s.finished_at.map(|_| json_of(&self.result_of(&s))),
            created_at: i.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            torn_down_at: s.torn_down_at,
            deadline_at: crate::record::deadline(i.created_at, &i.limits),
        }
    }

    /// The store now holds the final record.
    pub(crate) fn mark_stored(&self) {
        self.stored.store(true, Ordering::Release);
    }

    /// Whether reads of this finished session go to the store.
    pub fn is_stored(&self) -> bool {
        self.stored.load(Ordering::Acquire)
    }
}

/// Plain data to JSON; these types always serialize.
fn json_of<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// How the workload ended, for [`SandboxSession::finish`].
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub kill_reason: Option<KillReason>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub result: Option<Value>,
    pub result_error: Option<String>,
    pub usage: Usage,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::take_text;

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let mut p = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_text(&mut p), "");
        p.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_text(&mut p), "é");
        let mut bad = vec![b'a', 0xff, b'b'];
        assert_eq!(take_text(&mut bad), "a\u{FFFD}b");
    }
}
