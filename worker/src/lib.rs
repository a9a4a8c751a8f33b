//! `hivemind-worker`: registers with a coordinator, heartbeats, leases subtasks in batches (long polling),
//! runs them in the sandbox up to its slots, and reports results in batches.
//!
//! Tasks of one worker process:
//! - the **lease loop** keeps about 100 ms of work leased (Little's law over the observed subtask time,
//!   capped by `prefetch`), long-polling when it has none;
//! - one **runner** per leased subtask waits for a slot (a semaphore), fetches the module once (download,
//!   sha256 check, compile or load from the on-disk cache) and runs it on the blocking pool;
//! - the **reporter** sends every result that accumulated while the previous report was in flight, so
//!   batches grow with load without a timer;
//! - the **heartbeat** renews the worker's leases and learns which running subtasks to cancel.
//!
//! Connection failures are retried with backoff; a worker the coordinator declared dead registers again.

mod modules;
mod monitor;

use hivemind_client::{
    Client, CompleteBatch, Completion, Heartbeat, LeaseRequest, LeasedSubtask, LeasedTask, Outcome,
    RegisterWorker,
};
use hivemind_proto::api::Blob;
use hivemind_runtime::{CancelToken, RunRequest, Runtime, RuntimeConfig};
use modules::ModuleCache;
use monitor::Monitor;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

/// Worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent subtasks (default: the number of cores).
    pub slots: u32,
    /// Memory budget advertised to the scheduler (default: the machine's total memory).
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// Where compiled modules are cached across restarts.
    pub cache_dir: Option<PathBuf>,
    pub name: String,
    /// Most subtasks held at once (leased, queued locally or running). The worker aims at about 100 ms of
    /// work in hand, so short subtasks never wait for a round trip and long ones stay with the scheduler.
    pub prefetch: u32,
    /// Long-poll duration of an idle lease request.
    pub idle_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let slots = num_cpus::get() as u32;
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        WorkerConfig {
            slots,
            memory_bytes: system.total_memory(),
            labels: BTreeMap::new(),
            cache_dir: None,
            name: hostname(),
            prefetch: slots * 512,
            idle_wait: Duration::from_secs(10),
        }
    }
}

fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "worker".into())
}

/// Shared state of one running worker.
struct Worker {
    client: Client,
    config: WorkerConfig,
    runtime: Runtime,
    modules: ModuleCache,
    /// Current registration; replaced when the coordinator declares this worker dead.
    worker_id: Mutex<String>,
    /// Set when the coordinator no longer knows this worker: the lease loop registers again.
    lost: AtomicBool,
    /// Bumped at each registration: subtasks leased under an earlier one were requeued by the coordinator,
    /// so those still waiting for a slot are dropped instead of run.
    generation: AtomicU64,
    /// Numbers lease requests (their `request_id`).
    lease_seq: AtomicU64,
    /// Subtasks leased but not yet reported.
    in_flight: AtomicU32,
    running: AtomicU32,
    /// Moving average of subtask wall time, in microseconds (0 until the first subtask ran).
    avg_run_us: AtomicU64,
    /// Heartbeat period the coordinator asked for at registration.
    heartbeat_ms: AtomicU64,
    /// Woken whenever a subtask finishes, so the lease loop can top up.
    slot_freed: Notify,
    slots: Semaphore,
    /// The memory budget in MiB: a subtask starts only when its memory limit fits in what running
    /// subtasks left, so running subtasks never exceed the budget together.
    memory: Semaphore,
    memory_mib: u32,
    monitor: Monitor,
    /// Cancel tokens of subtasks being run, by subtask id.
    cancels: Mutex<HashMap<i64, CancelToken>>,
    /// Subtasks leased to this worker and not yet reported: sent with every heartbeat, so the coordinator
    /// can hand back a subtask it leased to this worker whose lease answer never arrived.
    holding: Mutex<std::collections::HashSet<i64>>,
    results: mpsc::UnboundedSender<Completion>,
}

