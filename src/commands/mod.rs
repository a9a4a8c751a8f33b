//! The subcommands of `hivemind`, one file each, and the options every command shares.

mod bench;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Hivemind: run WebAssembly task functions across many machines.
#[derive(Debug, Parser)]
#[command(name = "hivemind", version, about, long_about = None)]
#[command(after_help = "Example:\n  hivemind run guest-examples/echo.wasm --input README.md")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Print one JSON document on stdout instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::Run),
    Bench(bench::Bench),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(cmd) => cmd.execute(&self.global),
            Command::Bench(cmd) => cmd.execute(&self.global),
        }
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
