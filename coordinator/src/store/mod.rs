//! The storage layer (SPEC §6): traits for the module, task, result and metadata stores, and their
//! backends. Callers hold an `Arc<dyn Store>` and never see which backend it is.
//!
//! The traits are synchronous: backends run blocking I/O (SQLite, a PostgreSQL client) and the HTTP layer
//! calls them on tokio's blocking pool. Every method that changes state commits before it returns, so an
//! acknowledged change survives a crash of the coordinator.

#[cfg(test)]
mod conformance;
pub mod placement;
pub mod postgres;
pub mod sqlite;

use hivemind_proto::Phase;
use hivemind_proto::api::{
    AttemptInfo, Blob, CompleteReply, Completion, HeartbeatReply, Lease, ModuleInfo, RegisterWorker,
    Resources, SubtaskInfo, TaskResult, TaskState, TaskStatus, WorkerInfo,
};
use hivemind_proto::{ErrorKind, Limits};
use std::collections::BTreeMap;

/// Errors of a store operation that callers act on; everything else is `Backend`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The worker is unknown or was declared dead: it must register again.
    #[error("worker `{0}` is not registered (or was declared dead): register again")]
    UnknownWorker(String),
    /// The backend aborted the change because of concurrent changes (a deadlock, a serialization failure);
    /// trying again may succeed.
    #[error("storage busy with concurrent changes: {0}")]
    Contention(String),
    #[error("storage backend error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Reading a task's inputs back from their temporary file failed.
impl From<std::io::Error> for StoreError {
    fn from(err: std::io::Error) -> Self {
        StoreError::Backend(format!("cannot read the task's inputs: {err}"))
    }
}

/// A validated task, ready to be stored with its subtasks.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub module_id: String,
    pub priority: i32,
    pub limits: Limits,
    pub max_attempts: u32,
    pub retry_on_error: bool,
    pub split: bool,
    pub reduce: bool,
    pub labels: BTreeMap<String, String>,
    /// Worker labels a worker must carry to run the task's subtasks.
    pub requires: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub deadline_at_ms: Option<u64>,
    /// The tenant of the submitting client (`None`: no tenant).
    pub tenant: Option<String>,
    /// The inputs (large ones in a temporary file).
    pub inputs: hivemind_proto::api::Inputs,
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub module_id: Option<String>,
    /// Only this tenant's tasks.
    pub tenant: Option<String>,
    pub limit: u32,
}

/// Filters of `GET /v1/tasks/{id}/subtasks`: subtasks in phase then index order.
#[derive(Debug, Clone, Default)]
pub struct SubtaskFilter {
    pub phase: Option<Phase>,
    pub state: Option<String>,
    pub offset: u64,
    pub limit: u32,
}

/// What a batch of completions changed.
#[derive(Debug, Clone, Default)]
pub struct Completed {
    pub reply: CompleteReply,
    /// Accepted completions that succeeded and that failed, and the fuel they consumed.
    pub succeeded: u64,
    pub failed: u64,
    pub fuel: u64,
    /// Tasks that reached a final state with this batch.
    pub finished_tasks: Vec<String>,
    /// Whether new subtasks became runnable (split output, reduce step, retries).
    pub new_work: bool,
}

/// Retry policy knobs the store applies when a completion reports a retryable failure.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Backoff before the second attempt; doubled for each later one.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base_backoff_ms: 100, max_backoff_ms: 30_000 }
    }
}

impl RetryPolicy {
    /// Backoff after attempt `attempt` failed: the base doubled for each attempt after the first, capped.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        self.base_backoff_ms.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(self.max_backoff_ms)
    }

    /// Whether attempt `attempt` failing with `kind` is tried again, and after how long: host trouble
    /// always, guest errors only with `retry_on_error` (never a cancellation or an invalid module), while
    /// attempts remain.
    pub fn retry_after(
        &self,
        kind: ErrorKind,
        retry_on_error: bool,
        attempt: u32,
        max_attempts: u32,
    ) -> Option<u64> {
        let host_trouble = matches!(kind, ErrorKind::Internal | ErrorKind::WorkerLost);
        let guest_retry = retry_on_error && !matches!(kind, ErrorKind::Cancelled | ErrorKind::InvalidModule);
        ((host_trouble || guest_retry) && attempt < max_attempts).then(|| self.backoff_ms(attempt))
    }
}

