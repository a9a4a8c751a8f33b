//! Dynamic scaling (SPEC §4): the decision rule, shared by the local autoscaler and the `/metrics` gauges an
//! external autoscaler (Kubernetes HPA or KEDA) reads, and the local autoscaler itself, which supervises
//! worker processes on the coordinator's machine between a minimum and a maximum.
//!
//! The rule: start a worker while the backlog per free slot is at or above a threshold (one at a time: the
//! next only once the previous one has registered); stop a worker, by SIGTERM so it drains first, once it
//! has held no subtask for a grace period and the queue is empty; never go below the minimum or above the
//! maximum. Every decision is logged with its reason.

use crate::store::Store;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Queued subtasks per free slot; the whole queue when no slot is free, 0 when nothing is queued.
pub fn backlog_per_free_slot(queued: u64, free_slots: u64) -> f64 {
    if queued == 0 { 0.0 } else { queued as f64 / free_slots.max(1) as f64 }
}

/// Knobs of the local autoscaler (`hivemind coordinator --local-workers MIN..MAX`).
#[derive(Debug, Clone)]
pub struct ScalePolicy {
    pub min: u32,
    pub max: u32,
    /// Start a worker while the backlog per free slot is at least this.
    pub backlog_per_slot: f64,
    /// Stop a worker after it held no subtask for this long (and the queue is empty).
    pub idle_grace: Duration,
    /// How often the autoscaler decides.
    pub interval: Duration,
    /// A started worker that has not registered after this long no longer holds back the next start.
    pub start_timeout: Duration,
}

