//! The store conformance suite: one set of behaviours every backend must show, run against SQLite (a
//! temporary file) and PostgreSQL (a fresh schema per test, `HIVEMIND_TEST_POSTGRES_URL`). Each backend's
//! test module invokes [`suite!`] with an expression that opens an empty store.

use super::*;
use hivemind_proto::api::{Blob, Completion, Outcome};
use hivemind_proto::{ErrorKind, Usage, frame};

/// Generates one `#[test]` per conformance case; `$open` evaluates to `Option<(guard, store)>` (`None`
/// skips, for a backend whose server is not configured outside CI).
macro_rules! suite {
    ($open:expr) => {
        $crate::store::conformance::suite!(@cases $open;
            lease_order_is_priority_then_fifo,
            repeated_lease_request_returns_the_same_subtasks,
            stale_completion_refused,
            silent_worker_expired_unless_heard_from,
            dead_worker_requeued_exactly_once,
            placement_respects_memory_and_labels,
            idle_module_holder_is_preferred,
            a_lease_takes_at_most_a_fair_share_of_the_backlog,
            a_lease_says_whether_it_drained_the_queue,
            hand_back_requeues_only_the_named_subtasks_without_an_attempt,
            map_results_in_input_order_with_usage_totals,
            split_map_reduce_transitions,
            guest_error_fails_the_task_naming_the_subtask,
            retry_on_error_requeues_with_backoff,
            out_of_attempts_after_lost_workers_fails,
            cancel_keeps_results_and_notifies_the_worker,
            deregister_hands_back_without_costing_an_attempt,
            idempotency_key_returns_the_existing_task,
            deadline_fails_the_task,
            unknown_module_and_worker_are_refused,
            modules_are_content_addressed,
            lists_filter_tasks_and_subtasks,
            tasks_keep_their_tenant,
            worker_resources_and_totals_are_listed,
            grace_spares_workers_after_a_restart
        );
    };
    (@cases $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let Some((_guard, store)) = $open else { return };
                $crate::store::conformance::seed(&store);
                $crate::store::conformance::$name(&store);
            }
        )*
    };
}
pub(crate) use suite;

/// The module every case's tasks use.
pub fn seed(store: &dyn Store) {
    store.put_module("sha256:m", "command", b"bytes", 0).expect("module");
}

pub fn task(id: &str, priority: i32, inputs: usize) -> NewTask {
    NewTask {
        id: id.into(),
        module_id: "sha256:m".into(),
        priority,
        limits: Limits::default(),
        max_attempts: 2,
        retry_on_error: false,
        split: false,
        reduce: false,
        labels: BTreeMap::new(),
        requires: BTreeMap::new(),
        idempotency_key: None,
        deadline_at_ms: None,
        tenant: None,
        inputs: (0..inputs).map(|i| format!("{id}-{i}").into_bytes()).collect(),
    }
}

pub fn worker(store: &dyn Store, id: &str) {
    register(store, id, 1, 1 << 30, &[], &[]);
}

fn register(store: &dyn Store, id: &str, slots: u32, memory: u64, labels: &[(&str, &str)], modules: &[&str]) {
    let reg = RegisterWorker {
        name: id.into(),
        slots,
        memory_bytes: memory,
        cores: 1,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        resources: Default::default(),
        modules: modules.iter().map(|m| m.to_string()).collect(),
    };
    store.register_worker(id, &reg, 0).expect("register");
}

fn lease(store: &dyn Store, worker: &str, max: u32, request: Option<&str>, now: u64) -> Lease {
    store.lease(worker, max, request, &[], now).expect("lease").lease
}

fn output(subtask_id: i64, attempt: u32, out: &[u8]) -> Completion {
    Completion {
        subtask_id,
        attempt,
        outcome: Outcome::Output(Blob(out.to_vec())),
        log: Blob::default(),
        usage: Usage { fuel_consumed: 10, peak_memory_bytes: 65536, wall_time_us: 7 },
        started_at_us: Some(1_000),
    }
}

fn ok(subtask_id: i64, attempt: u32) -> Completion {
    output(subtask_id, attempt, b"out")
}

fn error(subtask_id: i64, attempt: u32, kind: ErrorKind) -> Completion {
    Completion {
        outcome: Outcome::Error { kind, message: format!("{} happened", kind.as_str()) },
        ..ok(subtask_id, attempt)
    }
}

