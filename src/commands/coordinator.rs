//! `hivemind coordinator`: serve the API on the embedded SQLite store or on a shared PostgreSQL.

use super::Global;
use anyhow::Context;
use hivemind_coordinator::auth::{Role, Tokens};
use hivemind_coordinator::scaling::{LocalWorkers, ScalePolicy};
use hivemind_coordinator::{Config, Coordinator};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run a coordinator: the HTTP API, the scheduler and the failure detector, with state in `--data-dir`
/// (SQLite) or in PostgreSQL (`--store postgres://…`), which several coordinators can share.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hivemind coordinator\n  \
    hivemind coordinator --listen 127.0.0.1:6000 --data-dir /var/lib/hivemind\n  \
    hivemind coordinator --local-workers 1..4 --local-worker-slots 2\n  \
    hivemind coordinator --listen 0.0.0.0:5000 --store postgres://hivemind@db.internal/hivemind")]
pub struct CoordinatorCmd {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: String,
    /// Directory of the SQLite database (the default store).
    #[arg(long, default_value = "./hivemind-data")]
    pub data_dir: PathBuf,
    /// Where state lives: `sqlite` (a file in `--data-dir`) or a PostgreSQL URL
    /// (`postgres://user@host:port/db`, optionally `?schema=NAME`) shared by several coordinators.
    #[arg(long, env = "HIVEMIND_STORE", default_value = "sqlite", value_parser = parse_store)]
    pub store: StoreUrl,
    /// Expected interval between worker heartbeats.
    #[arg(long, value_parser = super::parse_duration, default_value = "1s")]
    pub heartbeat: Duration,
    /// A worker silent this long is declared dead and its subtasks requeued.
    #[arg(long, value_parser = super::parse_duration, default_value = "3s")]
    pub dead_after: Duration,
    /// Backoff before retrying a failed attempt (`retry_on_error`); doubled for each later attempt.
    #[arg(long, value_parser = super::parse_duration, default_value = "100ms")]
    pub retry_backoff: Duration,
    /// Supervise between MIN and MAX worker processes on this machine, started while work backs up and
    /// stopped (after draining) when idle, e.g. `1..4`.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub local_workers: Option<(u32, u32)>,
    /// Slots of each local worker.
    #[arg(long, default_value_t = 1, requires = "local_workers")]
    pub local_worker_slots: u32,
    /// Memory budget of each local worker, e.g. `2GiB` (default: the machine's memory).
    #[arg(long, value_parser = super::parse_size, requires = "local_workers")]
    pub local_worker_memory: Option<u64>,
    /// Start a local worker while the backlog per free slot is at least this.
    #[arg(long, default_value_t = 2.0, requires = "local_workers")]
    pub scale_up_backlog: f64,
    /// Stop a local worker once it has been idle this long with the queue empty.
    #[arg(long, value_parser = super::parse_duration, default_value = "10s", requires = "local_workers")]
    pub scale_down_after: Duration,
    /// How often the local autoscaler decides.
    #[arg(long, value_parser = super::parse_duration, default_value = "250ms", requires = "local_workers")]
    pub scale_interval: Duration,
    /// Bearer token of the `client` role (modules, tasks); at least 16 characters.
    #[arg(long, env = "HIVEMIND_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// Bearer token of the `worker` role (register, heartbeat, lease, complete).
    #[arg(long, env = "HIVEMIND_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Bearer token of the `admin` role (everything).
    #[arg(long, env = "HIVEMIND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File of hashed tokens, one `ROLE sha256:HEX` per line (`printf %s "$TOKEN" | sha256sum`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with `--tls-key`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A request body must arrive within this, or the request fails with 408 (stalled clients).
    #[arg(long, value_parser = super::parse_duration, default_value = "30s")]
    pub body_timeout: Duration,
    /// Accept requests without tokens on a non-loopback address (anyone who can reach it can run code).
    #[arg(long)]
    pub insecure: bool,
}

impl CoordinatorCmd {
    /// The configured tokens (flags, environment, token file).
    fn tokens(&self) -> anyhow::Result<Tokens> {
        let mut tokens = Tokens::default();
        for (role, token) in [
            (Role::Client, &self.client_token),
            (Role::Worker, &self.worker_token),
            (Role::Admin, &self.admin_token),
        ] {
            if let Some(token) = token {
                tokens.add(role, token).map_err(anyhow::Error::msg)?;
            }
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file `{}`", path.display()))?;
            tokens.add_file(&text).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
        }
        Ok(tokens)
    }
}

/// Which store backend a coordinator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite,
    Postgres(String),
}

