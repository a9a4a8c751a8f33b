//! Bodies of the coordinator's HTTP API (`/v1`, SPEC §5), shared by the coordinator, the worker and the
//! client SDK. Binary payloads (inputs, outputs) travel as [`Blob`]: UTF-8 text when they are valid UTF-8,
//! base64 otherwise, so JSON stays readable for the common case and exact for every byte string.

use crate::{ErrorKind, Limits, Phase, Usage};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes in JSON: `"text"` when valid UTF-8, `{"base64": "..."}` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BlobRef(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut bytes = Vec::new();
        d.deserialize_any(AppendBlob(&mut bytes))?;
        Ok(Blob(bytes))
    }
}

const BLOB_EXPECTED: &str = "a string or an object `{\"base64\": \"...\"}`";

/// Deserializes one blob (a string, or `{"base64": "..."}`) by appending its bytes to a buffer: no
/// intermediate value per blob, so a million inputs cost a million appends.
struct AppendBlob<'a>(&'a mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for AppendBlob<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AppendBlob<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(BLOB_EXPECTED)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<(), E> {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use base64::Engine;
        use serde::de::Error;
        let mut decoded = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "base64" || decoded {
                return Err(A::Error::custom(format!("expected {BLOB_EXPECTED}")));
            }
            let text: std::borrow::Cow<'de, str> = map.next_value()?;
            base64::engine::general_purpose::STANDARD
                .decode_vec(text.as_bytes(), self.0)
                .map_err(|e| A::Error::custom(format!("invalid base64: {e}")))?;
            decoded = true;
        }
        if decoded { Ok(()) } else { Err(A::Error::custom(format!("expected {BLOB_EXPECTED}"))) }
    }
}

/// Many blobs in one buffer: how the coordinator holds a submitted task's inputs (one allocation for all
/// of them instead of one each). Deserializes from a JSON array of blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    data: Vec<u8>,
    /// End offset of each input in `data`.
    ends: Vec<usize>,
}

impl Inputs {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`th input.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index in range"))
    }

    pub fn push(&mut self, input: &[u8]) {
        self.data.extend_from_slice(input);
        self.ends.push(self.data.len());
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Inputs {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut inputs = Inputs::default();
        for input in iter {
            inputs.push(input.as_ref());
        }
        inputs
    }
}

impl Serialize for Inputs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for input in self.iter() {
            // Borrowed: serializes exactly as a `Blob`.
            seq.serialize_element(&BlobRef(input))?;
        }
        seq.end()
    }
}

/// A borrowed blob, serialized like [`Blob`].
struct BlobRef<'a>(&'a [u8]);

impl Serialize for BlobRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("base64", &base64::engine::general_purpose::STANDARD.encode(self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Inputs;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of inputs, each {BLOB_EXPECTED}")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut inputs = Inputs::default();
                while seq.next_element_seed(AppendBlob(&mut inputs.data))?.is_some() {
                    inputs.ends.push(inputs.data.len());
                }
                Ok(inputs)
            }
        }
        d.deserialize_seq(Visit)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob(bytes)
    }
}

impl From<&str> for Blob {
    fn from(text: &str) -> Self {
        Blob(text.as_bytes().to_vec())
    }
}

/// The JSON error body of every non-2xx response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable, machine-readable code such as `task_not_found`.
    pub code: String,
    pub message: String,
}

/// Answer to a module upload or existence check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleInfo {
    pub module_id: String,
    pub size: u64,
    /// `command` or `component`.
    pub kind: String,
    /// False when the same bytes had already been uploaded.
    #[serde(default)]
    pub created: bool,
}

/// Optional limits of a task; unset fields take the coordinator's defaults.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub output_bytes: Option<u64>,
    pub log_bytes: Option<u64>,
}

/// `POST /v1/tasks`. The coordinator reads the inputs as [`Inputs`] (one buffer for all of them); clients
/// build them as a `Vec<Blob>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask<I = Vec<Blob>> {
    pub module_id: String,
    /// One map subtask per input; with `split`, exactly one input that the split step divides.
    pub inputs: I,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub limits: LimitsSpec,
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub retry_on_error: bool,
    #[serde(default)]
    pub split: bool,
    #[serde(default)]
    pub reduce: bool,
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Worker labels a worker must carry to run this task's subtasks (`--require zone=a`).
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    /// Whole-task deadline in milliseconds from submission.
    pub deadline_ms: Option<u64>,
}

/// Task states, spelled the same in every output (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    pub fn parse(text: &str) -> Option<TaskState> {
        [TaskState::Queued, TaskState::Running, TaskState::Succeeded, TaskState::Failed, TaskState::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Subtasks of a task by state.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubtaskCounts {
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl SubtaskCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.leased + self.succeeded + self.failed + self.cancelled
    }
}

/// `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskStatus {
    pub task_id: String,
    pub module_id: String,
    pub state: TaskState,
    pub priority: i32,
    pub split: bool,
    pub reduce: bool,
    /// Map subtasks by state (split and reduce steps are reported in `phase`).
    pub subtasks: SubtaskCounts,
    /// The step the task is in: `split`, `map`, `reduce` or `done`.
    pub phase: String,
    /// Usage summed over every finished subtask (peak memory is the maximum).
    pub usage: Usage,
    pub error: Option<String>,
    /// Worker labels the task's subtasks require.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    /// The tenant the task belongs to (set from the submitting client token's tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

/// `GET /v1/tasks/{id}/result`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    pub task_id: String,
    pub state: TaskState,
    /// The reduce output, when the task has a reduce step.
    pub result: Option<Blob>,
    /// The map outputs in input order, when it has none (`null` for subtasks without a result).
    pub outputs: Option<Vec<Option<Blob>>>,
}

