//! `primes`: counts the primes in a range (CPU-bound). Input `"LO HI"`; output the count in decimal.
//! Split cuts the range into 8 parts; reduce sums the counts.
//!
//! `echo "1 100000" | hivemind run primes.wasm --input -`   → `9592`

include!("algo.rs");

struct Primes;

impl hivemind_guest::Task for Primes {
    fn map(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let (lo, hi) = parse_range(input)?;
        Ok(count_primes(lo, hi).to_string().into_bytes())
    }

    fn split(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let (lo, hi) = parse_range(input)?;
        Ok(split_range(lo, hi, 8).into_iter().map(|(a, b)| format!("{a} {b}").into_bytes()).collect())
    }

    fn reduce(&self, outputs: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        Ok(sum_counts(&outputs)?.to_string().into_bytes())
    }
}

fn main() {
    hivemind_guest::run(&Primes);
}
