//! Fault tolerance with real processes (SPEC §4): workers SIGKILLed every second, the coordinator SIGKILLed
//! and restarted, a worker frozen past the detection window, retries, cancellation, idempotent submission,
//! task deadlines and a draining worker.
//!
//! The chaos tests check outputs against an independent oracle (a segmented sieve, not the guest's code)
//! and assert that each subtask has exactly one recorded result: the coordinator's count of accepted
//! successful completions equals the number of subtasks, and every subtask's attempt history accounts for
//! each of its attempts.

use crate::{Cluster, poll_until, signal};
use hivemind_client::{Blob, SubmitTask, SubtaskInfo, TaskState, TaskStatus};
use hivemind_guest_programs as programs;
use std::time::{Duration, Instant};

/// First number of the chaos ranges: large enough that trial division takes a few milliseconds per
/// range of `WIDTH` numbers.
const BASE: u64 = 1_000_000_000;
const WIDTH: u64 = 500;

pub(crate) fn range_input(i: u64) -> Blob {
    Blob(format!("{} {}", BASE + i * WIDTH, BASE + (i + 1) * WIDTH).into_bytes())
}

/// Prime counts of the ranges `[BASE + i·WIDTH, BASE + (i+1)·WIDTH)` for `i < n`, by a segmented sieve.
pub(crate) fn expected_counts(n: u64) -> Vec<u64> {
    let hi = BASE + n * WIDTH;
    let limit = (hi as f64).sqrt() as usize + 1;
    let mut small = vec![true; limit + 1];
    let mut primes = Vec::new();
    for p in 2..=limit {
        if small[p] {
            primes.push(p as u64);
            (p * p..=limit).step_by(p).for_each(|m| small[m] = false);
        }
    }
    let mut is_prime = vec![true; (n * WIDTH) as usize];
    for &p in &primes {
        let first = BASE.div_ceil(p).max(p) * p;
        (first..hi).step_by(p as usize).for_each(|m| is_prime[(m - BASE) as usize] = false);
    }
    is_prime.chunks(WIDTH as usize).map(|c| c.iter().filter(|&&b| b).count() as u64).collect()
}

fn upload_primes(cluster: &Cluster) -> String {
    cluster.client().upload_module(programs::read(programs::PRIMES)).expect("upload").module_id
}

/// Submits the chaos task: `n` prime-counting ranges.
fn submit_ranges(cluster: &Cluster, n: u64, max_attempts: Option<u32>) -> TaskStatus {
    let task = SubmitTask {
        module_id: upload_primes(cluster),
        inputs: (0..n).map(range_input).collect(),
        max_attempts,
        ..SubmitTask::default()
    };
    cluster.client().submit_task(&task).expect("submit")
}

