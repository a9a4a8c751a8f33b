//! Authentication and roles (SPEC §7) with real processes: every route refuses a missing or unknown token
//! and a token of the wrong role, a cluster with tokens runs a task end to end, and the coordinator
//! refuses a non-loopback address without tokens.

use crate::{BIN, Cluster, poll_until};
use hivemind_coordinator::api::ROUTES;
use std::process::Command;
use std::time::Duration;

const CLIENT: &str = "client-token-for-tests-0001";
const WORKER: &str = "worker-token-for-tests-0002";
const ADMIN: &str = "admin-token-for-tests-0003";

fn secured() -> Cluster {
    Cluster::coordinator_with(&["--client-token", CLIENT, "--worker-token", WORKER, "--admin-token", ADMIN])
}

/// Sends `method url` with an optional bearer token; returns the status and the JSON body.
fn call(method: &str, url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    crate::reqwest::send_with_token(&method.to_uppercase(), url, token)
}

#[test]
fn every_route_refuses_missing_unknown_and_wrong_role_tokens() {
    let cluster = secured();
    let allowed =
        |method: &str, path: &str| hivemind_coordinator::auth::roles_for(&method.to_uppercase(), path);
    for (method, path) in ROUTES {
        let url = format!(
            "{}{}",
            cluster.url,
            path.replace("{module_id}", &format!("sha256:{}", "0".repeat(64)))
                .replace("{task_id}", "no-such-task")
                .replace("{worker_id}", "no-such-worker")
        );
        let Some(roles) = allowed(method, path) else {
            assert_eq!(call(method, &url, None).0, 200, "{method} {path} is open");
            continue;
        };
        let (status, body) = call(method, &url, None);
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{method} {path}");
        let (status, _) = call(method, &url, Some("not-a-token-anyone-knows"));
        assert_eq!(status, 401, "{method} {path} with an unknown token");
        for (role, token) in [("client", CLIENT), ("worker", WORKER), ("admin", ADMIN)] {
            let (status, body) = call(method, &url, Some(token));
            if roles.iter().any(|r| r.as_str() == role) {
                assert!(status != 401 && status != 403, "{role} may {method} {path}: got {status} {body}");
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (403, Some("forbidden")),
                    "{role} {method} {path}"
                );
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(role) && message.contains("token"), "{message}");
            }
        }
    }
}

#[test]
fn a_cluster_with_tokens_runs_a_task_end_to_end() {
    let mut cluster = secured();
    // A worker with the worker token registers and runs; one with a client token is refused.
    cluster.add_worker(1, &["--token", WORKER]);
    cluster.add_worker(1, &["--token", CLIENT, "--name", "impostor"]);
    let listed = || {
        let (status, body) = call("GET", &format!("{}/v1/workers", cluster.url), Some(ADMIN));
        assert_eq!(status, 200);
        body["workers"].as_array().cloned().unwrap_or_default()
    };
    poll_until(Duration::from_secs(20), || !listed().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(listed().iter().all(|w| w["name"] != "impostor"), "a client token cannot register a worker");

    let module = crate::program(hivemind_guest_programs::WORDCOUNT);
    let input = cluster.data_dir.path().join("text.txt");
    std::fs::write(&input, "to be or not to be").expect("write input");
    let run = |token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.env("HIVEMIND_COORDINATOR", &cluster.url).env_remove("HIVEMIND_TOKEN");
        if let Some(token) = token {
            cmd.env("HIVEMIND_TOKEN", token);
        }
        cmd.args(["task", "submit", "--module"]).arg(&module).arg("--input").arg(&input);
        cmd.args(["--split", "--reduce", "--wait"]).output().expect("run hivemind")
    };
    let out = run(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("bearer token"), "{stderr}");
    let out = run(Some(WORKER));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("worker token"));
    let out = run(Some(CLIENT));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"be\":2") || stdout.contains("\"be\": 2"), "{stdout}");
}

#[test]
fn a_non_loopback_address_without_tokens_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(BIN)
        .args(["coordinator", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("HIVEMIND_CLIENT_TOKEN")
        .env_remove("HIVEMIND_WORKER_TOKEN")
        .env_remove("HIVEMIND_ADMIN_TOKEN")
        .output()
        .expect("run hivemind");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on `0.0.0.0:0` without tokens") && stderr.contains("--insecure"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    let short = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--client-token", "short", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run hivemind");
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("at least 16"));
}

