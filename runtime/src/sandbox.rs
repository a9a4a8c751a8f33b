//! One subtask run: a fresh store with fuel, a memory limiter and an epoch deadline callback (timeout and
//! cancellation), WASI wired to capped in-memory pipes, then classification of how the run ended.

use crate::engine::Inner;
use crate::error::RunFailure;
use crate::module::{Linked, LoadedModule};
use crate::pipe::{CappedPipe, Overflow};
use hivemind_proto::{ErrorKind, Limits, Phase, Usage};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

/// Everything one subtask run needs besides the module.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub phase: Phase,
    pub input: bytes::Bytes,
    pub limits: Limits,
    /// Exposed to the guest as `HIVEMIND_TASK_ID`.
    pub task_id: String,
    /// Exposed to the guest as `HIVEMIND_SUBTASK_INDEX`.
    pub subtask_index: u64,
    /// Exposed to the guest as `HIVEMIND_ATTEMPT`.
    pub attempt: u32,
    /// Lets another thread interrupt the run (task cancellation); checked every epoch tick.
    pub cancel: Option<CancelToken>,
}

/// A successful run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub output: Vec<u8>,
    /// The tail of stderr, capped at the log limit.
    pub log: Vec<u8>,
    pub usage: Usage,
}

/// A shared flag that interrupts the runs holding it within one epoch tick.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why the epoch callback stopped the guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Interrupted {
    #[error("the subtask ran longer than its timeout")]
    Timeout,
    #[error("the subtask was cancelled")]
    Cancelled,
}

/// Tracks linear memory: refuses growth past the limit (remembering that it did) and records the peak.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    total: usize,
    peak: usize,
    refused: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            total: 0,
            peak: 0,
            refused: None,
        }
    }

    pub(crate) fn peak_bytes(&self) -> u64 {
        self.peak as u64
    }

    /// The total a refused growth asked for, if any growth was refused.
    pub(crate) fn refused(&self) -> Option<usize> {
        self.refused
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold references, not data; a million entries is far beyond any real guest.
        Ok(desired <= 1_000_000)
    }
}

/// Store state of a command module.
pub(crate) struct CoreState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
    /// When the run's timeout passes; host calls that wait (`poll_oneoff`) stop there too.
    pub(crate) deadline: Instant,
    pub(crate) cancel: Option<CancelToken>,
}

/// WASI errno values used by [`poll_oneoff`].
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Longest single sleep of a guest's WASI sleep: how quickly a sleeping guest notices its timeout or a
/// cancellation.
const SLEEP_SLICE: std::time::Duration = std::time::Duration::from_millis(2);

/// What a guest's WASI sleep until `until` does next, in a run with `deadline` and `cancel`: both ways a
/// guest sleeps (a command's `poll_oneoff`, a component's clock pollable) take their turns from here.
pub(crate) enum SleepStep {
    /// The sleep is over.
    Woke,
    /// The run must stop.
    Interrupted(Interrupted),
    /// Sleep this long, then ask again.
    Sleep(std::time::Duration),
}

pub(crate) fn sleep_step(until: Instant, deadline: Instant, cancel: Option<&CancelToken>) -> SleepStep {
    if cancel.is_some_and(CancelToken::is_cancelled) {
        return SleepStep::Interrupted(Interrupted::Cancelled);
    }
    let now = Instant::now();
    if now >= until {
        return SleepStep::Woke;
    }
    if now >= deadline {
        return SleepStep::Interrupted(Interrupted::Timeout);
    }
    SleepStep::Sleep(SLEEP_SLICE.min(until - now).min(deadline - now))
}

