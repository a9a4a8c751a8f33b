//! `echo`: returns its input unchanged. The smallest possible task function, used by the benchmarks.
//!
//! `hivemind run guest-examples/target/wasm32-wasip1/release/echo.wasm --input README.md`

fn main() {
    hivemind_guest::map(|input| Ok(input.to_vec()));
}
