//! Per-subtask limits (SPEC §3), the phase a module runs in, the usage report every result carries, and the
//! error kinds a subtask can end with.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which step of a task a module run is (SPEC §2.2); passed to the guest as `argv[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Map,
    Split,
    Reduce,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Map => "map",
            Phase::Split => "split",
            Phase::Reduce => "reduce",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "map" => Ok(Phase::Map),
            "split" => Ok(Phase::Split),
            "reduce" => Ok(Phase::Reduce),
            other => Err(format!("unknown phase `{other}`: expected `map`, `split` or `reduce`")),
        }
    }
}

/// Limits of one subtask run. Every field is always set; defaults come from [`Limits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Instruction budget (about 1e10 fuel is one CPU-second).
    pub fuel: u64,
    /// Maximum linear memory, in bytes, summed over the instance's memories.
    pub memory_bytes: u64,
    /// Wall-clock limit, in milliseconds.
    pub timeout_ms: u64,
    /// Maximum bytes written to stdout (the output).
    pub output_bytes: u64,
    /// Maximum bytes of stderr kept as the log (the tail is kept).
    pub log_bytes: u64,
}

impl Limits {
    pub const DEFAULT_FUEL: u64 = 100_000_000_000;
    pub const DEFAULT_MEMORY: u64 = 256 << 20;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_OUTPUT: u64 = 16 << 20;
    pub const DEFAULT_LOG: u64 = 64 << 10;

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Self::DEFAULT_FUEL,
            memory_bytes: Self::DEFAULT_MEMORY,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            output_bytes: Self::DEFAULT_OUTPUT,
            log_bytes: Self::DEFAULT_LOG,
        }
    }
}

/// Resources one subtask run consumed; reported on success and on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub fuel_consumed: u64,
    pub peak_memory_bytes: u64,
    pub wall_time_us: u64,
}

impl Usage {
    /// Adds `other` to this total (peak memory keeps the maximum).
    pub fn accumulate(&mut self, other: &Usage) {
        self.fuel_consumed = self.fuel_consumed.saturating_add(other.fuel_consumed);
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.wall_time_us = self.wall_time_us.saturating_add(other.wall_time_us);
    }
}

/// Why a subtask run failed (SPEC §3), plus the coordinator-side kinds of later SPEC sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    FuelExhausted,
    MemoryLimit,
    Timeout,
    OutputTooLarge,
    Trap,
    ExitCode,
    InvalidModule,
    /// The run was interrupted because its task was cancelled.
    Cancelled,
    /// The worker running the subtask was declared dead.
    WorkerLost,
    /// Anything the host itself got wrong (I/O, the worker's environment).
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::FuelExhausted => "fuel_exhausted",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::Trap => "trap",
            ErrorKind::ExitCode => "exit_code",
            ErrorKind::InvalidModule => "invalid_module",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::Internal => "internal",
        }
    }

    /// Every kind, for parsers and documentation.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::FuelExhausted,
        ErrorKind::MemoryLimit,
        ErrorKind::Timeout,
        ErrorKind::OutputTooLarge,
        ErrorKind::Trap,
        ErrorKind::ExitCode,
        ErrorKind::InvalidModule,
        ErrorKind::Cancelled,
        ErrorKind::WorkerLost,
        ErrorKind::Internal,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown error kind `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).expect("serialise"), format!("\"{kind}\""));
        }
    }
}