/// Replaces WASI's `poll_oneoff` for command modules, which would otherwise block the worker's thread in a
/// host sleep that epoch interruption cannot reach, so a guest could outlive its timeout and ignore
/// cancellation. Clock subscriptions sleep in slices of at most 2 ms and end with the run's timeout or
/// cancellation; descriptor subscriptions (in-memory stdio) are always ready.
pub(crate) fn add_guarded_poll_oneoff(linker: &mut wasmtime::Linker<CoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: wasmtime::Caller<'_, CoreState>,
         subs: i32,
         events: i32,
         n: i32,
         nevents: i32|
         -> wasmtime::Result<i32> {
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return Ok(ERRNO_INVAL);
            };
            let n = n as u32 as usize;
            if n == 0 || n > 4096 {
                return Ok(ERRNO_INVAL);
            }
            let mut raw = vec![0u8; n * 48];
            if memory.read(&caller, subs as u32 as usize, &mut raw).is_err() {
                return Ok(ERRNO_FAULT);
            }
            let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
            // (userdata, tag, sleep in ns): tag 0 is a clock, 1 and 2 read and write readiness.
            let subscriptions: Vec<(u64, u8, u64)> = raw
                .chunks_exact(48)
                .map(|sub| {
                    let (userdata, tag) = (u64_at(sub, 0), sub[8]);
                    let absolute = u16::from_le_bytes([sub[40], sub[41]]) & 1 == 1;
                    let timeout = u64_at(sub, 24);
                    let sleep = if tag != 0 {
                        0
                    } else if absolute {
                        // Absolute times: on the realtime clock, the time left; otherwise due now.
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(0);
                        if u32::from_le_bytes(sub[16..20].try_into().expect("4 bytes")) == 0 {
                            timeout.saturating_sub(now)
                        } else {
                            0
                        }
                    } else {
                        timeout
                    };
                    (userdata, tag, sleep)
                })
                .collect();
            if subscriptions.iter().any(|(_, tag, _)| *tag > 2) {
                return Ok(ERRNO_INVAL);
            }
            let shortest = subscriptions.iter().map(|(_, _, ns)| *ns).min().unwrap_or(0);
            // A sleep too long to represent lasts until the deadline.
            let until = Instant::now()
                .checked_add(std::time::Duration::from_nanos(shortest))
                .unwrap_or(caller.data().deadline);
            loop {
                let state = caller.data();
                match sleep_step(until, state.deadline, state.cancel.as_ref()) {
                    SleepStep::Woke => break,
                    SleepStep::Interrupted(why) => return Err(wasmtime::Error::new(why)),
                    SleepStep::Sleep(slice) => std::thread::sleep(slice),
                }
            }
            let mut out = Vec::with_capacity(n * 32);
            let mut ready = 0u32;
            for (userdata, tag, ns) in &subscriptions {
                if *ns > shortest {
                    continue;
                }
                let mut event = [0u8; 32];
                event[0..8].copy_from_slice(&userdata.to_le_bytes());
                event[10] = *tag;
                out.extend_from_slice(&event);
                ready += 1;
            }
            if memory.write(&mut caller, events as u32 as usize, &out).is_err()
                || memory.write(&mut caller, nevents as u32 as usize, &ready.to_le_bytes()).is_err()
            {
                return Ok(ERRNO_FAULT);
            }
            Ok(0)
        },
    )?;
    Ok(())
}

/// What every store, whatever the ABI, is set up with.
pub(crate) struct Prepared {
    pub(crate) stdout: CappedPipe,
    pub(crate) stderr: CappedPipe,
    pub(crate) started: Instant,
}

/// A WASI context with only what SPEC §2.1 grants: the stdio pipes, three variables and `argv`.
pub(crate) fn wasi_builder(request: &RunRequest, stdin: bytes::Bytes, prepared: &Prepared) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdin(MemoryInputPipe::new(stdin))
        .stdout(prepared.stdout.clone())
        .stderr(prepared.stderr.clone())
        .args(&["task", request.phase.as_str()])
        .env("HIVEMIND_TASK_ID", &request.task_id)
        .env("HIVEMIND_SUBTASK_INDEX", request.subtask_index.to_string())
        .env("HIVEMIND_ATTEMPT", request.attempt.to_string())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder
}

pub(crate) fn prepare(request: &RunRequest) -> Prepared {
    Prepared {
        stdout: CappedPipe::new(request.limits.output_bytes, Overflow::Fail),
        stderr: CappedPipe::new(request.limits.log_bytes, Overflow::KeepTail),
        started: Instant::now(),
    }
}

/// Applies fuel, the epoch deadline callback and the limiter to a new store.
pub(crate) fn arm<T: 'static>(
    store: &mut Store<T>,
    request: &RunRequest,
    limiter: fn(&mut T) -> &mut MemoryLimiter,
    prepared: &Prepared,
) -> Result<(), RunFailure> {
    store.limiter(move |s| limiter(s) as &mut dyn ResourceLimiter);
    store.set_fuel(request.limits.fuel).map_err(|e| RunFailure::internal(format!("cannot set fuel: {e}")))?;
    let deadline = prepared.started + request.limits.timeout();
    let cancel = request.cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(wasmtime::Error::new(Interrupted::Cancelled));
        }
        if Instant::now() >= deadline {
            return Err(wasmtime::Error::new(Interrupted::Timeout));
        }
        Ok(UpdateDeadline::Continue(1))
    });
    Ok(())
}

pub(crate) fn run(
    inner: &Inner,
    module: &LoadedModule,
    request: RunRequest,
) -> Result<RunOutput, RunFailure> {
    if request.limits.memory_bytes > inner.max_memory_bytes {
        return Err(RunFailure::new(
            ErrorKind::MemoryLimit,
            format!(
                "memory limit of {} bytes exceeds this runtime's maximum of {} bytes",
                request.limits.memory_bytes, inner.max_memory_bytes
            ),
        ));
    }
    match &*module.linked {
        Linked::Command(pre) => run_command(inner, pre, request),
        Linked::Component(linked) => crate::component::run(inner, linked, request),
    }
}