/// One subtask in `GET /v1/tasks/{id}/subtasks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubtaskInfo {
    pub subtask_id: i64,
    /// `split`, `map` or `reduce`.
    pub phase: String,
    /// Position among the task's subtasks of this phase (input order for `map`).
    pub index: u64,
    /// `queued`, `leased`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Number of the current (or last) attempt; 0 before the first lease.
    pub attempt: u32,
    /// The worker holding the current lease, or the one that ran the last attempt.
    pub worker_id: Option<String>,
    /// Usage of the attempt that finished the subtask.
    pub usage: Option<Usage>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// When the recorded attempt started running on its worker (microseconds since the Unix epoch, the
    /// worker's clock); it ran for `usage.wall_time_us`.
    pub started_at_us: Option<u64>,
    /// Earlier attempts that did not produce the recorded outcome (lost workers, retried errors).
    pub attempts: Vec<AttemptInfo>,
    pub finished_at_ms: Option<u64>,
}

/// An attempt of a subtask that ended without producing its recorded outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptInfo {
    pub attempt: u32,
    pub worker_id: Option<String>,
    pub error_kind: String,
    pub error: String,
    pub finished_at_ms: u64,
}

/// `GET /v1/tasks/{id}/subtasks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubtaskList {
    pub task_id: String,
    pub subtasks: Vec<SubtaskInfo>,
}

/// `GET /v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskList {
    pub tasks: Vec<TaskStatus>,
}

/// What a worker's machine has and how busy it is, from the worker's resource monitor.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Resources {
    pub cores: u32,
    pub total_memory_bytes: u64,
    pub available_memory_bytes: u64,
    /// Share of the machine's CPU time in use since the previous report, 0.0 to 1.0.
    pub cpu_load: f32,
    /// One-minute load average.
    pub load_average: f64,
}

/// `POST /v1/workers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    pub name: String,
    /// Subtasks the worker runs at once; each needs one.
    pub slots: u32,
    /// Memory budget for subtasks: the memory limits of the subtasks running at once never exceed it.
    pub memory_bytes: u64,
    pub cores: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// Modules already compiled in the worker's cache (the scheduler prefers workers that hold a module).
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registered {
    pub worker_id: String,
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
}

/// `POST /v1/workers/{id}/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub running: u32,
    /// The resource monitor's latest reading.
    #[serde(default)]
    pub resources: Option<Resources>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Subtasks the worker must stop (their task was cancelled).
    pub cancel: Vec<i64>,
}

/// `POST /v1/workers/{id}/lease`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub max: u32,
    /// Long-poll: how long to wait for work when none is queued.
    #[serde(default)]
    pub wait_ms: u64,
    /// Names this request (unique per worker registration). Sent again after an answer was lost, it returns
    /// the subtasks the first try leased instead of leasing more, so none is stranded with the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One leased subtask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeasedSubtask {
    pub subtask_id: i64,
    pub task_id: String,
    pub index: u64,
    pub phase: Phase,
    pub attempt: u32,
    pub input: Blob,
}

/// What every subtask of one task shares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeasedTask {
    pub module_id: String,
    pub limits: Limits,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub subtasks: Vec<LeasedSubtask>,
    pub tasks: BTreeMap<String, LeasedTask>,
}

