//! The guest examples and WAT fixtures of `guest-examples/`, built to WebAssembly by this crate's build
//! script. Each constant is the path of one built `.wasm` file; tests, benchmarks and `hivemind demo` use
//! them instead of building guests themselves.

include!(concat!(env!("OUT_DIR"), "/programs.rs"));

/// The `wordcount` example, embedded (used by `hivemind demo`).
pub const WORDCOUNT_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wordcount.wasm"));

/// Reads a built program.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read guest program `{path}`: {e}"))
}
