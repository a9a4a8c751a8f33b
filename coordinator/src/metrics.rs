//! Coordinator metrics, rendered as Prometheus text at `/metrics` with `prometheus-client`: counters and
//! histograms updated as events happen, gauges read from the store at scrape time.

use crate::scaling;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

/// Every metric of one coordinator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tasks_submitted: Counter,
    pub subtasks_leased: Counter,
    pub subtasks_succeeded: Counter,
    pub subtasks_failed: Counter,
    pub completions_refused: Counter,
    pub subtasks_requeued: Counter,
    pub workers_declared_dead: Counter,
    pub fuel_consumed: Counter,
    pub module_downloads: Counter,
    /// Seconds a subtask waited in the queue before a worker leased it.
    pub queue_wait: Histogram,
    /// Seconds a subtask ran in its sandbox (the worker's wall time).
    pub run_time: Histogram,
    queue_depth: Family<Labels, Gauge>,
    queue_depth_total: Gauge,
    workers: Gauge,
    slots: Gauge,
    slots_free: Gauge,
    running: Gauge,
    backlog_per_free_slot: Gauge<f64, AtomicU64>,
    /// Local worker processes supervised by `--local-workers` (0 without it).
    pub local_workers: Gauge,
}

/// Gauges sampled from the store for one scrape.
#[derive(Debug, Default)]
pub struct Gauges {
    pub queue_by_priority: Vec<(i32, u64)>,
    pub workers_alive: u64,
    pub slots_total: u64,
    pub subtasks_running: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let buckets = || exponential_buckets(0.000_25, 2.0, 20);
        let mut m = Metrics {
            registry: Registry::default(),
            tasks_submitted: Counter::default(),
            subtasks_leased: Counter::default(),
            subtasks_succeeded: Counter::default(),
            subtasks_failed: Counter::default(),
            completions_refused: Counter::default(),
            subtasks_requeued: Counter::default(),
            workers_declared_dead: Counter::default(),
            fuel_consumed: Counter::default(),
            module_downloads: Counter::default(),
            queue_wait: Histogram::new(buckets()),
            run_time: Histogram::new(buckets()),
            queue_depth: Family::default(),
            queue_depth_total: Gauge::default(),
            workers: Gauge::default(),
            slots: Gauge::default(),
            slots_free: Gauge::default(),
            running: Gauge::default(),
            backlog_per_free_slot: Gauge::default(),
            local_workers: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("hivemind_queue_depth", "Queued subtasks by priority", m.queue_depth.clone());
        r.register(
            "hivemind_queue_depth_total",
            "Queued subtasks, all priorities",
            m.queue_depth_total.clone(),
        );
        r.register("hivemind_workers", "Live workers", m.workers.clone());
        r.register("hivemind_slots", "Slots of live workers", m.slots.clone());
        r.register(
            "hivemind_slots_free",
            "Slots of live workers not running a subtask",
            m.slots_free.clone(),
        );
        r.register("hivemind_subtasks_running", "Subtasks running on workers", m.running.clone());
        r.register(
            "hivemind_backlog_per_free_slot",
            "Queued subtasks per free slot (the queue depth when no slot is free): the autoscaling signal",
            m.backlog_per_free_slot.clone(),
        );
        r.register(
            "hivemind_local_workers",
            "Worker processes supervised by --local-workers",
            m.local_workers.clone(),
        );
        for (name, help, counter) in [
            ("hivemind_tasks_submitted", "Tasks accepted", &m.tasks_submitted),
            ("hivemind_subtasks_leased", "Subtasks handed to workers", &m.subtasks_leased),
            ("hivemind_subtasks_succeeded", "Subtask attempts that succeeded", &m.subtasks_succeeded),
            ("hivemind_subtasks_failed", "Subtask attempts that failed", &m.subtasks_failed),
            ("hivemind_completions_refused", "Completions refused by fencing", &m.completions_refused),
            (
                "hivemind_subtasks_requeued",
                "Subtasks requeued from dead workers, or handed back from workers that never got their lease answer",
                &m.subtasks_requeued,
            ),
            ("hivemind_workers_declared_dead", "Workers declared dead", &m.workers_declared_dead),
            ("hivemind_fuel_consumed", "Fuel consumed by finished subtasks", &m.fuel_consumed),
            ("hivemind_module_downloads", "Module downloads served to workers", &m.module_downloads),
        ] {
            r.register(name, help, counter.clone());
        }
        r.register(
            "hivemind_queue_wait_seconds",
            "Time a subtask waited in the queue before it was leased",
            m.queue_wait.clone(),
        );
        r.register("hivemind_subtask_run_seconds", "Time a subtask ran in its sandbox", m.run_time.clone());
        m
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric, with `gauges` as the current store readings.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.queue_depth.clear();
        self.queue_depth.get_or_create(&vec![("priority".into(), "0".into())]).set(0);
        for (priority, n) in &gauges.queue_by_priority {
            self.queue_depth.get_or_create(&vec![("priority".into(), priority.to_string())]).set(*n as i64);
        }
        let queued: u64 = gauges.queue_by_priority.iter().map(|(_, n)| n).sum();
        let free = gauges.slots_total.saturating_sub(gauges.subtasks_running);
        self.queue_depth_total.set(queued as i64);
        self.workers.set(gauges.workers_alive as i64);
        self.slots.set(gauges.slots_total as i64);
        self.slots_free.set(free as i64);
        self.running.set(gauges.subtasks_running as i64);
        self.backlog_per_free_slot.set(scaling::backlog_per_free_slot(queued, free));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
