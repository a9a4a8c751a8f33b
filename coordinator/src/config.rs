//! Coordinator configuration: where state lives, the failure-detection timing, the defaults and caps
//! applied to every task, and the size caps on every request.

use hivemind_proto::Limits;
use std::path::PathBuf;
use std::time::Duration;

/// Validated coordinator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the SQLite database (`hivemind.db`).
    pub data_dir: PathBuf,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is declared dead and its subtasks requeued.
    pub dead_after: Duration,
    /// Limits applied when a task does not set them.
    pub default_limits: Limits,
    /// The largest limits a task may ask for.
    pub max_limits: Limits,
    pub caps: Caps,
    /// Backoff before retrying a failed attempt (doubled per attempt).
    pub retry_backoff: Duration,
    /// Longest long-poll a lease or wait request may ask for.
    pub max_wait: Duration,
    /// Worker processes to supervise on this machine (`--local-workers MIN..MAX`).
    pub local_workers: Option<crate::scaling::LocalWorkers>,
    /// Bearer tokens and their roles; empty means authentication is off.
    pub tokens: crate::auth::Tokens,
}

/// Caps on request sizes and counts; each has its own error.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_body_bytes: usize,
    pub max_module_bytes: usize,
    pub max_inputs: usize,
    pub max_input_bytes: usize,
    pub max_labels: usize,
    pub max_lease_batch: u32,
    pub priority_range: (i32, i32),
    pub max_attempts: u32,
    /// A request body must arrive within this (slow or stalled clients cannot hold the server).
    pub body_timeout: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max_body_bytes: 256 << 20,
            max_module_bytes: 64 << 20,
            max_inputs: 1_000_000,
            max_input_bytes: 16 << 20,
            max_labels: 32,
            max_lease_batch: 4096,
            priority_range: (-1000, 1000),
            max_attempts: 100,
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Defaults rooted at `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            default_limits: Limits::default(),
            max_limits: Limits {
                fuel: 10_000_000_000_000,
                memory_bytes: 4 << 30,
                timeout_ms: 3_600_000,
                output_bytes: 64 << 20,
                log_bytes: 1 << 20,
            },
            caps: Caps::default(),
            retry_backoff: Duration::from_millis(100),
            max_wait: Duration::from_secs(30),
            local_workers: None,
            tokens: crate::auth::Tokens::default(),
        }
    }
}
