//! `hivemind-coordinator`: the HTTP API server and the components behind it (SPEC §1, §4–6).
//!
//! - [`api`]: the `/v1` routes (modules, tasks, workers), health, metrics and the OpenAPI document;
//! - the task manager and scheduler live in the store's queries (`store::sqlite`): submit, lease in priority
//!   then FIFO order, complete with fencing, split/reduce transitions;
//! - [`Coordinator`] holds the shared state: the store, the notifications that wake long-polling workers
//!   and clients, the metrics, and the module validator (a compile-only sandbox runtime);
//! - background loops: the failure detector (declares silent workers dead, requeues their subtasks) and the
//!   deadline checker.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
mod metrics;
mod openapi;
pub mod scaling;
pub mod store;

pub use config::{Caps, Config};
pub use metrics::Metrics;

use hivemind_runtime::{Runtime, RuntimeConfig};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::Store;
use store::postgres::{PostgresStore, StoreEvent};
use store::sqlite::{Durability, SqliteStore};
use tokio::sync::{Notify, watch};

/// Milliseconds since the Unix epoch: the store's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Shared state of a running coordinator.
pub struct Coordinator {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Compiles uploaded modules to validate them (never instantiates them).
    validator: Runtime,
    /// Wakes long-polling lease requests when work may be available.
    work: Notify,
    /// Bumped with every `work` wake-up: what a drained queue is compared against.
    work_generation: AtomicU64,
    /// Store writes under way that may hold the writer for long (a big submit, a cancel): while there are
    /// any, short writes go off the async threads too, since they may queue behind one.
    long_writes: AtomicUsize,
    /// Workers whose last lease drained the queue: the work generation it saw, and the request's id. A new
    /// request of such a worker finds nothing until the generation moves on, so it waits at once instead of
    /// running an empty lease in the store (a repeat of the same request still runs, to get its answer
    /// again).
    drained: parking_lot::Mutex<HashMap<String, (u64, Option<String>)>>,
    /// Bumped whenever a task finishes; long-polling waits watch it.
    task_events: watch::Sender<u64>,
    /// When this process last heard from each worker, recorded before the heartbeat's store write: a long
    /// write transaction (a huge submit) delays heartbeat writes, and must not get healthy workers killed.
    heard: parking_lot::Mutex<HashMap<String, Instant>>,
    /// Workers long-polling for work right now (idle), with how many requests each has waiting: placement
    /// leaves work to them when they suit it better than the asking worker.
    polling: parking_lot::Mutex<HashMap<String, usize>>,
    /// Per worker, what its heartbeats said of the subtasks leased to it (see [`Coordinator::stranded`]).
    unheld: parking_lot::Mutex<HashMap<String, Holdings>>,
    pub metrics: Metrics,
    /// Totals of succeeded and failed subtask attempts, sampled once a second for the dashboard's
    /// throughput chart: `(unix ms, succeeded, failed)`, the last [`THROUGHPUT_SECONDS`] + 1 samples.
    throughput: parking_lot::Mutex<std::collections::VecDeque<(u64, u64, u64)>>,
}

/// What a coordinator knows of the subtasks a worker holds, from its heartbeats.
#[derive(Debug, Default)]
struct Holdings {
    /// When its list was last compared with its leases.
    checked: Option<Instant>,
    /// Subtasks leased to it that it did not list, with when that was first seen.
    missing: HashMap<i64, Instant>,
}

/// A worker whose heartbeats list as many subtasks as are leased to it has its list compared with its
/// leases once per this many failure-detection windows.
pub const HOLDINGS_RECHECK: u32 = 10;

/// How far back the throughput history reaches (ten minutes).
pub const THROUGHPUT_SECONDS: usize = 600;

/// Marks a long store write as under way while alive.
pub(crate) struct LongWrite<'a>(&'a Coordinator);

