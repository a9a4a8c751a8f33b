//! The PostgreSQL backend (SPEC §6): several coordinators share one database, and any of them can serve any
//! request or die without loss.
//!
//! - Every change is one transaction, committed before the caller acknowledges it. A transaction that
//!   PostgreSQL aborts for a deadlock or a serialization failure (two coordinators touching the same rows)
//!   is retried from the start.
//! - Leasing locks queued subtasks with `FOR UPDATE SKIP LOCKED`, so concurrent coordinators never hand one
//!   subtask to two workers and never wait for each other's leases; a lease holds a share lock on the
//!   worker's row, so a worker cannot be declared dead half-way through one.
//! - Failure detection is a conditional update (`alive` and silent → `dead`): however many coordinators
//!   run the detector, exactly one of them requeues a dead worker's subtasks.
//! - Batches are written with array parameters (`unnest`): a batch of completions or a submit of many
//!   inputs is a handful of statements, not one per subtask. Statements are prepared once per connection.
//! - `NOTIFY hivemind_work` / `hivemind_tasks` tell the other coordinators that work arrived or a task
//!   finished, so their long-polling workers and clients wake at once ([`Store::subscribe`]).
//!
//! The URL is a libpq URL (`postgres://user@host:port/db`); `?schema=NAME` keeps the tables in that schema
//! (created when missing), so several clusters or test runs can share one database.

use super::placement::{self, ActiveTask, Candidate, Facts, Plan, parse_labels};
use super::*;
use ::postgres::error::SqlState;
use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::ToSql;
use ::postgres::{Client, GenericClient, NoTls, Row, Statement};
use hivemind_proto::api::{Blob, LeasedSubtask, LeasedTask, Outcome, SubtaskCounts};
use hivemind_proto::{Phase, Usage, frame};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

const MIGRATIONS: [&str; 2] = [
    include_str!("../../migrations/postgres/0001_initial.sql"),
    include_str!("../../migrations/postgres/0002_tenants.sql"),
];

/// Advisory lock key that serialises migrations of coordinators starting at once.
const MIGRATION_LOCK: i64 = 0x6869_7665_6d69_6e64;

/// Idle connections kept for reuse.
const IDLE_CONNECTIONS: usize = 16;

/// How often a transaction aborted by a deadlock or serialization failure is tried again.
const RETRIES: u32 = 20;

impl From<::postgres::Error> for StoreError {
    fn from(err: ::postgres::Error) -> Self {
        let retryable = matches!(
            err.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        );
        let message = match err.as_db_error() {
            Some(db) => format!("PostgreSQL: {}", db.message()),
            None => format!("PostgreSQL: {err}"),
        };
        if retryable { StoreError::Contention(message) } else { StoreError::Backend(message) }
    }
}

fn json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A non-negative BIGINT column.
fn u64_at(row: &Row, idx: usize) -> u64 {
    row.get::<_, i64>(idx) as u64
}

fn opt_u64_at(row: &Row, idx: usize) -> Option<u64> {
    row.get::<_, Option<i64>>(idx).map(|v| v as u64)
}

/// Usage stored as the three columns `fuel, wall_us, peak_memory` starting at `first`.
fn usage_at(row: &Row, first: usize) -> Usage {
    Usage {
        fuel_consumed: u64_at(row, first),
        wall_time_us: u64_at(row, first + 1),
        peak_memory_bytes: u64_at(row, first + 2),
    }
}

macro_rules! task_columns {
    () => {
        "id, module_id, state, priority, split, reduce, phase, n_queued, n_leased, n_succeeded, n_failed, \
         n_cancelled, fuel, wall_us, peak_memory, error, created_at, finished_at, requires, tenant"
    };
}

fn task_from_row(row: &Row) -> TaskStatus {
    TaskStatus {
        task_id: row.get(0),
        module_id: row.get(1),
        state: TaskState::parse(row.get(2)).unwrap_or(TaskState::Failed),
        priority: row.get(3),
        split: row.get(4),
        reduce: row.get(5),
        phase: row.get(6),
        subtasks: SubtaskCounts {
            queued: u64_at(row, 7),
            leased: u64_at(row, 8),
            succeeded: u64_at(row, 9),
            failed: u64_at(row, 10),
            cancelled: u64_at(row, 11),
        },
        usage: usage_at(row, 12),
        error: row.get(15),
        created_at_ms: u64_at(row, 16),
        finished_at_ms: opt_u64_at(row, 17),
        requires: parse_labels(row.get(18)),
        tenant: row.get(19),
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// A client or transaction, with the connection's statement cache: each SQL text is prepared once per
/// connection, so a statement is one round trip.
struct Db<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<&'static str, Statement>,
}

impl<C: GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, ::postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    fn opt(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params)
    }

    fn one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params)
    }

    fn exec(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, ::postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }
}

type Tx<'a, 'b> = Db<'a, ::postgres::Transaction<'b>>;

/// What a coordinator learns from the other coordinators of its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    /// Work may be available: a submit, a retry, a requeue.
    Work,
    /// A task finished.
    TaskFinished,
}

pub struct PostgresStore {
    config: ::postgres::Config,
    schema: Option<String>,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    /// Closes the idle connections on a thread of their own: closing a synchronous `postgres` client
    /// blocks on its internal runtime, which panics when the store's last owner drops it on a tokio worker
    /// thread (as the coordinator does when it shuts down).
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// A pooled connection, returned to the pool when dropped (unless it broke).
struct Pooled<'a> {
    store: &'a PostgresStore,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(|c| !c.client.is_closed()) {
            let mut idle = self.store.idle.lock();
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
    }
}

/// Splits `?schema=NAME` off a libpq URL.
fn split_schema(url: &str) -> StoreResult<(String, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), None)) };
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = Some(name.to_owned()),
            None => rest.push(pair),
        }
    }
    if let Some(name) = &schema {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(StoreError::Backend(format!(
                "invalid schema `{name}` in the store URL: use 1 to 63 letters, digits and underscores"
            )));
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, schema))
}

