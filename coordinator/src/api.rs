//! The HTTP API (SPEC §5): routes, request validation, and the long-polling lease and wait endpoints.
//! Every error is an [`ApiError`] with a JSON body; nothing invalid reaches the store.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::metrics::Gauges;
use crate::store::placement::Candidate;
use crate::store::{NewTask, OUTPUT_PAGE, RetryPolicy, StoreError, SubtaskFilter, TaskFilter, labels_match};
use crate::{Coordinator, now_ms};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use hivemind_proto::api::{
    Blob, ClusterSummary, CompleteBatch, Heartbeat, Inputs, Lease, LeaseRequest, ModuleInfo, Outcome,
    QueueLevel, RegisterWorker, Registered, SubmitTask, SubtaskList, TaskList, TaskResult, TaskState,
    TaskStatus, WorkerInfo, WorkerList,
};
use hivemind_proto::units::format_size;
use hivemind_proto::{Limits, Phase};
use hivemind_runtime::ModuleId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type AppState = Arc<Coordinator>;
type ApiResult<T> = Result<T, ApiError>;

/// Every route, as `(method, path)`; the OpenAPI document lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/cluster"),
    ("post", "/v1/modules"),
    ("put", "/v1/modules/{module_id}"),
    ("get", "/v1/modules/{module_id}"),
    ("get", "/v1/modules/{module_id}/info"),
    ("post", "/v1/tasks"),
    ("get", "/v1/tasks"),
    ("get", "/v1/tasks/{task_id}"),
    ("get", "/v1/tasks/{task_id}/wait"),
    ("get", "/v1/tasks/{task_id}/result"),
    ("get", "/v1/tasks/{task_id}/subtasks"),
    ("post", "/v1/tasks/{task_id}/cancel"),
    ("post", "/v1/workers"),
    ("get", "/v1/workers"),
    ("delete", "/v1/workers/{worker_id}"),
    ("post", "/v1/workers/{worker_id}/heartbeat"),
    ("post", "/v1/workers/{worker_id}/lease"),
    ("post", "/v1/workers/{worker_id}/complete"),
];

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/cluster", get(cluster_summary))
        .route("/v1/modules", post(upload_module))
        .route("/v1/modules/{module_id}", put(put_module).get(download_module))
        .route("/v1/modules/{module_id}/info", get(module_info))
        .route("/v1/tasks", post(submit_task).get(list_tasks))
        .route("/v1/tasks/{task_id}", get(task_status))
        .route("/v1/tasks/{task_id}/wait", get(wait_task))
        .route("/v1/tasks/{task_id}/result", get(task_result))
        .route("/v1/tasks/{task_id}/subtasks", get(list_subtasks))
        .route("/v1/tasks/{task_id}/cancel", post(cancel_task))
        .route("/v1/workers", post(register_worker).get(list_workers))
        .route("/v1/workers/{worker_id}", axum::routing::delete(deregister_worker))
        .route("/v1/workers/{worker_id}/heartbeat", post(heartbeat))
        .route("/v1/workers/{worker_id}/lease", post(lease))
        .route("/v1/workers/{worker_id}/complete", post(complete))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::authenticate))
        .merge(crate::dashboard::routes())
        .fallback(|| async { ApiError::not_found("no_such_route", "no such route: see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Runs a point read of the store: inline when the store says its reads are cheap, else on the blocking
/// pool.
async fn read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Coordinator) -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    if state.store.inline_reads() { f(state).map_err(ApiError::from) } else { blocking(state, f).await }
}

/// Runs a short store write: inline when the store allows it and no long write is under way
/// ([`Coordinator::inline_write`]), which saves the hand-off of this thread's tokio core to another thread
/// that [`offload`] costs on every call; else like [`blocking`].
async fn quick<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Coordinator) -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    if state.inline_write() { f(state).map_err(ApiError::from) } else { blocking(state, f).await }
}

/// Runs a store call that may block (a write waits for the writer; a network database waits for its
/// answer), with [`offload`].
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Coordinator) -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    let state = state.clone();
    offload(move || f(&state)).await?.map_err(ApiError::from)
}

/// Runs blocking work. On a multi-threaded runtime it runs on this thread, which tokio gives up as a
/// worker meanwhile (`block_in_place`): no hand-off to the blocking pool and back, two thread wake-ups
/// fewer on the path of every request. On a current-thread runtime it goes to the blocking pool.
async fn offload<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        return Ok(tokio::task::block_in_place(f));
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("blocking call panicked: {e}")))
}

