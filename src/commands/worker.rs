//! `hivemind worker`: run a worker, or `hivemind worker list` the cluster's workers.

use super::Global;
use hivemind_proto::units::format_size;
use hivemind_worker::WorkerConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run a worker that leases subtasks from the coordinator and runs them in the sandbox.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Examples:\n  hivemind worker --slots 4\n  \
    hivemind worker --coordinator http://10.0.0.5:5000 --label zone=a\n  hivemind worker list")]
pub struct WorkerCmd {
    #[command(subcommand)]
    pub list: Option<WorkerSub>,
    /// Concurrent subtasks (default: the number of cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Memory budget for subtasks, e.g. `8GiB` (default: the machine's memory).
    #[arg(long, value_parser = super::parse_size)]
    pub memory: Option<u64>,
    /// A label the scheduler can match, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = super::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Directory for compiled modules, kept across restarts.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Most subtasks held at once (default: 512 per slot; the worker aims at ~100 ms of work in hand).
    #[arg(long)]
    pub prefetch: Option<u32>,
    /// Name shown in `worker list` and the logs (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkerSub {
    /// List workers with their resources, load and usage.
    #[command(after_help = "Example:\n  hivemind worker list --json")]
    List,
}

impl WorkerCmd {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let client = global.client()?;
        if let Some(WorkerSub::List) = self.list {
            let list = client.list_workers().await?;
            if global.json {
                super::print_json(&list)?;
            } else {
                println!(
                    "{:<16} {:<14} {:<5} {:>5} {:>7} {:>6} {:>9} {:>9} {:>9} {:>5} {:>9} {:>6} {:>14}",
                    "WORKER",
                    "NAME",
                    "STATE",
                    "SLOTS",
                    "RUNNING",
                    "LEASED",
                    "BUDGET",
                    "MEM-FREE",
                    "MEM-TOTAL",
                    "CPU",
                    "COMPLETED",
                    "FAILED",
                    "FUEL"
                );
                for w in list.workers {
                    println!(
                        "{:<16} {:<14} {:<5} {:>5} {:>7} {:>6} {:>9} {:>9} {:>9} {:>4.0}% {:>9} {:>6} {:>14}",
                        w.worker_id,
                        w.name,
                        w.state,
                        w.slots,
                        w.running,
                        w.leased,
                        format_size(w.memory_bytes),
                        format_size(w.resources.available_memory_bytes),
                        format_size(w.resources.total_memory_bytes),
                        w.resources.cpu_load * 100.0,
                        w.completed,
                        w.failed,
                        w.usage.fuel_consumed
                    );
                    if !w.labels.is_empty() {
                        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        println!("{:<16} labels {}", "", labels.join(", "));
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut config = WorkerConfig::default();
        if let Some(slots) = self.slots {
            anyhow::ensure!(slots > 0, "--slots must be at least 1");
            config.slots = slots;
            config.prefetch = slots * 512;
        }
        if let Some(memory) = self.memory {
            config.memory_bytes = memory;
        }
        if let Some(prefetch) = self.prefetch {
            config.prefetch = prefetch.max(1);
        }
        if let Some(name) = self.name {
            anyhow::ensure!(!name.is_empty() && name.len() <= 128, "--name must be 1 to 128 characters");
            config.name = name;
        }
        config.labels = self.labels.into_iter().collect();
        config.cache_dir = self.cache_dir;
        eprintln!("hivemind worker: {} slots, coordinator {}", config.slots, global.coordinator);
        hivemind_worker::run(client, config, super::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }
}