/// Runs a worker until `shutdown` resolves, then drains: stops leasing, lets running subtasks finish,
/// reports their results and deregisters (the coordinator requeues anything not reported).
pub async fn run(
    client: Client,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: config.cache_dir.clone(),
        max_instances: (config.slots * 2).max(16),
        ..RuntimeConfig::default()
    })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let memory_mib = mib(config.memory_bytes).clamp(1, Semaphore::MAX_PERMITS as u64 / 2) as u32;
    let worker = Arc::new(Worker {
        modules: ModuleCache::new(client.clone(), runtime.clone()),
        client,
        runtime,
        worker_id: Mutex::new(String::new()),
        lost: AtomicBool::new(true),
        generation: AtomicU64::new(0),
        lease_seq: AtomicU64::new(0),
        in_flight: AtomicU32::new(0),
        running: AtomicU32::new(0),
        heartbeat_ms: AtomicU64::new(1000),
        avg_run_us: AtomicU64::new(0),
        slot_freed: Notify::new(),
        slots: Semaphore::new(config.slots as usize),
        memory: Semaphore::new(memory_mib as usize),
        memory_mib,
        monitor: Monitor::new(),
        cancels: Mutex::new(HashMap::new()),
        holding: Mutex::new(std::collections::HashSet::new()),
        results: tx,
        config,
    });
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let reporter = tokio::spawn(report(worker.clone(), rx));
    let heart = tokio::spawn(heartbeat(worker.clone()));

    worker.lease_loop(&stop).await;

    // Drain: wait for leased subtasks to finish, then flush results and leave.
    tracing::info!(in_flight = worker.in_flight.load(Ordering::SeqCst), "draining");
    while worker.in_flight.load(Ordering::SeqCst) > 0 {
        let freed = worker.slot_freed.notified();
        if worker.in_flight.load(Ordering::SeqCst) == 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
    }
    // Every result has been reported (in_flight counts until the report is acknowledged).
    heart.abort();
    reporter.abort();
    let id = worker.id();
    let client = worker.client.clone();
    if !id.is_empty() && !worker.lost.load(Ordering::SeqCst) {
        match client.deregister(&id).await {
            Ok(()) => tracing::info!(worker = %id, "deregistered"),
            Err(e) => tracing::warn!(worker = %id, error = %e, "could not deregister"),
        }
    }
    Ok(())
}

/// Resolves once shutdown was requested (immediately if it already was).
async fn stopped(stop: &watch::Receiver<bool>) {
    let mut stop = stop.clone();
    let _ = stop.wait_for(|s| *s).await;
}

/// Whole MiB needed for `bytes` (rounded up).
fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Exponential backoff for coordinator connection failures: 50 ms doubling to 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(2))
}

impl Worker {
    fn id(&self) -> String {
        self.worker_id.lock().clone()
    }

    /// How many subtasks to hold: enough for ~100 ms of work on every slot, within `slots..=prefetch`.
    fn lease_target(&self) -> u32 {
        let slots = self.config.slots;
        let cap = self.config.prefetch.max(slots);
        match self.avg_run_us.load(Ordering::Relaxed) {
            0 => (slots * 4).min(cap),
            avg => ((100_000 / avg.max(1)) as u32).saturating_mul(slots).clamp(slots, cap),
        }
    }

    fn record_run(&self, wall_us: u64) {
        let old = self.avg_run_us.load(Ordering::Relaxed);
        let new = if old == 0 { wall_us.max(1) } else { (old * 7 + wall_us.max(1)) / 8 };
        self.avg_run_us.store(new, Ordering::Relaxed);
    }