/// The outcome of one subtask run, as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Completion {
    pub subtask_id: i64,
    pub attempt: u32,
    pub outcome: Outcome,
    #[serde(default)]
    pub log: Blob,
    pub usage: Usage,
    /// When the run started (microseconds since the Unix epoch, the worker's clock).
    #[serde(default)]
    pub started_at_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Output(Blob),
    Error { kind: ErrorKind, message: String },
}

/// `POST /v1/workers/{id}/complete`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatch {
    pub completions: Vec<Completion>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteReply {
    pub accepted: u32,
    /// Completions refused because their lease is no longer current (fencing).
    pub refused: Vec<i64>,
}

/// One row of `GET /v1/workers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    pub worker_id: String,
    pub name: String,
    pub state: String,
    pub slots: u32,
    pub memory_bytes: u64,
    pub cores: u32,
    pub labels: BTreeMap<String, String>,
    /// The resource monitor's latest reading.
    pub resources: Resources,
    /// Subtasks running, as of the last heartbeat.
    pub running: u32,
    /// Subtasks leased to the worker now (running or waiting there for a slot).
    pub leased: u64,
    pub last_heartbeat_ms: u64,
    pub completed: u64,
    pub failed: u64,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
}

/// `GET /v1/cluster`: what the dashboard's summary shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterSummary {
    /// Live workers, and all registered ones (live, draining or dead).
    pub workers_alive: u64,
    pub workers_total: u64,
    /// Slots of live workers, and how many of them run a subtask now.
    pub slots: u64,
    pub slots_in_use: u64,
    /// Queued subtasks by priority, highest priority first.
    pub queue_by_priority: Vec<QueueLevel>,
    pub queued_total: u64,
    /// Subtask attempts this coordinator recorded since it started.
    pub subtasks_succeeded: u64,
    pub subtasks_failed: u64,
    /// Finished subtasks per second over the last minutes (one point a second, oldest first), as recorded
    /// by this coordinator.
    pub throughput: Vec<ThroughputPoint>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueLevel {
    pub priority: i32,
    pub queued: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ThroughputPoint {
    /// Unix time in milliseconds at the end of the second.
    pub at_ms: u64,
    pub succeeded_per_s: f64,
    pub failed_per_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_hold_text_and_base64_in_one_buffer_and_serialize_like_blobs() {
        let json = r#"["a", {"base64": "/wD+"}, "", "h\u00e9"]"#;
        let inputs: Inputs = serde_json::from_str(json).expect("parses");
        assert_eq!(inputs.len(), 4);
        let all: Vec<&[u8]> = inputs.iter().collect();
        assert_eq!(all, [&b"a"[..], &[0xff, 0x00, 0xfe][..], &b""[..], "hé".as_bytes()]);
        let blobs: Vec<Blob> = serde_json::from_str(json).expect("parses as blobs");
        assert_eq!(serde_json::to_value(&inputs).expect("json"), serde_json::to_value(&blobs).expect("json"));
        for bad in [r#"[1]"#, r#"[{"base64": "!!"}]"#, r#"[{"text": "x"}]"#, r#"[{}]"#, r#""x""#] {
            assert!(serde_json::from_str::<Inputs>(bad).is_err(), "{bad}");
            assert!(bad == r#""x""# || serde_json::from_str::<Vec<Blob>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blob_text_and_binary_round_trip() {
        for bytes in [b"plain text".to_vec(), vec![0xff, 0x00, 0x80]] {
            let json = serde_json::to_string(&Blob(bytes.clone())).expect("serialise");
            assert_eq!(serde_json::from_str::<Blob>(&json).expect("parse"), Blob(bytes));
        }
        assert_eq!(serde_json::to_string(&Blob(vec![0xff])).expect("serialise"), r#"{"base64":"/w=="}"#);
    }

    #[test]
    fn bad_blob_rejected() {
        assert!(serde_json::from_str::<Blob>("42").is_err());
        assert!(
            serde_json::from_str::<Blob>(r#"{"base64":"!!"}"#)
                .expect_err("bad base64")
                .to_string()
                .contains("base64")
        );
    }

    #[test]
    fn unknown_submit_fields_rejected() {
        let err = serde_json::from_str::<SubmitTask>(r#"{"module_id":"x","inputs":[],"priorty":3}"#)
            .expect_err("typo");
        assert!(err.to_string().contains("priorty"), "{err}");
    }
}
