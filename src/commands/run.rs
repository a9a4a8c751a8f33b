//! `hivemind run`: one subtask locally in the sandbox, no coordinator.

use super::Global;
use anyhow::Context;
use hivemind_proto::units::format_size;
use hivemind_proto::{Limits, Phase, Usage};
use hivemind_runtime::{RunRequest, Runtime, RuntimeConfig};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run a module once, locally, in the sandbox: output on stdout, usage report (or error) on stderr.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hivemind run echo.wasm --input notes.txt\n  \
    echo '1 100000' | hivemind run primes.wasm --input - --fuel 1000000000 --timeout 5s\n  \
    hivemind run wordcount.wasm --phase split --input book.txt --json")]
pub struct Run {
    /// The module or component to run (`.wasm`).
    pub module: PathBuf,
    /// Input file, or `-` for stdin (default: empty input).
    #[arg(long, short)]
    pub input: Option<String>,
    /// Phase passed to the guest: map, split or reduce.
    #[arg(long, default_value = "map")]
    pub phase: Phase,
    /// Instruction budget (about 1e10 is one CPU-second).
    #[arg(long, default_value_t = Limits::DEFAULT_FUEL)]
    pub fuel: u64,
    /// Maximum linear memory, e.g. `64MiB`.
    #[arg(long, value_parser = super::parse_size, default_value = "256MiB")]
    pub memory: u64,
    /// Wall-clock limit, e.g. `5s` or `250ms`.
    #[arg(long, value_parser = super::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Maximum output size, e.g. `16MiB`.
    #[arg(long, value_parser = super::parse_size, default_value = "16MiB")]
    pub max_output: u64,
}

impl Run {
    pub fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("cannot read `{}`", self.module.display()))?;
        let input = match self.input.as_deref() {
            None => Vec::new(),
            Some("-") => {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
                buf
            }
            Some(path) => std::fs::read(path).with_context(|| format!("cannot read input `{path}`"))?,
        };
        let limits = Limits {
            fuel: self.fuel,
            memory_bytes: self.memory,
            timeout_ms: self.timeout.as_millis() as u64,
            output_bytes: self.max_output,
            ..Limits::default()
        };
        let runtime = Runtime::new(RuntimeConfig::default())?;
        let outcome = runtime.load(&bytes).and_then(|module| {
            let request = RunRequest {
                phase: self.phase,
                input: input.into(),
                limits,
                task_id: "local".into(),
                ..RunRequest::default()
            };
            runtime.run(&module, request)
        });
        match outcome {
            Ok(out) => {
                if global.json {
                    let doc = serde_json::json!({
                        "status": "succeeded",
                        "output": String::from_utf8_lossy(&out.output),
                        "log": String::from_utf8_lossy(&out.log),
                        "usage": out.usage,
                    });
                    println!("{doc}");
                } else {
                    std::io::stdout().write_all(&out.output).context("cannot write stdout")?;
                    std::io::stdout().flush().context("cannot write stdout")?;
                    std::io::stderr().write_all(&out.log).ok();
                    eprintln!("ok: {}", describe(&out.usage));
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                if global.json {
                    let doc = serde_json::json!({
                        "status": "failed",
                        "error": { "kind": err.kind, "message": err.message },
                        "log": String::from_utf8_lossy(&err.log),
                        "usage": err.usage,
                    });
                    println!("{doc}");
                } else {
                    eprintln!("error: {}: {}", err.kind, err.message);
                    eprintln!("usage: {}", describe(&err.usage));
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// One line of usage for humans.
pub fn describe(usage: &Usage) -> String {
    format!(
        "fuel {}, peak memory {}, wall time {:.3} ms",
        usage.fuel_consumed,
        format_size(usage.peak_memory_bytes),
        usage.wall_time_us as f64 / 1000.0
    )
}