fn status(store: &dyn Store, id: &str) -> TaskStatus {
    store.task_status(id).expect("status").expect("task exists")
}

/// Completes every subtask in `lease` with its input upper-cased.
fn complete_upper(store: &dyn Store, worker: &str, lease: &Lease, now: u64) -> Completed {
    let done =
        lease.subtasks.iter().map(|s| output(s.subtask_id, s.attempt, &s.input.0.to_ascii_uppercase()));
    store.complete(worker, done.collect(), RetryPolicy::default(), now).expect("complete")
}

pub fn lease_order_is_priority_then_fifo(store: &dyn Store) {
    store.submit(task("low", 1, 2), 0).expect("submit");
    store.submit(task("high", 5, 2), 0).expect("submit");
    worker(store, "w");
    let lease = lease(store, "w", 3, None, 0);
    let inputs: Vec<Vec<u8>> = lease.subtasks.iter().map(|s| s.input.0.clone()).collect();
    assert_eq!(inputs, vec![b"high-0".to_vec(), b"high-1".to_vec(), b"low-0".to_vec()]);
    assert_eq!(lease.tasks["high"].module_id, "sha256:m");
    assert_eq!(status(store, "high").state, TaskState::Running);
}

pub fn repeated_lease_request_returns_the_same_subtasks(store: &dyn Store) {
    store.submit(task("t", 0, 5), 0).expect("submit");
    worker(store, "w");
    let first = lease(store, "w", 2, Some("r1"), 0);
    let again = lease(store, "w", 2, Some("r1"), 0);
    assert_eq!(first, again, "a repeated request leases nothing new");
    let counts = status(store, "t").subtasks;
    assert_eq!((counts.queued, counts.leased), (3, 2));
    let next = lease(store, "w", 2, Some("r2"), 0);
    let ids: Vec<i64> = next.subtasks.iter().map(|s| s.subtask_id).collect();
    assert!(ids.iter().all(|id| first.subtasks.iter().all(|s| s.subtask_id != *id)));
    // Another worker's request id does not see them.
    worker(store, "w2");
    assert_eq!(lease(store, "w2", 1, Some("r1"), 0).subtasks[0].input.0, b"t-4");
}

pub fn stale_completion_refused(store: &dyn Store) {
    store.submit(task("t", 0, 1), 0).expect("submit");
    worker(store, "w");
    let leased = lease(store, "w", 1, None, 0).subtasks.remove(0);
    let retry = RetryPolicy::default();
    let done = store.complete("w", vec![ok(leased.subtask_id, 2)], retry, 1).expect("complete");
    assert_eq!(done.reply.refused, vec![leased.subtask_id], "wrong attempt");
    let done = store.complete("other", vec![ok(leased.subtask_id, 1)], retry, 1).expect("complete");
    assert_eq!(done.reply.refused, vec![leased.subtask_id], "wrong worker");
    let done = store.complete("w", vec![ok(leased.subtask_id, 1)], retry, 1).expect("complete");
    assert_eq!((done.reply.accepted, done.finished_tasks), (1, vec!["t".to_string()]));
    let done = store.complete("w", vec![ok(leased.subtask_id, 1)], retry, 1).expect("complete");
    assert_eq!(done.reply.refused, vec![leased.subtask_id], "already completed");
    assert_eq!(status(store, "t").subtasks.succeeded, 1, "one recorded result");
}

pub fn silent_worker_expired_unless_heard_from(store: &dyn Store) {
    store.submit(task("t", 0, 1), 0).expect("submit");
    worker(store, "w");
    lease(store, "w", 1, None, 0);
    let spared = store.expire_workers(1_000, &["w".to_string()], 5_000).expect("expire");
    assert!(spared.is_empty(), "a worker heard from recently is spared");
    let dead = store.expire_workers(1_000, &[], 5_000).expect("expire");
    assert_eq!(dead, vec![("w".to_string(), 1)]);
    assert!(matches!(store.heartbeat("w", 0, None, 5_001), Err(StoreError::UnknownWorker(_))));
    assert!(matches!(store.lease("w", 1, None, &[], 5_001), Err(StoreError::UnknownWorker(_))));
    worker(store, "w2");
    let again = lease(store, "w2", 1, None, 5_000).subtasks.remove(0);
    assert_eq!(again.attempt, 2, "the requeued subtask carries the next attempt number");
    let subtasks = store.list_subtasks("t", &SubtaskFilter { limit: 10, ..Default::default() });
    let attempts = &subtasks.expect("list").expect("task")[0].attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].error_kind.as_str(), attempts[0].worker_id.as_deref()),
        ("worker_lost", Some("w"))
    );
}

