//! Fixtures: start a coordinator on port 0 and workers as child processes, run the CLI, talk to the API.

use hivemind_client::blocking::Client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hivemind");

/// A compiled-module cache shared by every worker of the test run, so each module compiles once.
fn module_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

/// A coordinator process and its workers; everything is killed on drop.
pub struct Cluster {
    pub url: String,
    pub data_dir: tempfile::TempDir,
    coordinator: Child,
    pub workers: Vec<Child>,
    /// Extra coordinator flags, kept for restarts.
    coordinator_args: Vec<String>,
}

impl Cluster {
    /// A coordinator with fast failure detection (heartbeat 200 ms, dead after 1 s) and no workers.
    pub fn coordinator_only() -> Cluster {
        Cluster::coordinator_with(&[])
    }

    /// A coordinator started with extra flags, and no workers.
    pub fn coordinator_with(args: &[&str]) -> Cluster {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (coordinator, url) = spawn_coordinator(data_dir.path(), "127.0.0.1:0", &args);
        Cluster { url, data_dir, coordinator, workers: Vec::new(), coordinator_args: args }
    }

    /// SIGKILLs the coordinator (no chance to flush or say goodbye).
    pub fn kill_coordinator(&mut self) {
        self.coordinator.kill().expect("SIGKILL coordinator");
        self.coordinator.wait().expect("reap coordinator");
    }

    /// Starts a coordinator again on the same address and data directory.
    pub fn restart_coordinator(&mut self) {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let (child, url) = spawn_coordinator(self.data_dir.path(), &addr, &self.coordinator_args);
        assert_eq!(url, self.url);
        self.coordinator = child;
    }

    /// A coordinator and `n` workers of `slots` slots each, all registered.
    pub fn start(n: usize, slots: u32) -> Cluster {
        let mut cluster = Cluster::coordinator_only();
        for _ in 0..n {
            cluster.add_worker(slots, &[]);
        }
        cluster.wait_for_workers(n);
        cluster
    }

    /// Process id of the `i`th worker started.
    pub fn worker_pid(&self, i: usize) -> u32 {
        self.workers[i].id()
    }

    /// SIGKILLs the `i`th worker and forgets it.
    pub fn kill_worker(&mut self, i: usize) {
        let mut worker = self.workers.remove(i);
        worker.kill().expect("SIGKILL worker");
        worker.wait().expect("reap worker");
    }

    pub fn add_worker(&mut self, slots: u32, extra: &[&str]) {
        let mut cmd = Command::new(BIN);
        cmd.arg("worker");
        if !extra.contains(&"--coordinator") {
            cmd.args(["--coordinator", &self.url]);
        }
        cmd.args(["--slots", &slots.to_string()]);
        if !extra.contains(&"--cache-dir") {
            cmd.arg("--cache-dir").arg(module_cache());
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start worker");
        self.workers.push(child);
    }

    pub fn wait_for_workers(&self, n: usize) {
        let client = self.client();
        poll_until(Duration::from_secs(20), || {
            client.list_workers().is_ok_and(|w| w.workers.iter().filter(|w| w.state == "alive").count() >= n)
        });
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url).expect("client")
    }

    /// Runs the CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("HIVEMIND_COORDINATOR", &self.url).output().expect("run hivemind")
    }

    /// The value of a Prometheus sample, e.g. `hivemind_module_downloads_total`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = reqwest::blocking_get_text(&format!("{}/metrics", self.url));
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric `{name}` missing from:\n{text}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
    }
}

/// Sends a signal (`STOP`, `CONT`, `TERM`, …) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Starts `hivemind coordinator` and reads the URL it prints (it listens on a port chosen at run time).
pub fn spawn_coordinator(data_dir: &Path, listen: &str, extra: &[String]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--json",
            "coordinator",
            "--listen",
            listen,
            "--heartbeat",
            "200ms",
            "--dead-after",
            "1s",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start coordinator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("coordinator prints its URL");
    let doc: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line `{line}`: {e}"));
    let url = doc["listening"].as_str().expect("listening URL").to_owned();
    (child, url)
}

/// Polls `f` until it holds, panicking after `timeout`.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn program(path: &str) -> PathBuf {
    PathBuf::from(path)
}

/// Tiny blocking HTTP helpers on top of reqwest's async client.
pub mod reqwest {
    use std::sync::OnceLock;

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio")
        })
    }

    /// Sends a request with an optional bearer token and body; returns the status and the body parsed as
    /// JSON (or `null`).
    pub fn request(
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<(Vec<u8>, &str)>,
    ) -> (u16, serde_json::Value) {
        runtime().block_on(async {
            let client = ::reqwest::Client::new();
            let mut req = client.request(method.parse().expect("method"), url);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            if let Some((bytes, content_type)) = body {
                req = req.header("content-type", content_type).body(bytes);
            }
            let resp = req.send().await.expect("request sent");
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.expect("body");
            (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        })
    }

    /// Sends a request without a token.
    pub fn send(method: &str, url: &str, body: Option<(Vec<u8>, &str)>) -> (u16, serde_json::Value) {
        request(method, url, None, body)
    }

    /// Sends a bodiless request with an optional bearer token.
    pub fn send_with_token(method: &str, url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        request(method, url, token, None)
    }

    /// Sends a body with a bearer token.
    pub fn send_with_token_body(
        method: &str,
        url: &str,
        token: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> (u16, serde_json::Value) {
        request(method, url, Some(token), Some((body, content_type)))
    }

    /// The status of a GET, or `None` when nothing answers.
    pub fn status_of(url: &str) -> Option<u16> {
        runtime().block_on(async { ::reqwest::get(url).await.ok().map(|r| r.status().as_u16()) })
    }

    pub fn blocking_get_text(url: &str) -> String {
        runtime().block_on(async { ::reqwest::get(url).await.expect("get").text().await.expect("text") })
    }
}
