//! `hivemind-client`: the Rust client of the coordinator's HTTP API (SPEC §5).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hivemind_client::Error> {
//! use hivemind_client::{Client, SubmitTask};
//! let client = Client::new("http://127.0.0.1:5000")?;
//! let module = client.upload_module(std::fs::read("echo.wasm")?).await?;
//! let task = client
//!     .submit_task(&SubmitTask { module_id: module.module_id, inputs: vec!["hi".into()], ..Default::default() })
//!     .await?;
//! client.wait(&task.task_id, None, |status| println!("{:?}", status.subtasks)).await?;
//! let result = client.get_result(&task.task_id).await?;
//! # Ok(()) }
//! ```
//!
//! [`Client`] is async; [`blocking::Client`] wraps it for synchronous code. The same client serves workers
//! (register, heartbeat, lease, complete). A comma-separated URL list fails over to the next coordinator
//! when one stops answering.

pub mod blocking;

pub use hivemind_proto::api::*;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String },
    /// No coordinator could be reached, or none answered in time. `maybe_delivered` is false when the
    /// connection itself failed (the request certainly did not arrive), true when the request was sent and
    /// the answer was lost: the coordinator may have acted on it.
    #[error("cannot reach the coordinator at {url}: {message}")]
    Unreachable { url: String, message: String, maybe_delivered: bool },
    #[error("invalid coordinator URL `{0}`")]
    InvalidUrl(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("timed out waiting for task `{0}`")]
    Timeout(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The API error code, when the coordinator answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the call failed because no coordinator answered (worth retrying later).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// Whether the request may have been carried out although no answer arrived.
    pub fn maybe_delivered(&self) -> bool {
        matches!(self, Error::Unreachable { maybe_delivered: true, .. })
    }
}