#[test]
fn a_stalled_request_body_times_out() {
    use std::io::{Read, Write};
    let cluster = Cluster::coordinator_with(&["--body-timeout", "300ms"]);
    let addr = cluster.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    // Promise 100 bytes, send one, then stall.
    write!(stream, "POST /v1/tasks HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{")
        .expect("send");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).expect("an answer before the client gives up");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"), "{answer}");
    // The server is fine, and nothing was created.
    let (status, body) = call("GET", &format!("{}/v1/tasks", cluster.url), None);
    assert_eq!((status, body["tasks"].as_array().map(Vec::len)), (200, Some(0)));
}

/// A CA, and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

#[test]
fn tls_with_a_trusted_ca_runs_a_task_and_untrusted_clients_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = certificates(dir.path());
    let (cert, key, ca) = (cert.display().to_string(), key.display().to_string(), ca.display().to_string());
    let mut cluster = Cluster::coordinator_with(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--client-token",
        CLIENT,
        "--worker-token",
        WORKER,
    ]);
    assert!(cluster.url.starts_with("https://127.0.0.1:"), "{}", cluster.url);
    cluster.add_worker(1, &["--token", WORKER, "--ca-cert", &ca]);
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .env("HIVEMIND_COORDINATOR", &cluster.url)
            .env("HIVEMIND_TOKEN", CLIENT)
            .args(args)
            .output()
            .expect("run hivemind")
    };
    poll_until(Duration::from_secs(20), || {
        let out = cli(&["--ca-cert", &ca, "--json", "worker", "list"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"alive\"")
    });
    let input = dir.path().join("text.txt");
    std::fs::write(&input, "tls tls tls").expect("write input");
    let module = hivemind_guest_programs::WORDCOUNT;
    let input = input.display().to_string();
    let out = cli(&[
        "--ca-cert",
        &ca,
        "task",
        "submit",
        "--module",
        module,
        "--input",
        &input,
        "--split",
        "--reduce",
        "--wait",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"tls\""),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the CA the certificate is not trusted; plain HTTP gets no answer from the TLS port.
    let out = cli(&["task", "list"]);
    assert!(!out.status.success(), "an untrusted certificate must fail");
    let plain = cluster.url.replacen("https://", "http://", 1);
    let out = Command::new(BIN)
        .args(["--coordinator", &plain, "--token", CLIENT, "task", "list"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let bad = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--tls-cert", &ca, "--tls-key", &cert, "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run hivemind");
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn a_tenants_client_sees_only_its_tenants_tasks() {
    use sha2::Digest;
    const ACME: &str = "acme-client-token-000001";
    const GLOBEX: &str = "globex-client-token-00002";
    let dir = tempfile::tempdir().expect("temp dir");
    let hashed = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!(
            "# tenants\nclient sha256:{} tenant=acme\nclient sha256:{} tenant=globex\n",
            hashed(ACME),
            hashed(GLOBEX)
        ),
    )
    .expect("write token file");
    let file = file.display().to_string();
    let mut cluster = Cluster::coordinator_with(&[
        "--token-file",
        &file,
        "--client-token",
        CLIENT,
        "--worker-token",
        WORKER,
    ]);
    cluster.add_worker(1, &["--token", WORKER]);
    let url = |path: &str| format!("{}{path}", cluster.url);
    let module = hivemind_guest_programs::read(hivemind_guest_programs::ECHO);
    let (status, _) =
        crate::reqwest::send_with_token_body("POST", &url("/v1/modules"), ACME, module, "application/wasm");
    assert!(status == 201 || status == 200, "{status}");
    let module_id =
        format!("sha256:{}", hashed_bytes(&hivemind_guest_programs::read(hivemind_guest_programs::ECHO)));
    let submit = |token: &str, key: &str| {
        let body = serde_json::json!({ "module_id": module_id, "inputs": ["hi"], "idempotency_key": key });
        crate::reqwest::send_with_token_body(
            "POST",
            &url("/v1/tasks"),
            token,
            body.to_string().into_bytes(),
            "application/json",
        )
    };
    let (status, acme_task) = submit(ACME, "same-key");
    assert_eq!(status, 201, "{acme_task}");
    let id = acme_task["task_id"].as_str().expect("task id").to_owned();
    assert_eq!(acme_task["tenant"], "acme");
    // Another tenant's same idempotency key makes its own task.
    let (status, globex_task) = submit(GLOBEX, "same-key");
    assert_eq!(status, 201, "{globex_task}");
    assert_ne!(globex_task["task_id"], acme_task["task_id"]);
    poll_until(Duration::from_secs(20), || {
        call("GET", &url(&format!("/v1/tasks/{id}")), Some(ACME)).1["state"] == "succeeded"
    });
    for path in [
        format!("/v1/tasks/{id}"),
        format!("/v1/tasks/{id}/result"),
        format!("/v1/tasks/{id}/subtasks"),
        format!("/v1/tasks/{id}/wait?timeout_ms=1"),
    ] {
        let (status, body) = call("GET", &url(&path), Some(GLOBEX));
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("task_not_found")), "{path}");
        assert_eq!(call("GET", &url(&path), Some(ACME)).0, 200, "{path}");
        assert_eq!(
            call("GET", &url(&path), Some(CLIENT)).0,
            200,
            "a client token of no tenant sees all: {path}"
        );
    }
    assert_eq!(call("POST", &url(&format!("/v1/tasks/{id}/cancel")), Some(GLOBEX)).0, 404);
    let ids = |token: &str| -> Vec<String> {
        let tasks =
            call("GET", &url("/v1/tasks"), Some(token)).1["tasks"].as_array().cloned().unwrap_or_default();
        tasks.iter().map(|t| t["task_id"].as_str().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(ids(ACME), vec![id.clone()]);
    assert!(!ids(GLOBEX).contains(&id));
    assert_eq!(ids(CLIENT).len(), 2);
}

fn hashed_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A small deterministic generator (xorshift), so a failing case can be replayed from its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Malformed bodies: garbage, broken and mistyped JSON, deep nesting, huge numbers, bad UTF-8.
fn malformed_bodies(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"module_id\": 7, \"inputs\": \"x\"}".to_vec(),
        b"{\"inputs\": [], \"priority\": 1e400}".to_vec(),
        b"{\"name\": \"w\", \"slots\": -1, \"memory_bytes\": 18446744073709551616, \"cores\": 1}".to_vec(),
        b"{\"running\": \"many\", \"extra\": true}".to_vec(),
        b"{\"max\": 4294967296}".to_vec(),
        b"{\"completions\": [{\"subtask_id\": \"x\"}]}".to_vec(),
        b"\xff\xfe\x00{\"a\":1}".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{{\"module_id\": \"sha256:{}\", \"inputs\": [{{\"base64\": \"!!!\"}}]}}", "0".repeat(64))
            .into_bytes(),
    ];
    for _ in 0..12 {
        let n = (rng.next() % 2048) as usize;
        bodies.push(rng.bytes(n));
    }
    bodies
}

#[test]
fn malformed_requests_to_every_route_get_4xx_and_change_nothing() {
    let cluster = Cluster::coordinator_only();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bodies = malformed_bodies(&mut rng);
    let ids =
        ["x".repeat(10_000), "%00".into(), "..%2F..%2Fetc".into(), "sha256:zz".into(), "\u{1F600}".into()];
    let queries = ["", "?limit=-1", "?timeout_ms=99999999999999999999", "?state=bogus&x=1", "?offset=%FF"];
    let mut sent = 0;
    for (method, path) in ROUTES {
        let method = method.to_uppercase();
        for (i, id) in ids.iter().enumerate() {
            let concrete =
                path.replace("{module_id}", id).replace("{task_id}", id).replace("{worker_id}", id);
            let url = format!("{}{concrete}{}", cluster.url, queries[i % queries.len()]);
            let body = &bodies[(i * 7 + sent) % bodies.len()];
            let (status, answer) =
                crate::reqwest::send(&method, &url, Some((body.clone(), "application/json")));
            sent += 1;
            assert!(status < 500, "{method} {url} → {status} {answer}");
            if status >= 400 {
                assert!(
                    answer["error"]["code"].is_string(),
                    "{method} {url}: a JSON error body, got {answer}"
                );
            }
        }
        if method == "GET" {
            continue;
        }
        for body in &bodies {
            let concrete = path
                .replace("{module_id}", &format!("sha256:{}", "0".repeat(64)))
                .replace("{task_id}", "t1")
                .replace("{worker_id}", "w1");
            let url = format!("{}{concrete}", cluster.url);
            let (status, answer) =
                crate::reqwest::send(&method, &url, Some((body.clone(), "application/json")));
            sent += 1;
            assert!(
                (400..500).contains(&status),
                "{method} {path} with a malformed body → {status} {answer}"
            );
            assert!(answer["error"]["code"].is_string(), "{method} {path}: {answer}");
        }
    }
    assert!(sent > 300, "{sent} requests");
    // Nothing was created, and the server still serves.
    let (_, tasks) = crate::reqwest::send("GET", &format!("{}/v1/tasks", cluster.url), None);
    let (_, workers) = crate::reqwest::send("GET", &format!("{}/v1/workers", cluster.url), None);
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "{tasks}");
    assert_eq!(workers["workers"].as_array().map(Vec::len), Some(0), "{workers}");
    assert_eq!(cluster.metric("hivemind_tasks_submitted_total"), 0.0);
    assert_eq!(crate::reqwest::send("GET", &format!("{}/healthz", cluster.url), None).0, 200);
}

/// The path of a compiled WAT fixture of `guest-examples/wat`.
fn fixture(name: &str) -> String {
    let dir =
        std::path::Path::new(hivemind_guest_programs::WAT_UNREACHABLE).parent().expect("fixture folder");
    dir.join(format!("{name}.wasm")).to_string_lossy().into_owned()
}

#[test]
fn hostile_guests_fail_with_their_error_kind_and_leave_the_worker_healthy() {
    use hivemind_client::{Blob, LimitsSpec, SubmitTask, TaskState};
    let mut cluster = Cluster::start(1, 2);
    cluster.wait_for_workers(1);
    let client = cluster.client();
    let tight = LimitsSpec {
        fuel: Some(1 << 40),
        memory_bytes: Some(32 << 20),
        timeout_ms: Some(300),
        output_bytes: Some(1 << 20),
        log_bytes: None,
    };
    let fixtures = [
        ("infinite-loop", "timeout", LimitsSpec { fuel: Some(10_000_000_000_000), ..tight }),
        ("infinite-loop", "fuel_exhausted", LimitsSpec { fuel: Some(1_000_000), ..tight }),
        ("memory-bomb", "memory_limit", tight),
        ("deep-recursion", "trap", tight),
        ("huge-output", "output_too_large", tight),
        ("unreachable", "trap", tight),
        ("exit-3", "exit_code", tight),
        ("open-host-file", "exit_code", tight),
        ("open-socket", "exit_code", tight),
        ("sleep-forever", "timeout", tight),
        ("clock-spin", "timeout", LimitsSpec { fuel: Some(10_000_000_000_000), ..tight }),
    ];
    let mut cases: Vec<(String, &str, &str, LimitsSpec)> =
        fixtures.into_iter().map(|(name, kind, limits)| (fixture(name), "", kind, limits)).collect();
    // A component asking WASI 0.2 to sleep an hour.
    cases.push((hivemind_guest_programs::SLEEPY_COMPONENT.into(), "3600000", "timeout", tight));
    // Submit them all at once: two slots run the hostile guests side by side.
    let mut submitted = Vec::new();
    for (path, input, kind, limits) in cases {
        let module_id = client.upload_module(hivemind_guest_programs::read(&path)).expect("upload").module_id;
        let task = client
            .submit_task(&SubmitTask {
                module_id,
                inputs: vec![Blob::from(input)],
                limits,
                ..SubmitTask::default()
            })
            .expect("submit");
        let name = std::path::Path::new(&path).file_stem().map(|s| s.to_string_lossy().into_owned());
        submitted.push((name.unwrap_or_default(), kind, task.task_id));
    }
    for (name, kind, task_id) in &submitted {
        let status = client.wait(task_id, Some(Duration::from_secs(60)), |_| {}).expect("finishes");
        assert_eq!(status.state, TaskState::Failed, "{name}");
        let error = status.error.unwrap_or_default();
        assert!(error.contains(kind), "{name}: expected {kind}, got {error}");
    }
    // Modules the host cannot run are refused at upload, with the reason.
    for (name, reason) in [("unknown-import", "unknown import"), ("not-a-command", "_start")] {
        let err = client.upload_module(hivemind_guest_programs::read(&fixture(name))).expect_err("refused");
        assert_eq!(err.code(), Some("invalid_module"), "{name}: {err}");
        assert!(err.to_string().contains(reason), "{name}: {err}");
    }
    // The same worker process is alive, registered, and runs a normal task correctly.
    assert!(cluster.workers[0].try_wait().expect("worker status").is_none(), "the worker survived");
    let echo = client
        .upload_module(hivemind_guest_programs::read(hivemind_guest_programs::ECHO))
        .expect("upload")
        .module_id;
    let inputs: Vec<Blob> = (0..50).map(|i| Blob::from(format!("still healthy {i}").as_str())).collect();
    let task = client
        .submit_task(&SubmitTask { module_id: echo, inputs: inputs.clone(), ..SubmitTask::default() })
        .expect("submit");
    let status = client.wait(&task.task_id, Some(Duration::from_secs(60)), |_| {}).expect("finishes");
    assert_eq!(status.state, TaskState::Succeeded);
    let outputs = client.get_result(&task.task_id).expect("result").outputs.expect("outputs");
    assert_eq!(outputs.into_iter().map(|o| o.expect("output")).collect::<Vec<_>>(), inputs);
    let workers = client.list_workers().expect("workers").workers;
    assert_eq!(workers.len(), 1, "no re-registration: {workers:?}");
    assert_eq!(workers[0].failed, submitted.len() as u64, "{workers:?}");
}
