//! Tasks end to end: split/map/reduce, big map tasks, failures, priorities, module distribution, and a
//! worker killed mid-task.

use crate::{Cluster, poll_until};
use hivemind_client::{Blob, SubmitTask, TaskState};
use hivemind_guest_programs as programs;
use std::collections::BTreeMap;
use std::time::Duration;

fn upload(cluster: &Cluster, path: &str) -> String {
    cluster.client().upload_module(programs::read(path)).expect("upload").module_id
}

fn wait_finished(cluster: &Cluster, task_id: &str) -> hivemind_client::TaskStatus {
    cluster.client().wait(task_id, Some(Duration::from_secs(120)), |_| {}).expect("task finishes")
}

/// The counts wordcount must produce: maximal alphanumeric runs, lowercased.
fn expected_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    counts
}

#[test]
fn wordcount_split_reduce_through_cli_gives_exact_counts() {
    let cluster = Cluster::start(2, 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let text: String = (0..300)
        .map(|i| format!("Line {i}: the quick brown fox, the lazy dog — Ünïcode {}\n", i % 7))
        .collect();
    let input = dir.path().join("text.txt");
    std::fs::write(&input, &text).expect("write input");
    let out = cluster.cli(&[
        "--json",
        "task",
        "submit",
        "--module",
        programs::WORDCOUNT,
        "--input",
        input.to_str().expect("utf-8 path"),
        "--split",
        "--reduce",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    assert_eq!(doc["state"], "succeeded");
    let counts: BTreeMap<String, u64> =
        serde_json::from_str(doc["result"].as_str().expect("utf-8 result")).expect("counts object");
    assert_eq!(counts, expected_counts(&text));
}

#[test]
fn thousand_input_map_task_returns_outputs_in_order() {
    let cluster = Cluster::start(2, 2);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::ECHO);
    let inputs: Vec<Blob> = (0..1000).map(|i| Blob(format!("input-{i}").into_bytes())).collect();
    let task = client
        .submit_task(&SubmitTask { module_id, inputs: inputs.clone(), ..SubmitTask::default() })
        .expect("submit");
    let status = wait_finished(&cluster, &task.task_id);
    assert_eq!(status.state, TaskState::Succeeded, "{:?}", status.error);
    assert_eq!(status.subtasks.succeeded, 1000);
    let result = client.get_result(&task.task_id).expect("result");
    let outputs: Vec<Blob> =
        result.outputs.expect("map outputs").into_iter().map(|o| o.expect("output")).collect();
    assert_eq!(outputs, inputs);
    assert!(status.usage.fuel_consumed > 0);
}

#[test]
fn subtask_error_fails_task_naming_subtask_and_cause() {
    let cluster = Cluster::start(1, 2);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::PRIMES);
    let inputs = vec![Blob::from("1 100"), Blob::from("not a range"), Blob::from("1 50")];
    let task =
        client.submit_task(&SubmitTask { module_id, inputs, ..SubmitTask::default() }).expect("submit");
    let status = wait_finished(&cluster, &task.task_id);
    assert_eq!(status.state, TaskState::Failed);
    let error = status.error.expect("error message");
    assert!(
        error.contains("map subtask 1") && error.contains("exit_code") && error.contains("expected `LO HI`"),
        "{error}"
    );
    let err = client.get_result(&task.task_id).expect_err("failed task has no result");
    assert_eq!(err.code(), Some("task_failed"));
    // The CLI reports the failure with a non-zero exit status and the reason.
    let out = cluster.cli(&["task", "result", &task.task_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("map subtask 1"));
}

#[test]
fn priorities_order_work_on_one_slot_worker() {
    let mut cluster = Cluster::coordinator_only();
    let client = cluster.client();
    let module_id = upload(&cluster, programs::PRIMES);
    let inputs: Vec<Blob> = (0..15).map(|_| Blob::from("1 20000")).collect();
    let low = client
        .submit_task(&SubmitTask {
            module_id: module_id.clone(),
            inputs: inputs.clone(),
            priority: 1,
            ..SubmitTask::default()
        })
        .expect("low");
    let high = client
        .submit_task(&SubmitTask { module_id, inputs, priority: 9, ..SubmitTask::default() })
        .expect("high");
    cluster.add_worker(1, &["--prefetch", "1"]);
    let high_done = wait_finished(&cluster, &high.task_id);
    let low_now = client.status(&low.task_id).expect("status");
    assert_eq!(high_done.state, TaskState::Succeeded);
    assert!(low_now.subtasks.succeeded <= 1, "low-priority work ran first: {:?}", low_now.subtasks);
    let low_done = wait_finished(&cluster, &low.task_id);
    assert!(low_done.finished_at_ms >= high_done.finished_at_ms);
}

#[test]
fn module_downloaded_once_per_worker() {
    let mut cluster = Cluster::coordinator_only();
    let cache = tempfile::tempdir().expect("temp dir");
    for i in 0..2 {
        let dir = cache.path().join(i.to_string());
        cluster.add_worker(2, &["--cache-dir", dir.to_str().expect("utf-8 path")]);
    }
    cluster.wait_for_workers(2);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::PRIMES);
    let inputs: Vec<Blob> = (0..300).map(|i| Blob(format!("1 {}", 1000 + i).into_bytes())).collect();
    let task =
        client.submit_task(&SubmitTask { module_id, inputs, ..SubmitTask::default() }).expect("submit");
    assert_eq!(wait_finished(&cluster, &task.task_id).state, TaskState::Succeeded);
    let workers = client.list_workers().expect("workers").workers;
    let busy = workers.iter().filter(|w| w.completed > 0).count();
    assert!(busy >= 1);
    assert_eq!(cluster.metric("hivemind_module_downloads_total"), busy as f64);
}

#[test]
fn killed_worker_subtasks_run_elsewhere() {
    let cluster = Cluster::start(2, 1);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::PRIMES);
    let inputs: Vec<Blob> = (0..40).map(|_| Blob::from("1 300000")).collect();
    let task =
        client.submit_task(&SubmitTask { module_id, inputs, ..SubmitTask::default() }).expect("submit");
    poll_until(Duration::from_secs(30), || {
        client.status(&task.task_id).is_ok_and(|s| s.subtasks.succeeded >= 2)
    });
    let mut cluster = cluster;
    let victim = cluster.workers.remove(0);
    let mut victim = victim;
    victim.kill().expect("SIGKILL worker");
    victim.wait().expect("reaped");
    let status = wait_finished(&cluster, &task.task_id);
    assert_eq!(status.state, TaskState::Succeeded, "{:?}", status.error);
    let result = client.get_result(&task.task_id).expect("result");
    assert!(result.outputs.expect("outputs").iter().all(|o| o.as_ref().is_some_and(|b| b.0 == b"25997")));
}

