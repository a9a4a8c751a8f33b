//! The embedded SQLite backend: one file in the data directory, WAL journal, migrations on open.
//!
//! One writer connection serialises every change (SQLite has one writer anyway) and commits each batch in
//! one transaction; a few reader connections serve status and list queries concurrently. With
//! `synchronous=NORMAL` in WAL mode a commit is in the operating system before it is acknowledged, so a
//! killed coordinator (kill -9) loses nothing; `Durability::Full` also survives power loss at the cost of
//! an fsync per commit.

use super::placement::{self, ActiveTask, Candidate, Facts, Plan, parse_labels};
use super::*;
use hivemind_proto::api::{AttemptInfo, Blob, LeasedSubtask, LeasedTask, Outcome, SubtaskCounts};
use hivemind_proto::{Phase, Usage, frame};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const MIGRATIONS: [&str; 4] = [
    include_str!("../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../migrations/sqlite/0002_lease_requests.sql"),
    include_str!("../../migrations/sqlite/0003_placement.sql"),
    include_str!("../../migrations/sqlite/0004_tenants.sql"),
];

/// Leases the first `?3` runnable queued subtasks in queue order to worker `?1` (request `?4`, time `?2`).
const LEASE_FROM_QUEUE: &str =
    "UPDATE subtasks SET state = 'leased', worker_id = ?1, attempt = attempt + 1, lease_id = ?4
     WHERE id IN (SELECT id FROM subtasks WHERE state = 'queued' AND (not_before IS NULL OR not_before <= ?2)
                  ORDER BY priority DESC, id LIMIT (?3 + 0))
     RETURNING id, task_id, phase, idx, attempt, input, priority, queued_at";

// Every `LIMIT`/`OFFSET` takes its bound value as `(?n + 0)`: SQLite compiles a bare `LIMIT ?n` for the
// value bound at the time and re-prepares the statement whenever it is bound again (measured with
// `StatementStatus::RePrepare`), which put SQL parsing on the path of every lease.

/// The WAL length (pages) at which a commit checkpoints it itself. The coordinator checkpoints passively in
/// the background several times a second ([`TaskStore::maintain`]), so this is only a backstop: a commit
/// that checkpoints copies the log into the database and fsyncs it on the request's path.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 20_000;

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives a crash of the process (kill -9); the default.
    #[default]
    Process,
    /// Also survives power loss: fsync on every commit.
    Full,
}

pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Runs the background WAL checkpoints ([`TaskStore::maintain`]).
    checkpointer: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn backend(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        backend(err)
    }
}

const TASK_COLUMNS: &str = "id, module_id, state, priority, split, reduce, phase, n_queued, n_leased, \
     n_succeeded, n_failed, n_cancelled, fuel, wall_us, peak_memory, error, created_at, finished_at, requires, \
     tenant";

fn task_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskStatus> {
    let state: String = row.get(2)?;
    Ok(TaskStatus {
        task_id: row.get(0)?,
        module_id: row.get(1)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Failed),
        priority: row.get(3)?,
        split: row.get(4)?,
        reduce: row.get(5)?,
        phase: row.get(6)?,
        subtasks: SubtaskCounts {
            queued: u64_at(row, 7)?,
            leased: u64_at(row, 8)?,
            succeeded: u64_at(row, 9)?,
            failed: u64_at(row, 10)?,
            cancelled: u64_at(row, 11)?,
        },
        usage: usage_at(row, 12)?,
        error: row.get(15)?,
        created_at_ms: u64_at(row, 16)?,
        finished_at_ms: row.get::<_, Option<i64>>(17)?.map(|v| v as u64),
        requires: serde_json::from_str(&row.get::<_, String>(18)?).unwrap_or_default(),
        tenant: row.get(19)?,
    })
}

/// A non-negative integer column (SQLite stores 64-bit signed integers).
fn u64_at(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(idx)? as u64)
}

/// Usage stored as the three columns `fuel, wall_us, peak_memory` starting at `first`.
fn usage_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Usage> {
    Ok(Usage {
        fuel_consumed: u64_at(row, first)?,
        wall_time_us: u64_at(row, first + 1)?,
        peak_memory_bytes: u64_at(row, first + 2)?,
    })
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
    // Room for every statement of the store (about 60): rusqlite's default of 16 evicts statements of the
    // hot path, which are then parsed and planned again on each request.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Changes to one task's counters collected over a batch, applied with one UPDATE.
#[derive(Debug, Default)]
struct Delta {
    queued: i64,
    leased: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    map_succeeded: i64,
    usage: Usage,
}

impl Delta {
    fn apply(&self, tx: &Transaction<'_>, task_id: &str) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "UPDATE tasks SET n_queued = n_queued + ?2, n_leased = n_leased + ?3, n_succeeded = n_succeeded + ?4,
                n_failed = n_failed + ?5, n_cancelled = n_cancelled + ?6, map_succeeded = map_succeeded + ?7,
                fuel = fuel + ?8, wall_us = wall_us + ?9, peak_memory = MAX(peak_memory, ?10)
             WHERE id = ?1",
        )?
        .execute(params![
            task_id,
            self.queued,
            self.leased,
            self.succeeded,
            self.failed,
            self.cancelled,
            self.map_succeeded,
            self.usage.fuel_consumed as i64,
            self.usage.wall_time_us as i64,
            self.usage.peak_memory_bytes as i64,
        ])?;
        Ok(())
    }
}