impl PostgresStore {
    /// Connects to `url`, creates the schema if one is named, and runs pending migrations (one coordinator
    /// at a time, under an advisory lock). Must not be called on an async runtime's thread.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let (url, schema) = split_schema(url)?;
        let mut config: ::postgres::Config =
            url.parse().map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL `{url}`: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("hivemind-coordinator");
        }
        let store = PostgresStore { config, schema, idle: Mutex::new(Vec::new()) };
        store.migrate()?;
        Ok(store)
    }

    fn connect(&self) -> StoreResult<Client> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            let hosts = format!("{:?}", self.config.get_hosts());
            StoreError::Backend(format!("cannot connect to PostgreSQL ({hosts}): {e}"))
        })?;
        if let Some(schema) = &self.schema {
            client.batch_execute(&format!("SET search_path TO \"{schema}\""))?;
        }
        Ok(client)
    }

    fn conn(&self) -> StoreResult<Pooled<'_>> {
        let conn = match self.idle.lock().pop() {
            Some(conn) => conn,
            None => Conn { client: self.connect()?, statements: HashMap::new() },
        };
        Ok(Pooled { store: self, conn: Some(conn) })
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut client = self.connect()?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        if let Some(schema) = &self.schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
        }
        tx.batch_execute("CREATE TABLE IF NOT EXISTS hivemind_migrations (version INTEGER PRIMARY KEY)")?;
        let version: i32 =
            tx.query_one("SELECT COALESCE(MAX(version), 0) FROM hivemind_migrations", &[])?.get(0);
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(migration)?;
            tx.execute("INSERT INTO hivemind_migrations (version) VALUES ($1)", &[&(i as i32 + 1)])?;
            tracing::info!(version = i + 1, "applied PostgreSQL migration");
        }
        tx.commit()?;
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&mut Db<'_, Client>) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let Conn { client, statements } = &mut *conn;
        f(&mut Db { client, statements })
    }

    /// Runs `f` in a transaction and commits; aborted transactions (deadlock, serialization failure) are
    /// run again from the start.
    fn write<T>(&self, mut f: impl FnMut(&mut Tx<'_, '_>) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            let Conn { client, statements } = &mut *conn;
            let mut tx = client.transaction()?;
            let result = f(&mut Db { client: &mut tx, statements });
            match result.and_then(|v| tx.commit().map(|()| v).map_err(StoreError::from)) {
                Err(StoreError::Contention(message)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, %message, "transaction aborted by contention; running it again");
                    std::thread::sleep(Duration::from_millis(u64::from(attempt).min(10)));
                }
                other => return other,
            }
        }
    }

    /// Listens for the other coordinators' notifications on a connection of its own, on a thread of its
    /// own, calling `on_event` for each (and with `None` about once a second); stops when it returns false.
    pub fn listen(&self, on_event: Box<dyn Fn(Option<StoreEvent>) -> bool + Send>) -> StoreResult<()> {
        let store = PostgresStore {
            config: self.config.clone(),
            schema: self.schema.clone(),
            idle: Mutex::new(Vec::new()),
        };
        std::thread::Builder::new()
            .name("hivemind-pg-listen".into())
            .spawn(move || {
                let mut failures = 0u32;
                loop {
                    let session = store.connect().and_then(|mut client| {
                        client.batch_execute("LISTEN hivemind_work; LISTEN hivemind_tasks")?;
                        failures = 0;
                        loop {
                            if !on_event(None) {
                                return Ok(false);
                            }
                            let mut notifications = client.notifications();
                            let mut pending = notifications.timeout_iter(Duration::from_secs(1));
                            while let Some(n) = pending.next()? {
                                let event = match n.channel() {
                                    "hivemind_tasks" => StoreEvent::TaskFinished,
                                    _ => StoreEvent::Work,
                                };
                                if !on_event(Some(event)) {
                                    return Ok(false);
                                }
                            }
                        }
                    });
                    match session {
                        Ok(false) => return,
                        Ok(true) => {}
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, "lost the PostgreSQL notification connection; reconnecting");
                            std::thread::sleep(Duration::from_millis(100u64 << failures.min(5)));
                            if !on_event(None) {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the notification listener: {e}")))?;
        Ok(())
    }
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
    fn apply(&self, tx: &mut Tx<'_, '_>, task_id: &str) -> StoreResult<()> {
        tx.exec(
            "UPDATE tasks SET n_queued = n_queued + $2, n_leased = n_leased + $3, n_succeeded = n_succeeded + $4,
                n_failed = n_failed + $5, n_cancelled = n_cancelled + $6, map_succeeded = map_succeeded + $7,
                fuel = fuel + $8, wall_us = wall_us + $9, peak_memory = GREATEST(peak_memory, $10)
             WHERE id = $1",
            &[
                &task_id,
                &self.queued,
                &self.leased,
                &self.succeeded,
                &self.failed,
                &self.cancelled,
                &self.map_succeeded,
                &(self.usage.fuel_consumed as i64),
                &(self.usage.wall_time_us as i64),
                &(self.usage.peak_memory_bytes as i64),
            ],
        )?;
        Ok(())
    }
}

/// Applies per-task deltas in task-id order (a fixed lock order across coordinators).
fn apply_deltas(tx: &mut Tx<'_, '_>, deltas: HashMap<String, Delta>) -> StoreResult<()> {
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_by(|a, b| a.0.cmp(&b.0));
    for (task_id, delta) in deltas {
        delta.apply(tx, &task_id)?;
    }
    Ok(())
}

/// Queues subtasks of `phase` for `inputs`, numbered from `first_idx`, in chunks of array parameters.
fn insert_subtasks<'a>(
    tx: &mut Tx<'_, '_>,
    task_id: &str,
    phase: Phase,
    first_idx: i64,
    priority: i32,
    inputs: impl IntoIterator<Item = &'a [u8]>,
    now_ms: u64,
) -> StoreResult<()> {
    let mut inputs = inputs.into_iter().peekable();
    let mut first = first_idx;
    while inputs.peek().is_some() {
        let chunk: Vec<&[u8]> = inputs.by_ref().take(10_000).collect();
        tx.exec(
            "INSERT INTO subtasks (task_id, phase, idx, state, priority, input, queued_at)
             SELECT $1::text, $2::text, $3::bigint + u.i - 1, 'queued', $4::integer, u.input, $5::bigint
             FROM unnest($6::bytea[]) WITH ORDINALITY AS u(input, i)",
            &[&task_id, &phase.as_str(), &first, &priority, &(now_ms as i64), &chunk],
        )?;
        first += chunk.len() as i64;
    }
    Ok(())
}

fn notify(tx: &mut Tx<'_, '_>, work: bool, tasks_finished: bool) -> StoreResult<()> {
    if work {
        tx.exec("SELECT pg_notify('hivemind_work', '')", &[])?;
    }
    if tasks_finished {
        tx.exec("SELECT pg_notify('hivemind_tasks', '')", &[])?;
    }
    Ok(())
}

/// Marks a task failed (or cancelled) and stops its remaining subtasks; returns false if it had already
/// finished.
fn finish_unsuccessfully(
    tx: &mut Tx<'_, '_>,
    task_id: &str,
    state: TaskState,
    error: Option<&str>,
    now_ms: u64,
) -> StoreResult<bool> {
    // Subtask rows before the task row: the lock order of leases and completions.
    tx.exec(
        "SELECT 1 FROM subtasks WHERE task_id = $1 AND state IN ('queued', 'leased') ORDER BY id FOR UPDATE",
        &[&task_id],
    )?;
    let changed = tx.exec(
        "UPDATE tasks SET state = $2, phase = 'done', error = $3, finished_at = $4
         WHERE id = $1 AND state IN ('queued', 'running')",
        &[&task_id, &state.as_str(), &error, &(now_ms as i64)],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    let queued = tx.exec(
        "UPDATE subtasks SET state = 'cancelled' WHERE task_id = $1 AND state = 'queued'",
        &[&task_id],
    )? as i64;
    let leased = tx.exec(
        "UPDATE subtasks SET state = 'cancelled', cancel_sent = FALSE WHERE task_id = $1 AND state = 'leased'",
        &[&task_id],
    )? as i64;
    Delta { queued: -queued, leased: -leased, cancelled: queued + leased, ..Delta::default() }
        .apply(tx, task_id)?;
    notify(tx, false, true)?;
    Ok(true)
}

fn phase_of(text: &str) -> Phase {
    text.parse().unwrap_or(Phase::Map)
}

fn attempt_from_row(r: &Row) -> AttemptInfo {
    AttemptInfo {
        attempt: r.get::<_, i32>(1) as u32,
        worker_id: r.get(2),
        error_kind: r.get(3),
        error: r.get(4),
        finished_at_ms: u64_at(r, 5),
    }
}

/// The failed attempts of a subtask, described for its task's error.
fn attempt_history<C: GenericClient>(db: &mut Db<'_, C>, subtask_id: i64) -> StoreResult<String> {
    let attempts: Vec<AttemptInfo> = db
        .query(
            "SELECT subtask_id, attempt, worker_id, error_kind, error, finished_at FROM attempts
             WHERE subtask_id = $1 ORDER BY attempt",
            &[&subtask_id],
        )?
        .iter()
        .map(attempt_from_row)
        .collect();
    Ok(describe_attempts(&attempts))
}

fn record_attempt(
    tx: &mut Tx<'_, '_>,
    subtask_id: i64,
    attempt: u32,
    worker_id: &str,
    kind: &str,
    message: &str,
    now_ms: u64,
) -> StoreResult<()> {
    tx.exec(
        "INSERT INTO attempts (subtask_id, attempt, worker_id, error_kind, error, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (subtask_id, attempt) DO UPDATE SET worker_id = EXCLUDED.worker_id,
            error_kind = EXCLUDED.error_kind, error = EXCLUDED.error, finished_at = EXCLUDED.finished_at",
        &[&subtask_id, &(attempt as i32), &worker_id, &kind, &message, &(now_ms as i64)],
    )?;
    Ok(())
}

/// Requeues (or fails, once out of attempts) every subtask leased to `worker_id`, or only those of `only`.
/// `consume_attempt` is false for a clean hand-back, which does not count as an attempt.
fn requeue_worker(
    tx: &mut Tx<'_, '_>,
    worker_id: &str,
    only: Option<&[i64]>,
    consume_attempt: bool,
    now_ms: u64,
) -> StoreResult<u64> {
    let rows = tx.query(
        "SELECT s.id, s.task_id, s.phase, s.idx, s.attempt, t.max_attempts FROM subtasks s
         JOIN tasks t ON t.id = s.task_id WHERE s.worker_id = $1 AND s.state = 'leased'
         ORDER BY s.id FOR UPDATE OF s",
        &[&worker_id],
    )?;
    let mut deltas: HashMap<String, Delta> = HashMap::new();
    let mut failures = Vec::new();
    let mut requeued = 0;
    for r in &rows {
        let (id, task_id): (i64, String) = (r.get(0), r.get(1));
        if only.is_some_and(|only| !only.contains(&id)) {
            continue;
        }
        let (attempt, max_attempts) = (r.get::<_, i32>(4) as u32, r.get::<_, i32>(5) as u32);
        let d = deltas.entry(task_id.clone()).or_default();
        d.leased -= 1;
        if !consume_attempt {
            tx.exec(
                "UPDATE subtasks SET state = 'queued', worker_id = NULL, attempt = attempt - 1, queued_at = $2
                 WHERE id = $1",
                &[&id, &(now_ms as i64)],
            )?;
            requeued += 1;
            d.queued += 1;
            continue;
        }
        let message = format!("worker `{worker_id}` was lost (declared dead)");
        record_attempt(tx, id, attempt, worker_id, "worker_lost", &message, now_ms)?;
        if attempt < max_attempts {
            tx.exec(
                "UPDATE subtasks SET state = 'queued', worker_id = NULL, queued_at = $2 WHERE id = $1",
                &[&id, &(now_ms as i64)],
            )?;
            d.queued += 1;
            requeued += 1;
        } else {
            tx.exec(
                "UPDATE subtasks SET state = 'failed', error_kind = 'worker_lost', error = $2, finished_at = $3
                 WHERE id = $1",
                &[&id, &message, &(now_ms as i64)],
            )?;
            d.failed += 1;
            failures.push((task_id, format!("{} subtask {}", r.get::<_, &str>(2), r.get::<_, i64>(3)), id));
        }
    }
    apply_deltas(tx, deltas)?;
    for (task_id, subtask, subtask_id) in failures {
        let error = format!("{subtask} failed: {}", attempt_history(tx, subtask_id)?);
        finish_unsuccessfully(tx, &task_id, TaskState::Failed, Some(&error), now_ms)?;
    }
    notify(tx, requeued > 0, false)?;
    Ok(requeued)
}

fn leased_from_row(r: &Row) -> (LeasedSubtask, Option<i64>) {
    let subtask = LeasedSubtask {
        subtask_id: r.get(0),
        task_id: r.get(1),
        phase: phase_of(r.get(2)),
        index: u64_at(r, 3),
        attempt: r.get::<_, i32>(4) as u32,
        input: Blob(r.get(5)),
    };
    (subtask, r.get(6))
}

/// The lease answer for `subtasks`, in queue order, with each task's module and limits. With `count`,
/// moves them from queued to leased in their tasks' counts and marks the tasks running.
fn lease_of(
    tx: &mut Tx<'_, '_>,
    worker_id: &str,
    mut subtasks: Vec<(i32, LeasedSubtask)>,
    count: bool,
) -> StoreResult<Lease> {
    subtasks.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.subtask_id.cmp(&b.1.subtask_id)));
    let mut lease = Lease::default();
    let mut per_task: HashMap<String, i64> = HashMap::new();
    for (_, subtask) in subtasks {
        *per_task.entry(subtask.task_id.clone()).or_default() += 1;
        lease.subtasks.push(subtask);
    }
    let mut per_task: Vec<_> = per_task.into_iter().collect();
    per_task.sort();
    for (task_id, n) in per_task {
        let row = if count {
            tx.one(
                "UPDATE tasks SET n_queued = n_queued - $2, n_leased = n_leased + $2,
                    state = CASE WHEN state = 'queued' THEN 'running' ELSE state END
                 WHERE id = $1 RETURNING module_id, limits",
                &[&task_id, &n],
            )?
        } else {
            tx.one("SELECT module_id, limits FROM tasks WHERE id = $1", &[&task_id])?
        };
        let module_id: String = row.get(0);
        let limits = serde_json::from_str(row.get(1)).map_err(|e| StoreError::Backend(e.to_string()))?;
        // The worker fetches and compiles the module to run these: it holds it from now on.
        tx.exec(
            "INSERT INTO worker_modules (worker_id, module_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&worker_id, &module_id],
        )?;
        lease.tasks.insert(task_id, LeasedTask { module_id, limits });
    }
    Ok(lease)
}

/// What placement asks the PostgreSQL store while planning a lease.
struct PgFacts<'t, 'a, 'b>(&'t mut Tx<'a, 'b>);