impl Drop for LongWrite<'_> {
    fn drop(&mut self) {
        self.0.long_writes.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks a worker as long-polling while alive.
struct Polling<'a> {
    coordinator: &'a Coordinator,
    worker: String,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut polling = self.coordinator.polling.lock();
        if let Some(n) = polling.get_mut(&self.worker) {
            *n -= 1;
            if *n == 0 {
                polling.remove(&self.worker);
            }
        }
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("data_dir", &self.config.data_dir).finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Opens the embedded SQLite store in `config.data_dir` (creating it) and prepares the coordinator.
    pub fn open(config: Config) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data directory `{}`: {e}", config.data_dir.display())
        })?;
        let path = config.data_dir.join("hivemind.db");
        let store = SqliteStore::open(&path, Durability::Process)
            .map_err(|e| anyhow::anyhow!("cannot open the store `{}`: {e}", path.display()))?;
        Self::with_store(config, Arc::new(store))
    }

    /// Opens the PostgreSQL store at `url` (running its migrations) and prepares the coordinator, which
    /// hears from the other coordinators of the cluster through the store's notifications. Blocks: call it
    /// outside the async runtime's threads (`spawn_blocking`).
    pub fn open_postgres(config: Config, url: &str) -> anyhow::Result<Arc<Self>> {
        let store = Arc::new(
            PostgresStore::open(url).map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL store: {e}"))?,
        );
        let coordinator = Self::with_store(config, store.clone())?;
        let weak = Arc::downgrade(&coordinator);
        store.listen(Box::new(move |event| {
            let Some(coordinator) = weak.upgrade() else { return false };
            match event {
                Some(StoreEvent::Work) => coordinator.work_available(),
                Some(StoreEvent::TaskFinished) => coordinator.tasks_finished(1),
                None => {}
            }
            true
        }))?;
        Ok(coordinator)
    }

    /// Prepares a coordinator on any store backend.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Arc<Self>> {
        let validator =
            Runtime::new(RuntimeConfig { on_demand: true, max_instances: 4, ..RuntimeConfig::default() })?;
        // Workers that were alive when the coordinator stopped get a fresh detection window to reconnect.
        store.grace_workers(now_ms())?;
        Ok(Arc::new(Coordinator {
            config,
            store,
            validator,
            work: Notify::new(),
            work_generation: AtomicU64::new(0),
            long_writes: AtomicUsize::new(0),
            drained: parking_lot::Mutex::new(HashMap::new()),
            task_events: watch::channel(0).0,
            heard: parking_lot::Mutex::new(HashMap::new()),
            polling: parking_lot::Mutex::new(HashMap::new()),
            unheld: parking_lot::Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            throughput: parking_lot::Mutex::new(std::collections::VecDeque::new()),
        }))
    }

    /// Records the current totals of finished subtask attempts (called once a second).
    fn sample_throughput(&self) {
        let sample = (now_ms(), self.metrics.subtasks_succeeded.get(), self.metrics.subtasks_failed.get());
        let mut samples = self.throughput.lock();
        if samples.len() > THROUGHPUT_SECONDS {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Finished subtasks per second over the sampled history, oldest first.
    pub fn throughput(&self) -> Vec<hivemind_proto::api::ThroughputPoint> {
        let samples = self.throughput.lock();
        let rate = |now: u64, before: u64, ms: u64| (now - before) as f64 * 1000.0 / ms.max(1) as f64;
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| hivemind_proto::api::ThroughputPoint {
                at_ms: b.0,
                succeeded_per_s: rate(b.1, a.1, b.0.saturating_sub(a.0)),
                failed_per_s: rate(b.2, a.2, b.0.saturating_sub(a.0)),
            })
            .collect()
    }

    /// Records that `worker` was heard from just now.
    fn heard_from(&self, worker: &str) {
        self.heard.lock().insert(worker.to_owned(), Instant::now());
    }

    /// Workers heard from within the failure-detection window; forgets older entries (and what it knew of
    /// their leases).
    fn recently_heard(&self) -> Vec<String> {
        let window = self.config.dead_after;
        let mut heard = self.heard.lock();
        heard.retain(|_, at| at.elapsed() < window);
        self.drained.lock().retain(|worker, _| heard.contains_key(worker));
        self.unheld.lock().retain(|worker, _| heard.contains_key(worker));
        heard.keys().cloned().collect()
    }

    /// Marks a long store write as under way until the returned guard is dropped.
    pub(crate) fn long_write(&self) -> LongWrite<'_> {
        self.long_writes.fetch_add(1, Ordering::SeqCst);
        LongWrite(self)
    }

    /// Whether a short store write may run on the calling async thread (see [`store::TaskStore::inline_writes`]).
    fn inline_write(&self) -> bool {
        self.store.inline_writes() && self.long_writes.load(Ordering::SeqCst) == 0
    }

    fn work_generation(&self) -> u64 {
        self.work_generation.load(Ordering::SeqCst)
    }

    /// Records what `worker`'s lease request `request_id`, run at work generation `generation`, found.
    fn lease_ran(&self, worker: &str, generation: u64, request_id: Option<&str>, drained: bool) {
        let mut marks = self.drained.lock();
        if drained {
            marks.insert(worker.to_owned(), (generation, request_id.map(str::to_owned)));
        } else {
            marks.remove(worker);
        }
    }

    /// Whether a lease request `request_id` of `worker` would find nothing: its last one drained the queue,
    /// no work came since, and this is a new request.
    fn nothing_new_for(&self, worker: &str, request_id: Option<&str>) -> bool {
        let generation = self.work_generation();
        self.drained.lock().get(worker).is_some_and(|(seen, last)| {
            *seen == generation && request_id.is_some() && last.as_deref() != request_id
        })
    }

    /// Whether a heartbeat of `worker` listing `holding` subtasks, with `leased` subtasks leased to it, must
    /// be compared with its leases ([`Coordinator::stranded`]): when the counts differ, while subtasks are
    /// missing, and at least once per [`HOLDINGS_RECHECK`] detection windows (equal counts may hide a
    /// missing subtask behind a reported one whose completion is on its way). Other heartbeats of a worker
    /// whose count matches cost no read of its leases.
    fn holdings_to_check(&self, worker: &str, holding: usize, leased: u64) -> bool {
        let mut unheld = self.unheld.lock();
        if leased == 0 {
            unheld.remove(worker);
            return false;
        }
        unheld.get(worker).is_none_or(|h| {
            holding as u64 != leased
                || !h.missing.is_empty()
                || h.checked.is_none_or(|at| at.elapsed() >= self.config.dead_after * HOLDINGS_RECHECK)
        })
    }

    /// Of the subtasks `leased` to `worker`, those its heartbeats have said it does not hold (`holding`, the
    /// latest) for the whole failure-detection window: their lease answer never reached it (a coordinator
    /// killed between committing a lease and answering, while the worker's retry went to another one).
    /// A subtask whose answer is merely on its way shows up in the worker's next heartbeat.
    fn stranded(&self, worker: &str, leased: Vec<i64>, holding: &[i64]) -> Vec<i64> {
        let holding: std::collections::HashSet<i64> = holding.iter().copied().collect();
        let now = Instant::now();
        let mut unheld = self.unheld.lock();
        let before = unheld.remove(worker).unwrap_or_default().missing;
        let mut missing = HashMap::new();
        let mut stranded = Vec::new();
        for id in leased.into_iter().filter(|id| !holding.contains(id)) {
            let since = before.get(&id).copied().unwrap_or(now);
            if now.duration_since(since) >= self.config.dead_after {
                stranded.push(id);
            } else {
                missing.insert(id, since);
            }
        }
        unheld.insert(worker.to_owned(), Holdings { checked: Some(now), missing });
        stranded
    }

    /// Compares what a heartbeat of `worker` says it is `holding` with the `leased` subtasks leased to it
    /// (when [`Coordinator::holdings_to_check`] says so) and puts back in the queue those stranded.
    fn hand_back_stranded(
        &self,
        worker: &str,
        leased: u64,
        holding: &[i64],
    ) -> Result<(), store::StoreError> {
        if !self.holdings_to_check(worker, holding.len(), leased) {
            return Ok(());
        }
        let stranded = self.stranded(worker, self.store.leased_to(worker)?, holding);
        if !stranded.is_empty() {
            let n = self.store.hand_back(worker, &stranded, now_ms())?;
            tracing::warn!(worker = %worker, handed_back = n, "subtasks leased to a worker that never got them went back to the queue");
            self.metrics.subtasks_requeued.inc_by(n);
            self.work_available();
        }
        Ok(())
    }

    /// Records `worker` as long-polling until the returned guard is dropped.
    fn polling(&self, worker: &str) -> Polling<'_> {
        *self.polling.lock().entry(worker.to_owned()).or_default() += 1;
        Polling { coordinator: self, worker: worker.to_owned() }
    }

    /// Workers long-polling for work right now.
    fn idle_workers(&self) -> Vec<String> {
        self.polling.lock().keys().cloned().collect()
    }

    fn work_available(&self) {
        self.work_generation.fetch_add(1, Ordering::SeqCst);
        self.work.notify_waiters();
    }

    fn tasks_finished(&self, n: usize) {
        if n > 0 {
            self.task_events.send_modify(|v| *v += 1);
        }
    }

    /// One pass of the failure detector and the deadline checker.
    pub async fn detect_failures(self: &Arc<Self>) {
        let this = self.clone();
        let heard = self.recently_heard();
        let result = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let silent_since = now.saturating_sub(this.config.dead_after.as_millis() as u64);
            let dead = this.store.expire_workers(silent_since, &heard, now)?;
            let expired = this.store.expire_deadlines(now)?;
            Ok::<_, store::StoreError>((dead, expired))
        })
        .await;
        match result {
            Ok(Ok((dead, expired))) => {
                for (worker, requeued) in &dead {
                    tracing::warn!(worker = %worker, requeued, "worker declared dead; its subtasks were requeued");
                    self.metrics.workers_declared_dead.inc();
                    self.metrics.subtasks_requeued.inc_by(*requeued);
                }
                for task in &expired {
                    tracing::warn!(task = %task, "task deadline exceeded");
                }
                // Also wakes waiters for retries whose backoff has elapsed.
                self.work_available();
                self.tasks_finished(dead.len() + expired.len());
            }
            Ok(Err(err)) => tracing::error!(error = %err, "failure detection pass failed"),
            Err(err) => tracing::error!(error = %err, "failure detection pass panicked"),
        }
    }
}

