//! Coordinator metrics, rendered as Prometheus text at `/metrics`: counters kept in atomics here, gauges
//! read from the store at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub tasks_submitted: Counter,
    pub subtasks_leased: Counter,
    pub subtasks_succeeded: Counter,
    pub subtasks_failed: Counter,
    pub completions_refused: Counter,
    pub subtasks_requeued: Counter,
    pub workers_declared_dead: Counter,
    pub fuel_consumed: Counter,
    pub module_downloads: Counter,
}

/// Gauges sampled from the store for one scrape.
#[derive(Debug, Default)]
pub struct Gauges {
    pub queue_by_priority: Vec<(i32, u64)>,
    pub workers_alive: u64,
    pub slots_total: u64,
    pub subtasks_running: u64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics {
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        family(&mut out, "hivemind_queue_depth", "gauge", "Queued subtasks by priority.");
        if gauges.queue_by_priority.is_empty() {
            let _ = writeln!(out, "hivemind_queue_depth{{priority=\"0\"}} 0");
        }
        for (priority, n) in &gauges.queue_by_priority {
            let _ = writeln!(out, "hivemind_queue_depth{{priority=\"{priority}\"}} {n}");
        }
        let total: u64 = gauges.queue_by_priority.iter().map(|(_, n)| n).sum();
        family(&mut out, "hivemind_queue_depth_total", "gauge", "Queued subtasks, all priorities.");
        let _ = writeln!(out, "hivemind_queue_depth_total {total}");
        for (name, help, value) in [
            ("hivemind_workers", "Live workers.", gauges.workers_alive),
            ("hivemind_slots", "Slots of live workers.", gauges.slots_total),
            ("hivemind_subtasks_running", "Subtasks running on workers.", gauges.subtasks_running),
        ] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        for (name, help, counter) in [
            ("hivemind_tasks_submitted_total", "Tasks accepted.", &self.tasks_submitted),
            ("hivemind_subtasks_leased_total", "Subtasks handed to workers.", &self.subtasks_leased),
            (
                "hivemind_subtasks_succeeded_total",
                "Subtask attempts that succeeded.",
                &self.subtasks_succeeded,
            ),
            ("hivemind_subtasks_failed_total", "Subtask attempts that failed.", &self.subtasks_failed),
            (
                "hivemind_completions_refused_total",
                "Completions refused by fencing.",
                &self.completions_refused,
            ),
            (
                "hivemind_subtasks_requeued_total",
                "Subtasks requeued from dead workers.",
                &self.subtasks_requeued,
            ),
            ("hivemind_workers_declared_dead_total", "Workers declared dead.", &self.workers_declared_dead),
            ("hivemind_fuel_consumed_total", "Fuel consumed by finished subtasks.", &self.fuel_consumed),
            (
                "hivemind_module_downloads_total",
                "Module downloads served to workers.",
                &self.module_downloads,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", counter.get());
        }
        out
    }
}