impl Facts for PgFacts<'_, '_, '_> {
    type Error = StoreError;

    fn leased(&mut self, worker: &str) -> StoreResult<u32> {
        Ok(leased_count(self.0, worker)? as u32)
    }

    fn holds(&mut self, worker: &str, module: &str) -> StoreResult<bool> {
        Ok(self
            .0
            .opt("SELECT 1 FROM worker_modules WHERE worker_id = $1 AND module_id = $2", &[&worker, &module])?
            .is_some())
    }
}

/// Reads what placement needs and plans a lease by `me` (`placement::plan`).
fn plan_lease(tx: &mut Tx<'_, '_>, me: &Candidate, idle_peers: &[String]) -> StoreResult<Plan> {
    let active: Vec<ActiveTask> = tx
        .query(
            "SELECT id, priority, memory, requires, module_id, n_queued FROM tasks
             WHERE state IN ('queued', 'running') AND n_queued > 0",
            &[],
        )?
        .iter()
        .map(|r| ActiveTask {
            id: r.get(0),
            priority: r.get(1),
            memory: u64_at(r, 2),
            requires: parse_labels(r.get(3)),
            module_id: r.get(4),
            queued: u64_at(r, 5),
        })
        .collect();
    if active.is_empty() {
        return Ok(Plan { all: true, ..Plan::default() });
    }
    let alive = alive_workers(tx)?;
    placement::plan(me, active, &alive, idle_peers, &mut PgFacts(tx))
}