/// A request body as received: in memory, or in an anonymous temporary file once it grew past the
/// threshold given to [`receive_body`].
enum Received {
    Memory(Vec<u8>),
    File(std::fs::File),
}

/// Reads a body of at most `limit` bytes, within `timeout` (a stalled client cannot hold the request).
async fn read_body(body: Body, limit: usize, timeout: Duration, what: &str) -> ApiResult<Bytes> {
    match receive_body(body, limit, usize::MAX, timeout, what).await? {
        Received::Memory(bytes) => Ok(bytes.into()),
        // Nothing is spooled above `usize::MAX` bytes.
        Received::File(_) => Err(ApiError::internal(format!("{what} was spooled to a file"))),
    }
}

/// Reads a body of at most `limit` bytes within `timeout`, keeping it in memory up to `spool_above` bytes
/// and moving it to a temporary file (in `$TMPDIR`) beyond that.
async fn receive_body(
    body: Body,
    limit: usize,
    spool_above: usize,
    timeout: Duration,
    what: &str,
) -> ApiResult<Received> {
    use futures::StreamExt;
    use std::io::{Seek, Write};
    let spool_failed = |e: std::io::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "spool_failed",
            format!("cannot hold {what} in a temporary file: {e}"),
        )
    };
    let hint = axum::body::HttpBody::size_hint(&body).lower() as usize;
    let receive = async {
        let mut stream = body.into_data_stream();
        let mut memory = Vec::with_capacity(hint.min(limit).min(spool_above));
        let mut file: Option<std::fs::File> = None;
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("bad_body", format!("cannot read the request body: {e}"))
            })?;
            total += chunk.len();
            if total > limit {
                return Err(ApiError::too_large(
                    "body_too_large",
                    format!("{what} exceeds the limit of {limit} bytes"),
                ));
            }
            match &mut file {
                Some(file) => file.write_all(&chunk).map_err(spool_failed)?,
                None if total > spool_above => {
                    let mut spool = tempfile::tempfile().map_err(spool_failed)?;
                    spool.write_all(&memory).and_then(|()| spool.write_all(&chunk)).map_err(spool_failed)?;
                    memory = Vec::new();
                    file = Some(spool);
                }
                None => memory.extend_from_slice(&chunk),
            }
        }
        match file {
            Some(mut file) => {
                file.rewind().map_err(spool_failed)?;
                Ok(Received::File(file))
            }
            None => Ok(Received::Memory(memory)),
        }
    };
    tokio::time::timeout(timeout, receive).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("{what} did not arrive within {} s", timeout.as_secs_f64()),
        )
    })?
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}"))
}

async fn json_body<T: DeserializeOwned>(state: &AppState, body: Body) -> ApiResult<T> {
    let bytes =
        read_body(body, state.config.caps.max_body_bytes, state.config.caps.body_timeout, "the request body")
            .await?;
    serde_json::from_slice(&bytes).map_err(invalid_json)
}

/// Submit bodies larger than this are received into a temporary file and parsed from there, their inputs
/// moving on to a file of their own ([`Inputs`]): a million-input task does not sit in memory.
const SUBMIT_SPOOL_BYTES: usize = 1 << 20;

