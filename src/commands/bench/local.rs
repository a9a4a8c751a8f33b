//! A coordinator and workers started as child processes of a benchmark, each killed when dropped and
//! given a parent-death signal, so a benchmark killed from outside leaves nothing running.

use hivemind_client::Client;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `hivemind` subcommand that dies with this process.
fn hivemind() -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// A coordinator on a port chosen at run time, with its data in a fresh temporary directory.
pub struct LocalCluster {
    pub url: String,
    pub coordinator: Proc,
    /// Further coordinators sharing the first one's store (PostgreSQL), with their URLs.
    pub others: Vec<(Proc, String)>,
    pub workers: Vec<Proc>,
    data_dir: PathBuf,
}

impl LocalCluster {
    /// Starts `hivemind coordinator` with `args` and reads the address it prints.
    pub fn start(name: &str, args: &[&str]) -> anyhow::Result<LocalCluster> {
        let data_dir = std::env::temp_dir().join(format!("hivemind-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let (coordinator, url) = spawn_coordinator(&data_dir.join("0"), args)?;
        Ok(LocalCluster { url, coordinator, others: Vec::new(), workers: Vec::new(), data_dir })
    }

    /// Starts one more coordinator with `args` (which name the shared store); returns its URL.
    pub fn add_coordinator(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let dir = self.data_dir.join((self.others.len() + 1).to_string());
        let (proc, url) = spawn_coordinator(&dir, args)?;
        self.others.push((proc, url.clone()));
        Ok(url)
    }

    /// The URL of every coordinator, first one first.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(self.url.clone()).chain(self.others.iter().map(|(_, u)| u.clone())).collect()
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url)?)
    }

    /// Starts a worker process with `slots` slots and extra flags.
    pub fn add_worker(&mut self, slots: u32, args: &[&str]) -> anyhow::Result<()> {
        let url = self.url.clone();
        self.add_worker_to(&url, slots, args)
    }

    /// Starts a worker process talking to `coordinators` (a comma-separated list, tried in order).
    pub fn add_worker_to(&mut self, coordinators: &str, slots: u32, args: &[&str]) -> anyhow::Result<()> {
        let child = hivemind()?
            .args(["worker", "--coordinator", coordinators, "--slots", &slots.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .spawn()?;
        self.workers.push(Proc(child));
        Ok(())
    }

    /// Waits until `n` workers are alive.
    pub async fn wait_for_workers(&self, n: usize) -> anyhow::Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive = client.list_workers().await?.workers.iter().filter(|w| w.state == "alive").count();
            if alive >= n {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "workers did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `hivemind coordinator` on a port chosen at run time and reads the address it prints.
fn spawn_coordinator(data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<(Proc, String)> {
    let mut child = hivemind()?
        .args(["--json", "coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let coordinator = Proc(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["listening"].as_str().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("the coordinator did not print its address"))?;
    Ok((coordinator, url))
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.workers.clear();
        self.others.clear();
        self.coordinator.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// CPU time (user + system) a process has used so far, from /proc (Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Peak resident memory of a process, from /proc (Linux).
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
