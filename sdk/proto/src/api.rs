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

/// Buffered input records beyond which [`Inputs`] moves them to its temporary file.
pub const INPUTS_SPILL_BYTES: usize = 1 << 20;

/// A submitted task's inputs as the coordinator holds them: records (a `u32` little-endian length, then
/// the bytes) in one buffer, no allocation per input. Deserialized from a JSON array of blobs, a long
/// array moves to an anonymous temporary file (in `$TMPDIR`) a megabyte at a time, so a million inputs
/// cost the coordinator about a megabyte of memory however big the request was. Read them with
/// [`Inputs::for_each_chunk`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    len: usize,
    /// The records not moved to `file` (all of them while the inputs stay small).
    buf: Vec<u8>,
    /// The earlier records, `file_len` bytes of them.
    file: Option<std::sync::Arc<std::fs::File>>,
    file_len: u64,
    /// Index and length of the longest input (the first of that length).
    longest: Option<(usize, usize)>,
}

impl Inputs {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index and length of the longest input.
    pub fn longest(&self) -> Option<(usize, usize)> {
        self.longest
    }

    /// The input, when there is exactly one (a single input always stays in memory).
    pub fn only(&self) -> Option<&[u8]> {
        if self.len != 1 || self.file.is_some() {
            return None;
        }
        split_records(&self.buf).0.first().copied()
    }

    /// Appends an input (in memory).
    pub fn push(&mut self, input: &[u8]) {
        let start = self.start_record();
        self.buf.extend_from_slice(input);
        self.end_record(start);
    }

