//! `hivemind coordinator`: serve the API on the embedded SQLite store.

use super::Global;
use anyhow::Context;
use hivemind_coordinator::{Config, Coordinator};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run a coordinator: the HTTP API, the scheduler and the failure detector, with state in `--data-dir`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hivemind coordinator\n  \
    hivemind coordinator --listen 127.0.0.1:6000 --data-dir /var/lib/hivemind")]
pub struct CoordinatorCmd {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: String,
    /// Directory of the SQLite database.
    #[arg(long, default_value = "./hivemind-data")]
    pub data_dir: PathBuf,
    /// Expected interval between worker heartbeats.
    #[arg(long, value_parser = super::parse_duration, default_value = "1s")]
    pub heartbeat: Duration,
    /// A worker silent this long is declared dead and its subtasks requeued.
    #[arg(long, value_parser = super::parse_duration, default_value = "3s")]
    pub dead_after: Duration,
    /// Backoff before retrying a failed attempt (`retry_on_error`); doubled for each later attempt.
    #[arg(long, value_parser = super::parse_duration, default_value = "100ms")]
    pub retry_backoff: Duration,
}

impl CoordinatorCmd {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        if self.heartbeat.is_zero() || self.dead_after <= self.heartbeat {
            anyhow::bail!(
                "--dead-after ({:?}) must be longer than --heartbeat ({:?}), or every worker would be declared dead",
                self.dead_after,
                self.heartbeat
            );
        }
        let mut config = Config::new(&self.data_dir);
        config.heartbeat_interval = self.heartbeat;
        config.dead_after = self.dead_after;
        config.retry_backoff = self.retry_backoff;
        let coordinator = Coordinator::open(config)?;
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("cannot listen on `{}`", self.listen))?;
        let addr = listener.local_addr()?;
        if global.json {
            println!("{}", serde_json::json!({ "listening": format!("http://{addr}") }));
        } else {
            eprintln!(
                "hivemind coordinator listening on http://{addr} (data in {})",
                self.data_dir.display()
            );
        }
        hivemind_coordinator::serve(listener, coordinator, super::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }
}