/// The body of `POST /v1/tasks`.
async fn submit_body(state: &AppState, body: Body) -> ApiResult<SubmitTask<Inputs>> {
    let caps = &state.config.caps;
    match receive_body(body, caps.max_body_bytes, SUBMIT_SPOOL_BYTES, caps.body_timeout, "the request body")
        .await?
    {
        Received::Memory(bytes) => serde_json::from_slice(&bytes).map_err(invalid_json),
        Received::File(file) => {
            offload(move || {
                serde_json::from_reader(std::io::BufReader::with_capacity(1 << 16, file))
                    .map_err(invalid_json)
            })
            .await?
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

fn parse_module_id(text: &str) -> ApiResult<ModuleId> {
    text.parse().map_err(|e: String| ApiError::bad_request("invalid_module_id", e))
}

fn validate_id(text: &str, what: &'static str) -> ApiResult<()> {
    let ok =
        !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok { Ok(()) } else { Err(ApiError::bad_request(what, format!("`{text}` is not a valid id"))) }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// The store readings behind `/metrics` and `/v1/cluster`: every worker, and the queue by priority.
async fn read_gauges(state: &AppState) -> ApiResult<(Vec<WorkerInfo>, Gauges)> {
    blocking(state, |c| {
        let workers = c.store.list_workers()?;
        let alive = workers.iter().filter(|w| w.state == "alive");
        let gauges = Gauges {
            queue_by_priority: c.store.queue_depth()?,
            workers_alive: alive.clone().count() as u64,
            slots_total: alive.clone().map(|w| u64::from(w.slots)).sum(),
            subtasks_running: alive.map(|w| u64::from(w.running)).sum(),
        };
        Ok((workers, gauges))
    })
    .await
}

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let (_, gauges) = read_gauges(&state).await?;
    let text = state.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn cluster_summary(State(state): State<AppState>) -> ApiResult<Response> {
    let (workers, gauges) = read_gauges(&state).await?;
    let mut queue_by_priority: Vec<QueueLevel> =
        gauges.queue_by_priority.iter().map(|&(priority, queued)| QueueLevel { priority, queued }).collect();
    queue_by_priority.sort_by_key(|level| std::cmp::Reverse(level.priority));
    let summary = ClusterSummary {
        workers_alive: gauges.workers_alive,
        workers_total: workers.len() as u64,
        slots: gauges.slots_total,
        slots_in_use: gauges.subtasks_running.min(gauges.slots_total),
        queued_total: queue_by_priority.iter().map(|level| level.queued).sum(),
        queue_by_priority,
        subtasks_succeeded: state.metrics.subtasks_succeeded.get(),
        subtasks_failed: state.metrics.subtasks_failed.get(),
        throughput: state.throughput(),
    };
    Ok(json(StatusCode::OK, &summary))
}

async fn openapi() -> impl IntoResponse {
    axum::Json(crate::openapi::document())
}

// ---- modules -------------------------------------------------------------------------------------------

async fn store_module(state: AppState, stated: Option<ModuleId>, body: Body) -> ApiResult<Response> {
    let bytes =
        read_body(body, state.config.caps.max_module_bytes, state.config.caps.body_timeout, "the module")
            .await?;
    let id = ModuleId::of(&bytes);
    if let Some(stated) = stated
        && stated != id
    {
        return Err(ApiError::bad_request(
            "module_hash_mismatch",
            format!("the uploaded bytes hash to `{id}`, not to the stated `{stated}`"),
        ));
    }
    let info = {
        let id = id.clone();
        blocking(&state, move |c| c.store.module_info(id.as_str())).await?
    };
    if let Some(info) = info {
        return Ok(json(StatusCode::OK, &info));
    }
    let validator = state.validator.clone();
    let checked = {
        let bytes = bytes.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || validator.load_with_id(id, &bytes).map(|m| m.kind()))
            .await
            .map_err(|e| ApiError::internal(format!("validation panicked: {e}")))?
    };
    let kind = checked.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_module",
            format!("module `{id}` is refused: {}", e.message),
        )
    })?;
    let size = bytes.len();
    let created = {
        let id = id.clone();
        blocking(&state, move |c| c.store.put_module(id.as_str(), kind.as_str(), &bytes, now_ms())).await?
    };
    let info =
        ModuleInfo { module_id: id.to_string(), size: size as u64, kind: kind.as_str().into(), created };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, &info))
}

async fn upload_module(State(state): State<AppState>, body: Body) -> ApiResult<Response> {
    store_module(state, None, body).await
}

async fn put_module(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let stated = parse_module_id(&id)?;
    store_module(state, Some(stated), body).await
}

/// Looks a module up with `find`, answering `404 module_not_found` when it is not uploaded.
async fn find_module<T: Send + 'static>(
    state: &AppState,
    id: &str,
    find: fn(&Coordinator, &str) -> Result<Option<T>, StoreError>,
) -> ApiResult<T> {
    let id = parse_module_id(id)?;
    let key = id.to_string();
    blocking(state, move |c| find(c, &key))
        .await?
        .ok_or_else(|| ApiError::not_found("module_not_found", format!("module `{id}` is not uploaded")))
}

