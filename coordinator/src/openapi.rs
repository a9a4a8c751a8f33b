//! The OpenAPI 3.1 document served at `/v1/openapi.json`. It is generated from [`crate::api::ROUTES`], so it
//! always lists exactly the routes the server has.

use crate::api::ROUTES;
use serde_json::{Value, json};

/// Summary, request body and success response of each route.
fn operation(method: &str, path: &str) -> (&'static str, Option<&'static str>, &'static str) {
    match (method, path) {
        ("get", "/healthz") => ("Liveness check", None, "`{\"status\": \"ok\"}`"),
        ("get", "/metrics") => ("Prometheus metrics (text format)", None, "Prometheus text"),
        ("get", "/v1/openapi.json") => ("This document", None, "OpenAPI document"),
        ("get", "/v1/cluster") => (
            "Cluster summary: workers, slots in use, queue by priority, throughput of the last minutes",
            None,
            "ClusterSummary",
        ),
        ("post", "/v1/modules") => {
            ("Upload a module (raw WebAssembly bytes)", Some("application/wasm"), "ModuleInfo")
        }
        ("put", "/v1/modules/{module_id}") => (
            "Upload a module under its stated id; refused if the bytes hash differently",
            Some("application/wasm"),
            "ModuleInfo",
        ),
        ("get", "/v1/modules/{module_id}") => {
            ("Download a module's bytes (HEAD checks existence)", None, "application/wasm")
        }
        ("get", "/v1/modules/{module_id}/info") => ("Module size and kind", None, "ModuleInfo"),
        ("post", "/v1/tasks") => ("Submit a task", Some("SubmitTask"), "TaskStatus"),
        ("get", "/v1/tasks") => ("List tasks (query: state, module_id, limit)", None, "TaskList"),
        ("get", "/v1/tasks/{task_id}") => {
            ("Task status with per-state subtask counts and usage", None, "TaskStatus")
        }
        ("get", "/v1/tasks/{task_id}/wait") => {
            ("Long-poll until the task finishes (query: timeout_ms)", None, "TaskStatus")
        }
        ("get", "/v1/tasks/{task_id}/result") => {
            ("The aggregated result of a finished task", None, "TaskResult")
        }
        ("get", "/v1/tasks/{task_id}/subtasks") => (
            "Per-subtask state, attempts, usage and errors (query: phase, state, offset, limit)",
            None,
            "SubtaskList",
        ),
        ("post", "/v1/tasks/{task_id}/cancel") => ("Cancel a task", None, "TaskStatus"),
        ("post", "/v1/workers") => ("Register a worker", Some("RegisterWorker"), "Registered"),
        ("get", "/v1/workers") => ("List workers with resources, load and usage", None, "WorkerList"),
        ("delete", "/v1/workers/{worker_id}") => {
            ("Deregister; leased subtasks are handed back", None, "`{\"requeued\": n}`")
        }
        ("post", "/v1/workers/{worker_id}/heartbeat") => {
            ("Heartbeat: renews all of the worker's leases", Some("Heartbeat"), "HeartbeatReply")
        }
        ("post", "/v1/workers/{worker_id}/lease") => {
            ("Lease a batch of subtasks (long-poll)", Some("LeaseRequest"), "Lease")
        }
        ("post", "/v1/workers/{worker_id}/complete") => {
            ("Report a batch of results; stale leases are refused", Some("CompleteBatch"), "CompleteReply")
        }
        _ => ("", None, ""),
    }
}

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path) in ROUTES {
        let (summary, body, response) = operation(method, path);
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": { "description": response },
                "4XX": { "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if let Some(roles) = crate::auth::roles_for(&method.to_uppercase(), path) {
            // With tokens configured; which roles may call it is in the description.
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            op["security"] = json!([{ "bearer": [] }]);
            op["description"] = json!(format!("Roles: {}.", roles.join(", ")));
            op["responses"]["401"] = json!({ "description": "Missing or unknown token" });
            op["responses"]["403"] = json!({ "description": "The token's role may not call this route" });
        }
        if let Some(body) = body {
            let content = if body.contains('/') {
                json!({ body: { "schema": { "type": "string", "format": "binary" } } })
            } else {
                json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{body}") } } })
            };
            op["requestBody"] = json!({ "required": true, "content": content });
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    let object = |props: Value| json!({ "type": "object", "properties": props });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Hivemind coordinator API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
            "Error": object(json!({ "error": object(json!({ "code": {"type": "string"}, "message": {"type": "string"} })) })),
            "Blob": { "oneOf": [ {"type": "string"}, object(json!({ "base64": {"type": "string"} })) ] },
            "SubmitTask": object(json!({
                "module_id": {"type": "string"}, "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Blob"}},
                "priority": {"type": "integer"}, "limits": object(json!({
                    "fuel": {"type": "integer"}, "memory_bytes": {"type": "integer"}, "timeout_ms": {"type": "integer"},
                    "output_bytes": {"type": "integer"}, "log_bytes": {"type": "integer"} })),
                "max_attempts": {"type": "integer"}, "retry_on_error": {"type": "boolean"}, "split": {"type": "boolean"},
                "reduce": {"type": "boolean"}, "idempotency_key": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}, "deadline_ms": {"type": "integer"} })),
            "TaskStatus": object(json!({ "task_id": {"type": "string"}, "state": {"type": "string",
                "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}, "subtasks": {"type": "object"},
                "usage": {"type": "object"}, "error": {"type": ["string", "null"]} })),
            "TaskList": object(json!({ "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/TaskStatus"}} })),
            "TaskResult": object(json!({ "task_id": {"type": "string"}, "state": {"type": "string"},
                "result": {"$ref": "#/components/schemas/Blob"}, "outputs": {"type": "array"} })),
            "SubtaskList": object(json!({ "task_id": {"type": "string"}, "subtasks": {"type": "array", "items": object(json!({
                "subtask_id": {"type": "integer"}, "phase": {"type": "string"}, "index": {"type": "integer"},
                "state": {"type": "string"}, "attempt": {"type": "integer"}, "worker_id": {"type": ["string", "null"]},
                "usage": {"type": ["object", "null"]}, "error_kind": {"type": ["string", "null"]},
                "error": {"type": ["string", "null"]}, "attempts": {"type": "array"},
                "finished_at_ms": {"type": ["integer", "null"]} }))} })),
            "ModuleInfo": object(json!({ "module_id": {"type": "string"}, "size": {"type": "integer"}, "kind": {"type": "string"} })),
            "RegisterWorker": object(json!({ "name": {"type": "string"}, "slots": {"type": "integer"},
                "memory_bytes": {"type": "integer"}, "cores": {"type": "integer"}, "labels": {"type": "object"} })),
            "Registered": object(json!({ "worker_id": {"type": "string"}, "heartbeat_ms": {"type": "integer"}, "lease_ms": {"type": "integer"} })),
            "Heartbeat": object(json!({ "running": {"type": "integer"}, "resources": {"type": "object"}, "holding": {"type": "array", "items": {"type": "integer"}} })),
            "HeartbeatReply": object(json!({ "cancel": {"type": "array", "items": {"type": "integer"}} })),
            "LeaseRequest": object(json!({ "max": {"type": "integer"}, "wait_ms": {"type": "integer"} })),
            "Lease": object(json!({ "subtasks": {"type": "array"}, "tasks": {"type": "object"} })),
            "CompleteBatch": object(json!({ "completions": {"type": "array"} })),
            "CompleteReply": object(json!({ "accepted": {"type": "integer"}, "refused": {"type": "array"} })),
            "WorkerList": object(json!({ "workers": {"type": "array"} })),
        }}
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_lists_every_route_with_a_summary() {
        let doc = super::document();
        for (method, path) in super::ROUTES {
            let op = &doc["paths"][path][method];
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path}");
        }
        let listed: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| p.as_object().expect("ops").len())
            .sum();
        assert_eq!(listed, super::ROUTES.len());
    }
}
