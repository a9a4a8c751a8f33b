//! The HTTP API and CLI as a user meets them: every malformed or unknown thing gets a specific 4xx JSON
//! error and changes nothing; the OpenAPI document matches the routes; every command has `--help`.

use crate::reqwest::send;
use crate::{BIN, Cluster};
use hivemind_guest_programs as programs;
use serde_json::json;

fn post_json(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    send("POST", url, Some((body.to_string().into_bytes(), "application/json")))
}

fn assert_error(reply: (u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "{}", reply.1);
    assert!(reply.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn bad_requests_get_specific_errors_and_change_nothing() {
    let cluster = Cluster::coordinator_only();
    let url = &cluster.url;
    let echo = cluster.client().upload_module(programs::read(programs::ECHO)).expect("upload").module_id;
    let tasks = format!("{url}/v1/tasks");

    assert_error(
        send("POST", &tasks, Some((b"{not json".to_vec(), "application/json"))),
        400,
        "invalid_json",
    );
    assert_error(
        post_json(&tasks, json!({"module_id": echo, "inputs": ["a"], "priorty": 1})),
        400,
        "invalid_json",
    );
    assert_error(
        post_json(&tasks, json!({"module_id": "md5:abc", "inputs": ["a"]})),
        400,
        "invalid_module_id",
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_error(post_json(&tasks, json!({"module_id": unknown, "inputs": ["a"]})), 404, "module_not_found");
    assert_error(post_json(&tasks, json!({"module_id": echo, "inputs": []})), 400, "no_inputs");
    assert_error(
        post_json(&tasks, json!({"module_id": echo, "inputs": ["a"], "priority": 5000})),
        400,
        "priority_out_of_range",
    );
    assert_error(
        post_json(&tasks, json!({"module_id": echo, "inputs": ["a", "b"], "split": true})),
        400,
        "split_needs_one_input",
    );
    assert_error(
        post_json(&tasks, json!({"module_id": echo, "inputs": ["a"], "limits": {"fuel": 0}})),
        400,
        "invalid_limit",
    );
    assert_error(
        post_json(
            &tasks,
            json!({"module_id": echo, "inputs": ["a"], "limits": {"memory_bytes": 1u64 << 40}}),
        ),
        400,
        "limit_too_high",
    );
    assert_error(
        post_json(&tasks, json!({"module_id": echo, "inputs": [{"base64": "!!!"}]})),
        400,
        "invalid_json",
    );
    assert_error(
        post_json(&tasks, json!({"module_id": echo, "inputs": ["a"], "max_attempts": 0})),
        400,
        "invalid_max_attempts",
    );
    let big = "x".repeat((16 << 20) + 1);
    assert_error(post_json(&tasks, json!({"module_id": echo, "inputs": [big]})), 413, "input_too_large");
    // Bodies over a megabyte are received into a file and their inputs moved to another: the same checks.
    let mut many: Vec<serde_json::Value> = (0..200_000).map(|i| json!(format!("input-{i}"))).collect();
    many[150_000] = json!({"base64": "!!!"});
    assert_error(post_json(&tasks, json!({"module_id": echo, "inputs": many.clone()})), 400, "invalid_json");
    many[150_000] = json!(big);
    let reply = post_json(&tasks, json!({"module_id": echo, "inputs": many}));
    assert_error(reply.clone(), 413, "input_too_large");
    assert!(
        reply.1["error"]["message"].as_str().expect("message").starts_with("input 150000 has"),
        "{reply:?}"
    );

    assert_error(send("GET", &format!("{tasks}/does-not-exist"), None), 404, "task_not_found");
    assert_error(send("GET", &format!("{tasks}/bad%20id"), None), 400, "invalid_task_id");
    assert_error(send("POST", &format!("{tasks}/nope/cancel"), None), 404, "task_not_found");
    assert_error(send("GET", &format!("{tasks}?state=sleeping"), None), 400, "invalid_query");
    assert_error(send("GET", &format!("{tasks}?colour=blue"), None), 400, "invalid_query");
    assert_error(send("GET", &format!("{url}/v1/nothing-here"), None), 404, "no_such_route");
    assert_error(send("DELETE", &tasks, None), 405, "method_not_allowed");

    // Modules: garbage, a stated id that does not match, a module with no supported ABI.
    let modules = format!("{url}/v1/modules");
    assert_error(
        send("POST", &modules, Some((b"garbage".to_vec(), "application/wasm"))),
        422,
        "invalid_module",
    );
    let not_command = std::path::Path::new(programs::WAT_UNREACHABLE).with_file_name("not-a-command.wasm");
    let bytes = std::fs::read(not_command).expect("fixture");
    let reply = send("POST", &modules, Some((bytes, "application/wasm")));
    assert_error(reply.clone(), 422, "invalid_module");
    assert!(reply.1["error"]["message"].as_str().expect("message").contains("_start"));
    assert_error(
        send(
            "PUT",
            &format!("{modules}/{unknown}"),
            Some((programs::read(programs::ECHO), "application/wasm")),
        ),
        400,
        "module_hash_mismatch",
    );
    assert_error(send("GET", &format!("{modules}/{unknown}"), None), 404, "module_not_found");

    // Workers.
    let workers = format!("{url}/v1/workers");
    assert_error(
        post_json(&workers, json!({"name": "w", "slots": 0, "memory_bytes": 1, "cores": 1})),
        400,
        "invalid_slots",
    );
    assert_error(
        post_json(&format!("{workers}/w-unknown/heartbeat"), json!({"running": 0})),
        410,
        "worker_unknown",
    );
    assert_error(post_json(&format!("{workers}/w-unknown/lease"), json!({"max": 0})), 400, "invalid_lease");
    assert_error(post_json(&format!("{workers}/w-unknown/lease"), json!({"max": 1})), 410, "worker_unknown");

    // Nothing was created by any of it.
    let list = cluster.client().list_tasks(None, 100).expect("list");
    assert!(list.tasks.is_empty(), "{:?}", list.tasks);
    assert!(cluster.client().list_workers().expect("workers").workers.is_empty());
}

#[test]
fn module_upload_is_content_addressed_and_idempotent() {
    let cluster = Cluster::coordinator_only();
    let out = cluster.cli(&["--json", "module", "upload", programs::ECHO]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = doc["module_id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71);
    let again = cluster.cli(&["module", "upload", programs::ECHO]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id);
    let (status, body) = send("GET", &format!("{}/v1/modules/{id}/info", cluster.url), None);
    assert_eq!((status, body["kind"].as_str()), (200, Some("command")));
    let (status, _) = send("GET", &format!("{}/v1/modules/{id}", cluster.url), None);
    assert_eq!(status, 200);
}

#[test]
fn openapi_document_matches_routes() {
    let cluster = Cluster::coordinator_only();
    let (status, doc) = send("GET", &format!("{}/v1/openapi.json", cluster.url), None);
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in hivemind_coordinator::api::ROUTES {
        assert!(paths.get(*path).and_then(|p| p.get(*method)).is_some(), "{method} {path} missing");
        // Every documented route exists on the server: it never answers `no_such_route`.
        let concrete = path
            .replace("{module_id}", &format!("sha256:{}", "a".repeat(64)))
            .replace("{task_id}", "t1")
            .replace("{worker_id}", "w1");
        let (_, body) = send(&method.to_uppercase(), &format!("{}{concrete}", cluster.url), None);
        assert_ne!(body["error"]["code"], "no_such_route", "{method} {path}");
    }
    let (status, _) = send("GET", &format!("{}/healthz", cluster.url), None);
    assert_eq!(status, 200);
}

#[test]
fn every_command_has_help_with_an_example() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["coordinator", "--help"],
        &["worker", "--help"],
        &["worker", "list", "--help"],
        &["module", "upload", "--help"],
        &["task", "submit", "--help"],
        &["task", "status", "--help"],
        &["task", "result", "--help"],
        &["task", "cancel", "--help"],
        &["task", "list", "--help"],
        &["task", "subtasks", "--help"],
        &["demo", "--help"],
        &["bench", "--help"],
        &["bench", "runtime", "--help"],
        &["bench", "e2e", "--help"],
        &["bench", "failover", "--help"],
        &["bench", "heartbeats", "--help"],
        &["bench", "scaling", "--help"],
    ] {
        let out = std::process::Command::new(BIN).args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("Example"), "{args:?}: {text}");
    }
}

#[test]
fn cli_errors_exit_non_zero_with_one_line_reason() {
    let cluster = Cluster::coordinator_only();
    let out = cluster.cli(&["task", "status", "no-such-task"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("does not exist"), "{err}");
    let out = cluster.cli(&["task", "submit", "--module", "missing.wasm", "--input", "/dev/null"]);
    assert!(!out.status.success());
    let out = std::process::Command::new(BIN)
        .args(["task", "list", "--coordinator", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the coordinator"));
}

#[test]
fn run_command_reports_usage_and_errors() {
    let out = std::process::Command::new(BIN)
        .args(["--json", "run", programs::PRIMES, "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"1 1000")?;
            child.wait_with_output()
        })
        .expect("run");
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["output"], "168");
    assert!(doc["usage"]["fuel_consumed"].as_u64().is_some_and(|f| f > 0));

    let looping = std::path::Path::new(programs::WAT_UNREACHABLE).with_file_name("infinite-loop.wasm");
    let out = std::process::Command::new(BIN)
        .args(["run", looping.to_str().expect("path"), "--fuel", "1000000"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fuel_exhausted"));
    let out = std::process::Command::new(BIN)
        .args(["run", looping.to_str().expect("path"), "--timeout", "100ms", "--fuel", "1000000000000"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
    let out = std::process::Command::new(BIN)
        .args(["run", programs::ECHO, "--memory", "lots"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
}

#[test]
fn runtime_starts_with_little_address_space() {
    // 3 GB of virtual address space cannot hold the pooling allocator's reservations: the runtime sizes
    // the pool down, then falls back to on-demand allocation, and still runs the module.
    let script = format!("ulimit -v 3000000 && echo hello | exec {BIN} run {} --input -", programs::ECHO);
    let out = std::process::Command::new("sh").args(["-c", &script]).output().expect("run sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // 1 MiB of output into `head -c 1`: far more than a pipe holds, so the writes meet a closed pipe.
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("big.txt");
    std::fs::write(&input, vec![b'x'; 1 << 20]).expect("write input");
    let script = format!(
        "'{BIN}' run '{}' --input '{}' | head -c 1 >/dev/null",
        hivemind_guest_programs::ECHO,
        input.display()
    );
    let out =
        std::process::Command::new("bash").args(["-o", "pipefail", "-c", &script]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Killed by SIGPIPE, as `cat` would be: bash reports 128 + 13.
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
