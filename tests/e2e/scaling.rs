//! Resource-aware placement, the local autoscaler and `/metrics` with real processes (SPEC §4–5).
//!
//! Placement is checked from the recorded placements: every subtask's worker, start time and run time
//! (`GET /v1/tasks/{id}/subtasks`). Sweeping those intervals per worker gives the subtasks that ran at the
//! same moment, whose count must stay within the worker's slots and whose memory limits must stay within
//! its memory budget.

use crate::{Cluster, poll_until, reqwest};
use hivemind_client::{Blob, LimitsSpec, SubmitTask, SubtaskInfo, TaskState, TaskStatus, WorkerInfo};
use hivemind_guest_programs as programs;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Prime-counting ranges of a few milliseconds each.
fn ranges(n: u64) -> Vec<Blob> {
    (0..n)
        .map(|i| Blob(format!("{} {}", 1_000_000_000 + i * 400, 1_000_000_000 + (i + 1) * 400).into_bytes()))
        .collect()
}

fn submit(cluster: &Cluster, task: SubmitTask) -> TaskStatus {
    cluster.client().submit_task(&task).expect("submit")
}

fn primes_task(cluster: &Cluster, n: u64, memory: u64, requires: &[(&str, &str)]) -> SubmitTask {
    SubmitTask {
        module_id: cluster
            .client()
            .upload_module(programs::read(programs::PRIMES))
            .expect("upload")
            .module_id,
        inputs: ranges(n),
        limits: LimitsSpec { memory_bytes: Some(memory), ..LimitsSpec::default() },
        requires: requires.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..SubmitTask::default()
    }
}

fn wait_done(cluster: &Cluster, task_id: &str) -> TaskStatus {
    let client = cluster.client();
    let mut status = None;
    poll_until(Duration::from_secs(120), || {
        let s = client.status(task_id).expect("status");
        let done = s.state.is_finished();
        status = Some(s);
        done
    });
    status.expect("status")
}

fn subtasks(cluster: &Cluster, task_id: &str) -> Vec<SubtaskInfo> {
    cluster.client().list_subtasks(task_id, 0, 100_000).expect("subtasks").subtasks
}

fn workers_by_name(cluster: &Cluster) -> HashMap<String, WorkerInfo> {
    cluster
        .client()
        .list_workers()
        .expect("workers")
        .workers
        .into_iter()
        .map(|w| (w.name.clone(), w))
        .collect()
}

#[test]
fn placement_never_overcommits_slots_or_memory_and_honours_labels() {
    let mut cluster = Cluster::coordinator_only();
    cluster.add_worker(1, &["--memory", "256MiB", "--label", "zone=a", "--name", "small"]);
    cluster.add_worker(4, &["--memory", "512MiB", "--label", "zone=b", "--name", "large"]);
    cluster.wait_for_workers(2);
    let workers = workers_by_name(&cluster);
    let (small, large) = (&workers["small"], &workers["large"]);

    // Refused at submit: no live worker could ever run these.
    let client = cluster.client();
    let err =
        client.submit_task(&primes_task(&cluster, 1, 1 << 30, &[])).expect_err("too big for any worker");
    assert_eq!(err.code(), Some("unplaceable"), "{err}");
    assert!(err.to_string().contains("512.0 MiB"), "names the largest budget: {err}");
    let err =
        client.submit_task(&primes_task(&cluster, 1, 64 * MIB, &[("zone", "c")])).expect_err("no zone c");
    assert_eq!(err.code(), Some("unplaceable"), "{err}");
    assert!(err.to_string().contains("zone=c"), "{err}");
    let err = client
        .submit_task(&primes_task(&cluster, 1, 300 * MIB, &[("zone", "a")]))
        .expect_err("zone a is small");
    assert_eq!(err.code(), Some("unplaceable"), "{err}");

    let anywhere = submit(&cluster, primes_task(&cluster, 300, 64 * MIB, &[]));
    let big = submit(&cluster, primes_task(&cluster, 60, 300 * MIB, &[]));
    let zone_a = submit(&cluster, primes_task(&cluster, 40, 32 * MIB, &[("zone", "a")]));
    let mut memory_of: HashMap<String, u64> = HashMap::new();
    for (task, memory) in [(&anywhere, 64 * MIB), (&big, 300 * MIB), (&zone_a, 32 * MIB)] {
        let status = wait_done(&cluster, &task.task_id);
        assert_eq!(status.state, TaskState::Succeeded, "{:?}", status.error);
        assert_eq!(status.requires, task.requires);
        memory_of.insert(task.task_id.clone(), memory);
    }
    assert!(
        subtasks(&cluster, &big.task_id).iter().all(|s| s.worker_id.as_deref() == Some(&large.worker_id)),
        "300 MiB subtasks only fit the 512 MiB worker"
    );
    assert!(
        subtasks(&cluster, &zone_a.task_id).iter().all(|s| s.worker_id.as_deref() == Some(&small.worker_id)),
        "zone=a subtasks only run on the zone=a worker"
    );
    let anywhere_workers: Vec<_> =
        subtasks(&cluster, &anywhere.task_id).into_iter().map(|s| s.worker_id).collect();
    assert!(
        anywhere_workers.contains(&Some(small.worker_id.clone()))
            && anywhere_workers.contains(&Some(large.worker_id.clone())),
        "unconstrained subtasks are balanced over both workers"
    );

    // Sweep the recorded runs of each worker: (time, +1/-1 slot, ± memory).
    let mut events: BTreeMap<String, Vec<(u64, i64, i64)>> = BTreeMap::new();
    for task in [&anywhere, &big, &zone_a] {
        for s in subtasks(&cluster, &task.task_id) {
            let start = s.started_at_us.expect("started_at_us recorded");
            let end = start + s.usage.expect("usage").wall_time_us;
            let memory = memory_of[&task.task_id] as i64;
            let list = events.entry(s.worker_id.expect("worker")).or_default();
            list.push((start, 1, memory));
            list.push((end, -1, -memory));
        }
    }
    for (worker_id, mut list) in events {
        let worker = workers.values().find(|w| w.worker_id == worker_id).expect("known worker");
        // Ends sort before starts at the same instant.
        list.sort();
        let (mut slots, mut memory, mut peak_slots, mut peak_memory) = (0i64, 0i64, 0i64, 0i64);
        for (_, slot, mem) in list {
            slots += slot;
            memory += mem;
            peak_slots = peak_slots.max(slots);
            peak_memory = peak_memory.max(memory);
        }
        assert!(
            peak_slots <= worker.slots as i64,
            "{}: {peak_slots} subtasks at once on {} slots",
            worker.name,
            worker.slots
        );
        assert!(
            peak_memory <= worker.memory_bytes as i64,
            "{}: {} MiB of limits at once on a {} MiB budget",
            worker.name,
            peak_memory as u64 / MIB,
            worker.memory_bytes / MIB
        );
        if worker.name == "large" {
            assert!(peak_slots >= 2, "the 4-slot worker ran subtasks concurrently");
        }
    }
    // The resource monitor's readings reach `worker list`.
    let listed = workers_by_name(&cluster);
    assert!(listed["large"].resources.total_memory_bytes > 0 && listed["large"].resources.cores >= 1);
    let out = cluster.cli(&["worker", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("MEM-FREE") && text.contains("zone=b"), "{text}");
}

/// Parses `/metrics` as Prometheus text.
fn scrape(cluster: &Cluster) -> prometheus_parse::Scrape {
    let text = reqwest::blocking_get_text(&format!("{}/metrics", cluster.url));
    for family in
        ["hivemind_queue_depth_total", "hivemind_queue_wait_seconds", "hivemind_subtask_run_seconds"]
    {
        assert!(
            text.contains(&format!("# HELP {family} ")) && text.contains(&format!("# TYPE {family} ")),
            "{family}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    let s = scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no sample `{name}`"));
    match &s.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
        other => panic!("unexpected value {other:?}"),
    }
}