#[test]
fn cancel_stops_task_and_keeps_finished_results() {
    let cluster = Cluster::start(1, 1);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::PRIMES);
    let inputs: Vec<Blob> = (0..200).map(|_| Blob::from("1 200000")).collect();
    let task =
        client.submit_task(&SubmitTask { module_id, inputs, ..SubmitTask::default() }).expect("submit");
    poll_until(Duration::from_secs(30), || {
        client.status(&task.task_id).is_ok_and(|s| s.subtasks.succeeded >= 1)
    });
    let out = cluster.cli(&["task", "cancel", &task.task_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = client.status(&task.task_id).expect("status");
    assert_eq!(status.state, TaskState::Cancelled);
    assert_eq!(status.subtasks.queued + status.subtasks.leased, 0);
    let result = client.get_result(&task.task_id).expect("cancelled tasks keep their finished results");
    let finished = result.outputs.expect("outputs").into_iter().flatten().count() as u64;
    assert!((1..200).contains(&finished));
}

#[test]
fn result_long_polls_until_the_task_finishes() {
    let cluster = Cluster::start(1, 1);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::PRIMES);
    let submit = |range: &str| {
        let inputs = vec![Blob::from(range)];
        client.submit_task(&SubmitTask { module_id: module_id.clone(), inputs, ..SubmitTask::default() })
    };
    // A task of a few hundred milliseconds: one request waits for it and answers with its result.
    let task = submit("1 3000000").expect("submit");
    let url = format!("{}/v1/tasks/{}/result?wait_ms=30000", cluster.url, task.task_id);
    let (status, body) = crate::reqwest::send("GET", &url, None);
    assert_eq!((status, &body["outputs"][0]), (200, &serde_json::json!("216816")), "{body}");
    // Still running when the wait is over: 409 task_not_finished, and the client's timeout.
    let slow = submit("1 2000000000").expect("submit");
    let url = format!("{}/v1/tasks/{}/result?wait_ms=50", cluster.url, slow.task_id);
    let (status, body) = crate::reqwest::send("GET", &url, None);
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("task_not_finished")), "{body}");
    let err = client.wait_result(&slow.task_id, Some(Duration::from_millis(100))).expect_err("times out");
    assert!(matches!(err, hivemind_client::Error::Timeout(_)), "{err}");
    client.cancel(&slow.task_id).expect("cancel");
    let cancelled =
        client.wait_result(&slow.task_id, Some(Duration::from_secs(30))).expect("cancelled result");
    assert_eq!(cancelled.state, TaskState::Cancelled);
    // A bad wait is refused.
    let url = format!("{}/v1/tasks/{}/result?wait_ms=soon", cluster.url, task.task_id);
    assert_eq!(crate::reqwest::send("GET", &url, None).0, 400);
}

#[test]
fn a_big_submit_and_a_result_bigger_than_a_page_keep_every_input_and_output_in_order() {
    let cluster = Cluster::start(1, 2);
    let client = cluster.client();
    let module_id = upload(&cluster, programs::ECHO);
    // Two and a half pages of the coordinator's 10,000-output pages, with binary outputs early and in the
    // last page. The body (1.5 MB) is over the coordinator's 1 MiB for submits held in memory, and so are
    // the inputs: both go through temporary files.
    let mut inputs: Vec<Blob> =
        (0..25_001).map(|i| Blob::from(format!("out-{i:06}-{}", "p".repeat(48)).as_str())).collect();
    inputs[3] = Blob(vec![0x80; 40]);
    inputs[25_000] = Blob(vec![0xff, 0x00, 0xfe]);
    assert!(serde_json::to_vec(&inputs).expect("json").len() > 1_300_000);
    let task = client
        .submit_task(&SubmitTask { module_id, inputs: inputs.clone(), ..SubmitTask::default() })
        .expect("submit");
    let result = client.wait_result(&task.task_id, Some(Duration::from_secs(120))).expect("result");
    let outputs: Vec<Blob> =
        result.outputs.expect("map outputs").into_iter().map(|o| o.expect("output")).collect();
    assert_eq!(outputs.len(), inputs.len());
    assert!(outputs == inputs, "every output, in input order");
}
