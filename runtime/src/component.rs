//! The component ABI (SPEC §2.3): components of the `hivemind:task` world from `wit/`, run with WASI 0.2 and
//! the `hivemind:task/host` imports. Exports are looked up by name so `split` and `reduce` stay optional.

use crate::CancelToken;
use crate::engine::Inner;
use crate::error::RunFailure;
use crate::pipe::CappedPipe;
use crate::sandbox::{self, Ended, GuestError, Interrupted, MemoryLimiter, RunOutput, RunRequest, SleepStep};
use hivemind_proto::{Phase, frame};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, InstancePre, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The versioned host interface every Hivemind component may import.
pub(crate) const HOST_INTERFACE: &str = "hivemind:task/host@0.1.0";

/// The WASI 0.2 clock interface as wasmtime-wasi 48 defines it (older 0.2 imports resolve to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

pub(crate) struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// `host.log` writes here, into the same capped log as stderr.
    log: CappedPipe,
    /// When the run's timeout passes, and its cancellation: sleeps end at either.
    deadline: Instant,
    cancel: Option<CancelToken>,
}

/// The zero of the monotonic clock components see.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn monotonic_now() -> u64 {
    clock_base().elapsed().as_nanos() as u64
}

/// A component's sleep (a `wasi:clocks/monotonic-clock` pollable). wasmtime-wasi's synchronous
/// `wasi:io/poll` blocks the thread inside the host, where epoch interruption cannot reach, so this
/// pollable also becomes ready at the run's timeout or cancellation; the run is then reported as
/// `timeout` or `cancelled` (see [`run`]).
struct GuardedSleep {
    until: Instant,
    deadline: Instant,
    cancel: Option<CancelToken>,
}

#[async_trait::async_trait]
impl Pollable for GuardedSleep {
    async fn ready(&mut self) {
        // Ready when the sleep is over or interrupted; `run` reports the interruption.
        while let SleepStep::Sleep(slice) =
            sandbox::sleep_step(self.until, self.deadline, self.cancel.as_ref())
        {
            tokio::time::sleep(slice).await;
        }
    }
}

fn guarded_sleep(state: &mut ComponentState, duration: Duration) -> wasmtime::Result<Resource<DynPollable>> {
    let sleep = GuardedSleep {
        // A sleep too long to represent lasts until the deadline.
        until: Instant::now().checked_add(duration).unwrap_or(state.deadline),
        deadline: state.deadline,
        cancel: state.cancel.clone(),
    };
    let resource = state.table.push(sleep)?;
    wasmtime_wasi::p2::subscribe(&mut state.table, resource)
}

/// Replaces the monotonic clock's `now` and sleeps (`subscribe-duration`, `subscribe-instant`) with ones
/// that end at the run's timeout or cancellation.
fn add_guarded_clock(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("now", |_store: StoreContextMut<'_, ComponentState>, (): ()| Ok((monotonic_now(),)))?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, ComponentState>, (nanos,): (u64,)| {
            Ok((guarded_sleep(store.data_mut(), Duration::from_nanos(nanos))?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, ComponentState>, (when,): (u64,)| {
            let left = Duration::from_nanos(when.saturating_sub(monotonic_now()));
            Ok((guarded_sleep(store.data_mut(), left)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    add_guarded_clock(&mut linker)?;
    let mut host = linker.instance(HOST_INTERFACE)?;
    host.func_wrap("log", |store: StoreContextMut<'_, ComponentState>, (message,): (String,)| {
        let log = &store.data().log;
        log.append(message.as_bytes());
        log.append(b"\n");
        Ok(())
    })?;
    host.func_wrap("progress", |_store: StoreContextMut<'_, ComponentState>, (fraction,): (f32,)| {
        tracing::trace!(fraction, "guest progress");
        Ok(())
    })?;
    Ok(linker)
}

/// A component linked against the host, with the phases it exports.
pub(crate) struct LinkedComponent {
    pre: InstancePre<ComponentState>,
    split: bool,
    reduce: bool,
}

impl LinkedComponent {
    pub(crate) fn supports(&self, phase: Phase) -> bool {
        match phase {
            Phase::Map => true,
            Phase::Split => self.split,
            Phase::Reduce => self.reduce,
        }
    }
}

pub(crate) fn link(
    linker: &Linker<ComponentState>,
    component: &Component,
) -> Result<LinkedComponent, RunFailure> {
    let exports = |name: &str| component.get_export_index(None, name).is_some();
    if !exports("run") {
        return Err(RunFailure::invalid_module(
            "unsupported ABI: a component must export `run` of the `hivemind:task` world",
        ));
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| RunFailure::invalid_module(format!("unsupported imports: {e:#}")))?;
    Ok(LinkedComponent { pre, split: exports("split"), reduce: exports("reduce") })
}

pub(crate) fn run(
    inner: &Inner,
    linked: &LinkedComponent,
    request: RunRequest,
) -> Result<RunOutput, RunFailure> {
    if !linked.supports(request.phase) {
        return Err(RunFailure::invalid_module(format!(
            "the component does not export `{}`, so it cannot run the {} phase",
            request.phase, request.phase
        )));
    }
    let reduce_inputs = match request.phase {
        Phase::Reduce => Some(frame::decode_frames(&request.input).map_err(|e| {
            RunFailure::invalid_module(format!("reduce input is not a sequence of frames: {e}"))
        })?),
        _ => None,
    };
    let prepared = sandbox::prepare(&request);
    let ctx = sandbox::wasi_builder(&request, bytes::Bytes::new(), &prepared).build();
    let state = ComponentState {
        ctx,
        table: ResourceTable::new(),
        limiter: MemoryLimiter::new(request.limits.memory_bytes),
        log: prepared.stderr.clone(),
        deadline: prepared.started + request.limits.timeout(),
        cancel: request.cancel.clone(),
    };
    let mut store = Store::new(&inner.engine, state);
    sandbox::arm(&mut store, &request, |s| &mut s.limiter, &prepared)?;

    let outcome =
        linked.pre.instantiate(&mut store).and_then(|instance| -> wasmtime::Result<Option<Vec<u8>>> {
            let returned = match request.phase {
                Phase::Map => {
                    let f =
                        instance.get_typed_func::<(&[u8],), (Result<Vec<u8>, String>,)>(&mut store, "run")?;
                    f.call(&mut store, (&request.input[..],))?.0
                }
                Phase::Split => {
                    let f = instance
                        .get_typed_func::<(&[u8],), (Result<Vec<Vec<u8>>, String>,)>(&mut store, "split")?;
                    f.call(&mut store, (&request.input[..],))?.0.map(frame::encode_frames)
                }
                Phase::Reduce => {
                    let inputs = reduce_inputs.unwrap_or_default();
                    let f = instance
                        .get_typed_func::<(&[Vec<u8>],), (Result<Vec<u8>, String>,)>(&mut store, "reduce")?;
                    f.call(&mut store, (&inputs[..],))?.0
                }
            };
            returned.map(Some).map_err(|message| wasmtime::Error::new(GuestError(message)))
        });
    // A sleep cut short by the timeout or a cancellation lets the guest return normally: its run still
    // counts as interrupted.
    let outcome = match outcome {
        Ok(_) if request.cancel.as_ref().is_some_and(CancelToken::is_cancelled) => {
            Err(wasmtime::Error::new(Interrupted::Cancelled))
        }
        Ok(_) if Instant::now() >= store.data().deadline => Err(wasmtime::Error::new(Interrupted::Timeout)),
        outcome => outcome,
    };
    Ended::of(&store, &store.data().limiter, request.limits).finish(outcome, &prepared)
}
