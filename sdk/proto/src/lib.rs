//! Wire types shared by every Hivemind component: the coordinator's HTTP API bodies, the subtask limits and
//! usage reports, the error kinds of SPEC §3, and the frame codec of SPEC §2.2.
//!
//! This crate depends on serde only, so the coordinator, the worker, the client SDK and the guest SDK can
//! all agree on one definition of each type.

pub mod api;
pub mod limits;
pub mod units;

/// The frame codec of SPEC §2.2, shared with guests (it lives in the dependency-free guest SDK).
pub use hivemind_guest::frame;
pub use limits::{ErrorKind, Limits, Phase, Usage};