pub fn dead_worker_requeued_exactly_once(store: &dyn Store) {
    store.submit(task("t", 0, 3), 0).expect("submit");
    worker(store, "w");
    assert_eq!(lease(store, "w", 3, None, 0).subtasks.len(), 3, "the only worker: the whole backlog");
    // Two detectors (two coordinators) see the same silence: only one requeues.
    let first = store.expire_workers(1_000, &[], 5_000).expect("expire");
    let second = store.expire_workers(1_000, &[], 5_000).expect("expire again");
    assert_eq!(first, vec![("w".to_string(), 3)]);
    assert!(second.is_empty(), "{second:?}");
    let counts = status(store, "t").subtasks;
    assert_eq!((counts.queued, counts.leased), (3, 0));
}

pub fn placement_respects_memory_and_labels(store: &dyn Store) {
    let mut big = task("big", 0, 2);
    big.limits.memory_bytes = 2 << 30;
    store.submit(big, 0).expect("submit");
    let mut zoned = task("zoned", 0, 2);
    zoned.requires = [("zone".to_string(), "b".to_string())].into();
    store.submit(zoned, 0).expect("submit");
    register(store, "small", 4, 1 << 30, &[("zone", "a")], &[]);
    assert!(lease(store, "small", 10, None, 0).subtasks.is_empty(), "nothing fits the small worker");
    register(store, "large", 4, 4 << 30, &[("zone", "a")], &[]);
    let got = lease(store, "large", 10, None, 0);
    assert!(got.subtasks.iter().all(|s| s.task_id == "big") && got.subtasks.len() == 2, "{got:?}");
    register(store, "zone-b", 1, 1 << 30, &[("zone", "b")], &[]);
    let got = lease(store, "zone-b", 10, None, 0);
    assert!(got.subtasks.iter().all(|s| s.task_id == "zoned") && got.subtasks.len() == 2, "{got:?}");
    assert_eq!(status(store, "zoned").requires, [("zone".to_string(), "b".to_string())].into());
}

pub fn idle_module_holder_is_preferred(store: &dyn Store) {
    store.submit(task("t", 0, 1), 0).expect("submit");
    register(store, "holder", 1, 1 << 30, &[], &["sha256:m"]);
    register(store, "cold", 1, 1 << 30, &[], &[]);
    let idle = ["holder".to_string()];
    let got = store.lease("cold", 1, None, &idle, 0).expect("lease").lease;
    assert!(got.subtasks.is_empty(), "left to the idle worker that holds the module");
    let got = store.lease("holder", 1, None, &["cold".to_string()], 0).expect("lease");
    assert_eq!(got.lease.subtasks.len(), 1);
    assert_eq!(got.queue_wait_ms, vec![0]);
    // A holder that long-polls with a subtask in hand is not idle: the cold worker takes the new task.
    store.submit(task("u", 0, 1), 0).expect("submit");
    let got = store.lease("cold", 1, None, &idle, 0).expect("lease").lease;
    assert_eq!(got.subtasks.len(), 1, "the holder is busy, so the cold worker runs it");
}

pub fn a_lease_takes_at_most_a_fair_share_of_the_backlog(store: &dyn Store) {
    store.submit(task("t", 0, 10), 0).expect("submit");
    register(store, "a", 1, 1 << 30, &[], &[]);
    register(store, "b", 3, 1 << 30, &[], &[]);
    assert_eq!(lease(store, "a", 100, None, 0).subtasks.len(), 3, "ceil(10 * 1 / 4)");
    assert_eq!(lease(store, "b", 100, None, 0).subtasks.len(), 6, "ceil(7 * 3 / 4)");
}

pub fn a_lease_says_whether_it_drained_the_queue(store: &dyn Store) {
    worker(store, "w");
    let drained = |max| store.lease("w", max, None, &[], 0).expect("lease");
    assert!(drained(5).drained, "an empty queue");
    store.submit(task("t", 0, 5), 0).expect("submit");
    let got = drained(3);
    assert!(got.lease.subtasks.len() == 3 && !got.drained && got.left, "two more are queued");
    let got = drained(3);
    assert!(
        got.lease.subtasks.len() == 2 && got.drained && !got.left,
        "fewer than asked for: nothing is left"
    );
    // Work this worker cannot take does not count as drained: placement may change.
    let mut zoned = task("zoned", 0, 1);
    zoned.requires = [("zone".to_string(), "b".to_string())].into();
    store.submit(zoned, 0).expect("submit");
    let got = drained(3);
    assert!(got.lease.subtasks.is_empty() && !got.drained, "{got:?}");
}

