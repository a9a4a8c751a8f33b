//! `sleepy-component`: a component of the `hivemind:task` world that sleeps through WASI 0.2
//! (`wasi:clocks/monotonic-clock` and `wasi:io/poll`) for the number of milliseconds in its input, then
//! answers `slept`. A hostile-guest fixture: a sleep must end at the run's timeout or cancellation.

use hivemind_guest::component::Guest;

struct Sleepy;

impl Guest for Sleepy {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = String::from_utf8(input).map_err(|e| e.to_string())?;
        let ms: u64 = text.trim().parse().map_err(|e| format!("expected milliseconds: {e}"))?;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(b"slept".to_vec())
    }

    /// One map subtask sleeps the whole time.
    fn split(input: Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
        Ok(vec![input])
    }

    /// Counts the sleeps that ended.
    fn reduce(outputs: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        Ok(format!("{} slept", outputs.len()).into_bytes())
    }
}

hivemind_guest::component::export_task!(Sleepy with_types_in hivemind_guest::component);