fn insert_subtask(
    tx: &Transaction<'_>,
    task_id: &str,
    phase: Phase,
    idx: u64,
    priority: i32,
    input: &[u8],
    now_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO subtasks (task_id, phase, idx, state, priority, input, queued_at)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
    )?
    .execute(params![task_id, phase.as_str(), idx as i64, priority, input, now_ms as i64])?;
    Ok(())
}

/// Marks a task failed (or cancelled) and stops its remaining subtasks; returns false if it had already
/// finished.
fn finish_unsuccessfully(
    tx: &Transaction<'_>,
    task_id: &str,
    state: TaskState,
    error: Option<&str>,
    now_ms: u64,
) -> rusqlite::Result<bool> {
    let changed = tx
        .prepare_cached(
            "UPDATE tasks SET state = ?2, phase = 'done', error = ?3, finished_at = ?4
             WHERE id = ?1 AND state IN ('queued', 'running')",
        )?
        .execute(params![task_id, state.as_str(), error, now_ms as i64])?;
    if changed == 0 {
        return Ok(false);
    }
    let queued = tx
        .prepare_cached("UPDATE subtasks SET state = 'cancelled' WHERE task_id = ?1 AND state = 'queued'")?
        .execute(params![task_id])? as i64;
    let leased = tx
        .prepare_cached(
            "UPDATE subtasks SET state = 'cancelled', cancel_sent = 0 WHERE task_id = ?1 AND state = 'leased'",
        )?
        .execute(params![task_id])? as i64;
    Delta { queued: -queued, leased: -leased, cancelled: queued + leased, ..Delta::default() }
        .apply(tx, task_id)?;
    Ok(true)
}

/// Records how a subtask's current attempt ended: its output or error, log and usage.
fn record_finish(
    tx: &Transaction<'_>,
    c: &Completion,
    state: &str,
    output: Option<&[u8]>,
    error: Option<(&str, &str)>,
    now_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE subtasks SET state = ?2, output = ?3, error_kind = ?4, error = ?5, log = ?6, fuel = ?7,
            peak_memory = ?8, wall_us = ?9, finished_at = ?10, started_at_us = ?11 WHERE id = ?1",
    )?
    .execute(params![
        c.subtask_id,
        state,
        output,
        error.map(|e| e.0),
        error.map(|e| e.1),
        c.log.0,
        c.usage.fuel_consumed as i64,
        c.usage.peak_memory_bytes as i64,
        c.usage.wall_time_us as i64,
        now_ms as i64,
        c.started_at_us.map(|t| t as i64)
    ])?;
    Ok(())
}