/// Every subtask of a task, in phase and index order.
fn all_subtasks(cluster: &Cluster, task_id: &str) -> Vec<SubtaskInfo> {
    let client = cluster.client();
    let mut all = Vec::new();
    loop {
        let page = client.list_subtasks(task_id, all.len() as u64, 10_000).expect("subtasks").subtasks;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Waits for the task to finish, tolerating a coordinator that is down for a while.
fn wait_through_outages(cluster: &Cluster, task_id: &str, timeout: Duration) -> TaskStatus {
    let client = cluster.client();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(status) = client.status(task_id)
            && matches!(status.state, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
        {
            return status;
        }
        assert!(Instant::now() < deadline, "task {task_id} did not finish within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The task succeeded, every output is the oracle's, and each subtask has exactly one recorded result.
fn assert_exactly_once_and_correct(cluster: &Cluster, task_id: &str, n: u64, status: &TaskStatus) {
    assert_eq!(status.state, TaskState::Succeeded, "{:?}", status.error);
    assert_eq!((status.subtasks.succeeded, status.subtasks.total()), (n, n), "{:?}", status.subtasks);
    let outputs = cluster.client().get_result(task_id).expect("result").outputs.expect("map outputs");
    let expected = expected_counts(n);
    assert_eq!(outputs.len() as u64, n);
    for (i, (output, want)) in outputs.iter().zip(&expected).enumerate() {
        let output = output.as_ref().unwrap_or_else(|| panic!("subtask {i} has no output"));
        assert_eq!(String::from_utf8_lossy(&output.0), want.to_string(), "output of subtask {i}");
    }
    for s in all_subtasks(cluster, task_id) {
        assert_eq!(s.state, "succeeded");
        // Every attempt but the last ended without a result and is in the history.
        assert_eq!(
            s.attempts.len() as u32,
            s.attempt - 1,
            "history of subtask {}: {:?}",
            s.index,
            s.attempts
        );
    }
}

#[test]
fn chaos_worker_killed_every_second_loses_nothing() {
    const N: u64 = 20_000;
    let mut cluster = Cluster::coordinator_only();
    for i in 0..3 {
        cluster.add_worker(1, &["--name", &format!("w{i}")]);
    }
    cluster.wait_for_workers(3);
    let client = cluster.client();
    let task = submit_ranges(&cluster, N, Some(50));
    let mut kills = 0;
    let mut next = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        std::thread::sleep(Duration::from_secs(1));
        let status = client.status(&task.task_id).expect("status");
        if status.state != TaskState::Running && status.state != TaskState::Queued {
            break status;
        }
        assert!(Instant::now() < deadline, "chaos task did not finish: {:?}", status.subtasks);
        // SIGKILL one worker and start a replacement, round robin.
        let victim = next % cluster.workers.len();
        cluster.kill_worker(victim);
        cluster.add_worker(1, &["--name", &format!("w{}", 3 + kills)]);
        kills += 1;
        next += 1;
    };
    assert!(kills >= 3, "the task finished before the chaos started ({kills} kills)");
    assert_exactly_once_and_correct(&cluster, &task.task_id, N, &status);
    // Fencing held: exactly one accepted successful completion per subtask.
    assert_eq!(cluster.metric("hivemind_subtasks_succeeded_total"), N as f64);
    assert!(cluster.metric("hivemind_workers_declared_dead_total") >= 1.0);
    assert!(cluster.metric("hivemind_subtasks_requeued_total") >= 1.0, "no subtask was ever requeued");
    let lost = all_subtasks(&cluster, &task.task_id)
        .iter()
        .flat_map(|s| &s.attempts)
        .filter(|a| a.error_kind == "worker_lost")
        .count();
    assert!(lost >= 1, "no attempt was recorded as lost");
}

#[test]
fn chaos_coordinator_killed_twice_task_completes() {
    const N: u64 = 3_000;
    let mut cluster = Cluster::start(2, 1);
    let task = submit_ranges(&cluster, N, None);
    for third in 1..=2 {
        poll_until(Duration::from_secs(120), || {
            cluster.client().status(&task.task_id).is_ok_and(|s| s.subtasks.succeeded >= N * third / 3)
        });
        cluster.kill_coordinator();
        std::thread::sleep(Duration::from_millis(300));
        cluster.restart_coordinator();
        // Every accepted task survives the crash.
        assert!(cluster.client().status(&task.task_id).is_ok(), "task lost with the coordinator");
    }
    let status = wait_through_outages(&cluster, &task.task_id, Duration::from_secs(300));
    assert_exactly_once_and_correct(&cluster, &task.task_id, N, &status);
    // The workers reconnected by themselves.
    cluster.wait_for_workers(2);
}

#[test]
fn frozen_worker_late_completions_are_refused() {
    const N: u64 = 1_500;
    let mut cluster = Cluster::coordinator_only();
    cluster.add_worker(1, &["--name", "frozen"]);
    cluster.add_worker(1, &["--name", "steady"]);
    cluster.wait_for_workers(2);
    let client = cluster.client();
    let task = submit_ranges(&cluster, N, None);
    let frozen_id = || {
        client
            .list_workers()
            .expect("workers")
            .workers
            .into_iter()
            .find(|w| w.name == "frozen" && w.state == "alive")
    };
    // Freeze the worker while it holds leases.
    poll_until(Duration::from_secs(60), || {
        frozen_id().is_some_and(|w| w.completed >= 5)
            && all_subtasks(&cluster, &task.task_id).iter().any(|s| {
                s.state == "leased" && s.worker_id.as_deref() == frozen_id().map(|w| w.worker_id).as_deref()
            })
    });
    let frozen = frozen_id().expect("frozen worker").worker_id;
    signal(cluster.worker_pid(0), "STOP");
    poll_until(Duration::from_secs(30), || {
        client
            .list_workers()
            .expect("workers")
            .workers
            .iter()
            .any(|w| w.worker_id == frozen && w.state == "dead")
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(cluster.worker_pid(0), "CONT");

    let status = wait_through_outages(&cluster, &task.task_id, Duration::from_secs(300));
    assert_exactly_once_and_correct(&cluster, &task.task_id, N, &status);
    assert!(cluster.metric("hivemind_completions_refused_total") >= 1.0, "no late completion was refused");
    assert_eq!(cluster.metric("hivemind_subtasks_succeeded_total"), N as f64);
    // The frozen worker's leases were requeued with a recorded cause, and it came back as a new worker.
    let lost: Vec<_> = all_subtasks(&cluster, &task.task_id)
        .into_iter()
        .flat_map(|s| s.attempts)
        .filter(|a| a.error_kind == "worker_lost")
        .collect();
    assert!(!lost.is_empty() && lost.iter().all(|a| a.worker_id.as_deref() == Some(frozen.as_str())));
    poll_until(Duration::from_secs(30), || frozen_id().is_some_and(|w| w.worker_id != frozen));
}

#[test]
fn retry_on_error_retries_with_backoff_and_names_each_attempt() {
    let cluster = Cluster::start(1, 1);
    let client = cluster.client();
    let module_id = upload_primes(&cluster);
    let submit = |retry_on_error| {
        let task = client
            .submit_task(&SubmitTask {
                module_id: module_id.clone(),
                inputs: vec![Blob::from("1 10"), Blob::from("not a range")],
                max_attempts: Some(3),
                retry_on_error,
                ..SubmitTask::default()
            })
            .expect("submit");
        let status = client.wait(&task.task_id, Some(Duration::from_secs(60)), |_| {}).expect("finishes");
        (status, all_subtasks(&cluster, &task.task_id))
    };
    // Guest errors are permanent by default: one attempt.
    let (status, subtasks) = submit(false);
    assert_eq!(status.state, TaskState::Failed);
    assert_eq!((subtasks[1].attempt, subtasks[1].attempts.len()), (1, 1));

    let (status, subtasks) = submit(true);
    assert_eq!(status.state, TaskState::Failed);
    let error = status.error.expect("error");
    for attempt in 1..=3 {
        assert!(error.contains(&format!("attempt {attempt} on worker `")), "{error}");
    }
    assert!(error.contains("map subtask 1") && error.contains("exit_code"), "{error}");
    let failed = &subtasks[1];
    assert_eq!((failed.state.as_str(), failed.attempt), ("failed", 3));
    let times: Vec<u64> = failed.attempts.iter().map(|a| a.finished_at_ms).collect();
    // Backoff 100 ms, then 200 ms (the coordinator's default `--retry-backoff`).
    assert!(
        times[1] - times[0] >= 100 && times[2] - times[1] >= 200,
        "no backoff between attempts: {times:?}"
    );
    assert_eq!(subtasks[0].state, "succeeded", "the healthy subtask still ran");
}

#[test]
fn cancel_interrupts_running_subtasks_within_a_heartbeat() {
    let cluster = Cluster::start(1, 1);
    let client = cluster.client();
    let module_id = upload_primes(&cluster);
    // One subtask that would run for minutes.
    let long = client
        .submit_task(&SubmitTask {
            module_id: module_id.clone(),
            inputs: vec![Blob::from("1000000000 1100000000")],
            limits: hivemind_client::LimitsSpec { timeout_ms: Some(600_000), ..Default::default() },
            ..SubmitTask::default()
        })
        .expect("submit");
    poll_until(Duration::from_secs(30), || {
        client.list_workers().is_ok_and(|w| w.workers.iter().any(|w| w.running == 1))
    });
    let cancelled_at = Instant::now();
    assert_eq!(client.cancel(&long.task_id).expect("cancel").state, TaskState::Cancelled);
    // The slot frees within a heartbeat (200 ms here) plus scheduling slack: a short task then runs.
    let short = client
        .submit_task(&SubmitTask { module_id, inputs: vec![Blob::from("1 1000")], ..SubmitTask::default() })
        .expect("submit");
    let status = client.wait(&short.task_id, Some(Duration::from_secs(10)), |_| {}).expect("short task");
    assert_eq!(status.state, TaskState::Succeeded);
    assert!(cancelled_at.elapsed() < Duration::from_secs(3), "slot freed after {:?}", cancelled_at.elapsed());
    let long_subtask = &all_subtasks(&cluster, &long.task_id)[0];
    assert_eq!(long_subtask.state, "cancelled");
}

#[test]
fn idempotency_key_returns_the_existing_task() {
    let cluster = Cluster::start(1, 1);
    let client = cluster.client();
    let module_id = upload_primes(&cluster);
    let submit = |inputs: Vec<Blob>| SubmitTask {
        module_id: module_id.clone(),
        inputs,
        idempotency_key: Some("nightly-2026-12-03".into()),
        ..SubmitTask::default()
    };
    let first = client.submit_task(&submit(vec![Blob::from("1 100")])).expect("first");
    let second = client.submit_task(&submit(vec![Blob::from("1 100")])).expect("second");
    assert_eq!(first.task_id, second.task_id);
    assert_eq!(client.list_tasks(None, 100).expect("list").tasks.len(), 1, "a second task was created");
    let status = client.wait(&first.task_id, Some(Duration::from_secs(30)), |_| {}).expect("finishes");
    assert_eq!(status.subtasks.total(), 1);
}

#[test]
fn deadline_cancels_remaining_subtasks_and_fails_the_task() {
    let cluster = Cluster::start(1, 1);
    let client = cluster.client();
    let module_id = upload_primes(&cluster);
    let task = client
        .submit_task(&SubmitTask {
            module_id,
            inputs: (0..50).map(|_| Blob::from("1000000000 1001000000")).collect(),
            deadline_ms: Some(500),
            ..SubmitTask::default()
        })
        .expect("submit");
    let status = client.wait(&task.task_id, Some(Duration::from_secs(30)), |_| {}).expect("finishes");
    assert_eq!(status.state, TaskState::Failed);
    assert!(status.error.as_deref().is_some_and(|e| e.contains("deadline_exceeded")), "{:?}", status.error);
    assert_eq!(status.subtasks.queued + status.subtasks.leased, 0, "{:?}", status.subtasks);
    assert!(status.subtasks.cancelled >= 1);
}

#[test]
fn sigterm_drains_the_worker() {
    let mut cluster = Cluster::coordinator_only();
    cluster.add_worker(1, &["--prefetch", "2"]);
    cluster.wait_for_workers(1);
    let client = cluster.client();
    let task = submit_ranges(&cluster, 40, None);
    poll_until(Duration::from_secs(30), || {
        client.status(&task.task_id).is_ok_and(|s| s.subtasks.succeeded >= 2 && s.subtasks.leased >= 1)
    });
    signal(cluster.worker_pid(0), "TERM");
    let exit = cluster.workers[0].wait().expect("worker exits");
    assert!(exit.success(), "draining worker exited with {exit}");
    let workers = client.list_workers().expect("workers").workers;
    assert_eq!(workers[0].state, "left", "{workers:?}");
    // Its unfinished subtasks went back to the queue without costing an attempt; a new worker finishes them.
    cluster.add_worker(1, &[]);
    let status = wait_through_outages(&cluster, &task.task_id, Duration::from_secs(60));
    assert_exactly_once_and_correct(&cluster, &task.task_id, 40, &status);
    assert_eq!(cluster.metric("hivemind_completions_refused_total"), 0.0);
    assert_eq!(cluster.metric("hivemind_workers_declared_dead_total"), 0.0);
}

/// A subtask leased to a worker whose lease answer never arrived (a coordinator killed between committing
/// the lease and answering, the worker's retry served by another) goes back to the queue once the worker's
/// heartbeats have left it out for the detection window, without costing an attempt; what the worker says
/// it holds stays leased to it.
#[test]
fn a_lease_the_worker_never_got_is_handed_back() {
    let cluster = Cluster::coordinator_only();
    let client = cluster.client();
    let module_id = client.upload_module(programs::read(programs::ECHO)).expect("upload").module_id;
    let inputs = vec![Blob(b"a".to_vec()), Blob(b"b".to_vec())];
    let task =
        client.submit_task(&SubmitTask { module_id, inputs, ..SubmitTask::default() }).expect("submit");
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{}{path}", cluster.url);
        crate::reqwest::send("POST", &url, Some((body.to_string().into_bytes(), "application/json")))
    };
    let (code, reg) = post(
        "/v1/workers",
        serde_json::json!({"name": "sim", "slots": 2, "memory_bytes": 1u64 << 30, "cores": 1}),
    );
    assert_eq!(code, 201, "{reg}");
    let worker = reg["worker_id"].as_str().expect("worker id").to_owned();
    let lease_path = format!("/v1/workers/{worker}/lease");
    let (code, lease) = post(&lease_path, serde_json::json!({"max": 2, "wait_ms": 0}));
    assert_eq!(code, 200, "{lease}");
    let leased: Vec<i64> = lease["subtasks"]
        .as_array()
        .expect("subtasks")
        .iter()
        .filter_map(|s| s["subtask_id"].as_i64())
        .collect();
    assert_eq!(leased.len(), 2, "{lease}");

    // The worker holds only the first (the second's answer was "lost"); it heartbeats like a worker
    // (every 200 ms here) and stays alive.
    let start = Instant::now();
    poll_until(Duration::from_secs(20), || {
        let beat = serde_json::json!({"running": 1, "holding": [leased[0]]});
        let (code, reply) = post(&format!("/v1/workers/{worker}/heartbeat"), beat);
        assert_eq!(code, 200, "{reply}");
        if client.status(&task.task_id).expect("status").subtasks.queued == 1 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    assert!(start.elapsed() >= Duration::from_millis(900), "handed back before the detection window (1 s)");
    let status = client.status(&task.task_id).expect("status");
    assert_eq!((status.subtasks.leased, status.subtasks.queued), (1, 1), "{:?}", status.subtasks);
    assert_eq!(cluster.metric("hivemind_workers_declared_dead_total"), 0.0, "the worker stayed alive");
    assert_eq!(cluster.metric("hivemind_subtasks_requeued_total"), 1.0);

    // Leased again, it is still its first attempt; the held one was never touched.
    let (code, again) = post(&lease_path, serde_json::json!({"max": 2, "wait_ms": 0}));
    assert_eq!(code, 200, "{again}");
    let subtasks = again["subtasks"].as_array().expect("subtasks");
    assert_eq!(subtasks.len(), 1, "{again}");
    assert_eq!(subtasks[0]["subtask_id"].as_i64(), Some(leased[1]));
    assert_eq!(subtasks[0]["attempt"].as_u64(), Some(1), "the hand-back did not cost an attempt");
}
