//! `primes-component`: the `primes` example as a component of the `hivemind:task` world (wasm32-wasip2).
//! It gives the same answers as the command module for every phase.

include!("../../primes/src/algo.rs");

use hivemind_guest::component::{Guest, host};

struct Primes;

impl Guest for Primes {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let (lo, hi) = parse_range(&input)?;
        host::log(&format!("counting primes in [{lo}, {hi})"));
        Ok(count_primes(lo, hi).to_string().into_bytes())
    }

    fn split(input: Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
        let (lo, hi) = parse_range(&input)?;
        Ok(split_range(lo, hi, 8).into_iter().map(|(a, b)| format!("{a} {b}").into_bytes()).collect())
    }

    fn reduce(outputs: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        host::progress(1.0);
        Ok(sum_counts(&outputs)?.to_string().into_bytes())
    }
}

hivemind_guest::component::export_task!(Primes with_types_in hivemind_guest::component);