fn phase_of(text: &str) -> Phase {
    text.parse().unwrap_or(Phase::Map)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let mut writer =
            open_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Full => "FULL",
        };
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;
                 PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY;
                 PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
            ))
            .map_err(backend)?;
        let version: i64 = writer.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = writer.transaction().map_err(backend)?;
            tx.execute_batch(migration).map_err(backend)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).map_err(backend)?;
            tx.commit().map_err(backend)?;
            tracing::info!(version = i + 1, "applied SQLite migration");
        }
        let readers = (0..3)
            .map(|_| {
                open_connection(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .map(Mutex::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checkpointer = Mutex::new(open_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?);
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            checkpointer,
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Some(conn) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return f(&conn).map_err(backend);
            }
        }
        let conn = self.readers[start % self.readers.len()].lock();
        f(&conn).map_err(backend)
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
        let value = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(value)
    }

    fn status_in(conn: &Connection, id: &str) -> rusqlite::Result<Option<TaskStatus>> {
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
            .query_row(params![id], task_from_row)
            .optional()
    }

    /// Requeues (or fails, once out of attempts) every subtask leased to `worker_id`, or only those of
    /// `only`. `consume_attempt` is false for a clean hand-back, which does not count as an attempt.
    fn requeue_worker(
        tx: &Transaction<'_>,
        worker_id: &str,
        only: Option<&[i64]>,
        consume_attempt: bool,
        now_ms: u64,
    ) -> StoreResult<(u64, Vec<String>)> {
        let rows: Vec<(i64, String, String, i64, i64, u32)> = tx
            .prepare_cached(
                "SELECT s.id, s.task_id, s.phase, s.idx, s.attempt, t.max_attempts FROM subtasks s
                 JOIN tasks t ON t.id = s.task_id WHERE s.worker_id = ?1 AND s.state = 'leased'",
            )?
            .query_map(params![worker_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut deltas: HashMap<String, Delta> = HashMap::new();
        let mut failures = Vec::new();
        let mut requeued = 0;
        for (id, task_id, phase, idx, attempt, max_attempts) in rows {
            if only.is_some_and(|only| !only.contains(&id)) {
                continue;
            }
            if !consume_attempt {
                tx.prepare_cached(
                    "UPDATE subtasks SET state = 'queued', worker_id = NULL, attempt = attempt - 1, queued_at = ?2
                     WHERE id = ?1",
                )?
                .execute(params![id, now_ms as i64])?;
                requeued += 1;
                let d = deltas.entry(task_id).or_default();
                d.leased -= 1;
                d.queued += 1;
                continue;
            }
            let message = format!("worker `{worker_id}` was lost (declared dead)");
            tx.prepare_cached(
                "INSERT OR REPLACE INTO attempts (subtask_id, attempt, worker_id, error_kind, error, finished_at)
                 VALUES (?1, ?2, ?3, 'worker_lost', ?4, ?5)",
            )?
            .execute(params![id, attempt, worker_id, message, now_ms as i64])?;
            let d = deltas.entry(task_id.clone()).or_default();
            d.leased -= 1;
            if (attempt as u32) < max_attempts {
                tx.prepare_cached(
                    "UPDATE subtasks SET state = 'queued', worker_id = NULL, queued_at = ?2 WHERE id = ?1",
                )?
                .execute(params![id, now_ms as i64])?;
                d.queued += 1;
                requeued += 1;
            } else {
                tx.prepare_cached(
                    "UPDATE subtasks SET state = 'failed', error_kind = 'worker_lost', error = ?2, finished_at = ?3
                     WHERE id = ?1",
                )?
                .execute(params![id, message, now_ms as i64])?;
                d.failed += 1;
                failures.push((task_id, format!("{phase} subtask {idx}"), id));
            }
        }
        for (task_id, delta) in &deltas {
            delta.apply(tx, task_id)?;
        }
        let mut finished = Vec::new();
        for (task_id, subtask, subtask_id) in failures {
            let error = format!("{subtask} failed: {}", attempt_history(tx, subtask_id)?);
            if finish_unsuccessfully(tx, &task_id, TaskState::Failed, Some(&error), now_ms)? {
                finished.push(task_id);
            }
        }
        Ok((requeued, finished))
    }
}

/// The recorded failed attempts of a subtask, oldest first.
fn attempts_of(conn: &Connection, subtask_id: i64) -> rusqlite::Result<Vec<AttemptInfo>> {
    conn.prepare_cached(
        "SELECT attempt, worker_id, error_kind, error, finished_at FROM attempts WHERE subtask_id = ?1
         ORDER BY attempt",
    )?
    .query_map(params![subtask_id], |r| {
        Ok(AttemptInfo {
            attempt: r.get(0)?,
            worker_id: r.get(1)?,
            error_kind: r.get(2)?,
            error: r.get(3)?,
            finished_at_ms: r.get::<_, i64>(4)? as u64,
        })
    })?
    .collect()
}

/// The failed attempts of a subtask, described for its task's error.
fn attempt_history(conn: &Connection, subtask_id: i64) -> rusqlite::Result<String> {
    Ok(describe_attempts(&attempts_of(conn, subtask_id)?))
}

/// The lease answer for `rows` (priority, subtask): highest priority first, FIFO within one, with each
/// task's module and limits. With `count`, moves the subtasks from queued to leased in their tasks' counts
/// and marks the tasks running.
fn lease_of(
    tx: &Transaction<'_>,
    worker_id: &str,
    mut rows: Vec<(i32, LeasedSubtask)>,
    count: bool,
) -> StoreResult<Lease> {
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.subtask_id.cmp(&b.1.subtask_id)));
    let mut lease = Lease::default();
    let mut deltas: HashMap<String, i64> = HashMap::new();
    for (_, subtask) in rows {
        *deltas.entry(subtask.task_id.clone()).or_default() += 1;
        lease.subtasks.push(subtask);
    }
    for (task_id, n) in deltas {
        if count {
            Delta { queued: -n, leased: n, ..Delta::default() }.apply(tx, &task_id)?;
            tx.prepare_cached("UPDATE tasks SET state = 'running' WHERE id = ?1 AND state = 'queued'")?
                .execute(params![task_id])?;
        }
        let (module_id, limits): (String, String) = tx
            .prepare_cached("SELECT module_id, limits FROM tasks WHERE id = ?1")?
            .query_row(params![task_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let limits = serde_json::from_str(&limits).map_err(|e| StoreError::Backend(e.to_string()))?;
        // The worker fetches and compiles the module to run these: it holds it from now on.
        tx.prepare_cached("INSERT OR IGNORE INTO worker_modules (worker_id, module_id) VALUES (?1, ?2)")?
            .execute(params![worker_id, module_id])?;
        lease.tasks.insert(task_id, LeasedTask { module_id, limits });
    }
    Ok(lease)
}

/// What placement asks the SQLite store while planning a lease.
struct SqliteFacts<'a, 'b>(&'a Transaction<'b>);

impl Facts for SqliteFacts<'_, '_> {
    type Error = rusqlite::Error;

    fn leased(&mut self, worker: &str) -> rusqlite::Result<u32> {
        Ok(leased_count(self.0, worker)? as u32)
    }

    fn holds(&mut self, worker: &str, module: &str) -> rusqlite::Result<bool> {
        self.0
            .prepare_cached("SELECT 1 FROM worker_modules WHERE worker_id = ?1 AND module_id = ?2")?
            .query_row(params![worker, module], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }
}

/// Reads what placement needs and plans a lease by `me` (`placement::plan`).
fn plan_lease(tx: &Transaction<'_>, me: &Candidate, idle_peers: &[String]) -> StoreResult<Plan> {
    let active: Vec<ActiveTask> = tx
        .prepare_cached(
            "SELECT id, priority, memory, requires, module_id, n_queued FROM tasks
             WHERE state IN ('queued', 'running') AND n_queued > 0",
        )?
        .query_map([], |r| {
            Ok(ActiveTask {
                id: r.get(0)?,
                priority: r.get(1)?,
                memory: u64_at(r, 2)?,
                requires: parse_labels(&r.get::<_, String>(3)?),
                module_id: r.get(4)?,
                queued: u64_at(r, 5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    if active.is_empty() {
        return Ok(Plan { all: true, ..Plan::default() });
    }
    let alive = alive_workers(tx)?;
    Ok(placement::plan(me, active, &alive, idle_peers, &mut SqliteFacts(tx))?)
}

/// How many subtasks are leased to `worker`.
fn leased_count(conn: &Connection, worker: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM subtasks WHERE worker_id = ?1 AND state = 'leased'")?
        .query_row(params![worker], |r| u64_at(r, 0))
}

/// The live workers, as placement sees them.
fn alive_workers(conn: &Connection) -> rusqlite::Result<Vec<Candidate>> {
    conn.prepare_cached("SELECT id, slots, memory, labels FROM workers WHERE state = 'alive'")?
        .query_map([], |r| {
            Ok(Candidate {
                id: r.get(0)?,
                slots: r.get(1)?,
                memory: u64_at(r, 2)?,
                labels: parse_labels(&r.get::<_, String>(3)?),
            })
        })?
        .collect()
}

impl ModuleStore for SqliteStore {
    fn put_module(&self, id: &str, kind: &str, bytes: &[u8], now_ms: u64) -> StoreResult<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO modules (id, kind, size, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, kind, bytes.len() as i64, bytes, now_ms as i64],
            )?;
            Ok(n == 1)
        })
    }

    fn module_info(&self, id: &str) -> StoreResult<Option<ModuleInfo>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT id, size, kind FROM modules WHERE id = ?1")?
                .query_row(params![id], |r| {
                    Ok(ModuleInfo {
                        module_id: r.get(0)?,
                        size: u64_at(r, 1)?,
                        kind: r.get(2)?,
                        created: false,
                    })
                })
                .optional()
        })
    }

    fn module_bytes(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT bytes FROM modules WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()
        })
    }
}