/// How many subtasks are leased to `worker`.
fn leased_count<C: GenericClient>(db: &mut Db<'_, C>, worker: &str) -> StoreResult<u64> {
    let n: i64 =
        db.one("SELECT COUNT(*) FROM subtasks WHERE worker_id = $1 AND state = 'leased'", &[&worker])?.get(0);
    Ok(n as u64)
}

/// The live workers, as placement sees them.
fn alive_workers<C: GenericClient>(db: &mut Db<'_, C>) -> StoreResult<Vec<Candidate>> {
    Ok(db
        .query("SELECT id, slots, memory, labels FROM workers WHERE state = 'alive'", &[])?
        .iter()
        .map(|r| Candidate {
            id: r.get(0),
            slots: r.get::<_, i32>(1) as u32,
            memory: u64_at(r, 2),
            labels: parse_labels(r.get(3)),
        })
        .collect())
}

impl ModuleStore for PostgresStore {
    fn put_module(&self, id: &str, kind: &str, bytes: &[u8], now_ms: u64) -> StoreResult<bool> {
        self.write(|tx| {
            let n = tx.exec(
                "INSERT INTO modules (id, kind, size, bytes, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &kind, &(bytes.len() as i64), &bytes, &(now_ms as i64)],
            )?;
            Ok(n == 1)
        })
    }

    fn module_info(&self, id: &str) -> StoreResult<Option<ModuleInfo>> {
        self.read(|db| {
            Ok(db.opt("SELECT id, size, kind FROM modules WHERE id = $1", &[&id])?.map(|r| ModuleInfo {
                module_id: r.get(0),
                size: u64_at(&r, 1),
                kind: r.get(2),
                created: false,
            }))
        })
    }

    fn module_bytes(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|db| Ok(db.opt("SELECT bytes FROM modules WHERE id = $1", &[&id])?.map(|r| r.get(0))))
    }
}