#[test]
fn metrics_parse_and_the_queue_gauge_matches_the_store() {
    let mut cluster = Cluster::coordinator_only();
    let task = submit(&cluster, primes_task(&cluster, 50, 32 * MIB, &[]));
    let m = scrape(&cluster);
    let queued = cluster.client().status(&task.task_id).expect("status").subtasks.queued;
    assert_eq!(queued, 50);
    assert_eq!(sample(&m, "hivemind_queue_depth_total"), queued as f64);
    assert_eq!(sample(&m, "hivemind_backlog_per_free_slot"), 50.0, "no worker: the whole queue");
    assert_eq!(sample(&m, "hivemind_workers"), 0.0);
    cluster.add_worker(2, &[]);
    assert_eq!(wait_done(&cluster, &task.task_id).state, TaskState::Succeeded);
    let m = scrape(&cluster);
    assert_eq!(sample(&m, "hivemind_queue_depth_total"), 0.0);
    assert_eq!(sample(&m, "hivemind_slots"), 2.0);
    assert_eq!(sample(&m, "hivemind_subtasks_succeeded_total"), 50.0);
    assert_eq!(sample(&m, "hivemind_queue_wait_seconds"), 50.0, "one queue-wait observation per lease");
    assert_eq!(sample(&m, "hivemind_subtask_run_seconds"), 50.0, "one run-time observation per result");
}

#[test]
fn local_autoscaler_grows_to_max_under_backlog_and_back_to_min() {
    let cluster = Cluster::coordinator_with(&[
        "--local-workers",
        "1..3",
        "--scale-down-after",
        "1s",
        "--scale-interval",
        "100ms",
    ]);
    let client = cluster.client();
    let local_alive = || {
        client
            .list_workers()
            .expect("workers")
            .workers
            .iter()
            .filter(|w| w.state == "alive" && w.name.starts_with("local-"))
            .count()
    };
    poll_until(Duration::from_secs(20), || local_alive() == 1);
    const N: u64 = 3_000;
    let task = submit(&cluster, primes_task(&cluster, N, 32 * MIB, &[]));
    let mut peak = 0;
    poll_until(Duration::from_secs(120), || {
        peak = peak.max(local_alive());
        client.status(&task.task_id).expect("status").state.is_finished()
    });
    assert_eq!(peak, 3, "grew to the maximum under the backlog");
    let status = client.status(&task.task_id).expect("status");
    assert_eq!(status.state, TaskState::Succeeded, "{:?}", status.error);
    assert_eq!((status.subtasks.succeeded, status.subtasks.failed), (N, 0));
    poll_until(Duration::from_secs(30), || local_alive() == 1);
    let all = subtasks(&cluster, &task.task_id);
    assert!(all.iter().all(|s| s.attempts.is_empty() && s.attempt == 1), "no subtask was lost or retried");
    let left: Vec<_> =
        client.list_workers().expect("workers").workers.into_iter().filter(|w| w.state == "left").collect();
    assert_eq!(left.len(), 2, "the two extra workers drained and deregistered");
    assert_eq!(cluster.metric("hivemind_local_workers"), 1.0);
}