impl TaskStore for SqliteStore {
    fn inline_reads(&self) -> bool {
        // Readers have connections of their own, and WAL readers never wait for the writer.
        true
    }

    fn inline_writes(&self) -> bool {
        // One in-process writer: a small transaction commits in tens of microseconds.
        true
    }

    fn maintain(&self) -> StoreResult<()> {
        // Passive: copies what no reader still needs, never waits for the writer or readers.
        let conn = self.checkpointer.lock();
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(backend)
    }

    fn submit(&self, task: NewTask, now_ms: u64) -> StoreResult<(TaskStatus, bool)> {
        self.write(|tx| {
            if let Some(key) = &task.idempotency_key {
                let existing: Option<String> = tx
                    .prepare_cached("SELECT id FROM tasks WHERE idempotency_key = ?1")?
                    .query_row(params![key], |r| r.get(0))
                    .optional()?;
                if let Some(id) = existing {
                    let status = Self::status_in(tx, &id)?.ok_or_else(|| StoreError::Backend("task vanished".into()))?;
                    return Ok((status, false));
                }
            }
            let module: Option<i64> =
                tx.prepare_cached("SELECT 1 FROM modules WHERE id = ?1")?.query_row(params![task.module_id], |r| r.get(0)).optional()?;
            if module.is_none() {
                return Err(StoreError::NotFound(format!(
                    "module `{}` is not uploaded: upload it with `hivemind module upload` first",
                    task.module_id
                )));
            }
            let seq: i64 =
                tx.prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks")?.query_row([], |r| r.get(0))?;
            let (phase, map_total, queued) =
                if task.split { ("split", 0, 1) } else { ("map", task.inputs.len() as i64, task.inputs.len() as i64) };
            let limits = serde_json::to_string(&task.limits).map_err(|e| StoreError::Backend(e.to_string()))?;
            let labels = serde_json::to_string(&task.labels).map_err(|e| StoreError::Backend(e.to_string()))?;
            let requires =
                serde_json::to_string(&task.requires).map_err(|e| StoreError::Backend(e.to_string()))?;
            tx.prepare_cached(
                "INSERT INTO tasks (id, seq, module_id, state, phase, priority, limits, max_attempts, retry_on_error,
                    split, reduce, labels, idempotency_key, deadline_at, map_total, n_queued, created_at, memory,
                    requires, tenant)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            )?
            .execute(params![
                task.id,
                seq,
                task.module_id,
                phase,
                task.priority,
                limits,
                task.max_attempts,
                task.retry_on_error,
                task.split,
                task.reduce,
                labels,
                task.idempotency_key,
                task.deadline_at_ms.map(|d| d as i64),
                map_total,
                queued,
                now_ms as i64,
                task.limits.memory_bytes as i64,
                requires,
                task.tenant,
            ])?;
            let phase = if task.split { Phase::Split } else { Phase::Map };
            task.inputs.for_each_chunk(1024, |first, chunk| {
                for (i, input) in chunk.iter().enumerate() {
                    insert_subtask(tx, &task.id, phase, (first + i) as u64, task.priority, input, now_ms)?;
                }
                Ok::<_, StoreError>(())
            })?;
            let status = Self::status_in(tx, &task.id)?.ok_or_else(|| StoreError::Backend("task vanished".into()))?;
            Ok((status, true))
        })
    }

    fn task_status(&self, id: &str) -> StoreResult<Option<TaskStatus>> {
        self.read(|conn| Self::status_in(conn, id))
    }

    fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Vec<TaskStatus>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR module_id = ?2)
                    AND (?4 IS NULL OR tenant = ?4)
                 ORDER BY seq DESC LIMIT (?3 + 0)"
            ))?;
            stmt.query_map(
                params![filter.state.map(TaskState::as_str), filter.module_id, filter.limit.max(1), filter.tenant],
                task_from_row,
            )?
            .collect()
        })
    }

    fn list_subtasks(&self, task_id: &str, filter: &SubtaskFilter) -> StoreResult<Option<Vec<SubtaskInfo>>> {
        self.read(|conn| {
            if Self::status_in(conn, task_id)?.is_none() {
                return Ok(None);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT id, phase, idx, state, attempt, worker_id, fuel, peak_memory, wall_us, error_kind, error,
                    finished_at, started_at_us
                 FROM subtasks WHERE task_id = ?1 AND (?2 IS NULL OR phase = ?2) AND (?3 IS NULL OR state = ?3)
                 ORDER BY CASE phase WHEN 'split' THEN 0 WHEN 'map' THEN 1 ELSE 2 END, idx
                 LIMIT (?4 + 0) OFFSET (?5 + 0)",
            )?;
            let rows = stmt.query_map(
                params![
                    task_id,
                    filter.phase.map(Phase::as_str),
                    filter.state,
                    filter.limit.max(1),
                    filter.offset as i64
                ],
                |r| {
                    let fuel: Option<i64> = r.get(6)?;
                    Ok(SubtaskInfo {
                        subtask_id: r.get(0)?,
                        phase: r.get(1)?,
                        index: r.get::<_, i64>(2)? as u64,
                        state: r.get(3)?,
                        attempt: r.get(4)?,
                        worker_id: r.get(5)?,
                        usage: match fuel {
                            Some(fuel) => Some(Usage {
                                fuel_consumed: fuel as u64,
                                peak_memory_bytes: r.get::<_, i64>(7)? as u64,
                                wall_time_us: r.get::<_, i64>(8)? as u64,
                            }),
                            None => None,
                        },
                        error_kind: r.get(9)?,
                        error: r.get(10)?,
                        attempts: Vec::new(),
                        finished_at_ms: r.get::<_, Option<i64>>(11)?.map(|t| t as u64),
                        started_at_us: r.get::<_, Option<i64>>(12)?.map(|t| t as u64),
                    })
                },
            )?;
            let mut subtasks = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            for s in &mut subtasks {
                s.attempts = attempts_of(conn, s.subtask_id)?;
            }
            Ok(Some(subtasks))
        })
    }

    fn cancel(&self, id: &str, now_ms: u64) -> StoreResult<Option<TaskStatus>> {
        self.write(|tx| {
            if Self::status_in(tx, id)?.is_none() {
                return Ok(None);
            }
            finish_unsuccessfully(tx, id, TaskState::Cancelled, None, now_ms)?;
            Ok(Self::status_in(tx, id)?)
        })
    }

    fn lease(
        &self,
        worker_id: &str,
        max: u32,
        request_id: Option<&str>,
        idle_peers: &[String],
        now_ms: u64,
    ) -> StoreResult<Leased> {
        self.write(|tx| {
            let me: Option<(String, u32, i64, String)> = tx
                .prepare_cached("SELECT state, slots, memory, labels FROM workers WHERE id = ?1")?
                .query_row(params![worker_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            let Some((state, slots, memory, labels)) = me.filter(|m| m.0 == "alive") else {
                return Err(StoreError::UnknownWorker(worker_id.to_owned()));
            };
            let _ = state;
            let leased_row = |r: &rusqlite::Row<'_>| {
                let subtask = LeasedSubtask {
                    subtask_id: r.get(0)?,
                    task_id: r.get(1)?,
                    phase: phase_of(&r.get::<_, String>(2)?),
                    index: u64_at(r, 3)?,
                    attempt: r.get(4)?,
                    input: Blob(r.get(5)?),
                };
                Ok((r.get::<_, i32>(6)?, subtask, r.get::<_, Option<i64>>(7)?))
            };
            if let Some(request_id) = request_id {
                // A repeated request whose first answer was lost: the same subtasks again.
                let again: Vec<(i32, LeasedSubtask, Option<i64>)> = tx
                    .prepare_cached(
                        "SELECT id, task_id, phase, idx, attempt, input, priority, queued_at FROM subtasks
                         WHERE worker_id = ?1 AND state = 'leased' AND lease_id = ?2",
                    )?
                    .query_map(params![worker_id, request_id], leased_row)?
                    .collect::<Result<_, _>>()?;
                if !again.is_empty() {
                    let rows = again.into_iter().map(|(p, s, _)| (p, s)).collect();
                    return Ok(Leased {
                        lease: lease_of(tx, worker_id, rows, false)?,
                        queue_wait_ms: Vec::new(),
                        drained: false,
                        left: false,
                    });
                }
            }
            let me = Candidate {
                id: worker_id.to_owned(),
                slots,
                memory: memory as u64,
                labels: parse_labels(&labels),
            };
            let plan = plan_lease(tx, &me, idle_peers)?;
            let n = max.min(plan.share);
            if n == 0 || plan.tasks.is_empty() {
                return Ok(Leased { drained: plan.all, ..Leased::default() });
            }
            const RETURNING: &str = "RETURNING id, task_id, phase, idx, attempt, input, priority, queued_at";
            let rows: Vec<(i32, LeasedSubtask, Option<i64>)> = if plan.all {
                tx.prepare_cached(LEASE_FROM_QUEUE)?
                    .query_map(params![worker_id, now_ms as i64, n, request_id], leased_row)?
                    .collect::<Result<_, _>>()?
            } else {
                // Only some tasks fit this worker: the first queued subtasks of each, merged in queue order.
                let mut heads: Vec<(i32, i64)> = Vec::new();
                for (task_id, priority) in &plan.tasks {
                    let ids: Vec<i64> = tx
                        .prepare_cached(
                            "SELECT id FROM subtasks WHERE task_id = ?1 AND state = 'queued'
                             AND (not_before IS NULL OR not_before <= ?2) ORDER BY id LIMIT (?3 + 0)",
                        )?
                        .query_map(params![task_id, now_ms as i64, n], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    heads.extend(ids.into_iter().map(|id| (*priority, id)));
                }
                heads.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                heads.truncate(n as usize);
                let mut rows = Vec::with_capacity(heads.len());
                for (_, id) in heads {
                    rows.push(
                        tx.prepare_cached(&format!(
                            "UPDATE subtasks SET state = 'leased', worker_id = ?1, attempt = attempt + 1,
                                lease_id = ?3 WHERE id = ?2 {RETURNING}"
                        ))?
                        .query_row(params![worker_id, id, request_id], leased_row)?,
                    );
                }
                rows
            };
            let queue_wait_ms = rows
                .iter()
                .map(|(_, _, queued)| now_ms.saturating_sub(queued.unwrap_or(now_ms as i64) as u64))
                .collect();
            let drained = plan.drained(rows.len(), u64::from(n));
            let left = plan.left(rows.len(), u64::from(n));
            let rows = rows.into_iter().map(|(p, s, _)| (p, s)).collect();
            Ok(Leased { lease: lease_of(tx, worker_id, rows, true)?, queue_wait_ms, drained, left })
        })
    }

    fn complete(
        &self,
        worker_id: &str,
        completions: Vec<Completion>,
        retry: RetryPolicy,
        now_ms: u64,
    ) -> StoreResult<Completed> {
        self.write(|tx| {
            let mut done = Completed::default();
            let mut deltas: HashMap<String, Delta> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            let mut failures: Vec<(String, String)> = Vec::new();
            let mut split_outputs: Vec<(String, Vec<u8>)> = Vec::new();
            let mut reduce_outputs: Vec<(String, Vec<u8>)> = Vec::new();
            let mut worker = (0i64, 0i64, Usage::default());
            for c in completions {
                let current: Option<(String, String, i64, u32, bool)> = tx
                    .prepare_cached(
                        "SELECT s.task_id, s.phase, s.idx, t.max_attempts, t.retry_on_error FROM subtasks s
                         JOIN tasks t ON t.id = s.task_id
                         WHERE s.id = ?1 AND s.state = 'leased' AND s.worker_id = ?2 AND s.attempt = ?3",
                    )?
                    .query_row(params![c.subtask_id, worker_id, c.attempt], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()?;
                let Some((task_id, phase, idx, max_attempts, retry_on_error)) = current else {
                    done.reply.refused.push(c.subtask_id);
                    continue;
                };
                done.reply.accepted += 1;
                if !deltas.contains_key(&task_id) {
                    order.push(task_id.clone());
                }
                let d = deltas.entry(task_id.clone()).or_default();
                d.leased -= 1;
                d.usage.accumulate(&c.usage);
                worker.2.accumulate(&c.usage);
                match &c.outcome {
                    Outcome::Output(Blob(output)) => {
                        record_finish(tx, &c, "succeeded", Some(output), None, now_ms)?;
                        d.succeeded += 1;
                        worker.0 += 1;
                        match phase_of(&phase) {
                            Phase::Map => d.map_succeeded += 1,
                            Phase::Split => split_outputs.push((task_id, output.clone())),
                            Phase::Reduce => reduce_outputs.push((task_id, output.clone())),
                        }
                    }
                    Outcome::Error { kind, message } => {
                        worker.1 += 1;
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO attempts (subtask_id, attempt, worker_id, error_kind, error, finished_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![c.subtask_id, c.attempt, worker_id, kind.as_str(), message, now_ms as i64])?;
                        if let Some(backoff) = retry.retry_after(*kind, retry_on_error, c.attempt, max_attempts) {
                            tx.prepare_cached(
                                "UPDATE subtasks SET state = 'queued', worker_id = NULL, not_before = ?2, queued_at = ?2
                                 WHERE id = ?1",
                            )?
                            .execute(params![c.subtask_id, (now_ms + backoff) as i64])?;
                            d.queued += 1;
                            done.new_work = true;
                        } else {
                            record_finish(tx, &c, "failed", None, Some((kind.as_str(), message)), now_ms)?;
                            d.failed += 1;
                            let subtask = format!("{phase} subtask {idx}");
                            let history = attempt_history(tx, c.subtask_id)?;
                            failures.push((task_id, format!("{subtask} failed: {history}")));
                        }
                    }
                }
            }
            for task_id in &order {
                deltas[task_id].apply(tx, task_id)?;
            }
            let (completed, failed, usage) = worker;
            (done.succeeded, done.failed, done.fuel) = (completed as u64, failed as u64, usage.fuel_consumed);
            tx.prepare_cached(
                "UPDATE workers SET completed = completed + ?2, failed = failed + ?3, fuel = fuel + ?4,
                    wall_us = wall_us + ?5, peak_memory = MAX(peak_memory, ?6) WHERE id = ?1",
            )?
            .execute(params![
                worker_id,
                completed,
                failed,
                usage.fuel_consumed as i64,
                usage.wall_time_us as i64,
                usage.peak_memory_bytes as i64
            ])?;

            for (task_id, error) in failures {
                if finish_unsuccessfully(tx, &task_id, TaskState::Failed, Some(&error), now_ms)? {
                    done.finished_tasks.push(task_id);
                }
            }
            for (task_id, output) in split_outputs {
                match frame::decode_frames(&output) {
                    Ok(inputs) => {
                        let priority: i32 = tx
                            .prepare_cached("SELECT priority FROM tasks WHERE id = ?1")?
                            .query_row(params![task_id], |r| r.get(0))?;
                        for (i, input) in inputs.iter().enumerate() {
                            insert_subtask(tx, &task_id, Phase::Map, i as u64, priority, input, now_ms)?;
                        }
                        tx.prepare_cached(
                            "UPDATE tasks SET phase = 'map', map_total = ?2, n_queued = n_queued + ?2 WHERE id = ?1",
                        )?
                        .execute(params![task_id, inputs.len() as i64])?;
                        done.new_work = true;
                    }
                    Err(e) => {
                        let error = format!("split subtask 0 wrote invalid frames: {e}");
                        if finish_unsuccessfully(tx, &task_id, TaskState::Failed, Some(&error), now_ms)? {
                            done.finished_tasks.push(task_id);
                        }
                    }
                }
            }
            for (task_id, output) in reduce_outputs {
                tx.prepare_cached(
                    "UPDATE tasks SET state = 'succeeded', phase = 'done', result = ?2, finished_at = ?3
                     WHERE id = ?1 AND state = 'running'",
                )?
                .execute(params![task_id, output, now_ms as i64])?;
                done.finished_tasks.push(task_id);
            }
            // Tasks whose map step just finished: start reduce, or succeed.
            for task_id in &order {
                let row: Option<(bool, String)> = tx
                    .prepare_cached(
                        "SELECT reduce, phase FROM tasks WHERE id = ?1 AND state = 'running' AND phase = 'map'
                         AND map_succeeded = map_total",
                    )?
                    .query_row(params![task_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some((reduce, _)) = row else { continue };
                if reduce {
                    let outputs: Vec<Vec<u8>> = tx
                        .prepare_cached("SELECT output FROM subtasks WHERE task_id = ?1 AND phase = 'map' ORDER BY idx")?
                        .query_map(params![task_id], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    let priority: i32 = tx
                        .prepare_cached("SELECT priority FROM tasks WHERE id = ?1")?
                        .query_row(params![task_id], |r| r.get(0))?;
                    insert_subtask(tx, task_id, Phase::Reduce, 0, priority, &frame::encode_frames(&outputs), now_ms)?;
                    tx.prepare_cached(
                        "UPDATE tasks SET phase = 'reduce', n_queued = n_queued + 1 WHERE id = ?1",
                    )?
                    .execute(params![task_id])?;
                    done.new_work = true;
                } else {
                    tx.prepare_cached(
                        "UPDATE tasks SET state = 'succeeded', phase = 'done', finished_at = ?2 WHERE id = ?1",
                    )?
                    .execute(params![task_id, now_ms as i64])?;
                    done.finished_tasks.push(task_id.clone());
                }
            }
            Ok(done)
        })
    }

    fn expire_deadlines(&self, now_ms: u64) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            let due: Vec<(String, i64)> = tx
                .prepare_cached(
                    "SELECT id, deadline_at FROM tasks WHERE state IN ('queued', 'running') AND deadline_at <= ?1",
                )?
                .query_map(params![now_ms as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut finished = Vec::new();
            for (id, _) in due {
                if finish_unsuccessfully(tx, &id, TaskState::Failed, Some(DEADLINE_EXCEEDED), now_ms)? {
                    finished.push(id);
                }
            }
            Ok(finished)
        })
    }
}

impl ResultStore for SqliteStore {
    fn reduce_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|conn| {
            let result = conn
                .prepare_cached("SELECT result FROM tasks WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            Ok(result.flatten())
        })
    }

    fn map_outputs(&self, id: &str, from: u64, limit: u32) -> StoreResult<Vec<Option<Vec<u8>>>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT CASE WHEN state = 'succeeded' THEN output END FROM subtasks
                 WHERE task_id = ?1 AND phase = 'map' AND idx >= ?2 ORDER BY idx LIMIT (?3 + 0)",
            )?
            .query_map(params![id, from as i64, limit], |r| r.get(0))?
            .collect::<Result<_, _>>()
        })
    }
}

