//! Several coordinators on one PostgreSQL (SPEC §6), with real processes: two coordinators share a
//! database, three workers are split between them, and one coordinator is SIGKILLed in the middle of a
//! task; the task completes through the other with every result recorded exactly once.
//!
//! Needs `HIVEMIND_TEST_POSTGRES_URL` (set by `.ci/run`); each test gets a schema of its own.

use crate::{Cluster, poll_until};
use hivemind_client::blocking::Client;
use hivemind_client::{SubmitTask, TaskState};
use hivemind_guest_programs as programs;
use std::time::Duration;

/// A fresh schema in the test database, dropped when the test ends.
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    fn new() -> Option<TestSchema> {
        let Ok(url) = std::env::var("HIVEMIND_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("CI").is_none(), "HIVEMIND_TEST_POSTGRES_URL must be set in CI");
            eprintln!("skipped: HIVEMIND_TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!("hm_e2e_{}_{}", std::process::id(), uuid_suffix());
        Some(TestSchema { url, name })
    }

    /// The `--store` URL of this schema.
    fn store_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.url, self.name)
    }
}

fn uuid_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{nanos:x}")
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        }
    }
}

#[test]
fn two_coordinators_one_killed_midway_every_result_exactly_once() {
    const N: u64 = 10_000;
    let Some(schema) = TestSchema::new() else { return };
    let store = schema.store_url();
    let mut a = Cluster::coordinator_with(&["--store", &store]);
    let b = Cluster::coordinator_with(&["--store", &store]);
    let a_first = format!("{},{}", a.url, b.url);
    let b_first = format!("{},{}", b.url, a.url);
    a.add_worker(1, &["--coordinator", &a_first, "--name", "on-a-1"]);
    a.add_worker(1, &["--coordinator", &a_first, "--name", "on-a-2"]);
    a.add_worker(1, &["--coordinator", &b_first, "--name", "on-b"]);
    // Either coordinator sees every worker: the state is shared.
    b.wait_for_workers(3);

    let client = Client::new(&a_first).expect("client");
    let module_id = client.upload_module(programs::read(programs::PRIMES)).expect("upload").module_id;
    let (code, _) = crate::reqwest::send("GET", &format!("{}/v1/modules/{module_id}/info", b.url), None);
    assert_eq!(code, 200, "the other coordinator serves the module too");
    let task = client
        .submit_task(&SubmitTask {
            module_id,
            inputs: (0..N).map(crate::faults::range_input).collect(),
            ..SubmitTask::default()
        })
        .expect("submit");
    poll_until(Duration::from_secs(120), || {
        client.status(&task.task_id).is_ok_and(|s| s.subtasks.succeeded >= N / 3)
    });
    let completed_on_a = |client: &Client| -> u64 {
        let workers = client.list_workers().expect("workers").workers;
        workers.iter().filter(|w| w.name.starts_with("on-a")).map(|w| w.completed).sum()
    };
    let before = completed_on_a(&client);
    a.kill_coordinator();

    // The client and the workers of the dead coordinator move to the other one by themselves.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        let s = client.status(&task.task_id).expect("status through the surviving coordinator");
        if s.state.is_finished() {
            break s;
        }
        // On a stall, say where the subtasks are and what the workers hold.
        assert!(
            std::time::Instant::now() < deadline,
            "not finished 180 s after the kill: {:?}\nworkers: {:?}",
            s.subtasks,
            client.list_workers().map(|w| w.workers)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.state, TaskState::Succeeded, "{:?}", status.error);
    assert_eq!((status.subtasks.succeeded, status.subtasks.total()), (N, N), "{:?}", status.subtasks);
    assert!(completed_on_a(&client) > before, "the dead coordinator's workers went on through the other one");

    let outputs = client.get_result(&task.task_id).expect("result").outputs.expect("map outputs");
    let expected = crate::faults::expected_counts(N);
    assert_eq!(outputs.len() as u64, N);
    for (i, (output, want)) in outputs.iter().zip(&expected).enumerate() {
        let output = output.as_ref().unwrap_or_else(|| panic!("subtask {i} has no output"));
        assert_eq!(String::from_utf8_lossy(&output.0), want.to_string(), "output of subtask {i}");
    }
    // Exactly one recorded result per subtask, and every other attempt accounted for.
    let mut seen = 0;
    let mut offset = 0;
    while offset < N {
        let page = client.list_subtasks(&task.task_id, offset, 5_000).expect("subtasks").subtasks;
        assert!(!page.is_empty());
        for s in &page {
            assert_eq!(s.state, "succeeded");
            assert_eq!(
                s.attempts.len() as u32,
                s.attempt - 1,
                "history of subtask {}: {:?}",
                s.index,
                s.attempts
            );
            assert_eq!(s.index, seen, "each index once, in order");
            seen += 1;
        }
        offset += page.len() as u64;
    }
    assert_eq!(seen, N);
    // The CLI fails over too.
    let out = std::process::Command::new(crate::BIN)
        .args(["--coordinator", &a_first, "task", "status", &task.task_id])
        .output()
        .expect("run hivemind");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    drop(b);
    drop(a);
}