impl ScalePolicy {
    pub fn new(min: u32, max: u32) -> Self {
        ScalePolicy {
            min,
            max,
            backlog_per_slot: 2.0,
            idle_grace: Duration::from_secs(10),
            interval: Duration::from_millis(250),
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// What the autoscaler sees of one supervised worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWorker {
    pub name: String,
    /// It has registered with the coordinator.
    pub registered: bool,
    /// How long it has held no subtask (zero while it holds one).
    pub idle_for: Duration,
    /// Time since it was started.
    pub age: Duration,
}

/// One observation of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub queued: u64,
    /// Slots of every live worker (local or not) not running a subtask.
    pub free_slots: u64,
    pub workers: Vec<LocalWorker>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Start { reason: String },
    Stop { name: String, reason: String },
    Hold,
}

/// The scaling rule (see the module documentation).
pub fn decide(policy: &ScalePolicy, obs: &Observation) -> Decision {
    let n = obs.workers.len() as u32;
    if n < policy.min {
        return Decision::Start { reason: format!("{n} workers, below the minimum of {}", policy.min) };
    }
    let starting = obs.workers.iter().any(|w| !w.registered && w.age < policy.start_timeout);
    let backlog = backlog_per_free_slot(obs.queued, obs.free_slots);
    if obs.queued > 0 && backlog >= policy.backlog_per_slot && n < policy.max && !starting {
        return Decision::Start {
            reason: format!(
                "backlog of {backlog:.1} subtasks per free slot ({} queued, {} free slots) is at least {}",
                obs.queued, obs.free_slots, policy.backlog_per_slot
            ),
        };
    }
    if obs.queued == 0 && n > policy.min {
        let idlest = obs.workers.iter().filter(|w| w.registered).max_by_key(|w| w.idle_for);
        if let Some(w) = idlest.filter(|w| w.idle_for >= policy.idle_grace) {
            return Decision::Stop {
                name: w.name.clone(),
                reason: format!(
                    "idle for {:.1} s with the queue empty, above the minimum of {}",
                    w.idle_for.as_secs_f64(),
                    policy.min
                ),
            };
        }
    }
    Decision::Hold
}

/// How to start a local worker process.
#[derive(Debug, Clone)]
pub struct LocalWorkers {
    pub policy: ScalePolicy,
    /// The `hivemind` executable.
    pub program: PathBuf,
    /// Arguments before `--name NAME` (e.g. `worker --coordinator URL --slots 1`).
    pub args: Vec<String>,
    /// The token the workers send (as `HIVEMIND_TOKEN`, so it is not on their command line).
    pub token: Option<String>,
}

struct Supervised {
    name: String,
    child: tokio::process::Child,
    started: Instant,
    idle_since: Instant,
    stopping: bool,
}

/// Runs the local autoscaler until the task is aborted (its children are killed when dropped).
pub async fn supervise(config: LocalWorkers, coordinator: Arc<crate::Coordinator>) {
    let store: Arc<dyn Store> = coordinator.store.clone();
    let policy = config.policy.clone();
    tracing::info!(min = policy.min, max = policy.max, threshold = policy.backlog_per_slot,
        grace = ?policy.idle_grace, "local autoscaler started");
    let mut children: Vec<Supervised> = Vec::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Reap workers that exited (drained after a stop, or crashed).
        children.retain_mut(|c| match c.child.try_wait() {
            Ok(Some(status)) => {
                if c.stopping {
                    tracing::info!(worker = %c.name, %status, "local worker stopped");
                } else {
                    tracing::warn!(worker = %c.name, %status, "local worker exited on its own");
                }
                false
            }
            _ => true,
        });
        let store_view = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let queued: u64 = store.queue_depth()?.iter().map(|(_, n)| n).sum();
                Ok::<_, crate::store::StoreError>((queued, store.list_workers()?))
            })
            .await
        };
        let (queued, workers) = match store_view {
            Ok(Ok(view)) => view,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "autoscaler cannot read the store");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "autoscaler store read panicked");
                continue;
            }
        };
        let alive: Vec<_> = workers.iter().filter(|w| w.state == "alive").collect();
        let free_slots = alive.iter().map(|w| u64::from(w.slots.saturating_sub(w.running))).sum();
        let now = Instant::now();
        let mut observed = Vec::new();
        for c in children.iter_mut().filter(|c| !c.stopping) {
            let me = alive.iter().find(|w| w.name == c.name);
            if me.is_none_or(|w| w.leased > 0 || w.running > 0) {
                c.idle_since = now;
            }
            observed.push(LocalWorker {
                name: c.name.clone(),
                registered: me.is_some(),
                idle_for: now - c.idle_since,
                age: now - c.started,
            });
        }
        let obs = Observation { queued, free_slots, workers: observed };
        match decide(&policy, &obs) {
            Decision::Hold => {}
            Decision::Start { reason } => {
                seq += 1;
                let name = format!("local-{}-{seq}", std::process::id());
                let mut command = tokio::process::Command::new(&config.program);
                command.args(&config.args).args(["--name", &name]).stdin(Stdio::null()).stdout(Stdio::null());
                command.kill_on_drop(true);
                if let Some(token) = &config.token {
                    command.env("HIVEMIND_TOKEN", token);
                }
                // SAFETY: prctl is async-signal-safe; the closure allocates nothing. If the coordinator dies
                // without running destructors (SIGKILL), its workers die with it instead of lingering.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let spawned = command.spawn();
                match spawned {
                    Ok(child) => {
                        tracing::info!(worker = %name, workers = obs.workers.len() + 1, %reason, "autoscaler: starting a worker");
                        children.push(Supervised {
                            name,
                            child,
                            started: now,
                            idle_since: now,
                            stopping: false,
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, program = %config.program.display(), "autoscaler cannot start a worker")
                    }
                }
            }
            Decision::Stop { name, reason } => {
                if let Some(c) = children.iter_mut().find(|c| c.name == name) {
                    tracing::info!(worker = %name, workers = obs.workers.len() - 1, %reason, "autoscaler: stopping a worker (it drains first)");
                    c.stopping = true;
                    if let Some(pid) = c.child.id() {
                        // SAFETY: kill(2) with a child's pid and SIGTERM has no memory effects.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                }
            }
        }
        // After the decision, so the gauge never lags a start or stop the logs already announced.
        coordinator.metrics.local_workers.set(children.iter().filter(|c| !c.stopping).count() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, registered: bool, idle_s: u64) -> LocalWorker {
        LocalWorker {
            name: name.into(),
            registered,
            idle_for: Duration::from_secs(idle_s),
            age: Duration::from_secs(60),
        }
    }

    #[test]
    fn grows_to_the_minimum_then_with_the_backlog() {
        let policy = ScalePolicy::new(1, 3);
        let obs = Observation::default();
        assert!(matches!(decide(&policy, &obs), Decision::Start { .. }));
        let obs = Observation { queued: 100, free_slots: 0, workers: vec![worker("a", true, 0)] };
        assert!(matches!(decide(&policy, &obs), Decision::Start { .. }));
        let obs = Observation { queued: 1, free_slots: 1, workers: vec![worker("a", true, 0)] };
        assert_eq!(decide(&policy, &obs), Decision::Hold, "below the threshold");
        let starting = LocalWorker { age: Duration::from_millis(100), ..worker("b", false, 0) };
        let obs = Observation { queued: 100, free_slots: 0, workers: vec![worker("a", true, 0), starting] };
        assert_eq!(decide(&policy, &obs), Decision::Hold, "one start at a time");
        let full = vec![worker("a", true, 0), worker("b", true, 0), worker("c", true, 0)];
        let obs = Observation { queued: 100, free_slots: 0, workers: full };
        assert_eq!(decide(&policy, &obs), Decision::Hold, "at the maximum");
    }

    #[test]
    fn shrinks_only_idle_workers_with_an_empty_queue_down_to_the_minimum() {
        let policy = ScalePolicy::new(1, 3);
        let obs = Observation {
            queued: 0,
            free_slots: 2,
            workers: vec![worker("a", true, 30), worker("b", true, 3)],
        };
        match decide(&policy, &obs) {
            Decision::Stop { name, reason } => {
                assert!(name == "a" && reason.contains("idle for 30.0 s"), "{reason}")
            }
            other => panic!("expected a stop, got {other:?}"),
        }
        let obs = Observation {
            queued: 1,
            free_slots: 2,
            workers: vec![worker("a", true, 30), worker("b", true, 30)],
        };
        assert_eq!(decide(&policy, &obs), Decision::Hold, "work is queued");
        let obs = Observation { queued: 0, free_slots: 1, workers: vec![worker("a", true, 3600)] };
        assert_eq!(decide(&policy, &obs), Decision::Hold, "at the minimum");
    }
}
