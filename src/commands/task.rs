//! `hivemind task`: submit tasks, follow them, fetch results, cancel, list.

use super::Global;
use anyhow::{Context, bail};
use hivemind_client::{Blob, Client, LimitsSpec, SubmitTask, TaskResult, TaskState, TaskStatus};
use hivemind_proto::units::format_size;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum TaskCmd {
    Submit(Submit),
    /// Show a task's state, subtask counts and usage.
    #[command(after_help = "Example:\n  hivemind task status 0193c8e2-…")]
    Status {
        id: String,
    },
    /// Print a finished task's result (the reduce output, or the map outputs one per line).
    #[command(
        after_help = "Examples:\n  hivemind task result 0193c8e2-…\n  hivemind task result 0193c8e2-… -o counts.json\n  hivemind task result 0193c8e2-… --wait"
    )]
    Result {
        id: String,
        /// Write the result to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Wait for the task to finish first (with a progress bar on a terminal).
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a task: queued subtasks are dropped, running ones interrupted.
    #[command(after_help = "Example:\n  hivemind task cancel 0193c8e2-…")]
    Cancel {
        id: String,
    },
    /// List a task's subtasks: state, attempt, worker, usage, error and earlier attempts.
    #[command(
        after_help = "Examples:\n  hivemind task subtasks 0193c8e2-…\n  hivemind task subtasks 0193c8e2-… --offset 100 --limit 50"
    )]
    Subtasks {
        id: String,
        /// Skip this many subtasks (phase, then index order).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List tasks, newest first.
    #[command(after_help = "Example:\n  hivemind task list --state running")]
    List {
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Submit a task: one map subtask per input (or a split step that makes them), optional reduce.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hivemind task submit --module wordcount.wasm --input book.txt --split --reduce --wait\n  \
    hivemind task submit --module sha256:… --inputs-lines ranges.txt --priority 5 --fuel 1000000000"
)]
pub struct Submit {
    /// Module id (`sha256:…`) or a `.wasm` file to upload first.
    #[arg(long)]
    pub module: String,
    /// An input file (`-` for stdin); repeatable, one subtask each.
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Every file of this directory is an input, in name order.
    #[arg(long)]
    pub inputs_dir: Option<PathBuf>,
    /// Every line of this file is an input (without its newline).
    #[arg(long)]
    pub inputs_lines: Option<PathBuf>,
    /// Run the module's split step on the single input to make the map inputs.
    #[arg(long)]
    pub split: bool,
    /// Run the module's reduce step over all map outputs.
    #[arg(long)]
    pub reduce: bool,
    /// Higher runs first; FIFO within a priority.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Instruction budget per subtask.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit per subtask, e.g. `64MiB`.
    #[arg(long, value_parser = super::parse_size)]
    pub memory: Option<u64>,
    /// Wall-clock limit per subtask, e.g. `5s`.
    #[arg(long, value_parser = super::parse_duration)]
    pub timeout: Option<Duration>,
    /// Attempts per subtask when workers are lost (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Retry guest errors too (with exponential backoff).
    #[arg(long)]
    pub retry_on_error: bool,
    /// Resubmitting with the same key returns the existing task.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Only run on workers with this label, KEY=VALUE (repeatable).
    #[arg(long = "require", value_parser = super::parse_label)]
    pub require: Vec<(String, String)>,
    /// Whole-task deadline, e.g. `10m`.
    #[arg(long, value_parser = super::parse_duration)]
    pub deadline: Option<Duration>,
    /// Wait for the task with a progress bar, then print the result.
    #[arg(long)]
    pub wait: bool,
}

