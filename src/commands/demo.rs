//! `hivemind demo`: the whole system in one process on the embedded SQLite store: a coordinator, two
//! workers, the `wordcount` example (built into the binary) run as split → map → reduce over a bundled text.

use super::Global;
use hivemind_client::{Blob, Client, SubmitTask};
use hivemind_coordinator::{Config, Coordinator};
use hivemind_worker::WorkerConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The text the demo counts words in.
const TEXT: &str = include_str!("../../guest-examples/wordcount/data/hive.txt");

/// Run a coordinator and two workers in this process and count the words of a bundled text.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hivemind demo\n  hivemind demo --input book.txt --json")]
pub struct Demo {
    /// Count the words of this file instead of the bundled text.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Keep the coordinator's state here (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Demo {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let text = match &self.input {
            Some(path) => {
                std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?
            }
            None => TEXT.as_bytes().to_vec(),
        };
        let temp = std::env::temp_dir().join(format!("hivemind-demo-{}", std::process::id()));
        let data_dir = self.data_dir.clone().unwrap_or_else(|| temp.clone());
        let say = |line: String| {
            if !global.json {
                eprintln!("{line}");
            }
        };

        let coordinator = Coordinator::open(Config::new(&data_dir))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop_server, server_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = {
            let mut rx = server_rx;
            tokio::spawn(hivemind_coordinator::serve(listener, coordinator, async move {
                let _ = rx.wait_for(|s| *s).await;
            }))
        };
        say(format!("coordinator on {url} (SQLite store in {})", data_dir.display()));
        let client = Client::new(&url)?;
        let mut workers = Vec::new();
        for i in 0..2 {
            let config = WorkerConfig {
                slots: 1,
                prefetch: 4,
                name: format!("demo-worker-{i}"),
                ..WorkerConfig::default()
            };
            let mut rx = stop_rx.clone();
            workers.push(tokio::spawn(hivemind_worker::run(client.clone(), config, async move {
                let _ = rx.wait_for(|s| *s).await;
            })));
        }
        say("2 workers started".into());

        let started = Instant::now();
        let module = client.upload_module(hivemind_guest_programs::WORDCOUNT_BYTES.to_vec()).await?;
        say(format!("uploaded wordcount as {}", module.module_id));
        let task = client
            .submit_task(&SubmitTask {
                module_id: module.module_id,
                inputs: vec![Blob(text.clone())],
                split: true,
                reduce: true,
                ..SubmitTask::default()
            })
            .await?;
        say(format!("submitted task {} (split → map → reduce over {} bytes)", task.task_id, text.len()));
        let status = super::task::follow(&client, &task.task_id, false).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(status.state.is_finished(), "task did not finish");
        let result = client.get_result(&task.task_id).await;
        let workers_info = client.list_workers().await?;

        let _ = stop_tx.send(true);
        for w in workers {
            let _ = w.await;
        }
        let _ = stop_server.send(true);
        let _ = server.await;
        if self.data_dir.is_none() {
            let _ = std::fs::remove_dir_all(&temp);
        }

        let result = result?;
        let counts: std::collections::BTreeMap<String, u64> =
            serde_json::from_slice(&result.result.clone().unwrap_or_default().0)?;
        if global.json {
            super::print_json(&serde_json::json!({
                "task_id": status.task_id,
                "state": status.state,
                "counts": counts,
                "subtasks": status.subtasks,
                "usage": status.usage,
                "elapsed_ms": elapsed.as_secs_f64() * 1e3,
                "workers": workers_info.workers.iter().map(|w| serde_json::json!({"name": w.name, "completed": w.completed})).collect::<Vec<_>>(),
            }))?;
        } else {
            let mut top: Vec<_> = counts.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            println!("task {} {}", status.task_id, status.state);
            println!(
                "{} distinct words, {} in all; the most frequent:",
                counts.len(),
                counts.values().sum::<u64>()
            );
            for (word, n) in top.iter().take(10) {
                println!("  {n:>5}  {word}");
            }
            println!(
                "{} subtasks (1 split, {} map, 1 reduce) in {:.1} ms; fuel {}, cpu wall time {:.2} ms",
                status.subtasks.total(),
                status.subtasks.total().saturating_sub(2),
                elapsed.as_secs_f64() * 1e3,
                status.usage.fuel_consumed,
                status.usage.wall_time_us as f64 / 1e3
            );
            for w in &workers_info.workers {
                println!("  worker {} ran {} subtasks", w.name, w.completed);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
