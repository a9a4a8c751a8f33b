//! Errors of the runtime: [`RuntimeError`] when the runtime itself cannot start, [`RunFailure`] when one
//! subtask run (or module load) fails, with its [`ErrorKind`] and a usage report.

use hivemind_proto::{ErrorKind, Usage};
use std::fmt;

/// The runtime could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot use the module cache directory `{path}`: {source}")]
    CacheDir { path: String, source: std::io::Error },
}

/// One failed subtask run: the kind of failure, a message that names its cause (including the tail of the
/// guest's stderr), the captured log and the resources consumed up to the failure.
#[derive(Debug, Clone)]
pub struct RunFailure {
    pub kind: ErrorKind,
    pub message: String,
    pub log: Vec<u8>,
    pub usage: Usage,
}

impl RunFailure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RunFailure { kind, message: message.into(), log: Vec::new(), usage: Usage::default() }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub(crate) fn invalid_module(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidModule, message)
    }

    /// Whether running the same subtask again could succeed (host trouble rather than guest behaviour).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Internal | ErrorKind::WorkerLost)
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for RunFailure {}