impl TaskCmd {
    pub async fn execute(self, global: &Global) -> anyhow::Result<ExitCode> {
        let client = global.client()?;
        match self {
            TaskCmd::Submit(submit) => submit.execute(&client, global).await,
            TaskCmd::Status { id } => {
                let status = client.status(&id).await?;
                if global.json {
                    super::print_json(&status)?
                } else {
                    print_status(&status)
                }
                Ok(ExitCode::SUCCESS)
            }
            TaskCmd::Result { id, output, wait } => {
                if wait {
                    let show = !global.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
                    follow(&client, &id, show).await?;
                }
                let result = client.get_result(&id).await?;
                write_result(&result, output.as_deref(), global.json)?;
                Ok(ExitCode::SUCCESS)
            }
            TaskCmd::Cancel { id } => {
                let status = client.cancel(&id).await?;
                if global.json {
                    super::print_json(&status)?
                } else {
                    println!("{} {}", status.task_id, status.state)
                }
                Ok(ExitCode::SUCCESS)
            }
            TaskCmd::Subtasks { id, offset, limit } => {
                let list = client.list_subtasks(&id, offset, limit).await?;
                if global.json {
                    super::print_json(&list)?;
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:<7} {:>7}  {:<9}  {:>7}  {:<16}  {:>10}  ERROR",
                    "PHASE", "INDEX", "STATE", "ATTEMPT", "WORKER", "WALL"
                );
                for s in list.subtasks {
                    let wall =
                        s.usage.map(|u| format!("{:.1} ms", u.wall_time_us as f64 / 1e3)).unwrap_or_default();
                    println!(
                        "{:<7} {:>7}  {:<9}  {:>7}  {:<16}  {:>10}  {}",
                        s.phase,
                        s.index,
                        s.state,
                        s.attempt,
                        s.worker_id.unwrap_or_default(),
                        wall,
                        s.error
                            .map(|e| format!("{}: {e}", s.error_kind.unwrap_or_default()))
                            .unwrap_or_default()
                    );
                    for a in s.attempts {
                        println!(
                            "{:<7} {:>7}  {:<9}  {:>7}  {:<16}  {:>10}  {}: {}",
                            "",
                            "",
                            "earlier",
                            a.attempt,
                            a.worker_id.unwrap_or_default(),
                            "",
                            a.error_kind,
                            a.error
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            TaskCmd::List { state, limit } => {
                let state = state
                    .map(|s| TaskState::parse(&s).with_context(|| format!("unknown state `{s}`")))
                    .transpose()?;
                let list = client.list_tasks(state, limit).await?;
                if global.json {
                    super::print_json(&list)?;
                } else {
                    println!(
                        "{:<36}  {:<9}  {:>8}  {:>9}  {:>6}  {:>8}",
                        "TASK", "STATE", "PRIORITY", "SUCCEEDED", "FAILED", "TOTAL"
                    );
                    for t in list.tasks {
                        println!(
                            "{:<36}  {:<9}  {:>8}  {:>9}  {:>6}  {:>8}",
                            t.task_id,
                            t.state,
                            t.priority,
                            t.subtasks.succeeded,
                            t.subtasks.failed,
                            t.subtasks.total()
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn print_status(s: &TaskStatus) {
    println!("task      {}", s.task_id);
    println!("state     {}", s.state);
    println!("module    {}", s.module_id);
    println!("phase     {}  priority {}", s.phase, s.priority);
    if !s.requires.is_empty() {
        let requires: Vec<String> = s.requires.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("requires  {}", requires.join(", "));
    }
    let c = s.subtasks;
    println!(
        "subtasks  {} total: {} queued, {} leased, {} succeeded, {} failed, {} cancelled",
        c.total(),
        c.queued,
        c.leased,
        c.succeeded,
        c.failed,
        c.cancelled
    );
    println!(
        "usage     fuel {}, peak memory {}, cpu wall time {:.3} s",
        s.usage.fuel_consumed,
        format_size(s.usage.peak_memory_bytes),
        s.usage.wall_time_us as f64 / 1e6
    );
    if let Some(error) = &s.error {
        println!("error     {error}");
    }
}

/// Writes a result: the reduce output as is, or the map outputs one per line; `--json` prints the document.
pub fn write_result(result: &TaskResult, path: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    let bytes = if json {
        let mut v = serde_json::to_vec_pretty(result)?;
        v.push(b'\n');
        v
    } else if let Some(Blob(bytes)) = &result.result {
        bytes.clone()
    } else {
        let mut out = Vec::new();
        for output in result.outputs.iter().flatten() {
            if let Some(Blob(bytes)) = output {
                out.extend_from_slice(bytes);
            }
            out.push(b'\n');
        }
        out
    };
    match path {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("cannot write `{}`", path.display()))?
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&bytes)?;
            if !json && !bytes.ends_with(b"\n") {
                stdout.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

/// Follows a task with a live progress bar (done, failed, total, rate) until it finishes.
pub async fn follow(client: &Client, task_id: &str, show: bool) -> anyhow::Result<TaskStatus> {
    let bar = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done {msg} ({per_sec})",
        )
        .expect("valid progress template"),
    );
    let status = client
        .wait(task_id, None, |s| {
            let c = s.subtasks;
            bar.set_length(c.total());
            bar.set_position(c.succeeded + c.failed);
            bar.set_message(format!("{} failed, {}", c.failed, s.state));
        })
        .await?;
    bar.finish_and_clear();
    Ok(status)
}

impl Submit {
    fn collect_inputs(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut inputs = Vec::new();
        for path in &self.inputs {
            if path == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
                inputs.push(buf);
            } else {
                inputs.push(std::fs::read(path).with_context(|| format!("cannot read input `{path}`"))?);
            }
        }
        if let Some(dir) = &self.inputs_dir {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read directory `{}`", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                inputs
                    .push(std::fs::read(&file).with_context(|| format!("cannot read `{}`", file.display()))?);
            }
        }
        if let Some(path) = &self.inputs_lines {
            let text = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            let text = text.strip_suffix(b"\n").unwrap_or(&text);
            inputs.extend(text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()));
        }
        if inputs.is_empty() {
            bail!("no inputs: give --input, --inputs-dir or --inputs-lines");
        }
        Ok(inputs)
    }

    async fn execute(self, client: &Client, global: &Global) -> anyhow::Result<ExitCode> {
        let inputs = self.collect_inputs()?;
        let module_id = if self.module.starts_with("sha256:") {
            self.module.clone()
        } else {
            let bytes = std::fs::read(&self.module)
                .with_context(|| format!("cannot read module `{}`", self.module))?;
            client.upload_module(bytes).await?.module_id
        };
        let request = SubmitTask {
            module_id,
            inputs: inputs.into_iter().map(Blob).collect(),
            priority: self.priority,
            limits: LimitsSpec {
                fuel: self.fuel,
                memory_bytes: self.memory,
                timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
                ..LimitsSpec::default()
            },
            max_attempts: self.max_attempts,
            retry_on_error: self.retry_on_error,
            split: self.split,
            reduce: self.reduce,
            idempotency_key: self.idempotency_key.clone(),
            labels: Default::default(),
            requires: self.require.iter().cloned().collect(),
            deadline_ms: self.deadline.map(|d| d.as_millis() as u64),
        };
        let status = client.submit_task(&request).await?;
        if !self.wait {
            if global.json {
                super::print_json(&status)?
            } else {
                println!("{}", status.task_id)
            }
            return Ok(ExitCode::SUCCESS);
        }
        let show = !global.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
        if !global.json {
            eprintln!("task {} submitted", status.task_id);
        }
        let status = follow(client, &status.task_id, show).await?;
        match status.state {
            TaskState::Succeeded => {
                let result = client.get_result(&status.task_id).await?;
                write_result(&result, None, global.json)?;
                Ok(ExitCode::SUCCESS)
            }
            state => bail!("task {} {state}: {}", status.task_id, status.error.unwrap_or_default()),
        }
    }
}