pub fn hand_back_requeues_only_the_named_subtasks_without_an_attempt(store: &dyn Store) {
    store.submit(task("t", 0, 3), 0).expect("submit");
    worker(store, "w");
    worker(store, "other");
    let got = lease(store, "w", 2, None, 0);
    let mut ids: Vec<i64> = got.subtasks.iter().map(|s| s.subtask_id).collect();
    ids.sort();
    let mut leased = store.leased_to("w").expect("leased");
    leased.sort();
    assert_eq!(leased, ids);
    let theirs = lease(store, "other", 1, None, 0).subtasks[0].subtask_id;
    // Another worker's subtask, or one not leased, is not handed back.
    assert_eq!(store.hand_back("w", &[ids[1], theirs, 999_999], 5).expect("hand back"), 1);
    assert_eq!(store.leased_to("w").expect("leased"), vec![ids[0]]);
    assert_eq!(store.heartbeat("w", 1, None, 5).expect("heartbeat").1, 1, "the heartbeat counts leases");
    let s = status(store, "t").subtasks;
    assert_eq!((s.leased, s.queued), (2, 1), "{s:?}");
    let again = lease(store, "w", 1, None, 6);
    assert_eq!(again.subtasks[0].subtask_id, ids[1]);
    assert_eq!(again.subtasks[0].attempt, 1, "the hand-back did not cost an attempt");
}