    async fn register(&self, stop: &watch::Receiver<bool>) {
        let req = RegisterWorker {
            name: self.config.name.clone(),
            slots: self.config.slots,
            memory_bytes: self.config.memory_bytes,
            cores: num_cpus::get() as u32,
            labels: self.config.labels.clone(),
            resources: self.monitor.read(),
            modules: self.modules.held(),
        };
        let mut attempt = 0;
        while !*stop.borrow() {
            match self.client.register(&req).await {
                Ok(reg) => {
                    tracing::info!(worker = %reg.worker_id, coordinator = %self.client.url(), "registered");
                    *self.worker_id.lock() = reg.worker_id;
                    // What the previous registration held was requeued when it was declared dead.
                    self.holding.lock().clear();
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.heartbeat_ms.store(reg.heartbeat_ms.max(10), Ordering::SeqCst);
                    self.lost.store(false, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn lease_loop(self: &Arc<Self>, stop: &watch::Receiver<bool>) {
        let mut failures = 0;
        // A lease request whose answer was lost, to be sent again as is.
        let mut retry: Option<LeaseRequest> = None;
        while !*stop.borrow() {
            if self.lost.load(Ordering::SeqCst) {
                retry = None;
                self.register(stop).await;
                continue;
            }
            // Enabled before reading the counters, so a subtask finishing in between is not missed.
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let in_flight = self.in_flight.load(Ordering::SeqCst);
            let target = self.lease_target();
            if in_flight > 0 && in_flight > target / 2 {
                // Enough work in hand: top up once half of it is done.
                tokio::select! {
                    _ = freed => {}
                    _ = stopped(stop) => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let id = self.id();
            let req = match retry.take() {
                Some(req) => req,
                None => {
                    // Always a long poll: with subtasks in hand but slots to spare, this request waits at
                    // the coordinator for new work instead of asking again when each result is reported.
                    let wait = self.config.idle_wait;
                    let request_id = self.lease_seq.fetch_add(1, Ordering::Relaxed).to_string();
                    LeaseRequest {
                        max: target - in_flight,
                        wait_ms: wait.as_millis() as u64,
                        request_id: Some(request_id),
                    }
                }
            };
            let lease = tokio::select! {
                lease = self.client.lease(&id, &req) => lease,
                _ = stopped(stop) => break,
            };
            match lease {
                Ok(lease) => {
                    failures = 0;
                    let generation = self.generation.load(Ordering::SeqCst);
                    let got = !lease.subtasks.is_empty();
                    for subtask in lease.subtasks {
                        let Some(task) = lease.tasks.get(&subtask.task_id).cloned() else { continue };
                        self.holding.lock().insert(subtask.subtask_id);
                        self.in_flight.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(self.clone().execute(subtask, task, generation));
                    }
                    if got {
                        // Let the subtasks just spawned start before the next lease request is sent.
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) if e.code() == Some("worker_unknown") => {
                    tracing::warn!(worker = %id, "the coordinator declared this worker dead; registering again");
                    self.lost.store(true, Ordering::SeqCst);
                }
                Err(e) if e.maybe_delivered() => {
                    // The coordinator may have leased subtasks for this request: ask again with the same
                    // request id, which returns them instead of leaving them stranded with this worker.
                    tracing::warn!(error = %e, "lease answer lost; asking again");
                    retry = Some(req);
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                }
            }
        }
    }

    /// Runs one leased subtask when a slot is free and queues its result.
    async fn execute(self: Arc<Self>, subtask: LeasedSubtask, task: LeasedTask, generation: u64) {
        let permit = self.slots.acquire().await.expect("the slot semaphore is never closed");
        // The coordinator only leases subtasks whose limit fits the whole budget; clamp in case it changed.
        let need = mib(task.limits.memory_bytes).clamp(1, u64::from(self.memory_mib)) as u32;
        let memory = self.memory.acquire_many(need).await.expect("the memory semaphore is never closed");
        if self.generation.load(Ordering::SeqCst) != generation || self.lost.load(Ordering::SeqCst) {
            // Declared dead since the lease: the coordinator has requeued this subtask elsewhere.
            tracing::debug!(subtask = subtask.subtask_id, "dropping a subtask of a lost registration");
            self.holding.lock().remove(&subtask.subtask_id);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.slot_freed.notify_waiters();
            return;
        }
        let token = CancelToken::new();
        self.cancels.lock().insert(subtask.subtask_id, token.clone());
        self.running.fetch_add(1, Ordering::SeqCst);
        let started_at_us = now_us();
        let outcome = match self.modules.get(&task.module_id).await {
            Ok(module) => {
                let request = RunRequest {
                    phase: subtask.phase,
                    input: subtask.input.0.into(),
                    limits: task.limits,
                    task_id: subtask.task_id.clone(),
                    subtask_index: subtask.index,
                    attempt: subtask.attempt,
                    cancel: Some(token),
                };
                // On a multi-threaded runtime the sandbox runs on this thread (tokio moves its other work
                // elsewhere meanwhile): no hand-off to the blocking pool and back on the path of every
                // subtask. A current-thread runtime cannot do that, so there it goes to the blocking pool.
                if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread
                {
                    tokio::task::block_in_place(|| self.runtime.run(&module, request))
                } else {
                    self.runtime.run_async(&module, request).await
                }
            }
            Err(failure) => Err(failure),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.cancels.lock().remove(&subtask.subtask_id);
        drop(memory);
        drop(permit);
        match &outcome {
            Ok(out) => self.record_run(out.usage.wall_time_us),
            Err(err) => self.record_run(err.usage.wall_time_us),
        }
        let completion = match outcome {
            Ok(out) => Completion {
                subtask_id: subtask.subtask_id,
                attempt: subtask.attempt,
                outcome: Outcome::Output(Blob(out.output)),
                log: Blob(out.log),
                usage: out.usage,
                started_at_us: Some(started_at_us),
            },
            Err(err) => Completion {
                subtask_id: subtask.subtask_id,
                attempt: subtask.attempt,
                outcome: Outcome::Error { kind: err.kind, message: err.message },
                log: Blob(err.log),
                usage: err.usage,
                started_at_us: Some(started_at_us),
            },
        };
        let _ = self.results.send(completion);
    }
}

/// Sends results in batches: everything that accumulated while the previous batch was in flight.
async fn report(worker: Arc<Worker>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let weak = Arc::downgrade(&worker);
    let client = worker.client.clone();
    drop(worker);
    while let Some(first) = rx.recv().await {
        let mut completions = vec![first];
        while completions.len() < 2048 {
            match rx.try_recv() {
                Ok(c) => completions.push(c),
                Err(_) => break,
            }
        }
        let n = completions.len() as u32;
        let batch = CompleteBatch { completions };
        let mut attempt = 0;
        loop {
            let Some(worker) = weak.upgrade() else {
                // Draining after shutdown: the worker is gone but its id is still registered.
                break;
            };
            let id = worker.id();
            match client.complete(&id, &batch).await {
                Ok(reply) => {
                    if !reply.refused.is_empty() {
                        tracing::warn!(
                            refused = reply.refused.len(),
                            "stale results refused by the coordinator"
                        );
                    }
                    break;
                }
                Err(e)
                    if e.code() == Some("worker_unknown")
                        || matches!(e, hivemind_client::Error::Api { .. }) =>
                {
                    tracing::warn!(error = %e, "results refused");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot report results; retrying");
                    drop(worker);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
        if let Some(worker) = weak.upgrade() {
            let mut holding = worker.holding.lock();
            for completion in &batch.completions {
                holding.remove(&completion.subtask_id);
            }
            drop(holding);
            worker.in_flight.fetch_sub(n, Ordering::SeqCst);
            worker.slot_freed.notify_waiters();
        }
    }
}

/// Heartbeats every interval the coordinator asked for, without waiting for the previous reply (a
/// coordinator busy with a long write must still hear from this worker on time); cancels subtasks it names.
async fn heartbeat(worker: Arc<Worker>) {
    loop {
        tokio::time::sleep(Duration::from_millis(worker.heartbeat_ms.load(Ordering::SeqCst))).await;
        if worker.lost.load(Ordering::SeqCst) {
            continue;
        }
        let worker = worker.clone();
        tokio::spawn(async move {
            let id = worker.id();
            let beat = Heartbeat {
                running: worker.running.load(Ordering::SeqCst),
                resources: Some(worker.monitor.read()),
                holding: Some(worker.holding.lock().iter().copied().collect()),
            };
            match worker.client.heartbeat(&id, &beat).await {
                Ok(reply) => {
                    let cancels = worker.cancels.lock();
                    for subtask in reply.cancel {
                        if let Some(token) = cancels.get(&subtask) {
                            tracing::info!(subtask, "cancelling");
                            token.cancel();
                        }
                    }
                }
                Err(e) if e.code() == Some("worker_unknown") => {
                    if worker.id() == id && !worker.lost.swap(true, Ordering::SeqCst) {
                        tracing::warn!(worker = %id, "heartbeat refused: declared dead; registering again");
                        worker.slot_freed.notify_waiters();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        });
    }
}