/// The error of a task whose deadline passed.
pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded: the task did not finish before its deadline";

/// "attempt 1 on worker `w1`: worker_lost: …; attempt 2 on worker `w2`: …": a subtask's failed attempts.
pub fn describe_attempts(attempts: &[AttemptInfo]) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "attempt {} on worker `{}`: {}: {}",
                a.attempt,
                a.worker_id.as_deref().unwrap_or_default(),
                a.error_kind,
                a.error
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What one lease request got: the subtasks, and how long each had waited in the queue.
#[derive(Debug, Clone, Default)]
pub struct Leased {
    pub lease: Lease,
    pub queue_wait_ms: Vec<u64>,
    /// The queue held nothing more for this worker: every task with queued work fits it, and it got fewer
    /// subtasks than it could take. Until work is added (a submit, a retry, a requeue), asking again finds
    /// nothing.
    pub drained: bool,
    /// Queued work this lease could have taken is still there (it was held to its fair share, or to its
    /// `max`): other waiting workers should look again.
    pub left: bool,
}

/// Whether a worker with `labels` satisfies a task's `requires`.
pub fn labels_match(requires: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    requires.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Content-addressed module bytes.
pub trait ModuleStore: Send + Sync {
    /// Stores a module; returns false when the id was already present (a no-op).
    fn put_module(&self, id: &str, kind: &str, bytes: &[u8], now_ms: u64) -> StoreResult<bool>;
    fn module_info(&self, id: &str) -> StoreResult<Option<ModuleInfo>>;
    fn module_bytes(&self, id: &str) -> StoreResult<Option<Vec<u8>>>;
}

/// Tasks, their subtasks and the scheduler's queue.
pub trait TaskStore: Send + Sync {
    /// Whether point reads (`task_status`, `task_result`) are cheap, in-process and never wait on a write
    /// transaction, so the API may run them on its async threads instead of handing them to the blocking
    /// pool (two thread wake-ups on the path of every such request). SQLite in WAL mode: yes; a database
    /// across the network: no (the default).
    fn inline_reads(&self) -> bool {
        false
    }
    /// Whether a small write (a lease, a completion batch, a heartbeat, a small submit) takes microseconds
    /// in-process, so the API may run it on its async thread when no long write is under way, instead of
    /// handing the thread's tokio core to another thread for it. SQLite: yes; a database across the
    /// network: no (the default).
    fn inline_writes(&self) -> bool {
        false
    }
    /// Housekeeping the coordinator runs in the background a few times a second, off the requests' path
    /// (SQLite: a passive WAL checkpoint, so no commit of a request pays for copying the log into the
    /// database and its fsync). Nothing by default.
    fn maintain(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Stores a task and its first subtasks; with an idempotency key already used, returns that task and
    /// `false`.
    fn submit(&self, task: NewTask, now_ms: u64) -> StoreResult<(TaskStatus, bool)>;
    fn task_status(&self, id: &str) -> StoreResult<Option<TaskStatus>>;
    fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Vec<TaskStatus>>;
    /// A task's subtasks with their attempts; `None` when the task does not exist.
    fn list_subtasks(&self, task_id: &str, filter: &SubtaskFilter) -> StoreResult<Option<Vec<SubtaskInfo>>>;
    /// Cancels a task: queued subtasks are removed, running ones are flagged for their workers.
    fn cancel(&self, id: &str, now_ms: u64) -> StoreResult<Option<TaskStatus>>;
    /// Leases up to `max` queued subtasks to a live worker: highest priority first, FIFO within one, only
    /// subtasks that fit the worker (memory limit within its budget, required labels carried), at most its
    /// fair share of the backlog, and leaving work to an idle worker that holds the module or has free
    /// slots when this one has none (placement, `docs/scaling.md`). A `request_id` that already leased
    /// subtasks to this worker returns those again instead (a retry after a lost answer).
    /// `idle_peers` are the workers long-polling for work right now.
    fn lease(
        &self,
        worker_id: &str,
        max: u32,
        request_id: Option<&str>,
        idle_peers: &[String],
        now_ms: u64,
    ) -> StoreResult<Leased>;
    /// Records a batch of completions, refusing those whose lease is no longer current (fencing).
    fn complete(
        &self,
        worker_id: &str,
        completions: Vec<Completion>,
        retry: RetryPolicy,
        now_ms: u64,
    ) -> StoreResult<Completed>;
    /// Fails tasks whose deadline passed; returns their ids.
    fn expire_deadlines(&self, now_ms: u64) -> StoreResult<Vec<String>>;
}

/// Results of finished tasks. A task's state and whether it has a reduce step come with its status
/// ([`TaskStore::task_status`]); [`task_result`] puts the pieces together.
pub trait ResultStore: Send + Sync {
    /// The output of the task's reduce step; `None` when it has none (yet) or the task does not exist.
    fn reduce_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>>;
    /// The outputs of the task's map subtasks with index `from..from + limit`, in index order (`None` for a
    /// subtask without an output).
    fn map_outputs(&self, id: &str, from: u64, limit: u32) -> StoreResult<Vec<Option<Vec<u8>>>>;
}

/// Map outputs read at once when a result is streamed or assembled.
pub const OUTPUT_PAGE: u32 = 10_000;

/// A task's whole result, map outputs and all, in memory (the API streams big ones page by page instead);
/// `None` when the task does not exist.
pub fn task_result(store: &dyn Store, id: &str) -> StoreResult<Option<TaskResult>> {
    let Some(status) = store.task_status(id)? else { return Ok(None) };
    let (result, outputs) = if status.reduce {
        (store.reduce_result(id)?.map(Blob), None)
    } else {
        let mut outputs = Vec::new();
        loop {
            let page = store.map_outputs(id, outputs.len() as u64, OUTPUT_PAGE)?;
            let last = page.len() < OUTPUT_PAGE as usize;
            outputs.extend(page.into_iter().map(|o| o.map(Blob)));
            if last {
                break;
            }
        }
        (None, Some(outputs))
    };
    Ok(Some(TaskResult { task_id: id.to_owned(), state: status.state, result, outputs }))
}

/// Workers: registration, liveness, failure detection.
pub trait MetadataStore: Send + Sync {
    fn register_worker(&self, id: &str, worker: &RegisterWorker, now_ms: u64) -> StoreResult<()>;
    /// Records a heartbeat (one write, which renews every lease the worker holds) and returns the subtasks
    /// it must cancel, with how many subtasks are leased to it. Fails with `UnknownWorker` when the worker
    /// was declared dead.
    fn heartbeat(
        &self,
        id: &str,
        running: u32,
        resources: Option<&Resources>,
        now_ms: u64,
    ) -> StoreResult<(HeartbeatReply, u64)>;
    /// A worker leaving cleanly: its leased subtasks go back to the queue.
    fn deregister_worker(&self, id: &str, now_ms: u64) -> StoreResult<u64>;
    /// The subtasks leased to worker `id` right now.
    fn leased_to(&self, id: &str) -> StoreResult<Vec<i64>>;
    /// Puts those of `subtasks` still leased to worker `id` back in the queue without costing an attempt
    /// (the worker never got them: their lease answer was lost). Returns how many went back.
    fn hand_back(&self, id: &str, subtasks: &[i64], now_ms: u64) -> StoreResult<u64>;
    /// Every worker, dead or alive, with its counters (`GET /v1/workers`).
    fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>>;
    /// The live workers' slots, memory budgets and labels: what a submit checks a task can be placed on.
    fn alive_workers(&self) -> StoreResult<Vec<placement::Candidate>>;
    /// Declares dead every live worker silent since `silent_since_ms`, except those in `heard_from` (heard
    /// by this coordinator recently, even if their heartbeat write is still waiting for the store), and
    /// requeues its subtasks (or fails them after `max_attempts`). Returns (worker, requeued) pairs.
    fn expire_workers(
        &self,
        silent_since_ms: u64,
        heard_from: &[String],
        now_ms: u64,
    ) -> StoreResult<Vec<(String, u64)>>;
    /// After a coordinator restart: treat every live worker as just heard from, so leases in flight are
    /// honoured while workers reconnect instead of being requeued at once.
    fn grace_workers(&self, now_ms: u64) -> StoreResult<()>;
    /// Queued subtasks right now (for metrics and autoscaling).
    fn queue_depth(&self) -> StoreResult<Vec<(i32, u64)>>;
}

/// Every store a coordinator needs, from one backend.
pub trait Store: ModuleStore + TaskStore + ResultStore + MetadataStore {}

impl<T: ModuleStore + TaskStore + ResultStore + MetadataStore> Store for T {}