fn parse_store(text: &str) -> Result<StoreUrl, String> {
    if text == "sqlite" {
        Ok(StoreUrl::Sqlite)
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(StoreUrl::Postgres(text.to_owned()))
    } else {
        Err(format!("unsupported store `{text}`: use `sqlite` or a `postgres://` URL"))
    }
}

/// Parses `MIN..MAX` (or a single number, meaning exactly that many).
fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid worker range `{text}`: expected MIN..MAX, e.g. 1..4");
    let (lo, hi) = match text.split_once("..") {
        Some((lo, hi)) => (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?),
        None => {
            let n = text.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if lo > hi || hi == 0 || hi > 256 {
        return Err(format!(
            "invalid worker range `{text}`: MIN must not exceed MAX, and MAX must be 1..=256"
        ));
    }
    Ok((lo, hi))
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
        config.tokens = self.tokens()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let read =
                    |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display()));
                Some(hivemind_coordinator::tls_config(&read(cert)?, &read(key)?)?)
            }
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        anyhow::ensure!(!self.body_timeout.is_zero(), "--body-timeout must be greater than 0");
        config.caps.body_timeout = self.body_timeout;
        // Safe default, checked before binding: no tokens means loopback only.
        let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&self.listen)
            .await
            .with_context(|| format!("cannot resolve the listen address `{}`", self.listen))?
            .collect();
        if config.tokens.is_empty() && resolved.iter().any(|a| !a.ip().is_loopback()) {
            if !self.insecure {
                anyhow::bail!(
                    "refusing to listen on `{}` without tokens: anyone who can reach it could run code on your workers; \
                     set --client-token, --worker-token and --admin-token (or --token-file), or pass --insecure",
                    self.listen
                );
            }
            tracing::warn!(listen = %self.listen, "listening without authentication on a non-loopback address (--insecure)");
        }
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("cannot listen on `{}`", self.listen))?;
        let addr = listener.local_addr()?;
        if let Some((min, max)) = self.local_workers {
            anyhow::ensure!(self.local_worker_slots > 0, "--local-worker-slots must be at least 1");
            anyhow::ensure!(
                self.scale_up_backlog > 0.0 && !self.scale_interval.is_zero(),
                "--scale-up-backlog and --scale-interval must be greater than 0"
            );
            let mut policy = ScalePolicy::new(min, max);
            policy.backlog_per_slot = self.scale_up_backlog;
            policy.idle_grace = self.scale_down_after;
            policy.interval = self.scale_interval;
            let mut args = vec![
                "--coordinator".to_string(),
                format!("{scheme}://{addr}"),
                "worker".to_string(),
                "--slots".to_string(),
                self.local_worker_slots.to_string(),
            ];
            if let Some(cert) = &self.tls_cert {
                // The workers it starts trust the coordinator's own certificate.
                args.splice(0..0, ["--ca-cert".to_string(), cert.display().to_string()]);
            }
            if let Some(memory) = self.local_worker_memory {
                args.extend(["--memory".to_string(), memory.to_string()]);
            }
            let program = std::env::current_exe().context("cannot find the hivemind executable")?;
            // Local workers authenticate with the worker (or admin) token given in clear.
            let token = self.worker_token.clone().or_else(|| self.admin_token.clone());
            anyhow::ensure!(
                config.tokens.is_empty() || token.is_some(),
                "--local-workers with tokens needs --worker-token (or --admin-token) for the workers it starts"
            );
            config.local_workers = Some(LocalWorkers { policy, program, args, token });
        }
        let (coordinator, where_) = match &self.store {
            StoreUrl::Sqlite => (Coordinator::open(config)?, format!("data in {}", self.data_dir.display())),
            StoreUrl::Postgres(url) => {
                let url = url.clone();
                // The PostgreSQL client blocks: open it off the async threads.
                let coordinator =
                    tokio::task::spawn_blocking(move || Coordinator::open_postgres(config, &url)).await??;
                (coordinator, "state in PostgreSQL".to_string())
            }
        };
        if global.json {
            println!("{}", serde_json::json!({ "listening": format!("{scheme}://{addr}") }));
        } else {
            eprintln!("hivemind coordinator listening on {scheme}://{addr} ({where_})");
        }
        match tls {
            Some(tls) => {
                hivemind_coordinator::serve_tls(listener, coordinator, tls, super::shutdown_signal()).await?
            }
            None => hivemind_coordinator::serve(listener, coordinator, super::shutdown_signal()).await?,
        }
        Ok(ExitCode::SUCCESS)
    }
}