pub fn map_results_in_input_order_with_usage_totals(store: &dyn Store) {
    store.submit(task("t", 0, 5), 10).expect("submit");
    worker(store, "w");
    let mut leased = lease(store, "w", 5, None, 25);
    assert_eq!(leased.subtasks.len(), 5);
    // Completed out of order, in two batches.
    leased.subtasks.reverse();
    let rest = leased.subtasks.split_off(2);
    let first = Lease { subtasks: leased.subtasks, tasks: leased.tasks.clone() };
    assert!(complete_upper(store, "w", &first, 30).finished_tasks.is_empty());
    let done = complete_upper(store, "w", &Lease { subtasks: rest, tasks: leased.tasks }, 31);
    assert_eq!(done.finished_tasks, vec!["t".to_string()]);
    assert_eq!((done.succeeded, done.fuel), (3, 30));
    let s = status(store, "t");
    assert_eq!((s.state, s.subtasks.succeeded, s.finished_at_ms), (TaskState::Succeeded, 5, Some(31)));
    assert_eq!(s.usage, Usage { fuel_consumed: 50, peak_memory_bytes: 65536, wall_time_us: 35 });
    let result = crate::store::task_result(store, "t").expect("result").expect("task");
    let outputs: Vec<Vec<u8>> =
        result.outputs.expect("map outputs").into_iter().map(|o| o.expect("output").0).collect();
    let expected: Vec<Vec<u8>> = (0..5).map(|i| format!("T-{i}").into_bytes()).collect();
    assert_eq!(outputs, expected);
    let list = store.list_subtasks("t", &SubtaskFilter { limit: 10, ..Default::default() }).expect("list");
    let list = list.expect("task");
    assert!(list.iter().all(|s| s.started_at_us == Some(1_000) && s.worker_id.as_deref() == Some("w")));
    assert_eq!(list.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}

pub fn split_map_reduce_transitions(store: &dyn Store) {
    let mut t = task("t", 0, 1);
    (t.split, t.reduce) = (true, true);
    store.submit(t, 0).expect("submit");
    worker(store, "w");
    let split = lease(store, "w", 10, None, 0);
    assert_eq!((split.subtasks.len(), split.subtasks[0].phase), (1, Phase::Split));
    let frames = frame::encode_frames(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    let done = store
        .complete("w", vec![output(split.subtasks[0].subtask_id, 1, &frames)], RetryPolicy::default(), 1)
        .expect("complete split");
    assert!(done.new_work);
    assert_eq!(status(store, "t").phase, "map");
    let map = lease(store, "w", 10, None, 2);
    assert!(map.subtasks.iter().all(|s| s.phase == Phase::Map) && map.subtasks.len() == 3);
    assert!(complete_upper(store, "w", &map, 3).new_work, "the reduce step is queued");
    let reduce = lease(store, "w", 10, None, 4);
    assert_eq!(reduce.subtasks[0].phase, Phase::Reduce);
    let inputs = frame::decode_frames(&reduce.subtasks[0].input.0).expect("frames");
    assert_eq!(inputs, vec![b"A".to_vec(), b"B".to_vec(), b"C".to_vec()], "map outputs in input order");
    let done = store
        .complete("w", vec![output(reduce.subtasks[0].subtask_id, 1, b"ABC")], RetryPolicy::default(), 5)
        .expect("complete reduce");
    assert_eq!(done.finished_tasks, vec!["t".to_string()]);
    let result = crate::store::task_result(store, "t").expect("result").expect("task");
    assert_eq!(
        (result.state, result.result, result.outputs),
        (TaskState::Succeeded, Some(Blob(b"ABC".to_vec())), None)
    );
}

pub fn guest_error_fails_the_task_naming_the_subtask(store: &dyn Store) {
    store.submit(task("t", 0, 3), 0).expect("submit");
    register(store, "w", 3, 1 << 30, &[], &[]);
    let leased = lease(store, "w", 3, None, 0);
    let bad = &leased.subtasks[1];
    let done = store
        .complete("w", vec![error(bad.subtask_id, 1, ErrorKind::Trap)], RetryPolicy::default(), 1)
        .expect("complete");
    assert_eq!((done.failed, done.finished_tasks.clone()), (1, vec!["t".to_string()]));
    let s = status(store, "t");
    assert_eq!(s.state, TaskState::Failed);
    let message = s.error.expect("error");
    assert!(message.contains("map subtask 1") && message.contains("trap"), "{message}");
    assert_eq!((s.subtasks.failed, s.subtasks.cancelled, s.subtasks.leased), (1, 2, 0));
    let done = complete_upper(store, "w", &leased, 2);
    assert_eq!(done.reply.refused.len(), 3, "the task is over: nothing more is recorded");
}

pub fn retry_on_error_requeues_with_backoff(store: &dyn Store) {
    let mut t = task("t", 0, 1);
    t.retry_on_error = true;
    store.submit(t, 0).expect("submit");
    worker(store, "w");
    let first = lease(store, "w", 1, None, 0).subtasks.remove(0);
    let retry = RetryPolicy { base_backoff_ms: 100, max_backoff_ms: 1_000 };
    let done = store
        .complete("w", vec![error(first.subtask_id, 1, ErrorKind::Trap)], retry, 1_000)
        .expect("complete");
    assert!(done.new_work && done.finished_tasks.is_empty());
    assert!(lease(store, "w", 1, None, 1_050).subtasks.is_empty(), "still backing off");
    let second = lease(store, "w", 1, None, 1_100).subtasks.remove(0);
    assert_eq!(second.attempt, 2);
    let done = store
        .complete("w", vec![error(second.subtask_id, 2, ErrorKind::Trap)], retry, 1_200)
        .expect("complete");
    assert_eq!(done.finished_tasks, vec!["t".to_string()], "out of attempts");
    let message = status(store, "t").error.expect("error");
    assert!(message.contains("attempt 1 on worker `w`: trap") && message.contains("attempt 2"), "{message}");
}

pub fn out_of_attempts_after_lost_workers_fails(store: &dyn Store) {
    store.submit(task("t", 0, 1), 0).expect("submit");
    for (i, name) in ["a", "b"].iter().enumerate() {
        worker(store, name);
        assert_eq!(lease(store, name, 1, None, 0).subtasks.len(), 1);
        let now = 10_000 * (i as u64 + 1);
        assert_eq!(store.expire_workers(now - 1, &[], now).expect("expire").len(), 1);
    }
    let s = status(store, "t");
    assert_eq!(s.state, TaskState::Failed);
    let message = s.error.expect("error");
    assert!(message.contains("worker `a`") && message.contains("worker `b`"), "{message}");
}

pub fn cancel_keeps_results_and_notifies_the_worker(store: &dyn Store) {
    store.submit(task("t", 0, 4), 0).expect("submit");
    register(store, "w", 2, 1 << 30, &[], &[]);
    let leased = lease(store, "w", 2, None, 0);
    let finished = Lease { subtasks: vec![leased.subtasks[0].clone()], tasks: leased.tasks.clone() };
    complete_upper(store, "w", &finished, 1);
    let s = store.cancel("t", 2).expect("cancel").expect("task");
    assert_eq!(s.state, TaskState::Cancelled);
    assert_eq!((s.subtasks.succeeded, s.subtasks.cancelled, s.subtasks.queued), (1, 3, 0));
    let (reply, _) = store.heartbeat("w", 1, None, 3).expect("heartbeat");
    assert_eq!(reply.cancel, vec![leased.subtasks[1].subtask_id], "the running subtask is interrupted");
    assert!(store.heartbeat("w", 0, None, 4).expect("heartbeat").0.cancel.is_empty(), "told once");
    let outputs =
        crate::store::task_result(store, "t").expect("result").expect("task").outputs.expect("outputs");
    assert_eq!(outputs[0], Some(Blob(b"T-0".to_vec())));
    assert!(outputs[1..].iter().all(Option::is_none));
    assert!(store.cancel("missing", 5).expect("cancel").is_none());
}

pub fn deregister_hands_back_without_costing_an_attempt(store: &dyn Store) {
    store.submit(task("t", 0, 2), 0).expect("submit");
    register(store, "w", 2, 1 << 30, &[], &[]);
    assert_eq!(lease(store, "w", 2, None, 0).subtasks.len(), 2);
    assert_eq!(store.deregister_worker("w", 1).expect("deregister"), 2);
    assert!(matches!(store.deregister_worker("w", 2), Err(StoreError::UnknownWorker(_))));
    worker(store, "w2");
    let again = lease(store, "w2", 2, None, 3);
    assert!(again.subtasks.iter().all(|s| s.attempt == 1), "{again:?}");
    let states: Vec<String> = store.list_workers().expect("workers").into_iter().map(|w| w.state).collect();
    assert_eq!(states, vec!["left".to_string(), "alive".to_string()]);
}

pub fn idempotency_key_returns_the_existing_task(store: &dyn Store) {
    let mut t = task("first", 0, 2);
    t.idempotency_key = Some("key".into());
    let (created, new) = store.submit(t, 0).expect("submit");
    assert!(new);
    let mut again = task("second", 0, 5);
    again.idempotency_key = Some("key".into());
    let (existing, new) = store.submit(again, 1).expect("resubmit");
    assert!(!new);
    assert_eq!(existing.task_id, created.task_id);
    assert!(store.task_status("second").expect("status").is_none());
    assert_eq!(store.queue_depth().expect("depth"), vec![(0, 2)]);
}

pub fn deadline_fails_the_task(store: &dyn Store) {
    let mut t = task("t", 0, 2);
    t.deadline_at_ms = Some(100);
    store.submit(t, 0).expect("submit");
    assert!(store.expire_deadlines(99).expect("expire").is_empty());
    assert_eq!(store.expire_deadlines(100).expect("expire"), vec!["t".to_string()]);
    let s = status(store, "t");
    assert_eq!(s.state, TaskState::Failed);
    assert!(s.error.expect("error").contains("deadline_exceeded"));
    assert!(store.expire_deadlines(200).expect("expire").is_empty(), "once");
}

pub fn unknown_module_and_worker_are_refused(store: &dyn Store) {
    let mut t = task("t", 0, 1);
    t.module_id = "sha256:missing".into();
    assert!(matches!(store.submit(t, 0), Err(StoreError::NotFound(_))));
    assert!(store.task_status("t").expect("status").is_none(), "nothing was created");
    assert!(matches!(store.heartbeat("ghost", 0, None, 0), Err(StoreError::UnknownWorker(_))));
    assert!(matches!(store.lease("ghost", 1, None, &[], 0), Err(StoreError::UnknownWorker(_))));
    let done = store.complete("ghost", vec![ok(1, 1)], RetryPolicy::default(), 0).expect("complete");
    assert_eq!(done.reply.refused, vec![1]);
    assert!(crate::store::task_result(store, "t").expect("result").is_none());
    assert!(
        store.list_subtasks("t", &SubtaskFilter { limit: 1, ..Default::default() }).expect("list").is_none()
    );
}

pub fn modules_are_content_addressed(store: &dyn Store) {
    assert!(store.put_module("sha256:n", "component", b"other bytes", 0).expect("put"));
    assert!(!store.put_module("sha256:n", "component", b"other bytes", 1).expect("put again"), "a no-op");
    let info = store.module_info("sha256:n").expect("info").expect("module");
    assert_eq!((info.size, info.kind.as_str()), (11, "component"));
    assert_eq!(store.module_bytes("sha256:n").expect("bytes"), Some(b"other bytes".to_vec()));
    assert!(store.module_info("sha256:none").expect("info").is_none());
    assert!(store.module_bytes("sha256:none").expect("bytes").is_none());
}

pub fn lists_filter_tasks_and_subtasks(store: &dyn Store) {
    store.submit(task("a", 0, 3), 0).expect("submit");
    store.submit(task("b", 0, 1), 1).expect("submit");
    store.cancel("b", 2).expect("cancel");
    let all = store.list_tasks(&TaskFilter { limit: 10, ..Default::default() }).expect("list");
    assert_eq!(all.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(), vec!["b", "a"], "newest first");
    let cancelled = TaskFilter { state: Some(TaskState::Cancelled), limit: 10, ..Default::default() };
    assert_eq!(store.list_tasks(&cancelled).expect("list").len(), 1);
    let other_module = TaskFilter { module_id: Some("sha256:x".into()), limit: 10, ..Default::default() };
    assert!(store.list_tasks(&other_module).expect("list").is_empty());
    assert_eq!(store.list_tasks(&TaskFilter { limit: 1, ..Default::default() }).expect("list").len(), 1);
    let page = SubtaskFilter { offset: 1, limit: 5, ..Default::default() };
    let page = store.list_subtasks("a", &page).expect("list").expect("task");
    assert_eq!(page.iter().map(|s| s.index).collect::<Vec<_>>(), vec![1, 2]);
    let queued = SubtaskFilter { state: Some("queued".into()), phase: Some(Phase::Map), limit: 5, offset: 0 };
    assert_eq!(store.list_subtasks("a", &queued).expect("list").expect("task").len(), 3);
    assert_eq!(store.queue_depth().expect("depth"), vec![(0, 3)]);
}

pub fn worker_resources_and_totals_are_listed(store: &dyn Store) {
    store.submit(task("t", 0, 2), 0).expect("submit");
    register(store, "w", 2, 2 << 30, &[("zone", "a")], &[]);
    let leased = lease(store, "w", 2, None, 0);
    let resources = Resources {
        cores: 8,
        total_memory_bytes: 16 << 30,
        available_memory_bytes: 9 << 30,
        cpu_load: 0.5,
        load_average: 1.5,
    };
    store.heartbeat("w", 2, Some(&resources), 1).expect("heartbeat");
    let listed = store.list_workers().expect("workers").remove(0);
    assert_eq!((listed.leased, listed.running, listed.slots, listed.memory_bytes), (2, 2, 2, 2 << 30));
    assert_eq!((listed.resources, listed.last_heartbeat_ms), (resources, 1));
    assert_eq!(listed.labels, [("zone".to_string(), "a".to_string())].into());
    complete_upper(store, "w", &leased, 2);
    let listed = store.list_workers().expect("workers").remove(0);
    assert_eq!((listed.completed, listed.failed, listed.leased, listed.usage.fuel_consumed), (2, 0, 0, 20));
}

pub fn grace_spares_workers_after_a_restart(store: &dyn Store) {
    worker(store, "w");
    store.grace_workers(10_000).expect("grace");
    assert!(store.expire_workers(9_000, &[], 10_500).expect("expire").is_empty());
    assert_eq!(store.expire_workers(10_001, &[], 14_000).expect("expire").len(), 1);
}

pub fn tasks_keep_their_tenant(store: &dyn Store) {
    let mut acme = task("a", 0, 1);
    acme.tenant = Some("acme".into());
    store.submit(acme, 0).expect("submit");
    store.submit(task("b", 0, 1), 1).expect("submit");
    assert_eq!(status(store, "a").tenant.as_deref(), Some("acme"));
    assert_eq!(status(store, "b").tenant, None);
    let only = |tenant: &str| {
        let filter = TaskFilter { tenant: Some(tenant.into()), limit: 10, ..Default::default() };
        store.list_tasks(&filter).expect("list").into_iter().map(|t| t.task_id).collect::<Vec<_>>()
    };
    assert_eq!(only("acme"), vec!["a".to_string()]);
    assert!(only("other").is_empty());
    assert_eq!(store.list_tasks(&TaskFilter { limit: 10, ..Default::default() }).expect("list").len(), 2);
}