async fn download_module(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let bytes = find_module(&state, &id, |c, id| c.store.module_bytes(id)).await?;
    state.metrics.module_downloads.inc();
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

async fn module_info(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let info = find_module(&state, &id, |c, id| c.store.module_info(id)).await?;
    Ok(json(StatusCode::OK, &info))
}

// ---- tasks ---------------------------------------------------------------------------------------------

/// Resolves a task's limits against the coordinator's defaults and maxima.
fn resolve_limits(state: &Coordinator, spec: &hivemind_proto::api::LimitsSpec) -> ApiResult<Limits> {
    let (default, max) = (state.config.default_limits, state.config.max_limits);
    let pick = |name: &str, value: Option<u64>, default: u64, max: u64| -> ApiResult<u64> {
        match value {
            None => Ok(default.min(max)),
            Some(0) => {
                Err(ApiError::bad_request("invalid_limit", format!("limit `{name}` must be greater than 0")))
            }
            Some(v) if v > max => Err(ApiError::bad_request(
                "limit_too_high",
                format!("limit `{name}` of {v} exceeds the coordinator's maximum of {max}"),
            )),
            Some(v) => Ok(v),
        }
    };
    Ok(Limits {
        fuel: pick("fuel", spec.fuel, default.fuel, max.fuel)?,
        memory_bytes: pick("memory_bytes", spec.memory_bytes, default.memory_bytes, max.memory_bytes)?,
        timeout_ms: pick("timeout_ms", spec.timeout_ms, default.timeout_ms, max.timeout_ms)?,
        output_bytes: pick("output_bytes", spec.output_bytes, default.output_bytes, max.output_bytes)?,
        log_bytes: pick("log_bytes", spec.log_bytes, default.log_bytes, max.log_bytes)?,
    })
}

fn validate_submit(state: &Coordinator, req: SubmitTask<Inputs>) -> ApiResult<NewTask> {
    let caps = &state.config.caps;
    let module_id = parse_module_id(&req.module_id)?;
    if req.inputs.is_empty() {
        return Err(ApiError::bad_request("no_inputs", "a task needs at least one input"));
    }
    if req.split && req.inputs.len() != 1 {
        return Err(ApiError::bad_request(
            "split_needs_one_input",
            format!("a task with `split` takes exactly one input, got {}", req.inputs.len()),
        ));
    }
    if req.inputs.len() > caps.max_inputs {
        return Err(ApiError::too_large(
            "too_many_inputs",
            format!("{} inputs exceed the limit of {}", req.inputs.len(), caps.max_inputs),
        ));
    }
    if let Some((i, len)) = req.inputs.longest().filter(|(_, len)| *len > caps.max_input_bytes) {
        return Err(ApiError::too_large(
            "input_too_large",
            format!("input {i} has {len} bytes, over the limit of {}", caps.max_input_bytes),
        ));
    }
    let (lo, hi) = caps.priority_range;
    if !(lo..=hi).contains(&req.priority) {
        return Err(ApiError::bad_request(
            "priority_out_of_range",
            format!("priority {} is outside {lo}..={hi}", req.priority),
        ));
    }
    let max_attempts = req.max_attempts.unwrap_or(3);
    if !(1..=caps.max_attempts).contains(&max_attempts) {
        return Err(ApiError::bad_request(
            "invalid_max_attempts",
            format!("max_attempts {max_attempts} is outside 1..={}", caps.max_attempts),
        ));
    }
    for (what, labels) in [("labels", &req.labels), ("requires", &req.requires)] {
        if labels.len() > caps.max_labels {
            return Err(ApiError::bad_request(
                "too_many_labels",
                format!("{} {what} exceed the limit of {}", labels.len(), caps.max_labels),
            ));
        }
        if let Some(k) = labels.keys().find(|k| k.is_empty() || k.len() > 128) {
            return Err(ApiError::bad_request(
                "invalid_label",
                format!("{what} key `{k}` must have 1 to 128 bytes"),
            ));
        }
    }
    if let Some(key) = &req.idempotency_key
        && (key.is_empty() || key.len() > 256)
    {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "idempotency_key must have 1 to 256 bytes",
        ));
    }
    let limits = resolve_limits(state, &req.limits)?;
    Ok(NewTask {
        id: uuid::Uuid::now_v7().to_string(),
        module_id: module_id.to_string(),
        priority: req.priority,
        limits,
        max_attempts,
        retry_on_error: req.retry_on_error,
        split: req.split,
        reduce: req.reduce,
        labels: req.labels,
        requires: req.requires,
        idempotency_key: req.idempotency_key,
        tenant: None,
        deadline_at_ms: req.deadline_ms.map(|d| now_ms().saturating_add(d)),
        inputs: req.inputs,
    })
}

/// Refuses a task no live worker can ever run: its memory limit exceeds every worker's budget, or no worker
/// carries the labels it requires. With no live worker at all the task is accepted (workers may come).
fn check_placeable(task: &NewTask, alive: &[Candidate]) -> ApiResult<()> {
    if alive.is_empty() {
        return Ok(());
    }
    let labelled: Vec<&Candidate> =
        alive.iter().filter(|w| labels_match(&task.requires, &w.labels)).collect();
    if labelled.is_empty() {
        let wanted: Vec<String> = task.requires.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(ApiError::unprocessable(
            "unplaceable",
            format!("no live worker carries the required labels {}", wanted.join(", ")),
        ));
    }
    let largest = labelled.iter().map(|w| w.memory).max().unwrap_or(0);
    if task.limits.memory_bytes > largest {
        return Err(ApiError::unprocessable(
            "unplaceable",
            format!(
                "the memory limit of {} exceeds every live worker's memory budget (the largest{} is {})",
                format_size(task.limits.memory_bytes),
                if task.requires.is_empty() { "" } else { " with the required labels" },
                format_size(largest)
            ),
        ));
    }
    Ok(())
}