fn run_command(
    inner: &Inner,
    pre: &wasmtime::InstancePre<CoreState>,
    request: RunRequest,
) -> Result<RunOutput, RunFailure> {
    let prepared = prepare(&request);
    let wasi = wasi_builder(&request, request.input.clone(), &prepared).build_p1();
    let state = CoreState {
        wasi,
        limiter: MemoryLimiter::new(request.limits.memory_bytes),
        deadline: prepared.started + request.limits.timeout(),
        cancel: request.cancel.clone(),
    };
    let mut store = Store::new(&inner.engine, state);
    arm(&mut store, &request, |s| &mut s.limiter, &prepared)?;

    let outcome = pre.instantiate(&mut store).and_then(|instance| {
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())
    });
    let outcome = match outcome {
        Err(err) if err.downcast_ref::<I32Exit>().is_some_and(|e| e.0 == 0) => Ok(()),
        other => other,
    };
    Ended::of(&store, &store.data().limiter, request.limits).finish(outcome.map(|()| None), &prepared)
}

/// How a run ended, with what is needed to build its report.
pub(crate) struct Ended {
    pub(crate) fuel_consumed: u64,
    pub(crate) peak_memory: u64,
    pub(crate) memory_refused: Option<usize>,
    pub(crate) limits: Limits,
}

impl Ended {
    pub(crate) fn of<T>(store: &Store<T>, limiter: &MemoryLimiter, limits: Limits) -> Self {
        Ended {
            fuel_consumed: limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)),
            peak_memory: limiter.peak_bytes(),
            memory_refused: limiter.refused(),
            limits,
        }
    }

    /// Builds the result. `Ok(Some(bytes))` is a component's returned output; `Ok(None)` means stdout is.
    pub(crate) fn finish(
        self,
        outcome: wasmtime::Result<Option<Vec<u8>>>,
        prepared: &Prepared,
    ) -> Result<RunOutput, RunFailure> {
        let usage = Usage {
            fuel_consumed: self.fuel_consumed,
            peak_memory_bytes: self.peak_memory,
            wall_time_us: prepared.started.elapsed().as_micros() as u64,
        };
        let log = prepared.stderr.take();
        let stdout = prepared.stdout.take();
        let fail = |kind: ErrorKind, message: String| {
            let mut message = message;
            let tail = log_tail(&log);
            if !tail.is_empty() {
                message.push_str("; stderr: ");
                message.push_str(&tail);
            }
            Err(RunFailure { kind, message, log: log.clone(), usage })
        };
        if prepared.stdout.overflowed() {
            return fail(
                ErrorKind::OutputTooLarge,
                format!("output exceeds the limit of {} bytes", self.limits.output_bytes),
            );
        }
        let err = match outcome {
            Ok(Some(output)) if output.len() as u64 > self.limits.output_bytes => {
                return fail(
                    ErrorKind::OutputTooLarge,
                    format!(
                        "output of {} bytes exceeds the limit of {} bytes",
                        output.len(),
                        self.limits.output_bytes
                    ),
                );
            }
            Ok(Some(output)) => return Ok(RunOutput { output, log, usage }),
            Ok(None) => return Ok(RunOutput { output: stdout, log, usage }),
            Err(err) => err,
        };
        if let Some(interrupted) = err.downcast_ref::<Interrupted>() {
            return match interrupted {
                Interrupted::Timeout => fail(
                    ErrorKind::Timeout,
                    format!("the subtask exceeded its timeout of {} ms", self.limits.timeout_ms),
                ),
                Interrupted::Cancelled => fail(ErrorKind::Cancelled, "the subtask was cancelled".into()),
            };
        }
        if let Some(wanted) = self.memory_refused {
            return fail(
                ErrorKind::MemoryLimit,
                format!(
                    "the guest asked for {wanted} bytes of linear memory, over its limit of {} bytes",
                    self.limits.memory_bytes
                ),
            );
        }
        if let Some(exit) = err.downcast_ref::<I32Exit>() {
            return fail(ErrorKind::ExitCode, format!("the guest exited with code {}", exit.0));
        }
        if let Some(GuestError(message)) = err.downcast_ref::<GuestError>() {
            return fail(ErrorKind::ExitCode, format!("the guest returned an error: {message}"));
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => fail(
                ErrorKind::FuelExhausted,
                format!("the subtask used all of its {} fuel", self.limits.fuel),
            ),
            Some(Trap::Interrupt) => fail(ErrorKind::Timeout, "the subtask was interrupted".into()),
            Some(trap) => fail(ErrorKind::Trap, format!("the guest trapped: {trap}")),
            None => fail(ErrorKind::Trap, format!("the guest failed: {}", root_message(&err))),
        }
    }
}

/// A component's `run`, `split` or `reduce` returned `err(message)`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GuestError(pub(crate) String);

fn root_message(err: &wasmtime::Error) -> String {
    err.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// The last line(s) of the log, at most 512 bytes, for error messages.
fn log_tail(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(512);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