/// The background loops of a serving coordinator: the failure detector, the throughput sampler, store
/// maintenance and the local autoscaler.
struct Background {
    detector: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
    maintenance: tokio::task::JoinHandle<()>,
    autoscaler: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn start(coordinator: &Arc<Coordinator>) -> Background {
        let detector = {
            let coordinator = coordinator.clone();
            let period = (coordinator.config.heartbeat_interval / 2).max(Duration::from_millis(10));
            tracing::info!(
                heartbeat = ?coordinator.config.heartbeat_interval,
                dead_after = ?coordinator.config.dead_after,
                every = ?period,
                "failure detector started"
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    coordinator.detect_failures().await;
                }
            })
        };
        let maintenance = {
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let store = coordinator.store.clone();
                    match tokio::task::spawn_blocking(move || store.maintain()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => tracing::warn!(error = %err, "store maintenance failed"),
                        Err(err) => tracing::error!(error = %err, "store maintenance panicked"),
                    }
                }
            })
        };
        let sampler = {
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    coordinator.sample_throughput();
                }
            })
        };
        let autoscaler = coordinator
            .config
            .local_workers
            .clone()
            .map(|local| tokio::spawn(scaling::supervise(local, coordinator.clone())));
        Background { detector, sampler, maintenance, autoscaler }
    }

    async fn stop(self) {
        self.detector.abort();
        self.sampler.abort();
        self.maintenance.abort();
        if let Some(autoscaler) = self.autoscaler {
            // Dropping the supervisor kills its worker processes.
            autoscaler.abort();
            let _ = autoscaler.await;
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, running the background loops alongside.
pub async fn serve(
    listener: tokio::net::TcpListener,
    coordinator: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let background = Background::start(&coordinator);
    let router = api::router(coordinator);
    // Small request/response pairs: send each reply at once instead of waiting on Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let result = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
    background.stop().await;
    result
}

/// Like [`serve`], over TLS with `tls` (rustls). A client that does not finish its handshake within 10 s
/// is dropped.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    coordinator: Arc<Coordinator>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    let background = Background::start(&coordinator);
    let router = api::router(coordinator);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    let result = loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break Ok(()),
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    };
    background.stop().await;
    result
}