/// The tenant of the caller, when authentication is on and its token belongs to one.
type CallerExt = Option<Extension<Caller>>;

fn tenant_of(caller: &CallerExt) -> Option<String> {
    caller.as_ref().and_then(|Extension(c)| c.tenant.clone())
}

/// Hides the tasks of other tenants from a tenant's client: they answer `task_not_found`.
fn visible(caller: &CallerExt, id: &str, status: Option<TaskStatus>) -> ApiResult<TaskStatus> {
    match (status, tenant_of(caller)) {
        (Some(s), Some(tenant)) if s.tenant.as_deref() != Some(tenant.as_str()) => Err(task_not_found(id)),
        (Some(s), _) => Ok(s),
        (None, _) => Err(task_not_found(id)),
    }
}

/// Submits with more inputs than this are long writes (see [`quick`]).
const QUICK_SUBMIT_INPUTS: usize = 1000;

async fn submit_task(State(state): State<AppState>, caller: CallerExt, body: Body) -> ApiResult<Response> {
    let req = submit_body(&state, body).await?;
    let mut task = validate_submit(&state, req)?;
    task.tenant = tenant_of(&caller);
    if let (Some(tenant), Some(key)) = (&task.tenant, &task.idempotency_key) {
        // Idempotency keys are per tenant: another tenant's key never finds this tenant's task.
        task.idempotency_key = Some(format!("{tenant}\u{1f}{key}"));
    }
    // The store checks that the module exists in the same transaction; its only NotFound is the module.
    let long = (task.inputs.len() > QUICK_SUBMIT_INPUTS).then(|| state.long_write());
    let submit = move |c: &Coordinator| {
        if let Err(refused) = check_placeable(&task, &c.store.alive_workers()?) {
            return Ok(Err(refused));
        }
        let (status, created) = c.store.submit(task, now_ms())?;
        if created {
            c.metrics.tasks_submitted.inc();
            c.work_available();
        }
        Ok(Ok((status, created)))
    };
    let submitted = if long.is_some() { blocking(&state, submit).await } else { quick(&state, submit).await };
    drop(long);
    let (status, created) = submitted.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND { ApiError::not_found("module_not_found", e.message) } else { e }
    })??;
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &status))
}

fn task_not_found(id: &str) -> ApiError {
    ApiError::not_found("task_not_found", format!("task `{id}` does not exist"))
}

async fn task_status(
    State(state): State<AppState>,
    caller: CallerExt,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    validate_id(&id, "invalid_task_id")?;
    let status = read(&state, {
        let id = id.clone();
        move |c| c.store.task_status(&id)
    })
    .await?;
    Ok(json(StatusCode::OK, &visible(&caller, &id, status)?))
}

/// The task's status, if the caller may see it (a tenant's client: only its tenant's tasks).
async fn authorized(state: &AppState, caller: &CallerExt, id: &str) -> ApiResult<TaskStatus> {
    let status = blocking(state, {
        let id = id.to_owned();
        move |c| c.store.task_status(&id)
    })
    .await?;
    visible(caller, id, status)
}

fn query_u64(query: &HashMap<String, String>, name: &str, default: u64) -> ApiResult<u64> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("query parameter `{name}` must be a non-negative integer"),
            )
        }),
    }
}

