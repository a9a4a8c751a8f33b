//! Scaling benchmarks (SPEC §4): how the throughput of a CPU-bound task grows with slots, and how fast the
//! local autoscaler reacts to a backlog and to an empty queue.

use super::local::LocalCluster;
use crate::commands::Global;
use hivemind_client::{Blob, Client, LimitsSpec, SubmitTask, TaskState, WorkerInfo};
use hivemind_guest_programs as programs;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hivemind bench scaling\n  hivemind bench scaling --subtasks 4000 --json"
)]
pub struct ScalingBench {
    /// CPU-bound `primes` subtasks per throughput run.
    #[arg(long, default_value_t = 2_000)]
    pub subtasks: u64,
    /// Numbers each subtask checks for primality (above 10^9; about 1 ms per 300 here).
    #[arg(long, default_value_t = 1_500)]
    pub range: u64,
    /// Scale-up and scale-down runs of the local autoscaler.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Prime-counting ranges of equal cost.
fn ranges(n: u64, width: u64) -> Vec<Blob> {
    let base = 1_000_000_000u64;
    (0..n).map(|i| Blob(format!("{} {}", base + i * width, base + (i + 1) * width).into_bytes())).collect()
}

async fn upload_primes(client: &Client) -> anyhow::Result<String> {
    Ok(client.upload_module(programs::read(programs::PRIMES)).await?.module_id)
}

/// Runs one task to the end; returns its subtasks per second (submit to finish).
async fn run_task(client: &Client, task: &SubmitTask) -> anyhow::Result<f64> {
    let start = Instant::now();
    let submitted = client.submit_task(task).await?;
    let status = client.wait(&submitted.task_id, None, |_| {}).await?;
    anyhow::ensure!(status.state == TaskState::Succeeded, "bench task {}: {:?}", status.state, status.error);
    Ok(task.inputs.len() as f64 / start.elapsed().as_secs_f64())
}

impl ScalingBench {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let mut throughput = Vec::new();
        for (label, workers) in [("1 slot", vec![1]), ("4 slots", vec![4]), ("1 + 4 slots", vec![1, 4])] {
            let rate = self.throughput(&workers).await?;
            if !global.json {
                println!("primes, {label:<12} {rate:>8.0} subtasks/s");
            }
            throughput.push((label, workers.iter().sum::<u32>(), rate));
        }
        let mut up = Vec::new();
        let mut down = Vec::new();
        for run in 0..self.runs {
            let (u, d) = self.autoscaler_run().await?;
            if !global.json {
                println!(
                    "autoscaler run {run}: new worker leasing {:.0} ms after the backlog; stopped {:.0} ms after the queue emptied (grace 1 s)",
                    u.as_secs_f64() * 1e3,
                    d.as_secs_f64() * 1e3
                );
            }
            up.push(u);
            down.push(d);
        }
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let worst_up = up.iter().max().copied().unwrap_or_default();
        let met = worst_up < Duration::from_secs(2);
        if global.json {
            println!(
                "{}",
                serde_json::json!({
                    "benchmark": "scaling",
                    "cores": num_cpus::get(),
                    "subtasks": self.subtasks,
                    "throughput": throughput.iter().map(|(label, slots, rate)| serde_json::json!({
                        "workers": label, "slots": slots, "subtasks_per_s": rate,
                    })).collect::<Vec<_>>(),
                    "scale_up_ms": up.iter().map(ms).collect::<Vec<_>>(),
                    "scale_up_max_ms": ms(&worst_up),
                    "scale_up_met": met,
                    "scale_down_ms": down.iter().map(ms).collect::<Vec<_>>(),
                })
            );
        } else {
            println!(
                "scale-up reaction: max {:.0} ms (target < 2000 ms: {})",
                ms(&worst_up),
                if met { "met" } else { "NOT met" }
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Throughput of one CPU-bound task on workers with the given slots.
    async fn throughput(&self, slots: &[u32]) -> anyhow::Result<f64> {
        let mut cluster = LocalCluster::start("scaling", &[])?;
        for n in slots {
            cluster.add_worker(*n, &[])?;
        }
        cluster.wait_for_workers(slots.len()).await?;
        let client = cluster.client()?;
        let module_id = upload_primes(&client).await?;
        let task = |inputs| SubmitTask {
            module_id: module_id.clone(),
            inputs,
            limits: LimitsSpec { memory_bytes: Some(32 << 20), ..LimitsSpec::default() },
            ..SubmitTask::default()
        };
        // Warm-up: every worker compiles the module.
        run_task(&client, &task(ranges(64, 10))).await?;
        run_task(&client, &task(ranges(self.subtasks, self.range))).await
    }

    /// A coordinator with `--local-workers 1..2` of one slot each: the time from submitting a backlog to a
    /// second worker leasing, and from the queue emptying to that worker having drained and left.
    async fn autoscaler_run(&self) -> anyhow::Result<(Duration, Duration)> {
        let cluster = LocalCluster::start(
            "autoscaler",
            &["--local-workers", "1..2", "--scale-down-after", "1s", "--scale-interval", "100ms"],
        )?;
        let client = cluster.client()?;
        let alive = |workers: &[WorkerInfo]| -> Vec<WorkerInfo> {
            workers.iter().filter(|w| w.state == "alive").cloned().collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(w) = alive(&client.list_workers().await?.workers).pop() {
                break w.worker_id;
            }
            anyhow::ensure!(Instant::now() < deadline, "the first local worker did not register");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let module_id = upload_primes(&client).await?;
        let task = SubmitTask {
            module_id,
            inputs: ranges(self.subtasks, self.range),
            limits: LimitsSpec { memory_bytes: Some(32 << 20), ..LimitsSpec::default() },
            ..SubmitTask::default()
        };
        let submitted = Instant::now();
        let task = client.submit_task(&task).await?;
        let up = loop {
            let workers = client.list_workers().await?.workers;
            if workers.iter().any(|w| w.worker_id != first && (w.leased > 0 || w.completed > 0)) {
                break submitted.elapsed();
            }
            anyhow::ensure!(submitted.elapsed() < Duration::from_secs(30), "no second worker started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let status = client.wait(&task.task_id, None, |_| {}).await?;
        anyhow::ensure!(
            status.state == TaskState::Succeeded,
            "bench task {}: {:?}",
            status.state,
            status.error
        );
        let emptied = Instant::now();
        let down = loop {
            let workers = client.list_workers().await?.workers;
            if alive(&workers).len() == 1 && workers.iter().any(|w| w.state == "left") {
                break emptied.elapsed();
            }
            anyhow::ensure!(emptied.elapsed() < Duration::from_secs(30), "no worker was stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok((up, down))
    }
}