impl MetadataStore for SqliteStore {
    fn register_worker(&self, id: &str, worker: &RegisterWorker, now_ms: u64) -> StoreResult<()> {
        let labels = serde_json::to_string(&worker.labels).map_err(|e| StoreError::Backend(e.to_string()))?;
        let resources =
            serde_json::to_string(&worker.resources).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO workers (id, name, state, slots, memory, cores, labels, registered_at, last_heartbeat,
                    resources)
                 VALUES (?1, ?2, 'alive', ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                params![
                    id,
                    worker.name,
                    worker.slots,
                    worker.memory_bytes as i64,
                    worker.cores,
                    labels,
                    now_ms as i64,
                    resources
                ],
            )?;
            for module in &worker.modules {
                tx.prepare_cached("INSERT OR IGNORE INTO worker_modules (worker_id, module_id) VALUES (?1, ?2)")?
                    .execute(params![id, module])?;
            }
            Ok(())
        })
    }

    fn heartbeat(
        &self,
        id: &str,
        running: u32,
        resources: Option<&Resources>,
        now_ms: u64,
    ) -> StoreResult<(HeartbeatReply, u64)> {
        let resources = resources
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.write(|tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE workers SET last_heartbeat = ?2, running = ?3, resources = COALESCE(?4, resources)
                     WHERE id = ?1 AND state = 'alive'",
                )?
                .execute(params![id, now_ms as i64, running, resources])?;
            if n == 0 {
                return Err(StoreError::UnknownWorker(id.to_owned()));
            }
            let cancel: Vec<i64> = tx
                .prepare_cached("UPDATE subtasks SET cancel_sent = 1 WHERE worker_id = ?1 AND cancel_sent = 0 RETURNING id")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((HeartbeatReply { cancel }, leased_count(tx, id)?))
        })
    }

    fn deregister_worker(&self, id: &str, now_ms: u64) -> StoreResult<u64> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE workers SET state = 'left' WHERE id = ?1 AND state = 'alive'",
                params![id],
            )?;
            if n == 0 {
                return Err(StoreError::UnknownWorker(id.to_owned()));
            }
            tx.prepare_cached("DELETE FROM worker_modules WHERE worker_id = ?1")?.execute(params![id])?;
            Ok(Self::requeue_worker(tx, id, None, false, now_ms)?.0)
        })
    }

    fn leased_to(&self, id: &str) -> StoreResult<Vec<i64>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT id FROM subtasks WHERE worker_id = ?1 AND state = 'leased'")?
                .query_map(params![id], |r| r.get(0))?
                .collect()
        })
    }

    fn hand_back(&self, id: &str, subtasks: &[i64], now_ms: u64) -> StoreResult<u64> {
        self.write(|tx| Ok(Self::requeue_worker(tx, id, Some(subtasks), false, now_ms)?.0))
    }

    fn alive_workers(&self) -> StoreResult<Vec<Candidate>> {
        self.read(alive_workers)
    }

    fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, name, state, slots, memory, cores, labels, running, last_heartbeat, completed, failed,
                    fuel, wall_us, peak_memory, resources,
                    (SELECT COUNT(*) FROM subtasks s WHERE s.worker_id = workers.id AND s.state = 'leased')
                 FROM workers ORDER BY registered_at",
            )?
            .query_map([], |r| {
                let labels: String = r.get(6)?;
                Ok(WorkerInfo {
                    worker_id: r.get(0)?,
                    name: r.get(1)?,
                    state: r.get(2)?,
                    slots: r.get(3)?,
                    memory_bytes: u64_at(r, 4)?,
                    cores: r.get(5)?,
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    running: r.get(7)?,
                    last_heartbeat_ms: u64_at(r, 8)?,
                    completed: u64_at(r, 9)?,
                    failed: u64_at(r, 10)?,
                    usage: usage_at(r, 11)?,
                    resources: serde_json::from_str(&r.get::<_, String>(14)?).unwrap_or_default(),
                    leased: u64_at(r, 15)?,
                })
            })?
            .collect()
        })
    }

    fn expire_workers(
        &self,
        silent_since_ms: u64,
        heard_from: &[String],
        now_ms: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        self.write(|tx| {
            let silent: Vec<String> = tx
                .prepare_cached("SELECT id FROM workers WHERE state = 'alive' AND last_heartbeat < ?1")?
                .query_map(params![silent_since_ms as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for id in silent.into_iter().filter(|id| !heard_from.contains(id)) {
                tx.prepare_cached("UPDATE workers SET state = 'dead' WHERE id = ?1")?.execute(params![id])?;
                tx.prepare_cached("DELETE FROM worker_modules WHERE worker_id = ?1")?.execute(params![id])?;
                let (requeued, _) = Self::requeue_worker(tx, &id, None, true, now_ms)?;
                out.push((id, requeued));
            }
            Ok(out)
        })
    }

    fn grace_workers(&self, now_ms: u64) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE workers SET last_heartbeat = ?1 WHERE state = 'alive'",
                params![now_ms as i64],
            )?;
            Ok(())
        })
    }

    fn queue_depth(&self) -> StoreResult<Vec<(i32, u64)>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT priority, COUNT(*) FROM subtasks WHERE state = 'queued' GROUP BY priority",
            )?
            .query_map([], |r| Ok((r.get(0)?, u64_at(r, 1)?)))?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("test.db"), Durability::Process).expect("open");
        (dir, store)
    }

    crate::store::conformance::suite!(Some(open()));

    #[test]
    fn maintenance_checkpoints_the_log_into_the_database() {
        let (dir, store) = open();
        crate::store::conformance::seed(&store);
        store.submit(crate::store::conformance::task("t", 0, 5000), 0).expect("submit");
        let db = dir.path().join("test.db");
        let size = || std::fs::metadata(&db).expect("database file").len();
        let before = size();
        // Far below the automatic checkpoint: the rows are only in the log so far.
        assert!(std::fs::metadata(dir.path().join("test.db-wal")).expect("log").len() > before);
        store.maintain().expect("checkpoint");
        assert!(size() > before + 100_000, "{before} -> {}", size());
        assert_eq!(store.task_status("t").expect("read").expect("task").subtasks.queued, 5000);
    }

    #[test]
    fn leasing_again_reuses_the_prepared_statement() {
        let (_dir, store) = open();
        crate::store::conformance::seed(&store);
        crate::store::conformance::worker(&store, "w");
        for round in 0..3 {
            store.submit(crate::store::conformance::task(&format!("t{round}"), 0, 2), 0).expect("submit");
            // A different limit each time: a bare `LIMIT ?` would be compiled again for each.
            let leased = store.lease("w", 1 + round, None, &[], 0).expect("lease").lease;
            assert_eq!(leased.subtasks.len(), 1 + round as usize);
        }
        let writer = store.writer.lock();
        let statement = writer.prepare_cached(LEASE_FROM_QUEUE).expect("cached");
        assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn reopening_keeps_every_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("test.db");
        {
            let store = SqliteStore::open(&path, Durability::Process).expect("open");
            crate::store::conformance::seed(&store);
        }
        let store = SqliteStore::open(&path, Durability::Full).expect("reopen");
        assert!(store.module_info("sha256:m").expect("info").is_some());
    }
}