fn reject_unknown_query(query: &HashMap<String, String>, known: &[&str]) -> ApiResult<()> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(
            "invalid_query",
            format!("unknown query parameter `{k}` (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Long-poll until the task finishes or `timeout_ms` (default 10 s) passes; returns its status either way.
async fn wait_task(
    State(state): State<AppState>,
    caller: CallerExt,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    validate_id(&id, "invalid_task_id")?;
    reject_unknown_query(&query, &["timeout_ms"])?;
    let timeout = Duration::from_millis(query_u64(&query, "timeout_ms", 10_000)?).min(state.config.max_wait);
    let status = wait_finished(&state, &caller, &id, timeout).await?;
    Ok(json(StatusCode::OK, &status))
}

/// The task's status once it has finished, or when `timeout` has passed, whichever comes first.
async fn wait_finished(
    state: &AppState,
    caller: &CallerExt,
    id: &str,
    timeout: Duration,
) -> ApiResult<TaskStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = state.task_events.subscribe();
    loop {
        events.borrow_and_update();
        let status = read(state, {
            let id = id.to_owned();
            move |c| c.store.task_status(&id)
        })
        .await?;
        let status = visible(caller, id, status)?;
        if status.state.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(status);
        }
        tokio::select! {
            _ = events.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The result of a finished task; with `wait_ms`, first long-polls up to that long for it to finish.
async fn task_result(
    State(state): State<AppState>,
    caller: CallerExt,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    validate_id(&id, "invalid_task_id")?;
    reject_unknown_query(&query, &["wait_ms"])?;
    let wait = Duration::from_millis(query_u64(&query, "wait_ms", 0)?).min(state.config.max_wait);
    let waited = if wait.is_zero() { None } else { Some(wait_finished(&state, &caller, &id, wait).await?) };
    // The status (unless the wait just read it), then the reduce result or the first page of map outputs,
    // in one read.
    let (status, reduce_result, first) = read(&state, {
        let id = id.clone();
        move |c| {
            let Some(status) = waited.map_or_else(|| c.store.task_status(&id), |s| Ok(Some(s)))? else {
                return Ok((None, None, Vec::new()));
            };
            let served = matches!(status.state, TaskState::Succeeded | TaskState::Cancelled);
            let (result, first) = match (served, status.reduce) {
                (false, _) => (None, Vec::new()),
                (true, true) => (c.store.reduce_result(&id)?, Vec::new()),
                (true, false) => (None, c.store.map_outputs(&id, 0, OUTPUT_PAGE)?),
            };
            Ok((Some(status), result, first))
        }
    })
    .await?;
    let status = visible(&caller, &id, status)?;
    match status.state {
        TaskState::Succeeded | TaskState::Cancelled => {}
        TaskState::Failed => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "task_failed",
                format!("task `{id}` failed: {}", status.error.unwrap_or_default()),
            ));
        }
        TaskState::Queued | TaskState::Running => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "task_not_finished",
                format!("task `{id}` is still {}; wait for it to finish", status.state),
            ));
        }
    }
    let (task_id, state_now) = (id, status.state);
    if status.reduce {
        let result = TaskResult { task_id, state: state_now, result: reduce_result.map(Blob), outputs: None };
        return Ok(json(StatusCode::OK, &result));
    }
    if first.len() < OUTPUT_PAGE as usize {
        // One page: answer at once.
        let outputs = Some(first.into_iter().map(|o| o.map(Blob)).collect());
        return Ok(json(StatusCode::OK, &TaskResult { task_id, state: state_now, result: None, outputs }));
    }
    Ok(stream_outputs(state, task_id, state_now, first))
}

/// The JSON of a map task's result (`TaskResult` with `outputs`), written page by page as the store reads
/// them, so a result of a million outputs never sits in the coordinator's memory whole. The outputs of a
/// finished task no longer change, so the pages are consistent. A store error midway ends the body early
/// (the client sees truncated JSON).
fn stream_outputs(
    state: AppState,
    id: String,
    task_state: TaskState,
    first: Vec<Option<Vec<u8>>>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let head = format!(
            "{{\"task_id\":{},\"state\":{},\"result\":null,\"outputs\":[",
            serde_json::Value::from(id.as_str()),
            serde_json::to_string(&task_state).unwrap_or_default()
        );
        if tx.send(Ok(head.into())).await.is_err() {
            return;
        }
        let mut from = 0u64;
        let mut first = Some(first);
        loop {
            let page = match first.take() {
                Some(page) => Ok(page),
                None => {
                    read(&state, {
                        let id = id.clone();
                        move |c| c.store.map_outputs(&id, from, OUTPUT_PAGE)
                    })
                    .await
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(task = %id, error = %e.message, "result stream ended early");
                    let _ = tx.send(Err(std::io::Error::other(e.message))).await;
                    return;
                }
            };
            let last = page.len() < OUTPUT_PAGE as usize;
            let mut chunk = Vec::with_capacity(page.len() * 8 + 2);
            for (i, output) in page.into_iter().enumerate() {
                if from > 0 || i > 0 {
                    chunk.push(b',');
                }
                if serde_json::to_writer(&mut chunk, &output.map(Blob)).is_err() {
                    return;
                }
            }
            if last {
                chunk.extend_from_slice(b"]}");
            }
            if tx.send(Ok(chunk.into())).await.is_err() || last {
                return;
            }
            from += u64::from(OUTPUT_PAGE);
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

async fn cancel_task(
    State(state): State<AppState>,
    caller: CallerExt,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    validate_id(&id, "invalid_task_id")?;
    if tenant_of(&caller).is_some() {
        authorized(&state, &caller, &id).await?;
    }
    // Cancelling a big task touches each of its queued subtasks.
    let long = state.long_write();
    let status = blocking(&state, {
        let id = id.clone();
        move |c| c.store.cancel(&id, now_ms())
    })
    .await;
    drop(long);
    let status = status?.ok_or_else(|| task_not_found(&id))?;
    state.tasks_finished(1);
    Ok(json(StatusCode::OK, &status))
}

async fn list_tasks(
    State(state): State<AppState>,
    caller: CallerExt,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    reject_unknown_query(&query, &["state", "module_id", "limit"])?;
    let state_filter = match query.get("state") {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown state `{s}`: expected queued, running, succeeded, failed or cancelled"),
            )
        })?),
    };
    let module_id = query.get("module_id").map(|m| parse_module_id(m)).transpose()?.map(|m| m.to_string());
    let limit = query_u64(&query, "limit", 100)?.clamp(1, 10_000) as u32;
    let filter = TaskFilter { state: state_filter, module_id, tenant: tenant_of(&caller), limit };
    let tasks = blocking(&state, move |c| c.store.list_tasks(&filter)).await?;
    Ok(json(StatusCode::OK, &TaskList { tasks }))
}

