//! The component ABI (SPEC §2.3): components of the `hivemind:task` world from `wit/`, run with WASI 0.2 and
//! the `hivemind:task/host` imports. Exports are looked up by name so `split` and `reduce` stay optional.

use crate::engine::Inner;
use crate::error::RunFailure;
use crate::pipe::CappedPipe;
use crate::sandbox::{self, Ended, GuestError, MemoryLimiter, RunOutput, RunRequest};
use hivemind_proto::{Phase, frame};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The versioned host interface every Hivemind component may import.
pub(crate) const HOST_INTERFACE: &str = "hivemind:task/host@0.1.0";

pub(crate) struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// `host.log` writes here, into the same capped log as stderr.
    log: CappedPipe,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
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
    Ended::of(&store, &store.data().limiter, request.limits).finish(outcome, &prepared)
}