    fn start_record(&mut self) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        start
    }

    /// Writes the length of the record begun at `start`, now that its bytes follow.
    fn end_record(&mut self, start: usize) {
        let len = self.buf.len() - start - 4;
        // Inputs are far smaller than 4 GiB: the request body is capped well below that.
        self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        if self.longest.is_none_or(|(_, longest)| len > longest) {
            self.longest = Some((self.len, len));
        }
        self.len += 1;
    }

    /// Moves the buffered records to the temporary file once they pass [`INPUTS_SPILL_BYTES`] (and there
    /// is more than one input).
    fn spill_if_full(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if self.buf.len() < INPUTS_SPILL_BYTES || self.len < 2 {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(std::sync::Arc::new(tempfile::tempfile()?));
        }
        let mut file: &std::fs::File = self.file.as_ref().expect("just created");
        file.write_all(&self.buf)?;
        self.file_len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Calls `f` with the inputs in order, in chunks of at most `max` (the index of the chunk's first input,
    /// the chunk), reading the temporary file a block at a time.
    pub fn for_each_chunk<E: From<std::io::Error>>(
        &self,
        max: usize,
        mut f: impl FnMut(usize, &[&[u8]]) -> Result<(), E>,
    ) -> Result<(), E> {
        use std::os::unix::fs::FileExt;
        let max = max.max(1);
        let mut index = 0;
        if let Some(file) = &self.file {
            let mut block: Vec<u8> = Vec::new();
            let mut offset = 0u64;
            while offset < self.file_len || !block.is_empty() {
                // Top the block up to a megabyte, or to the whole of a longer record begun in it.
                let pending =
                    block.get(..4).map_or(0, |h| 4 + u32::from_le_bytes(h.try_into().expect("4")) as usize);
                let want = pending.max(INPUTS_SPILL_BYTES);
                let have = block.len();
                let read = (want.saturating_sub(have) as u64).min(self.file_len - offset) as usize;
                block.resize(have + read, 0);
                file.read_exact_at(&mut block[have..], offset)?;
                offset += read as u64;
                let (records, consumed) = split_records(&block);
                if records.is_empty() {
                    return Err(std::io::Error::other("truncated input record in the temporary file").into());
                }
                for chunk in records.chunks(max) {
                    f(index, chunk)?;
                    index += chunk.len();
                }
                block.drain(..consumed);
            }
        }
        let (records, _) = split_records(&self.buf);
        for chunk in records.chunks(max) {
            f(index, chunk)?;
            index += chunk.len();
        }
        Ok(())
    }
}

/// The complete records at the start of `bytes`, and how many bytes they take.
fn split_records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(header.try_into().expect("four bytes")) as usize;
        let Some(record) = bytes.get(at + 4..at + 4 + len) else { break };
        records.push(record);
        at += 4 + len;
    }
    (records, at)
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

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Inputs;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of inputs, each {BLOB_EXPECTED}")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                use serde::de::Error;
                let mut inputs = Inputs::default();
                loop {
                    let start = inputs.start_record();
                    if seq.next_element_seed(AppendBlob(&mut inputs.buf))?.is_none() {
                        inputs.buf.truncate(start);
                        return Ok(inputs);
                    }
                    inputs.end_record(start);
                    inputs.spill_if_full().map_err(|e| {
                        A::Error::custom(format!("cannot hold the inputs in a temporary file: {e}"))
                    })?;
                }
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
    /// Every subtask the worker holds: leased to it and not yet reported. The coordinator hands back to
    /// the queue a subtask leased to this worker that stays missing from this list for the failure
    /// detection window (its lease answer never reached the worker). Absent: no such check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding: Option<Vec<i64>>,
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

    /// Every input of `inputs`, read in chunks of `max`, checking the chunks' first indexes.
    fn all_inputs(inputs: &Inputs, max: usize) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        inputs
            .for_each_chunk(max, |first, chunk| {
                assert_eq!(first, all.len());
                assert!(!chunk.is_empty() && chunk.len() <= max);
                all.extend(chunk.iter().map(|i| i.to_vec()));
                Ok::<_, std::io::Error>(())
            })
            .expect("reads");
        all
    }

    #[test]
    fn inputs_hold_text_and_base64_as_blobs_do() {
        let json = r#"["a", {"base64": "/wD+"}, "", "h\u00e9"]"#;
        let inputs: Inputs = serde_json::from_str(json).expect("parses");
        assert_eq!(inputs.len(), 4);
        assert_eq!(inputs.longest(), Some((1, 3)));
        let blobs: Vec<Blob> = serde_json::from_str(json).expect("parses as blobs");
        let expected: Vec<Vec<u8>> = blobs.into_iter().map(|b| b.0).collect();
        assert_eq!(expected, [&b"a"[..], &[0xff, 0x00, 0xfe][..], &b""[..], "hé".as_bytes()]);
        assert_eq!(all_inputs(&inputs, 3), expected);
        assert_eq!(inputs.only(), None);
        let one: Inputs = serde_json::from_str(r#"["x"]"#).expect("parses");
        assert_eq!(one.only(), Some(&b"x"[..]));
        for bad in [r#"[1]"#, r#"[{"base64": "!!"}]"#, r#"[{"text": "x"}]"#, r#"[{}]"#, r#""x""#] {
            assert!(serde_json::from_str::<Inputs>(bad).is_err(), "{bad}");
            assert!(bad == r#""x""# || serde_json::from_str::<Vec<Blob>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn many_inputs_move_to_a_file_and_read_back_in_order() {
        // 300,000 small inputs (several megabytes of records), one of 3 MB, binary ones, an empty one.
        let mut expected: Vec<Vec<u8>> = (0..300_000).map(|i| format!("input-{i}").into_bytes()).collect();
        expected[1234] = vec![b'x'; 3 << 20];
        expected[5] = vec![0xff, 0x00];
        expected[7] = Vec::new();
        let blobs: Vec<Blob> = expected.iter().cloned().map(Blob).collect();
        let json = serde_json::to_vec(&blobs).expect("json");
        let inputs: Inputs = serde_json::from_reader(&json[..]).expect("parses");
        assert!(
            inputs.file.is_some() && inputs.buf.len() < INPUTS_SPILL_BYTES,
            "the records moved to the file"
        );
        assert_eq!(inputs.len(), expected.len());
        assert_eq!(inputs.longest(), Some((1234, 3 << 20)));
        for max in [1, 7, 10_000] {
            assert!(all_inputs(&inputs, max) == expected, "chunks of {max}");
        }
        // A clone reads the same file.
        assert!(all_inputs(&inputs.clone(), 500) == expected);
        // One big input stays in memory.
        let one: Inputs = serde_json::from_str(&format!("[\"{}\"]", "y".repeat(2 << 20))).expect("parses");
        assert_eq!(one.only().map(<[u8]>::len), Some(2 << 20));
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