async fn list_subtasks(
    State(state): State<AppState>,
    caller: CallerExt,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    validate_id(&id, "invalid_task_id")?;
    if tenant_of(&caller).is_some() {
        authorized(&state, &caller, &id).await?;
    }
    reject_unknown_query(&query, &["phase", "state", "offset", "limit"])?;
    let phase = match query.get("phase") {
        None => None,
        Some(p) => Some(p.parse::<Phase>().map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown phase `{p}`: expected split, map or reduce"),
            )
        })?),
    };
    let subtask_state = match query.get("state").map(String::as_str) {
        None => None,
        Some(s @ ("queued" | "leased" | "succeeded" | "failed" | "cancelled")) => Some(s.to_owned()),
        Some(s) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown subtask state `{s}`: expected queued, leased, succeeded, failed or cancelled"
                ),
            ));
        }
    };
    let offset = query_u64(&query, "offset", 0)?;
    let limit = query_u64(&query, "limit", 100)?.clamp(1, 10_000) as u32;
    let filter = SubtaskFilter { phase, state: subtask_state, offset, limit };
    let subtasks = blocking(&state, {
        let id = id.clone();
        move |c| c.store.list_subtasks(&id, &filter)
    })
    .await?
    .ok_or_else(|| task_not_found(&id))?;
    Ok(json(StatusCode::OK, &SubtaskList { task_id: id, subtasks }))
}

// ---- workers -------------------------------------------------------------------------------------------

async fn register_worker(State(state): State<AppState>, body: Body) -> ApiResult<Response> {
    let req: RegisterWorker = json_body(&state, body).await?;
    if req.slots == 0 || req.slots > 4096 {
        return Err(ApiError::bad_request(
            "invalid_slots",
            format!("slots must be 1..=4096, got {}", req.slots),
        ));
    }
    if req.name.len() > 256 || req.labels.len() > state.config.caps.max_labels {
        return Err(ApiError::bad_request("invalid_worker", "worker name or labels too long"));
    }
    let id = format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    blocking(&state, {
        let id = id.clone();
        move |c| c.store.register_worker(&id, &req, now_ms())
    })
    .await?;
    state.heard_from(&id);
    tracing::info!(worker = %id, "worker registered");
    let reply = Registered {
        worker_id: id,
        heartbeat_ms: state.config.heartbeat_interval.as_millis() as u64,
        lease_ms: state.config.dead_after.as_millis() as u64,
    };
    Ok(json(StatusCode::CREATED, &reply))
}

async fn list_workers(State(state): State<AppState>) -> ApiResult<Response> {
    let workers = blocking(&state, |c| c.store.list_workers()).await?;
    Ok(json(StatusCode::OK, &WorkerList { workers }))
}

async fn deregister_worker(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    validate_id(&id, "invalid_worker_id")?;
    let requeued = blocking(&state, {
        let id = id.clone();
        move |c| c.store.deregister_worker(&id, now_ms())
    })
    .await?;
    if requeued > 0 {
        state.work_available();
    }
    tracing::info!(worker = %id, requeued, "worker deregistered");
    Ok(json(StatusCode::OK, &serde_json::json!({ "requeued": requeued })))
}

