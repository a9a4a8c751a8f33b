//! Placement for one lease (SPEC §4, `docs/scaling.md`), shared by every backend: which tasks with queued
//! work the asking worker may take subtasks from, and how many at most. Backends read the inputs in their
//! lease transaction and apply the plan with their own queue queries.

use super::labels_match;
use std::collections::BTreeMap;

/// A live worker as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub slots: u32,
    pub memory: u64,
    pub labels: BTreeMap<String, String>,
}

impl Candidate {
    fn fits(&self, memory: u64, requires: &BTreeMap<String, String>) -> bool {
        memory <= self.memory && labels_match(requires, &self.labels)
    }
}

/// A task with queued subtasks.
#[derive(Debug, Clone)]
pub struct ActiveTask {
    pub id: String,
    pub priority: i32,
    /// The memory limit each of its subtasks needs.
    pub memory: u64,
    pub requires: BTreeMap<String, String>,
    pub module_id: String,
    pub queued: u64,
}

/// Which tasks a lease may take subtasks from, and how many at most.
#[derive(Debug, Default)]
pub struct Plan {
    /// (task, priority) of the tasks whose subtasks this worker should take.
    pub tasks: Vec<(String, i32)>,
    /// Every task with queued work is in `tasks` (the plain queue-order lease applies).
    pub all: bool,
    /// The worker's fair share of that backlog: its part of the live slots, at least its own slots.
    pub share: u32,
    /// Queued subtasks of `tasks` (some may still be waiting out a retry backoff).
    pub queued: u64,
}

impl Plan {
    /// Whether a lease that took `taken` of at most `n` subtasks left nothing this worker could take: every
    /// task fits it, and it got fewer than it could or all there were.
    pub fn drained(&self, taken: usize, n: u64) -> bool {
        self.all && ((taken as u64) < n || taken as u64 >= self.queued)
    }

    /// Whether a lease that took `taken` of at most `n` subtasks left queued work of its tasks behind: it
    /// took all it could, and there was more.
    pub fn left(&self, taken: usize, n: u64) -> bool {
        taken > 0 && taken as u64 >= n && (taken as u64) < self.queued
    }
}

/// What placement asks the store while planning.
pub trait Facts {
    type Error;
    /// Subtasks leased to `worker` right now.
    fn leased(&mut self, worker: &str) -> Result<u32, Self::Error>;
    /// Whether `worker` holds `module` compiled.
    fn holds(&mut self, worker: &str, module: &str) -> Result<bool, Self::Error>;
}

/// Parses a JSON object of labels (`{}` without allocating a parser).
pub fn parse_labels(json: &str) -> BTreeMap<String, String> {
    if json == "{}" { BTreeMap::new() } else { serde_json::from_str(json).unwrap_or_default() }
}

/// Plans a lease by `me` among the live workers `alive`: a task is taken only if its memory limit is within
/// the worker's budget and the worker carries every label it requires; it is left to an idle worker
/// (one of `idle_peers`, long-polling now, with no subtask leased: a worker keeps a long poll outstanding
/// while it runs subtasks too, and is not idle then) that fits it when that worker holds the task's module
/// and this one does not, or when both hold it alike and this worker's slots are already full.
pub fn plan<F: Facts>(
    me: &Candidate,
    active: Vec<ActiveTask>,
    alive: &[Candidate],
    idle_peers: &[String],
    facts: &mut F,
) -> Result<Plan, F::Error> {
    let mut plan = Plan { tasks: Vec::new(), all: true, share: 0, queued: 0 };
    if active.is_empty() {
        return Ok(plan);
    }
    let peers: Vec<&Candidate> =
        alive.iter().filter(|p| p.id != me.id && idle_peers.contains(&p.id)).collect();
    let mine_full = !peers.is_empty() && facts.leased(&me.id)? >= me.slots;
    // Whether each polling peer has nothing leased, asked only of peers that would get a task.
    let mut peer_idle: BTreeMap<&str, bool> = BTreeMap::new();
    let mut fair = 0u64;
    for task in active {
        let mut take = me.fits(task.memory, &task.requires);
        if take && !peers.is_empty() {
            let i_hold = facts.holds(&me.id, &task.module_id)?;
            for peer in peers.iter().filter(|p| p.fits(task.memory, &task.requires)) {
                let peer_holds = facts.holds(&peer.id, &task.module_id)?;
                if !((peer_holds && !i_hold) || (peer_holds == i_hold && mine_full)) {
                    continue;
                }
                let idle = match peer_idle.get(peer.id.as_str()) {
                    Some(idle) => *idle,
                    None => {
                        let idle = facts.leased(&peer.id)? == 0;
                        peer_idle.insert(&peer.id, idle);
                        idle
                    }
                };
                if idle {
                    take = false;
                    break;
                }
            }
        }
        if take {
            // This worker's part of the task's backlog: by its share of the slots that can run the task.
            let fitting: u64 = alive
                .iter()
                .filter(|w| w.fits(task.memory, &task.requires))
                .map(|w| u64::from(w.slots))
                .sum();
            fair += task.queued.saturating_mul(u64::from(me.slots)).div_ceil(fitting.max(1));
            plan.queued += task.queued;
            plan.tasks.push((task.id, task.priority));
        } else {
            plan.all = false;
        }
    }
    plan.share = fair.max(u64::from(me.slots)).min(u64::from(u32::MAX)) as u32;
    Ok(plan)
}
