//! End-to-end tests: real `hivemind` processes (coordinator, workers, CLI) talking HTTP on loopback ports
//! chosen at run time. One test binary, one module per area, sharing the fixtures below.

mod api;
mod browser;
mod cluster;
mod faults;
mod postgres;
mod scaling;
mod security;
mod tasks;

pub use cluster::*;
