//! `hivemind bench`: the benchmarks of SPEC §8. `bench runtime` measures the sandbox itself.

use super::Global;
use hivemind_guest_programs as programs;
use hivemind_proto::Phase;
use hivemind_runtime::{LoadedModule, RunRequest, Runtime, RuntimeConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod faults;
mod local;
mod scaling;

use local::{LocalCluster, peak_rss_mb};

/// Native baselines of the CPU-bound comparisons: the very sources the guests are built from.
#[allow(dead_code)]
mod native {
    pub mod primes {
        include!("../../../guest-examples/primes/src/algo.rs");
    }
    pub mod mandelbrot {
        include!("../../../guest-examples/mandelbrot/src/algo.rs");
    }
}

/// Best of three timings of the same computation natively and in the sandbox (fuel and epochs on);
/// fails if the two disagree.
fn compare(
    runtime: &Runtime,
    module: &LoadedModule,
    input: &str,
    native: impl Fn() -> String,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut native_best, mut wasm_best) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        let expected = std::hint::black_box(native());
        native_best = native_best.min(start.elapsed());
        let request = RunRequest { input: input.to_owned().into_bytes().into(), ..RunRequest::default() };
        let start = Instant::now();
        let out = runtime.run(module, request).map_err(anyhow::Error::msg)?;
        wasm_best = wasm_best.min(start.elapsed());
        anyhow::ensure!(out.output == expected.as_bytes(), "native and wasm disagree on `{input}`");
    }
    Ok((native_best, wasm_best))
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
    /// End to end: a coordinator and workers as real processes, throughput of one big `echo` task and the
    /// round-trip latency of single-subtask tasks.
    E2e(E2eBench),
    /// Failure detection: time from a worker's SIGKILL until its subtask runs on another worker.
    Failover(faults::FailoverBench),
    /// Coordinator CPU spent on heartbeats of many simulated workers holding many leases each.
    Heartbeats(faults::HeartbeatBench),
    /// Throughput of a CPU-bound task on 1, 4 and 1 + 4 slots, and the local autoscaler's reaction times.
    Scaling(scaling::ScalingBench),
}

impl Bench {
    pub fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        match self.which {
            Which::Runtime(b) => b.execute(global),
            Which::E2e(b) => super::async_main(b.execute(global)),
            Which::Failover(b) => super::async_main(b.execute(global)),
            Which::Heartbeats(b) => super::async_main(b.execute(global)),
            Which::Scaling(b) => super::async_main(b.execute(global)),
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hivemind bench runtime\n  hivemind bench runtime --json --iterations 50000"
)]
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

        // CPU-bound: the same kernels natively and in the sandbox with fuel and epochs on.
        let primes = runtime.load(&programs::read(programs::PRIMES)).map_err(anyhow::Error::msg)?;
        let to = self.primes_to;
        let (native_best, wasm_best) = compare(&runtime, &primes, &format!("1 {to}"), || {
            native::primes::count_primes(1, std::hint::black_box(to)).to_string()
        })?;
        let ratio = wasm_best.as_secs_f64() / native_best.as_secs_f64();
        let mandelbrot = runtime.load(&programs::read(programs::MANDELBROT)).map_err(anyhow::Error::msg)?;
        let picture = "600 400 1000";
        let (mandel_native, mandel_wasm) = compare(&runtime, &mandelbrot, picture, || {
            let job = native::mandelbrot::parse(std::hint::black_box(picture.as_bytes())).expect("valid job");
            native::mandelbrot::render(&job)
        })?;
        let mandel_ratio = mandel_wasm.as_secs_f64() / mandel_native.as_secs_f64();

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
                "mandelbrot_wasm_native_ratio": mandel_ratio,
                "mandelbrot_native_ms": ms(mandel_native),
                "mandelbrot_wasm_ms": ms(mandel_wasm),
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
            println!(
                "mandelbrot {picture} wasm/native {mandel_ratio:.2}× ({:.1} ms vs {:.1} ms)",
                ms(mandel_wasm),
                ms(mandel_native)
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

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hivemind bench e2e\n  hivemind bench e2e --subtasks 1000000 --latency-samples 0 --json\n  hivemind bench e2e --store postgres://postgres@127.0.0.1/test --coordinators 2"
)]
pub struct E2eBench {
    /// Subtasks of the throughput task.
    #[arg(long, default_value_t = 100_000)]
    pub subtasks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Slots per worker (default: the number of cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Single-subtask tasks submitted one at a time for the latency figures.
    #[arg(long, default_value_t = 300)]
    pub latency_samples: usize,
    /// The coordinators' store: `sqlite` or a PostgreSQL URL. Without `?schema=`, a fresh schema is made
    /// for the run and dropped after it.
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// Coordinators sharing the store (more than one needs PostgreSQL); workers are spread over them and
    /// the task is submitted to the first.
    #[arg(long, default_value_t = 1)]
    pub coordinators: usize,
}

/// A schema made for one benchmark run, dropped afterwards.
struct BenchSchema {
    url: String,
    name: String,
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // The PostgreSQL client blocks; this runs outside the async runtime's threads.
        let _ = std::thread::spawn(move || {
            if let Ok(mut client) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
            }
        })
        .join();
    }
}

impl E2eBench {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        use hivemind_client::{Blob, SubmitTask, TaskState};

