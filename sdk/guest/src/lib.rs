//! `hivemind-guest`: write Hivemind task functions in Rust.
//!
//! A task function is a WASI command module (SPEC §2.1): its input arrives on stdin, its output is what it
//! writes to stdout, and the phase (`map`, `split` or `reduce`) is `argv[1]`. This crate wraps that ABI:
//! [`input`], [`output`], [`phase`], [`context`], the frame codec of SPEC §2.2 ([`frame`]), and one-line
//! entry points: [`map`] for map-only functions and [`run`] for a [`Task`] with split and reduce steps.
//!
//! ```no_run
//! // guest-examples/echo: the whole program is this call in `main`.
//! hivemind_guest::map(|input| Ok(input.to_vec()));
//! ```
//!
//! With the `component` feature, [`component`] holds the bindings of the `hivemind:task` WIT world for
//! components built for `wasm32-wasip2`.

pub mod frame;

#[cfg(feature = "component")]
pub mod component;

use std::io::{Read, Write};

/// The step of a task a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Map,
    Split,
    Reduce,
}

/// Where this run sits in its task, from the variables the host sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub task_id: String,
    pub subtask_index: u64,
    pub attempt: u32,
}

/// The phase this run was started for (`argv[1]`; `map` when absent).
pub fn phase() -> Phase {
    match std::env::args().nth(1).as_deref() {
        Some("split") => Phase::Split,
        Some("reduce") => Phase::Reduce,
        _ => Phase::Map,
    }
}

/// `HIVEMIND_TASK_ID`, `HIVEMIND_SUBTASK_INDEX` and `HIVEMIND_ATTEMPT`.
pub fn context() -> Context {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    Context {
        task_id: var("HIVEMIND_TASK_ID"),
        subtask_index: var("HIVEMIND_SUBTASK_INDEX").parse().unwrap_or(0),
        attempt: var("HIVEMIND_ATTEMPT").parse().unwrap_or(1),
    }
}

/// Reads the whole input (stdin).
pub fn input() -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin().lock().read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes `bytes` as (part of) the output (stdout).
pub fn output(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// A task function with optional split and reduce steps. Unimplemented steps fail with a clear message.
pub trait Task {
    /// The map step: one input to one output.
    fn map(&self, input: &[u8]) -> Result<Vec<u8>, String>;

    /// The split step: the task's single input to the inputs of the map subtasks.
    fn split(&self, _input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        Err("this task function has no split step".into())
    }

    /// The reduce step: all map outputs, in input order, to the task result.
    fn reduce(&self, _outputs: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        Err("this task function has no reduce step".into())
    }
}

/// Runs `task` for the current phase: reads the input, calls the step, writes the output. On error the
/// message goes to stderr and the process exits with code 1 (the host reports it with the stderr tail).
pub fn run<T: Task>(task: &T) {
    let result = input().map_err(|e| format!("cannot read the input: {e}")).and_then(|input| match phase() {
        Phase::Map => task.map(&input),
        Phase::Split => task.split(&input).map(frame::encode_frames),
        Phase::Reduce => frame::decode_frames(&input)
            .map_err(|e| format!("reduce input is not a sequence of frames: {e}"))
            .and_then(|outputs| task.reduce(outputs)),
    });
    match result.and_then(|out| output(&out).map_err(|e| format!("cannot write the output: {e}"))) {
        Ok(()) => {}
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    }
}

/// One-line entry point for a map-only task function.
pub fn map(f: impl Fn(&[u8]) -> Result<Vec<u8>, String>) {
    struct MapOnly<F>(F);
    impl<F: Fn(&[u8]) -> Result<Vec<u8>, String>> Task for MapOnly<F> {
        fn map(&self, input: &[u8]) -> Result<Vec<u8>, String> {
            (self.0)(input)
        }
    }
    run(&MapOnly(f));
}