fn status_in<C: GenericClient>(db: &mut Db<'_, C>, id: &str) -> StoreResult<Option<TaskStatus>> {
    Ok(db
        .opt(concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1"), &[&id])?
        .as_ref()
        .map(task_from_row))
}

/// One accepted completion and what becomes of its subtask.
enum Fate {
    Finished { state: &'static str, output: Option<Vec<u8>>, error: Option<(String, String)> },
    Retry { not_before: i64 },
}

impl TaskStore for PostgresStore {
    fn submit(&self, task: NewTask, now_ms: u64) -> StoreResult<(TaskStatus, bool)> {
        let limits = json(&task.limits)?;
        let labels = json(&task.labels)?;
        let requires = json(&task.requires)?;
        self.write(|tx| {
            if tx.opt("SELECT 1 FROM modules WHERE id = $1", &[&task.module_id])?.is_none() {
                return Err(StoreError::NotFound(format!(
                    "module `{}` is not uploaded: upload it with `hivemind module upload` first",
                    task.module_id
                )));
            }
            let (phase, map_total, queued) = if task.split {
                ("split", 0i64, 1i64)
            } else {
                ("map", task.inputs.len() as i64, task.inputs.len() as i64)
            };
            let inserted = tx.exec(
                "INSERT INTO tasks (id, module_id, state, phase, priority, limits, memory, requires, max_attempts,
                    retry_on_error, split, reduce, labels, idempotency_key, deadline_at, map_total, n_queued,
                    created_at, tenant)
                 VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                 ON CONFLICT (idempotency_key) DO NOTHING",
                &[
                    &task.id,
                    &task.module_id,
                    &phase,
                    &task.priority,
                    &limits,
                    &(task.limits.memory_bytes as i64),
                    &requires,
                    &(task.max_attempts as i32),
                    &task.retry_on_error,
                    &task.split,
                    &task.reduce,
                    &labels,
                    &task.idempotency_key,
                    &task.deadline_at_ms.map(|d| d as i64),
                    &map_total,
                    &queued,
                    &(now_ms as i64),
                    &task.tenant,
                ],
            )?;
            if inserted == 0 {
                // The idempotency key was used (perhaps by another coordinator a moment ago).
                let row = tx.one(
                    concat!("SELECT ", task_columns!(), " FROM tasks WHERE idempotency_key = $1"),
                    &[&task.idempotency_key],
                )?;
                return Ok((task_from_row(&row), false));
            }
            let phase = if task.split { Phase::Split } else { Phase::Map };
            task.inputs.for_each_chunk(10_000, |first, chunk| {
                insert_subtasks(tx, &task.id, phase, first as i64, task.priority, chunk.iter().copied(), now_ms)
            })?;
            notify(tx, true, false)?;
            let status = status_in(tx, &task.id)?.ok_or_else(|| StoreError::Backend("task vanished".into()))?;
            Ok((status, true))
        })
    }

    fn task_status(&self, id: &str) -> StoreResult<Option<TaskStatus>> {
        self.read(|db| status_in(db, id))
    }

    fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Vec<TaskStatus>> {
        self.read(|db| {
            Ok(db
                .query(
                    concat!(
                        "SELECT ",
                        task_columns!(),
                        " FROM tasks WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR module_id = $2)
                            AND ($4::text IS NULL OR tenant = $4)
                         ORDER BY seq DESC LIMIT $3"
                    ),
                    &[
                        &filter.state.map(TaskState::as_str),
                        &filter.module_id,
                        &i64::from(filter.limit.max(1)),
                        &filter.tenant,
                    ],
                )?
                .iter()
                .map(task_from_row)
                .collect())
        })
    }

    fn list_subtasks(&self, task_id: &str, filter: &SubtaskFilter) -> StoreResult<Option<Vec<SubtaskInfo>>> {
        self.read(|db| {
            if status_in(db, task_id)?.is_none() {
                return Ok(None);
            }
            let rows = db.query(
                "SELECT id, phase, idx, state, attempt, worker_id, fuel, peak_memory, wall_us, error_kind, error,
                    finished_at, started_at_us
                 FROM subtasks WHERE task_id = $1 AND ($2::text IS NULL OR phase = $2)
                    AND ($3::text IS NULL OR state = $3)
                 ORDER BY CASE phase WHEN 'split' THEN 0 WHEN 'map' THEN 1 ELSE 2 END, idx
                 LIMIT $4 OFFSET $5",
                &[
                    &task_id,
                    &filter.phase.map(Phase::as_str),
                    &filter.state,
                    &i64::from(filter.limit.max(1)),
                    &(filter.offset as i64),
                ],
            )?;
            let mut subtasks: Vec<SubtaskInfo> = rows
                .iter()
                .map(|r| SubtaskInfo {
                    subtask_id: r.get(0),
                    phase: r.get(1),
                    index: u64_at(r, 2),
                    state: r.get(3),
                    attempt: r.get::<_, i32>(4) as u32,
                    worker_id: r.get(5),
                    usage: opt_u64_at(r, 6).map(|fuel| Usage {
                        fuel_consumed: fuel,
                        peak_memory_bytes: opt_u64_at(r, 7).unwrap_or(0),
                        wall_time_us: opt_u64_at(r, 8).unwrap_or(0),
                    }),
                    error_kind: r.get(9),
                    error: r.get(10),
                    attempts: Vec::new(),
                    finished_at_ms: opt_u64_at(r, 11),
                    started_at_us: opt_u64_at(r, 12),
                })
                .collect();
            let ids: Vec<i64> = subtasks.iter().map(|s| s.subtask_id).collect();
            let mut attempts: HashMap<i64, Vec<AttemptInfo>> = HashMap::new();
            for r in db.query(
                "SELECT subtask_id, attempt, worker_id, error_kind, error, finished_at FROM attempts
                 WHERE subtask_id = ANY($1) ORDER BY subtask_id, attempt",
                &[&ids],
            )? {
                attempts.entry(r.get(0)).or_default().push(attempt_from_row(&r));
            }
            for s in &mut subtasks {
                s.attempts = attempts.remove(&s.subtask_id).unwrap_or_default();
            }
            Ok(Some(subtasks))
        })
    }

    fn cancel(&self, id: &str, now_ms: u64) -> StoreResult<Option<TaskStatus>> {
        self.write(|tx| {
            if status_in(tx, id)?.is_none() {
                return Ok(None);
            }
            finish_unsuccessfully(tx, id, TaskState::Cancelled, None, now_ms)?;
            status_in(tx, id)
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
            // A share lock: the worker cannot be declared dead (and its leases requeued) mid-lease.
            let me = tx.opt("SELECT state, slots, memory, labels FROM workers WHERE id = $1 FOR SHARE", &[&worker_id])?;
            let Some(me) = me.filter(|r| r.get::<_, &str>(0) == "alive") else {
                return Err(StoreError::UnknownWorker(worker_id.to_owned()));
            };
            if let Some(request_id) = request_id {
                // A repeated request whose first answer was lost: the same subtasks again.
                let again: Vec<(i32, LeasedSubtask)> = tx
                    .query(
                        "SELECT id, task_id, phase, idx, attempt, input, queued_at, priority FROM subtasks
                         WHERE worker_id = $1 AND state = 'leased' AND lease_id = $2",
                        &[&worker_id, &request_id],
                    )?
                    .iter()
                    .map(|r| (r.get(7), leased_from_row(r).0))
                    .collect();
                if !again.is_empty() {
                    return Ok(Leased { lease: lease_of(tx, worker_id, again, false)?, queue_wait_ms: Vec::new(), drained: false, left: false });
                }
            }
            let me = Candidate {
                id: worker_id.to_owned(),
                slots: me.get::<_, i32>(1) as u32,
                memory: u64_at(&me, 2),
                labels: parse_labels(me.get(3)),
            };
            let plan = plan_lease(tx, &me, idle_peers)?;
            let n = i64::from(max.min(plan.share));
            if n == 0 || plan.tasks.is_empty() {
                return Ok(Leased { drained: plan.all, ..Leased::default() });
            }
            let rows = if plan.all {
                tx.query(
                    "UPDATE subtasks SET state = 'leased', worker_id = $1, attempt = attempt + 1, lease_id = $4
                     WHERE id IN (SELECT id FROM subtasks WHERE state = 'queued'
                                  AND (not_before IS NULL OR not_before <= $2)
                                  ORDER BY priority DESC, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                     RETURNING id, task_id, phase, idx, attempt, input, queued_at, priority",
                    &[&worker_id, &(now_ms as i64), &n, &request_id],
                )?
            } else {
                // Only some tasks fit this worker: the first queued subtasks of each, merged in queue order.
                let mut heads: Vec<(i32, i64)> = Vec::new();
                for (task_id, priority) in &plan.tasks {
                    let ids = tx.query(
                        "SELECT id FROM subtasks WHERE task_id = $1 AND state = 'queued'
                         AND (not_before IS NULL OR not_before <= $2) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                        &[task_id, &(now_ms as i64), &n],
                    )?;
                    heads.extend(ids.iter().map(|r| (*priority, r.get::<_, i64>(0))));
                }
                heads.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                heads.truncate(n as usize);
                let ids: Vec<i64> = heads.into_iter().map(|(_, id)| id).collect();
                tx.query(
                    "UPDATE subtasks SET state = 'leased', worker_id = $1, attempt = attempt + 1, lease_id = $3
                     WHERE id = ANY($2)
                     RETURNING id, task_id, phase, idx, attempt, input, queued_at, priority",
                    &[&worker_id, &ids, &request_id],
                )?
            };
            let mut subtasks = Vec::with_capacity(rows.len());
            let mut queue_wait_ms = Vec::with_capacity(rows.len());
            for r in &rows {
                let (subtask, queued_at) = leased_from_row(r);
                queue_wait_ms.push(now_ms.saturating_sub(queued_at.map_or(now_ms, |q| q as u64)));
                subtasks.push((r.get::<_, i32>(7), subtask));
            }
            let drained = plan.drained(subtasks.len(), n as u64);
            let left = plan.left(subtasks.len(), n as u64);
            Ok(Leased { lease: lease_of(tx, worker_id, subtasks, true)?, queue_wait_ms, drained, left })
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
            // Lock order everywhere: worker row, then subtask rows, then task rows.
            tx.exec("SELECT 1 FROM workers WHERE id = $1 FOR NO KEY UPDATE", &[&worker_id])?;
            let ids: Vec<i64> = completions.iter().map(|c| c.subtask_id).collect();
            // The current leases among this batch, locked in id order.
            let current: HashMap<i64, Row> = tx
                .query(
                    "SELECT s.id, s.task_id, s.phase, s.idx, s.attempt, t.max_attempts, t.retry_on_error
                     FROM subtasks s JOIN tasks t ON t.id = s.task_id
                     WHERE s.id = ANY($1) AND s.state = 'leased' AND s.worker_id = $2
                     ORDER BY s.id FOR UPDATE OF s",
                    &[&ids, &worker_id],
                )?
                .into_iter()
                .map(|r| (r.get::<_, i64>(0), r))
                .collect();
            let mut deltas: HashMap<String, Delta> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            let mut failures: Vec<(String, String, i64)> = Vec::new();
            let mut split_outputs: Vec<(String, Vec<u8>)> = Vec::new();
            let mut reduce_outputs: Vec<(String, Vec<u8>)> = Vec::new();
            let mut fates: Vec<(&Completion, Fate)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut worker = (0i64, 0i64, Usage::default());
            for c in &completions {
                let row = current.get(&c.subtask_id).filter(|r| r.get::<_, i32>(4) as u32 == c.attempt);
                let Some(row) = row.filter(|_| seen.insert(c.subtask_id)) else {
                    done.reply.refused.push(c.subtask_id);
                    continue;
                };
                let task_id: String = row.get(1);
                let phase = phase_of(row.get(2));
                let (max_attempts, retry_on_error) = (row.get::<_, i32>(5) as u32, row.get::<_, bool>(6));
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
                        d.succeeded += 1;
                        worker.0 += 1;
                        match phase {
                            Phase::Map => d.map_succeeded += 1,
                            Phase::Split => split_outputs.push((task_id, output.clone())),
                            Phase::Reduce => reduce_outputs.push((task_id, output.clone())),
                        }
                        fates.push((c, Fate::Finished { state: "succeeded", output: Some(output.clone()), error: None }));
                    }
                    Outcome::Error { kind, message } => {
                        worker.1 += 1;
                        record_attempt(tx, c.subtask_id, c.attempt, worker_id, kind.as_str(), message, now_ms)?;
                        if let Some(backoff) = retry.retry_after(*kind, retry_on_error, c.attempt, max_attempts) {
                            let not_before = (now_ms + backoff) as i64;
                            d.queued += 1;
                            done.new_work = true;
                            fates.push((c, Fate::Retry { not_before }));
                        } else {
                            d.failed += 1;
                            let subtask = format!("{} subtask {}", phase.as_str(), row.get::<_, i64>(3));
                            failures.push((task_id, subtask, c.subtask_id));
                            let error = Some((kind.as_str().to_owned(), message.clone()));
                            fates.push((c, Fate::Finished { state: "failed", output: None, error }));
                        }
                    }
                }
            }
            // Every finished subtask in one statement, every retry in another.
            let (mut f_ids, mut f_states, mut f_outputs, mut f_kinds, mut f_errors, mut f_logs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut f_fuel, mut f_peak, mut f_wall, mut f_started) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut r_ids, mut r_not_before) = (Vec::new(), Vec::new());
            for (c, fate) in fates {
                match fate {
                    Fate::Finished { state, output, error } => {
                        f_ids.push(c.subtask_id);
                        f_states.push(state);
                        f_outputs.push(output);
                        let (kind, message) = error.unzip();
                        f_kinds.push(kind);
                        f_errors.push(message);
                        f_logs.push(c.log.0.as_slice());
                        f_fuel.push(c.usage.fuel_consumed as i64);
                        f_peak.push(c.usage.peak_memory_bytes as i64);
                        f_wall.push(c.usage.wall_time_us as i64);
                        f_started.push(c.started_at_us.map(|t| t as i64));
                    }
                    Fate::Retry { not_before } => {
                        r_ids.push(c.subtask_id);
                        r_not_before.push(not_before);
                    }
                }
            }
            if !f_ids.is_empty() {
                tx.exec(
                    "UPDATE subtasks s SET state = u.state, output = u.output, error_kind = u.kind, error = u.error,
                        log = u.log, fuel = u.fuel, peak_memory = u.peak, wall_us = u.wall, started_at_us = u.started,
                        finished_at = $1
                     FROM unnest($2::bigint[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::bytea[],
                                 $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
                          AS u(id, state, output, kind, error, log, fuel, peak, wall, started)
                     WHERE s.id = u.id",
                    &[
                        &(now_ms as i64),
                        &f_ids,
                        &f_states,
                        &f_outputs,
                        &f_kinds,
                        &f_errors,
                        &f_logs,
                        &f_fuel,
                        &f_peak,
                        &f_wall,
                        &f_started,
                    ],
                )?;
            }
            if !r_ids.is_empty() {
                tx.exec(
                    "UPDATE subtasks s SET state = 'queued', worker_id = NULL, not_before = u.t, queued_at = u.t
                     FROM unnest($1::bigint[], $2::bigint[]) AS u(id, t) WHERE s.id = u.id",
                    &[&r_ids, &r_not_before],
                )?;
            }
            apply_deltas(tx, deltas)?;
            let (completed, failed, usage) = worker;
            (done.succeeded, done.failed, done.fuel) = (completed as u64, failed as u64, usage.fuel_consumed);
            if done.reply.accepted > 0 {
                tx.exec(
                    "UPDATE workers SET completed = completed + $2, failed = failed + $3, fuel = fuel + $4,
                        wall_us = wall_us + $5, peak_memory = GREATEST(peak_memory, $6) WHERE id = $1",
                    &[
                        &worker_id,
                        &completed,
                        &failed,
                        &(usage.fuel_consumed as i64),
                        &(usage.wall_time_us as i64),
                        &(usage.peak_memory_bytes as i64),
                    ],
                )?;
            }
            for (task_id, subtask, subtask_id) in failures {
                let error = format!("{subtask} failed: {}", attempt_history(tx, subtask_id)?);
                if finish_unsuccessfully(tx, &task_id, TaskState::Failed, Some(&error), now_ms)? {
                    done.finished_tasks.push(task_id);
                }
            }
            for (task_id, output) in split_outputs {
                match frame::decode_frames(&output) {
                    Ok(inputs) => {
                        let priority: i32 = tx.one("SELECT priority FROM tasks WHERE id = $1", &[&task_id])?.get(0);
                        insert_subtasks(tx, &task_id, Phase::Map, 0, priority, inputs.iter().map(Vec::as_slice), now_ms)?;
                        tx.exec(
                            "UPDATE tasks SET phase = 'map', map_total = $2, n_queued = n_queued + $2 WHERE id = $1",
                            &[&task_id, &(inputs.len() as i64)],
                        )?;
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
                let n = tx.exec(
                    "UPDATE tasks SET state = 'succeeded', phase = 'done', result = $2, finished_at = $3
                     WHERE id = $1 AND state = 'running'",
                    &[&task_id, &output, &(now_ms as i64)],
                )?;
                if n == 1 {
                    done.finished_tasks.push(task_id);
                }
            }
            // Tasks whose map step just finished: start reduce, or succeed.
            for task_id in &order {
                let row = tx.opt(
                    "SELECT reduce, priority FROM tasks WHERE id = $1 AND state = 'running' AND phase = 'map'
                     AND map_succeeded = map_total",
                    &[task_id],
                )?;
                let Some(row) = row else { continue };
                if row.get::<_, bool>(0) {
                    let outputs: Vec<Vec<u8>> = tx
                        .query("SELECT output FROM subtasks WHERE task_id = $1 AND phase = 'map' ORDER BY idx", &[task_id])?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let input = frame::encode_frames(&outputs);
                    insert_subtasks(tx, task_id, Phase::Reduce, 0, row.get(1), [input.as_slice()], now_ms)?;
                    tx.exec("UPDATE tasks SET phase = 'reduce', n_queued = n_queued + 1 WHERE id = $1", &[task_id])?;
                    done.new_work = true;
                } else {
                    tx.exec(
                        "UPDATE tasks SET state = 'succeeded', phase = 'done', finished_at = $2 WHERE id = $1",
                        &[task_id, &(now_ms as i64)],
                    )?;
                    done.finished_tasks.push(task_id.clone());
                }
            }
            notify(tx, done.new_work, !done.finished_tasks.is_empty())?;
            Ok(done)
        })
    }

    fn expire_deadlines(&self, now_ms: u64) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            let due: Vec<String> = tx
                .query(
                    "SELECT id FROM tasks WHERE state IN ('queued', 'running') AND deadline_at <= $1 ORDER BY id",
                    &[&(now_ms as i64)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut finished = Vec::new();
            for id in due {
                if finish_unsuccessfully(tx, &id, TaskState::Failed, Some(DEADLINE_EXCEEDED), now_ms)? {
                    finished.push(id);
                }
            }
            Ok(finished)
        })
    }
}

impl ResultStore for PostgresStore {
    fn reduce_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|db| {
            Ok(db.opt("SELECT result FROM tasks WHERE id = $1", &[&id])?.and_then(|row| row.get(0)))
        })
    }

    fn map_outputs(&self, id: &str, from: u64, limit: u32) -> StoreResult<Vec<Option<Vec<u8>>>> {
        self.read(|db| {
            let rows = db.query(
                "SELECT CASE WHEN state = 'succeeded' THEN output END FROM subtasks
                 WHERE task_id = $1 AND phase = 'map' AND idx >= $2 ORDER BY idx LIMIT $3",
                &[&id, &(from as i64), &i64::from(limit)],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

impl MetadataStore for PostgresStore {
    fn register_worker(&self, id: &str, worker: &RegisterWorker, now_ms: u64) -> StoreResult<()> {
        let labels = json(&worker.labels)?;
        let resources = json(&worker.resources)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO workers (id, name, state, slots, memory, cores, labels, registered_at, last_heartbeat,
                    resources)
                 VALUES ($1, $2, 'alive', $3, $4, $5, $6, $7, $7, $8)",
                &[
                    &id,
                    &worker.name,
                    &(worker.slots as i32),
                    &(worker.memory_bytes as i64),
                    &(worker.cores as i32),
                    &labels,
                    &(now_ms as i64),
                    &resources,
                ],
            )?;
            if !worker.modules.is_empty() {
                tx.exec(
                    "INSERT INTO worker_modules (worker_id, module_id) SELECT $1::text, m FROM unnest($2::text[]) AS m
                     ON CONFLICT DO NOTHING",
                    &[&id, &worker.modules],
                )?;
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
        let resources = resources.map(json).transpose()?;
        self.write(|tx| {
            let n = tx.exec(
                "UPDATE workers SET last_heartbeat = $2, running = $3, resources = COALESCE($4, resources)
                 WHERE id = $1 AND state = 'alive'",
                &[&id, &(now_ms as i64), &(running as i32), &resources],
            )?;
            if n == 0 {
                return Err(StoreError::UnknownWorker(id.to_owned()));
            }
            let cancel = tx
                .query(
                    "UPDATE subtasks SET cancel_sent = TRUE WHERE worker_id = $1 AND NOT cancel_sent RETURNING id",
                    &[&id],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok((HeartbeatReply { cancel }, leased_count(tx, id)?))
        })
    }

    fn deregister_worker(&self, id: &str, now_ms: u64) -> StoreResult<u64> {
        self.write(|tx| {
            let n = tx.exec("UPDATE workers SET state = 'left' WHERE id = $1 AND state = 'alive'", &[&id])?;
            if n == 0 {
                return Err(StoreError::UnknownWorker(id.to_owned()));
            }
            tx.exec("DELETE FROM worker_modules WHERE worker_id = $1", &[&id])?;
            requeue_worker(tx, id, None, false, now_ms)
        })
    }

    fn leased_to(&self, id: &str) -> StoreResult<Vec<i64>> {
        self.read(|db| {
            Ok(db
                .query("SELECT id FROM subtasks WHERE worker_id = $1 AND state = 'leased'", &[&id])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn hand_back(&self, id: &str, subtasks: &[i64], now_ms: u64) -> StoreResult<u64> {
        self.write(|tx| requeue_worker(tx, id, Some(subtasks), false, now_ms))
    }

    fn alive_workers(&self) -> StoreResult<Vec<Candidate>> {
        self.read(alive_workers)
    }

    fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
        self.read(|db| {
            Ok(db
                .query(
                    "SELECT id, name, state, slots, memory, cores, labels, running, last_heartbeat, completed, failed,
                        fuel, wall_us, peak_memory, resources,
                        (SELECT COUNT(*) FROM subtasks s WHERE s.worker_id = workers.id AND s.state = 'leased')
                     FROM workers ORDER BY registered_at, registered_seq",
                    &[],
                )?
                .iter()
                .map(|r| WorkerInfo {
                    worker_id: r.get(0),
                    name: r.get(1),
                    state: r.get(2),
                    slots: r.get::<_, i32>(3) as u32,
                    memory_bytes: u64_at(r, 4),
                    cores: r.get::<_, i32>(5) as u32,
                    labels: parse_labels(r.get(6)),
                    running: r.get::<_, i32>(7) as u32,
                    last_heartbeat_ms: u64_at(r, 8),
                    completed: u64_at(r, 9),
                    failed: u64_at(r, 10),
                    usage: usage_at(r, 11),
                    resources: serde_json::from_str(r.get(14)).unwrap_or_default(),
                    leased: u64_at(r, 15),
                })
                .collect())
        })
    }

    fn expire_workers(
        &self,
        silent_since_ms: u64,
        heard_from: &[String],
        now_ms: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        self.write(|tx| {
            // One conditional update declares every silent worker at once (locking their rows before any
            // subtask or task row); when several coordinators detect the same silence, only one declares it.
            let heard: Vec<&str> = heard_from.iter().map(String::as_str).collect();
            let mut dead: Vec<String> = tx
                .query(
                    "UPDATE workers SET state = 'dead'
                     WHERE state = 'alive' AND last_heartbeat < $1 AND NOT (id = ANY($2))
                     RETURNING id",
                    &[&(silent_since_ms as i64), &heard],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            dead.sort();
            let mut out = Vec::new();
            for id in dead {
                tx.exec("DELETE FROM worker_modules WHERE worker_id = $1", &[&id])?;
                let requeued = requeue_worker(tx, &id, None, true, now_ms)?;
                out.push((id, requeued));
            }
            Ok(out)
        })
    }

    fn grace_workers(&self, now_ms: u64) -> StoreResult<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE workers SET last_heartbeat = GREATEST(last_heartbeat, $1) WHERE state = 'alive'",
                &[&(now_ms as i64)],
            )?;
            Ok(())
        })
    }

    fn queue_depth(&self) -> StoreResult<Vec<(i32, u64)>> {
        self.read(|db| {
            Ok(db
                .query(
                    "SELECT priority, COUNT(*) FROM subtasks WHERE state = 'queued' GROUP BY priority ORDER BY priority",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), u64_at(r, 1)))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh schema for one test, dropped afterwards.
    pub(crate) struct Schema {
        url: String,
        name: String,
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            if let Ok(mut client) = Client::connect(&self.url, NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
            }
        }
    }

    /// A store in a fresh schema of the database at `HIVEMIND_TEST_POSTGRES_URL`; `None` (skip) when it is
    /// not set outside CI.
    fn open() -> Option<(Schema, PostgresStore)> {
        let Ok(url) = std::env::var("HIVEMIND_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("CI").is_none(), "HIVEMIND_TEST_POSTGRES_URL must be set in CI");
            eprintln!("skipped: HIVEMIND_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema = Schema { url: url.clone(), name: format!("hm_test_{}", uuid::Uuid::new_v4().simple()) };
        let sep = if url.contains('?') { '&' } else { '?' };
        let store =
            PostgresStore::open(&format!("{url}{sep}schema={}", schema.name)).expect("open PostgreSQL");
        Some((schema, store))
    }

    crate::store::conformance::suite!(open());

    #[test]
    fn schema_names_are_validated() {
        assert_eq!(
            split_schema("postgres://h/db?schema=abc&sslmode=disable").expect("valid"),
            ("postgres://h/db?sslmode=disable".to_string(), Some("abc".to_string()))
        );
        assert_eq!(split_schema("postgres://h/db").expect("valid"), ("postgres://h/db".to_string(), None));
        assert!(split_schema("postgres://h/db?schema=a;drop").is_err());
        assert!(split_schema("postgres://h/db?schema=").is_err());
    }

    #[test]
    fn concurrent_leases_never_share_a_subtask() {
        let Some((_schema, store)) = open() else { return };
        conformance_seed(&store);
        let inputs = (0..2_000).map(|i| i.to_string().into_bytes()).collect();
        let task = NewTask {
            id: "t".into(),
            module_id: "sha256:m".into(),
            priority: 0,
            limits: Limits::default(),
            max_attempts: 3,
            retry_on_error: false,
            split: false,
            reduce: false,
            labels: Default::default(),
            requires: Default::default(),
            idempotency_key: None,
            deadline_at_ms: None,
            tenant: None,
            inputs,
        };
        store.submit(task, 0).expect("submit");
        let workers: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
        for w in &workers {
            let reg = RegisterWorker {
                name: w.clone(),
                slots: 50,
                memory_bytes: 1 << 30,
                cores: 1,
                labels: Default::default(),
                resources: Default::default(),
                modules: Vec::new(),
            };
            store.register_worker(w, &reg, 0).expect("register");
        }
        let leased: Vec<Vec<i64>> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter()
                .map(|w| {
                    let store = &store;
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        loop {
                            let got = store.lease(w, 50, None, &[], 0).expect("lease").lease;
                            if got.subtasks.is_empty() {
                                return mine;
                            }
                            mine.extend(got.subtasks.iter().map(|s| s.subtask_id));
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("leasing thread")).collect()
        });
        let mut all: Vec<i64> = leased.concat();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!((n, all.len()), (2_000, 2_000), "every subtask leased exactly once");
        let counts = store.task_status("t").expect("status").expect("task").subtasks;
        assert_eq!((counts.queued, counts.leased), (0, 2_000));
    }

    fn conformance_seed(store: &PostgresStore) {
        crate::store::conformance::seed(store);
    }
}