        let postgres = self.store != "sqlite";
        anyhow::ensure!(
            self.store == "sqlite"
                || self.store.starts_with("postgres://")
                || self.store.starts_with("postgresql://"),
            "unsupported store `{}`: use `sqlite` or a `postgres://` URL",
            self.store
        );
        anyhow::ensure!(self.coordinators >= 1, "--coordinators must be at least 1");
        anyhow::ensure!(postgres || self.coordinators == 1, "several coordinators need a PostgreSQL --store");
        let mut _schema = None;
        let store = if postgres && !self.store.contains("schema=") {
            let name = format!("hivemind_bench_{}", std::process::id());
            let sep = if self.store.contains('?') { '&' } else { '?' };
            let url = format!("{}{sep}schema={name}", self.store);
            _schema = Some(BenchSchema { url: self.store.clone(), name });
            url
        } else {
            self.store.clone()
        };
        let mut cluster = LocalCluster::start("e2e", &["--store", &store])?;
        for _ in 1..self.coordinators {
            cluster.add_coordinator(&["--store", &store])?;
        }
        let urls = cluster.urls();
        let slots = self.slots.unwrap_or_else(|| num_cpus::get() as u32);
        for i in 0..self.workers {
            // Each worker starts on its own coordinator and fails over to the others.
            let n = urls.len();
            let list: Vec<&str> = (0..n).map(|k| urls[(i + k) % n].as_str()).collect();
            cluster.add_worker_to(&list.join(","), slots, &[])?;
        }
        cluster.wait_for_workers(self.workers).await?;
        let client = cluster.client()?;
        let module_id = client.upload_module(programs::read(programs::ECHO)).await?.module_id;

        // Warm-up: every worker compiles the module.
        let warm = SubmitTask {
            module_id: module_id.clone(),
            inputs: vec![Blob::from("warm"); 64],
            ..SubmitTask::default()
        };
        let task = client.submit_task(&warm).await?;
        client.wait(&task.task_id, None, |_| {}).await?;

        let inputs: Vec<Blob> = (0..self.subtasks).map(|i| Blob(format!("{i}").into_bytes())).collect();
        let request = SubmitTask { module_id: module_id.clone(), inputs, ..SubmitTask::default() };
        let start = Instant::now();
        let task = client.submit_task(&request).await?;
        let submitted = start.elapsed();
        let status = client.wait(&task.task_id, None, |_| {}).await?;
        let elapsed = start.elapsed();
        anyhow::ensure!(
            status.state == TaskState::Succeeded,
            "bench task {}: {:?}",
            status.state,
            status.error
        );
        let result = client.get_result(&task.task_id).await?;
        let outputs = result.outputs.unwrap_or_default();
        anyhow::ensure!(
            outputs.len() == self.subtasks
                && outputs
                    .iter()
                    .enumerate()
                    .all(|(i, o)| o.as_ref().is_some_and(|b| b.0 == i.to_string().as_bytes())),
            "the bench task's outputs are not the inputs in order"
        );
        let throughput = self.subtasks as f64 / elapsed.as_secs_f64();

        let mut latencies = Vec::with_capacity(self.latency_samples);
        // Where the round trip goes: submit answered, then the result (long-polled until it exists).
        let mut phases: [Vec<Duration>; 2] = Default::default();
        for i in 0..self.latency_samples {
            let one = SubmitTask {
                module_id: module_id.clone(),
                inputs: vec![Blob(i.to_string().into_bytes())],
                ..SubmitTask::default()
            };
            let start = Instant::now();
            let task = client.submit_task(&one).await?;
            let submitted = start.elapsed();
            let result = client.wait_result(&task.task_id, None).await?;
            latencies.push(start.elapsed());
            phases[0].push(submitted);
            phases[1].push(start.elapsed() - submitted);
            anyhow::ensure!(result.outputs.is_some(), "latency task without result");
        }
        latencies.sort();
        for p in &mut phases {
            p.sort();
        }
        let rss = peak_rss_mb(cluster.coordinator.pid()).unwrap_or(0.0);
        drop(cluster);

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (p50, p99) = if latencies.is_empty() {
            (0.0, 0.0)
        } else {
            (ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99)))
        };
        if global.json {
            println!(
                "{}",
                serde_json::json!({
                    "benchmark": "e2e",
                    "store": if postgres { "postgres" } else { "sqlite" },
                    "coordinators": self.coordinators,
                    "subtasks": self.subtasks,
                    "workers": self.workers,
                    "slots_per_worker": slots,
                    "submit_ms": ms(submitted),
                    "elapsed_ms": ms(elapsed),
                    "subtasks_per_s": throughput,
                    "latency_samples": self.latency_samples,
                    "latency_p50_ms": p50,
                    "latency_p99_ms": p99,
                    "latency_p50_submit_ms": phases[0].first().map(|_| ms(percentile(&phases[0], 0.5))),
                    "latency_p50_result_ms": phases[1].first().map(|_| ms(percentile(&phases[1], 0.5))),
                    "coordinator_peak_rss_mb": rss,
                })
            );
        } else {
            if postgres {
                println!("store                       PostgreSQL, {} coordinator(s)", self.coordinators);
            } else {
                println!("store                       sqlite (durable against kill -9)");
            }
            println!("workers                     {} × {slots} slots", self.workers);
            println!(
                "{} echo subtasks         {:.0} ms ({:.0} ms to submit)",
                self.subtasks,
                ms(elapsed),
                ms(submitted)
            );
            println!("throughput                  {throughput:.0} subtasks/s");
            println!(
                "single-subtask round trip   p50 {p50:.2} ms, p99 {p99:.2} ms ({} samples)",
                self.latency_samples
            );
            println!("coordinator peak RSS        {rss:.1} MiB");
        }
        Ok(ExitCode::SUCCESS)
    }
}