/// An async coordinator client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// How a [`Client`] talks to the coordinator besides its URL.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM certificates to trust for `https://` coordinators, besides the system's roots (`--ca-cert`).
    pub ca_cert_pem: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Inner {
    urls: Vec<String>,
    /// Index of the coordinator that answered last; failover moves it on.
    current: AtomicUsize,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client for `url`, or for a comma-separated list of coordinator URLs tried in order.
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::with_token(url, None)
    }

    /// Like [`Client::new`], sending `token` as a bearer token.
    pub fn with_token(url: &str, token: Option<String>) -> Result<Self, Error> {
        Self::with_options(url, ClientOptions { token, ..ClientOptions::default() })
    }

    /// Like [`Client::new`], with a token and extra trusted certificates.
    pub fn with_options(url: &str, options: ClientOptions) -> Result<Self, Error> {
        let ClientOptions { token, ca_cert_pem } = options;
        let urls: Vec<String> = url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() || urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
            return Err(Error::InvalidUrl(url.to_owned()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32);
        if let Some(pem) = ca_cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Protocol(format!("invalid CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Protocol("invalid CA certificate: no PEM certificate in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Client { inner: Arc::new(Inner { urls, current: AtomicUsize::new(0), http, token }) })
    }

    /// The coordinator URL in use.
    pub fn url(&self) -> &str {
        &self.inner.urls[self.inner.current.load(Ordering::Relaxed) % self.inner.urls.len()]
    }

    /// Sends one request, failing over to the next coordinator on connection errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &'static str)>,
        timeout: Duration,
    ) -> Result<reqwest::Response, Error> {
        let n = self.inner.urls.len();
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.inner.urls[idx]);
            let mut req = self.inner.http.request(method.clone(), &url).timeout(timeout);
            if let Some(token) = &self.inner.token {
                req = req.bearer_auth(token);
            }
            if let Some((bytes, content_type)) = &body {
                req = req.header(reqwest::header::CONTENT_TYPE, *content_type).body(bytes.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    self.inner.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    let maybe_delivered = !e.is_connect();
                    last = Some(Error::Unreachable { url, message: error_chain(&e), maybe_delivered });
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidUrl(String::new())))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(|v| (v, "application/json")))
            .transpose()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let resp = self.send(method, path, body, timeout).await?;
        decode(resp).await
    }

    const TIMEOUT: Duration = Duration::from_secs(60);
    /// Longest single long-poll of `wait_result`.
    const LONG_POLL: Duration = Duration::from_secs(10);

    // ---- modules ----

    /// Uploads a module unless the coordinator already has it (checked by hash first).
    pub async fn upload_module(&self, bytes: Vec<u8>) -> Result<ModuleInfo, Error> {
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        match self.module_info(&id).await {
            Ok(info) => return Ok(info),
            Err(Error::Api { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        let resp = self
            .send(Method::PUT, &format!("/v1/modules/{id}"), Some((bytes, "application/wasm")), Self::TIMEOUT)
            .await?;
        decode(resp).await
    }

    pub async fn module_info(&self, id: &str) -> Result<ModuleInfo, Error> {
        self.call(Method::GET, &format!("/v1/modules/{id}/info"), None::<&()>, Self::TIMEOUT).await
    }

    /// Downloads a module's bytes (workers verify the hash themselves).
    pub async fn download_module(&self, id: &str) -> Result<Vec<u8>, Error> {
        let resp = self.send(Method::GET, &format!("/v1/modules/{id}"), None, Self::TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(resp.bytes().await.map_err(|e| Error::Protocol(error_chain(&e)))?.to_vec())
    }

    // ---- tasks ----

    /// Submits a task; returns its status (with `task_id`).
    pub async fn submit_task(&self, task: &SubmitTask) -> Result<TaskStatus, Error> {
        self.call(Method::POST, "/v1/tasks", Some(task), Self::TIMEOUT).await
    }

    pub async fn status(&self, task_id: &str) -> Result<TaskStatus, Error> {
        self.call(Method::GET, &format!("/v1/tasks/{task_id}"), None::<&()>, Self::TIMEOUT).await
    }

    /// Waits until the task finishes (or `timeout` passes), calling `progress` with each status seen.
    pub async fn wait(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
        mut progress: impl FnMut(&TaskStatus),
    ) -> Result<TaskStatus, Error> {
        let started = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
            let poll = left.unwrap_or(Duration::from_millis(250)).min(Duration::from_millis(250));
            let path = format!("/v1/tasks/{task_id}/wait?timeout_ms={}", poll.as_millis());
            let status: TaskStatus = self.call(Method::GET, &path, None::<&()>, Self::TIMEOUT).await?;
            progress(&status);
            if status.state.is_finished() {
                return Ok(status);
            }
            if left.is_some_and(|l| l.is_zero()) {
                return Err(Error::Timeout(task_id.to_owned()));
            }
        }
    }

    /// The aggregated result of a finished task (an error if it failed or is still running).
    pub async fn get_result(&self, task_id: &str) -> Result<TaskResult, Error> {
        self.call(Method::GET, &format!("/v1/tasks/{task_id}/result"), None::<&()>, Self::TIMEOUT).await
    }

    /// Waits for the task to finish (up to `timeout`, or forever with `None`) and returns its result, in
    /// one request when it finishes within a poll: the coordinator long-polls `result?wait_ms=`. A failed
    /// task is `Error::Api` with code `task_failed`; running out of time is `Error::Timeout`.
    pub async fn wait_result(&self, task_id: &str, timeout: Option<Duration>) -> Result<TaskResult, Error> {
        let started = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
            let poll = left.unwrap_or(Self::LONG_POLL).min(Self::LONG_POLL).max(Duration::from_millis(1));
            let path = format!("/v1/tasks/{task_id}/result?wait_ms={}", poll.as_millis());
            match self.call(Method::GET, &path, None::<&()>, Self::TIMEOUT + poll).await {
                Err(Error::Api { code, .. }) if code == "task_not_finished" => {
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(Error::Timeout(task_id.to_owned()));
                    }
                }
                other => return other,
            }
        }
    }

    pub async fn cancel(&self, task_id: &str) -> Result<TaskStatus, Error> {
        self.call(Method::POST, &format!("/v1/tasks/{task_id}/cancel"), None::<&()>, Self::TIMEOUT).await
    }

    /// A page of a task's subtasks (phase then index order) with their attempts, usage and errors.
    pub async fn list_subtasks(&self, task_id: &str, offset: u64, limit: u32) -> Result<SubtaskList, Error> {
        let path = format!("/v1/tasks/{task_id}/subtasks?offset={offset}&limit={limit}");
        self.call(Method::GET, &path, None::<&()>, Self::TIMEOUT).await
    }

    /// Lists tasks, newest first, optionally only those in `state`.
    pub async fn list_tasks(&self, state: Option<TaskState>, limit: u32) -> Result<TaskList, Error> {
        let mut path = format!("/v1/tasks?limit={limit}");
        if let Some(state) = state {
            path.push_str(&format!("&state={state}"));
        }
        self.call(Method::GET, &path, None::<&()>, Self::TIMEOUT).await
    }

    // ---- workers ----

    pub async fn list_workers(&self) -> Result<WorkerList, Error> {
        self.call(Method::GET, "/v1/workers", None::<&()>, Self::TIMEOUT).await
    }

    pub async fn register(&self, worker: &RegisterWorker) -> Result<Registered, Error> {
        self.call(Method::POST, "/v1/workers", Some(worker), Self::TIMEOUT).await
    }

    pub async fn heartbeat(&self, worker_id: &str, beat: &Heartbeat) -> Result<HeartbeatReply, Error> {
        self.call(
            Method::POST,
            &format!("/v1/workers/{worker_id}/heartbeat"),
            Some(beat),
            Duration::from_secs(10),
        )
        .await
    }

    pub async fn lease(&self, worker_id: &str, req: &LeaseRequest) -> Result<Lease, Error> {
        let timeout = Duration::from_millis(req.wait_ms) + Duration::from_secs(30);
        self.call(Method::POST, &format!("/v1/workers/{worker_id}/lease"), Some(req), timeout).await
    }

    pub async fn complete(&self, worker_id: &str, batch: &CompleteBatch) -> Result<CompleteReply, Error> {
        self.call(Method::POST, &format!("/v1/workers/{worker_id}/complete"), Some(batch), Self::TIMEOUT)
            .await
    }

    pub async fn deregister(&self, worker_id: &str) -> Result<(), Error> {
        let _: serde_json::Value = self
            .call(Method::DELETE, &format!("/v1/workers/{worker_id}"), None::<&()>, Self::TIMEOUT)
            .await?;
        Ok(())
    }

    /// `GET` of any path, for tools (metrics, health).
    pub async fn get_text(&self, path: &str) -> Result<String, Error> {
        let resp = self.send(Method::GET, path, None, Self::TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.text().await.map_err(|e| Error::Protocol(error_chain(&e)))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

async fn api_error(resp: reqwest::Response) -> Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => {
            Error::Api { status: status.as_u16(), code: body.error.code, message: body.error.message }
        }
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
            message: if text.is_empty() { status.to_string() } else { text },
        },
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, Error> {
    let status = resp.status();
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        return Err(api_error(resp).await);
    }
    let url = resp.url().to_string();
    let bytes = resp.bytes().await.map_err(|e| Error::Unreachable {
        url,
        message: format!("the answer was cut off: {}", error_chain(&e)),
        maybe_delivered: true,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("invalid response body: {e}")))
}