async fn heartbeat(State(state): State<AppState>, Path(id): Path<String>, body: Body) -> ApiResult<Response> {
    validate_id(&id, "invalid_worker_id")?;
    let req: Heartbeat = json_body(&state, body).await?;
    state.heard_from(&id);
    let reply = quick(&state, move |c| {
        let (reply, leased) = c.store.heartbeat(&id, req.running, req.resources.as_ref(), now_ms())?;
        if let Some(holding) = &req.holding {
            c.hand_back_stranded(&id, leased, holding)?;
        }
        Ok(reply)
    })
    .await?;
    Ok(json(StatusCode::OK, &reply))
}

async fn lease(State(state): State<AppState>, Path(id): Path<String>, body: Body) -> ApiResult<Response> {
    validate_id(&id, "invalid_worker_id")?;
    let req: LeaseRequest = json_body(&state, body).await?;
    if req.max == 0 || req.max > state.config.caps.max_lease_batch {
        return Err(ApiError::bad_request(
            "invalid_lease",
            format!("max must be 1..={}, got {}", state.config.caps.max_lease_batch, req.max),
        ));
    }
    if req.request_id.as_ref().is_some_and(|r| r.is_empty() || r.len() > 64) {
        return Err(ApiError::bad_request("invalid_lease", "request_id must be 1 to 64 characters"));
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(state.config.max_wait);
    let mut polling = None;
    loop {
        let notified = state.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let lease = if state.nothing_new_for(&id, req.request_id.as_deref()) {
            Lease::default()
        } else {
            quick(&state, {
                let id = id.clone();
                let request_id = req.request_id.clone();
                move |c| {
                    let idle = c.idle_workers();
                    let generation = c.work_generation();
                    let leased = c.store.lease(&id, req.max, request_id.as_deref(), &idle, now_ms())?;
                    c.lease_ran(&id, generation, request_id.as_deref(), leased.drained);
                    if leased.left && idle.iter().any(|w| *w != id) {
                        // Work this lease was not allowed to take (its fair share) is for the others
                        // waiting, who may have looked before this lease and left it to this worker.
                        c.work_available();
                    }
                    c.metrics.subtasks_leased.inc_by(leased.lease.subtasks.len() as u64);
                    for wait in &leased.queue_wait_ms {
                        c.metrics.queue_wait.observe(*wait as f64 / 1000.0);
                    }
                    Ok(leased.lease)
                }
            })
            .await?
        };
        if !lease.subtasks.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(json(StatusCode::OK, &lease));
        }
        // Waiting for work: this worker is idle, and placement may leave work to it.
        polling.get_or_insert_with(|| state.polling(&id));
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn complete(State(state): State<AppState>, Path(id): Path<String>, body: Body) -> ApiResult<Response> {
    validate_id(&id, "invalid_worker_id")?;
    let req: CompleteBatch = json_body(&state, body).await?;
    let retry = RetryPolicy {
        base_backoff_ms: state.config.retry_backoff.as_millis() as u64,
        ..RetryPolicy::default()
    };
    // A split step's output becomes many map subtasks: a long write.
    let output_bytes: usize = req
        .completions
        .iter()
        .map(|c| match &c.outcome {
            Outcome::Output(out) => out.0.len(),
            Outcome::Error { .. } => 0,
        })
        .sum();
    let long = (output_bytes > QUICK_COMPLETE_BYTES).then(|| state.long_write());
    // Metrics and wake-ups happen with the store call, which runs to the end even when the worker hangs up
    // (a SIGKILLed worker's last batch is still recorded, so it must still be counted).
    let complete = move |c: &Coordinator| {
        let run_times: Vec<(i64, u64)> =
            req.completions.iter().map(|c| (c.subtask_id, c.usage.wall_time_us)).collect();
        let done = c.store.complete(&id, req.completions, retry, now_ms())?;
        for (subtask, wall_us) in run_times {
            if !done.reply.refused.contains(&subtask) {
                c.metrics.run_time.observe(wall_us as f64 / 1e6);
            }
        }
        c.metrics.subtasks_succeeded.inc_by(done.succeeded);
        c.metrics.subtasks_failed.inc_by(done.failed);
        c.metrics.fuel_consumed.inc_by(done.fuel);
        c.metrics.completions_refused.inc_by(done.reply.refused.len() as u64);
        if done.new_work {
            c.work_available();
        }
        c.tasks_finished(done.finished_tasks.len());
        Ok(done)
    };
    let done = if long.is_some() { blocking(&state, complete).await } else { quick(&state, complete).await };
    drop(long);
    Ok(json(StatusCode::OK, &done?.reply))
}

/// Completion batches carrying more output than this are long writes (see [`quick`]).
const QUICK_COMPLETE_BYTES: usize = 1 << 20;
