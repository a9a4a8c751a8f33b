//! The subcommands of `hivemind`, one file each, and the options every command shares.

mod bench;
mod coordinator;
mod demo;
mod module;
mod run;
mod task;
mod worker;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Hivemind: run WebAssembly task functions across many machines.
#[derive(Debug, Parser)]
#[command(name = "hivemind", version, about, long_about = None)]
#[command(after_help = "Examples:\n  hivemind demo\n  hivemind coordinator &\n  hivemind worker &\n  \
    hivemind task submit --module echo.wasm --input notes.txt --wait")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Coordinator URL; a comma-separated list means "try these in order".
    #[arg(long, global = true, env = "HIVEMIND_COORDINATOR", default_value = "http://127.0.0.1:5000")]
    pub coordinator: String,
    /// Bearer token sent to the coordinator.
    #[arg(long, global = true, env = "HIVEMIND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON document on stdout instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM file of a CA certificate to trust for `https://` coordinators (besides the system's roots).
    #[arg(long, global = true, env = "HIVEMIND_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Global {
    pub fn client(&self) -> anyhow::Result<hivemind_client::Client> {
        let ca_cert_pem =
            match &self.ca_cert {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the CA certificate `{}`: {e}", path.display())
                })?),
                None => None,
            };
        let options = hivemind_client::ClientOptions { token: self.token.clone(), ca_cert_pem };
        Ok(hivemind_client::Client::with_options(&self.coordinator, options)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::Run),
    Coordinator(coordinator::CoordinatorCmd),
    Worker(worker::WorkerCmd),
    /// Upload modules (content-addressed WebAssembly task functions)
    #[command(subcommand)]
    Module(module::ModuleCmd),
    /// Submit, watch, fetch, cancel and list tasks
    #[command(subcommand)]
    Task(task::TaskCmd),
    Demo(demo::Demo),
    Bench(bench::Bench),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if self.command.prints_for_a_pipe() {
            restore_sigpipe();
        }
        match self.command {
            Command::Run(cmd) => cmd.execute(&self.global),
            Command::Coordinator(cmd) => async_main(cmd.execute(&self.global)),
            Command::Worker(cmd) => async_main(cmd.execute(&self.global)),
            Command::Module(cmd) => async_main(cmd.execute(&self.global)),
            Command::Task(cmd) => async_main(cmd.execute(&self.global)),
            Command::Demo(cmd) => async_main(cmd.execute(&self.global)),
            Command::Bench(cmd) => cmd.execute(&self.global),
        }
    }
}

impl Command {
    /// Commands that print a result and end, whose output may go into `head` or `grep -q`; the long-running
    /// services (coordinator, worker, demo, bench) are not.
    fn prints_for_a_pipe(&self) -> bool {
        match self {
            Command::Run(_) | Command::Module(_) | Command::Task(_) => true,
            Command::Worker(cmd) => cmd.list.is_some(),
            Command::Coordinator(_) | Command::Demo(_) | Command::Bench(_) => false,
        }
    }
}

/// Lets a closed stdout end the process quietly, as it does other command-line tools (`hivemind task list |
/// head`), instead of a panic in `println!`: Rust ignores SIGPIPE by default.
fn restore_sigpipe() {
    // SAFETY: resetting a signal's disposition to its default before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs an async command on a multi-threaded tokio runtime.
pub fn async_main(
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(fut)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings only, so command output stays clean).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Parses a size flag (`64MiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    hivemind_proto::units::parse_size(text)
}

/// Parses a duration flag (`5s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    hivemind_proto::units::parse_duration(text)
}

/// Parses `KEY=VALUE`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("invalid label `{text}`: expected KEY=VALUE")),
    }
}

/// Prints `value` as one JSON document.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
