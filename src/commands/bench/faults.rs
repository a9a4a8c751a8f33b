//! Fault-tolerance benchmarks (SPEC §4): how fast a dead worker's subtasks run elsewhere, and what
//! heartbeats cost the coordinator.

use super::local::{LocalCluster, cpu_time};
use super::percentile;
use crate::commands::Global;
use hivemind_client::{
    Heartbeat, LeaseRequest, LimitsSpec, RegisterWorker, Resources, SubmitTask, TaskState,
};
use hivemind_guest_programs as programs;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hivemind bench failover\n  hivemind bench failover --runs 10 --json")]
pub struct FailoverBench {
    /// Worker kills to measure.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The coordinator's heartbeat interval.
    #[arg(long, value_parser = super::super::parse_duration, default_value = "1s")]
    pub heartbeat: Duration,
    /// The coordinator's failure-detection window.
    #[arg(long, value_parser = super::super::parse_duration, default_value = "3s")]
    pub dead_after: Duration,
}

impl FailoverBench {
    /// Two one-slot workers; a long subtask runs on one of them, which is SIGKILLed; measures the time
    /// until that subtask is leased (and so running, the other worker being idle) on the survivor.
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let fmt = |d: Duration| format!("{}ms", d.as_millis());
        let mut cluster = LocalCluster::start(
            "failover",
            &["--heartbeat", &fmt(self.heartbeat), "--dead-after", &fmt(self.dead_after)],
        )?;
        let client = cluster.client()?;
        let module_id = client.upload_module(programs::read(programs::PRIMES)).await?.module_id;
        // names[i] is the name of cluster.workers[i].
        let mut names: Vec<String> = Vec::new();
        let mut times = Vec::new();
        for run in 0..self.runs {
            while cluster.workers.len() < 2 {
                let name = format!("w{run}-{}", names.len());
                cluster.add_worker(1, &["--prefetch", "1", "--name", &name])?;
                names.push(name);
            }
            cluster.wait_for_workers(2).await?;
            let task = client
                .submit_task(&SubmitTask {
                    module_id: module_id.clone(),
                    inputs: vec!["1000000000 2000000000".into()],
                    limits: LimitsSpec {
                        fuel: Some(10_000_000_000_000),
                        timeout_ms: Some(3_600_000),
                        ..LimitsSpec::default()
                    },
                    ..SubmitTask::default()
                })
                .await?;
            let first = loop {
                let subtask = client.list_subtasks(&task.task_id, 0, 1).await?.subtasks.remove(0);
                if let (Some(worker), "leased") = (subtask.worker_id.clone(), subtask.state.as_str()) {
                    break (worker, subtask.attempt);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            // Let it start running, then kill the worker holding it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let workers = client.list_workers().await?.workers;
            let victim_name = workers
                .iter()
                .find(|w| w.worker_id == first.0)
                .map(|w| w.name.clone())
                .ok_or_else(|| anyhow::anyhow!("the leasing worker is not listed"))?;
            let index = names
                .iter()
                .position(|n| *n == victim_name)
                .ok_or_else(|| anyhow::anyhow!("unknown worker {victim_name}"))?;
            let killed = Instant::now();
            cluster.workers[index].kill();
            let deadline = killed + self.dead_after * 3 + Duration::from_secs(10);
            let elapsed = loop {
                let subtask = client.list_subtasks(&task.task_id, 0, 1).await?.subtasks.remove(0);
                if subtask.state == "leased"
                    && subtask.attempt > first.1
                    && subtask.worker_id != Some(first.0.clone())
                {
                    break killed.elapsed();
                }
                anyhow::ensure!(Instant::now() < deadline, "the subtask was not redistributed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            times.push(elapsed);
            client.cancel(&task.task_id).await?;
            cluster.workers.remove(index);
            names.remove(index);
            if !global.json {
                println!("run {run}: running elsewhere {:.0} ms after SIGKILL", elapsed.as_secs_f64() * 1e3);
            }
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let target = self.dead_after + Duration::from_secs(1);
        let worst = times.last().copied().unwrap_or_default();
        if global.json {
            println!(
                "{}",
                serde_json::json!({
                    "benchmark": "failover",
                    "heartbeat_ms": ms(self.heartbeat),
                    "dead_after_ms": ms(self.dead_after),
                    "runs_ms": times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                    "median_ms": ms(percentile(&times, 0.5)),
                    "max_ms": ms(worst),
                    "target_ms": ms(target),
                    "met": worst <= target,
                })
            );
        } else {
            println!(
                "dead worker's subtask running elsewhere: median {:.0} ms, max {:.0} ms (window {} + 1 s = {:.0} ms: {})",
                ms(percentile(&times, 0.5)),
                ms(worst),
                fmt(self.dead_after),
                ms(target),
                if worst <= target { "met" } else { "NOT met" }
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hivemind bench heartbeats\n  hivemind bench heartbeats --workers 100 --leases 1000 --duration 30s"
)]
pub struct HeartbeatBench {
    /// Simulated workers, each heartbeating once per interval.
    #[arg(long, default_value_t = 100)]
    pub workers: usize,
    /// Subtasks each simulated worker holds leased.
    #[arg(long, default_value_t = 1000)]
    pub leases: u32,
    /// Measurement window.
    #[arg(long, value_parser = super::super::parse_duration, default_value = "10s")]
    pub duration: Duration,
}

impl HeartbeatBench {
    /// Registers simulated workers over HTTP, has each lease `leases` subtasks, then sends every worker's
    /// heartbeat once a second (spread evenly) and reads the coordinator's CPU time from /proc.
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let cluster = LocalCluster::start("heartbeats", &["--heartbeat", "1s", "--dead-after", "3s"])?;
        let client = cluster.client()?;
        let module_id = client.upload_module(programs::read(programs::ECHO)).await?.module_id;
        let total = self.workers * self.leases as usize;
        let task = client
            .submit_task(&SubmitTask { module_id, inputs: vec!["x".into(); total], ..SubmitTask::default() })
            .await?;
        let mut ids = Vec::new();
        let mut holding = Vec::new();
        for i in 0..self.workers {
            let reg = client
                .register(&RegisterWorker {
                    name: format!("sim{i}"),
                    slots: self.leases,
                    memory_bytes: 1 << 30,
                    cores: 1,
                    labels: Default::default(),
                    resources: Default::default(),
                    modules: Vec::new(),
                })
                .await?;
            let lease = client
                .lease(&reg.worker_id, &LeaseRequest { max: self.leases, wait_ms: 0, request_id: None })
                .await?;
            anyhow::ensure!(
                lease.subtasks.len() == self.leases as usize,
                "short lease: {}",
                lease.subtasks.len()
            );
            ids.push(reg.worker_id);
            holding.push(lease.subtasks.iter().map(|s| s.subtask_id).collect::<Vec<i64>>());
        }
        let pid = cluster.coordinator.pid();
        let cpu = || cpu_time(pid).ok_or_else(|| anyhow::anyhow!("cannot read the coordinator's CPU time"));

        // Baseline: the same window with no heartbeats (the failure detector alone). Kept shorter than the
        // detection window, so the simulated workers stay alive.
        let idle_window = Duration::from_secs(2);
        let (cpu0, t0) = (cpu()?, Instant::now());
        beat_all(&client, &ids, &holding, idle_window, false).await?;
        let idle = (cpu()? - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();

        let (cpu0, t0) = (cpu()?, Instant::now());
        let sent = beat_all(&client, &ids, &holding, self.duration, true).await?;
        let wall = t0.elapsed().as_secs_f64();
        let busy = (cpu()? - cpu0).as_secs_f64() / wall;

        let status = client.status(&task.task_id).await?;
        anyhow::ensure!(
            status.state == TaskState::Running && status.subtasks.leased == total as u64,
            "leases were lost during the benchmark: {:?}",
            status.subtasks
        );
        if global.json {
            println!(
                "{}",
                serde_json::json!({
                    "benchmark": "heartbeats",
                    "workers": self.workers,
                    "leases_per_worker": self.leases,
                    "heartbeats": sent,
                    "heartbeats_per_s": sent as f64 / wall,
                    "coordinator_cpu_percent_of_one_core": busy * 100.0,
                    "idle_cpu_percent_of_one_core": idle * 100.0,
                    "target_percent": 5.0,
                    "met": busy < 0.05,
                })
            );
        } else {
            println!(
                "{} workers × {} leases: {sent} heartbeats in {wall:.1} s ({:.0}/s)",
                self.workers,
                self.leases,
                sent as f64 / wall
            );
            println!(
                "coordinator CPU: {:.2}% of one core with heartbeats, {:.2}% idle (target < 5%: {})",
                busy * 100.0,
                idle * 100.0,
                if busy < 0.05 { "met" } else { "NOT met" }
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Heartbeats every worker once per second for `window`, spread evenly (or, with `send` false, only waits
/// the same time), each with the subtasks it holds (which the coordinator checks against its leases).
/// Returns the number of heartbeats sent; fails if any is refused.
async fn beat_all(
    client: &hivemind_client::Client,
    ids: &[String],
    holding: &[Vec<i64>],
    window: Duration,
    send: bool,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let spacing = Duration::from_secs(1) / ids.len().max(1) as u32;
    let mut sent = 0u64;
    let mut next = start;
    'outer: loop {
        for (id, holding) in ids.iter().zip(holding) {
            next += spacing;
            if next > start + window {
                break 'outer;
            }
            tokio::time::sleep_until(next.into()).await;
            if send {
                // What a real worker sends: its running count, a resource monitor reading and what it holds.
                let resources = Resources {
                    cores: 8,
                    total_memory_bytes: 32 << 30,
                    available_memory_bytes: 20 << 30,
                    cpu_load: 0.75,
                    load_average: 6.1,
                };
                let beat = Heartbeat {
                    running: holding.len() as u32,
                    resources: Some(resources),
                    holding: Some(holding.clone()),
                };
                client.heartbeat(id, &beat).await?;
                sent += 1;
            }
        }
    }
    Ok(sent)
}
