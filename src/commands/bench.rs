//! `hivemind bench`: the benchmarks of SPEC §8. `bench runtime` measures the sandbox itself.

use super::Global;
use hivemind_guest_programs as programs;
use hivemind_proto::Phase;
use hivemind_runtime::{LoadedModule, RunRequest, Runtime, RuntimeConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The native baseline of the CPU-bound comparison: the very source the `primes` guest is built from.
#[allow(dead_code)]
mod native {
    include!("../../guest-examples/primes/src/algo.rs");
}

/// Run a benchmark and print its figures (`--json` for machine-readable output).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hivemind bench runtime\n  hivemind bench runtime --json --iterations 50000"
)]
pub struct Bench {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Sandbox overhead per `echo` subtask, throughput on 1 and all cores, wasm/native ratio, cache load.
    Runtime(RuntimeBench),
}

impl Bench {
    pub fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        match self.which {
            Which::Runtime(b) => b.execute(global),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RuntimeBench {
    /// `echo` subtasks per thread.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: usize,
    /// Threads for the all-cores figure (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Range for the CPU-bound comparison (`primes` from 1 to N).
    #[arg(long, default_value_t = 3_000_000)]
    pub primes_to: u64,
}

fn echo_request() -> RunRequest {
    RunRequest { phase: Phase::Map, input: bytes::Bytes::from_static(b"hello"), ..RunRequest::default() }
}

/// Runs `n` echo subtasks on this thread; returns each one's duration.
fn echo_loop(runtime: &Runtime, module: &LoadedModule, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let out = runtime.run(module, echo_request()).expect("echo runs");
        times.push(start.elapsed());
        debug_assert_eq!(out.output, b"hello");
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

impl RuntimeBench {
    pub fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let threads = self.threads.unwrap_or_else(num_cpus::get).max(1);
        let runtime = Runtime::new(RuntimeConfig::default())?;
        let echo = runtime.load(&programs::read(programs::ECHO)).map_err(anyhow::Error::msg)?;

        // Warm up: instance slots, page tables, caches.
        echo_loop(&runtime, &echo, 2_000);

        let start = Instant::now();
        let mut times = echo_loop(&runtime, &echo, self.iterations);
        let one_thread_per_s = self.iterations as f64 / start.elapsed().as_secs_f64();
        times.sort();
        let median = percentile(&times, 0.5);
        let p99 = percentile(&times, 0.99);

        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| echo_loop(&runtime, &echo, self.iterations));
            }
        });
        let all_cores_per_s = (self.iterations * threads) as f64 / start.elapsed().as_secs_f64();

        // CPU-bound: the same kernel natively and in the sandbox with fuel and epochs on.
        let primes = runtime.load(&programs::read(programs::PRIMES)).map_err(anyhow::Error::msg)?;
        let input = format!("1 {}", self.primes_to);
        let mut native_best = Duration::MAX;
        let mut wasm_best = Duration::MAX;
        let mut answer = (0, String::new());
        for _ in 0..3 {
            let start = Instant::now();
            answer.0 = std::hint::black_box(native::count_primes(1, std::hint::black_box(self.primes_to)));
            native_best = native_best.min(start.elapsed());
            let request = RunRequest { input: input.clone().into_bytes().into(), ..RunRequest::default() };
            let start = Instant::now();
            let out = runtime.run(&primes, request).map_err(anyhow::Error::msg)?;
            wasm_best = wasm_best.min(start.elapsed());
            answer.1 = String::from_utf8_lossy(&out.output).into_owned();
        }
        anyhow::ensure!(
            answer.0.to_string() == answer.1,
            "native and wasm disagree: {} vs {}",
            answer.0,
            answer.1
        );
        let ratio = wasm_best.as_secs_f64() / native_best.as_secs_f64();

        // Compiled-module cache: compile once into a fresh cache, then load from it in a new runtime.
        let dir = tempfile_dir()?;
        let config = RuntimeConfig { cache_dir: Some(dir.clone()), ..RuntimeConfig::default() };
        let wordcount = programs::read(programs::WORDCOUNT);
        let cold = Runtime::new(config.clone())?;
        let start = Instant::now();
        cold.load(&wordcount).map_err(anyhow::Error::msg)?;
        let compile = start.elapsed();
        let warm = Runtime::new(config)?;
        let start = Instant::now();
        warm.load(&wordcount).map_err(anyhow::Error::msg)?;
        let cache_load = start.elapsed();
        let stats = warm.cache_stats();
        anyhow::ensure!(stats.compiled == 0 && stats.disk_hits == 1, "cache was not hit: {stats:?}");
        let _ = std::fs::remove_dir_all(&dir);

        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if global.json {
            let doc = serde_json::json!({
                "benchmark": "runtime",
                "allocator": format!("{:?}", runtime.allocator()),
                "iterations": self.iterations,
                "threads": threads,
                "per_subtask_us": us(median),
                "per_subtask_p99_us": us(p99),
                "subtasks_per_s_one_thread": one_thread_per_s,
                "subtasks_per_s": all_cores_per_s,
                "wasm_native_ratio": ratio,
                "primes_native_ms": ms(native_best),
                "primes_wasm_ms": ms(wasm_best),
                "compile_ms": ms(compile),
                "cache_load_ms": ms(cache_load),
            });
            println!("{doc}");
        } else {
            println!("allocator                     {:?}", runtime.allocator());
            println!("echo per subtask (median)     {:.1} µs (p99 {:.1} µs)", us(median), us(p99));
            println!("echo subtasks/s, 1 thread     {one_thread_per_s:.0}");
            println!("echo subtasks/s, {threads} threads    {all_cores_per_s:.0}");
            println!(
                "primes 1..{} wasm/native     {ratio:.2}× ({:.1} ms vs {:.1} ms, fuel and epochs on)",
                self.primes_to,
                ms(wasm_best),
                ms(native_best)
            );
            println!("wordcount compile             {:.2} ms", ms(compile));
            println!("wordcount cached load         {:.3} ms (no recompile)", ms(cache_load));
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hivemind-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