/// A rustls server configuration from PEM files of a certificate chain and its private key.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("invalid certificate PEM: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "the certificate file holds no PEM certificate");
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| anyhow::anyhow!("invalid private key PEM: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("the key file holds no PEM private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key do not go together: {e}"))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_are_compared_when_they_differ_and_once_per_window() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config { dead_after: Duration::from_millis(50), ..Config::new(dir.path()) };
        let c = Coordinator::open(config).expect("coordinator");
        assert!(!c.holdings_to_check("w", 0, 0), "nothing leased");
        assert!(c.holdings_to_check("w", 2, 2), "never compared");
        assert!(c.stranded("w", vec![1, 2], &[1, 2]).is_empty());
        assert!(!c.holdings_to_check("w", 2, 2), "compared just now, and the counts agree");
        assert!(c.holdings_to_check("w", 1, 2), "the counts differ");
        assert!(c.stranded("w", vec![1, 2], &[1]).is_empty(), "missing, but not yet for the window");
        assert!(c.holdings_to_check("w", 2, 2), "a subtask is missing");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.stranded("w", vec![1, 2], &[1, 3]), vec![2], "missing for the whole window");
        assert!(!c.holdings_to_check("w", 2, 2));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!c.holdings_to_check("w", 2, 2), "the counts agree and nothing is missing");
        std::thread::sleep(Duration::from_millis(50) * HOLDINGS_RECHECK);
        assert!(c.holdings_to_check("w", 2, 2), "once in a while even when the counts agree");
        assert!(c.stranded("w", vec![1, 2], &[2, 1]).is_empty(), "held again: nothing is stranded");
    }
}
