//! The process-wide engine: wasmtime configuration (fuel, epochs, copy-on-write images, pooling allocator
//! sized to the host with fallbacks), the epoch ticker thread, the linkers for both ABIs, and loading.

use crate::cache::ModuleCache;
use crate::component::{self, ComponentState};
use crate::error::{RunFailure, RuntimeError};
use crate::module::{Linked, LoadedModule, ModuleId, ModuleKind};
use crate::sandbox::CoreState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Linker, OptLevel, PoolingAllocationConfig,
};

/// Configuration of a [`Runtime`](crate::Runtime).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled artifacts are kept; `None` keeps compiled modules in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent instances the pooling allocator reserves room for (default: 32 per core, at least 64).
    pub max_instances: u32,
    /// Largest linear memory any subtask may ask for; per-run limits are checked against this too.
    pub max_memory_bytes: u64,
    /// How often the epoch ticker fires: the resolution of timeouts and cancellation.
    pub epoch_tick: Duration,
    /// Force the on-demand allocator (for hosts where pooling is undesirable).
    pub on_demand: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: (num_cpus::get() as u32 * 32).max(64),
            max_memory_bytes: 4 << 30,
            epoch_tick: Duration::from_millis(2),
            on_demand: false,
        }
    }
}

/// Which instance allocator the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Pre-reserved slots for this many instances.
    Pooling { instances: u32 },
    /// mmap per instance: slower, but needs no up-front address space.
    OnDemand,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) allocator: AllocatorKind,
    pub(crate) core_linker: Linker<CoreState>,
    pub(crate) component_linker: wasmtime::component::Linker<ComponentState>,
    pub(crate) cache: ModuleCache,
    pub(crate) max_memory_bytes: u64,
    /// Tells the ticker thread to stop when the runtime is dropped.
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .wasm_component_model(true)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true)
        // Deep recursion must end in a trap, not exhaust the worker's own stack.
        .max_wasm_stack(1 << 20);
    config
}

fn pooling(instances: u32, max_memory: u64) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(instances)
        .total_component_instances(instances)
        .total_memories(instances)
        .total_tables(instances * 2)
        .total_stacks(0)
        .max_memories_per_module(1)
        .max_tables_per_module(2)
        .max_memory_size(max_memory as usize)
        .max_component_instance_size(1 << 20)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        // Reset memory by rewriting resident pages instead of madvise: no TLB-shootdown storm when a
        // second thread runs (the dominant cost at >100k instantiations/s).
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 16)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// Builds the engine: pooling with the requested number of slots, halving on failure (small virtual
/// address space), then on-demand allocation as the last resort.
fn build_engine(config: &RuntimeConfig) -> Result<(Engine, AllocatorKind), RuntimeError> {
    if !config.on_demand {
        let mut instances = config.max_instances.max(4);
        loop {
            let mut c = base_config();
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(
                instances,
                config.max_memory_bytes,
            )));
            match Engine::new(&c) {
                Ok(engine) => return Ok((engine, AllocatorKind::Pooling { instances })),
                Err(err) if instances > 4 => {
                    tracing::debug!(instances, error = %err, "pooling allocator does not fit; sizing down");
                    instances /= 2;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "pooling allocator unavailable; using on-demand allocation");
                    break;
                }
            }
        }
    }
    // On demand, with small reservations: explicit bounds checks instead of multi-GiB guard regions, so it
    // also works where the address space is limited (`ulimit -v`).
    let mut c = base_config();
    c.memory_reservation(0).memory_guard_size(64 << 10).memory_reservation_for_growth(1 << 20);
    let engine = Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Ok((engine, AllocatorKind::OnDemand))
}

impl Inner {
    pub(crate) fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (engine, allocator) = build_engine(&config)?;
        tracing::debug!(?allocator, "wasmtime engine ready");

        let mut core_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut core_linker, |s: &mut CoreState| &mut s.wasi)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        crate::sandbox::add_guarded_poll_oneoff(&mut core_linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let component_linker =
            component::linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let cache = ModuleCache::open(config.cache_dir.clone(), &engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("hivemind-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        Ok(Inner {
            engine,
            allocator,
            core_linker,
            component_linker,
            cache,
            max_memory_bytes: config.max_memory_bytes,
            ticker_stop,
        })
    }

    pub(crate) fn cached(&self, id: &ModuleId) -> Option<LoadedModule> {
        if let Some(m) = self.cache.memory_get(id) {
            return Some(m);
        }
        let kind = self.cache.disk_kind(id)?;
        self.load_from_disk(id, kind).ok().flatten()
    }

    fn load_from_disk(&self, id: &ModuleId, kind: ModuleKind) -> Result<Option<LoadedModule>, RunFailure> {
        let linked = match kind {
            ModuleKind::Command => match self.cache.disk_load_module(&self.engine, id) {
                Some(module) => Linked::Command(self.link_command(&module)?),
                None => return Ok(None),
            },
            ModuleKind::Component => match self.cache.disk_load_component(&self.engine, id) {
                Some(c) => Linked::Component(component::link(&self.component_linker, &c)?),
                None => return Ok(None),
            },
        };
        let loaded = LoadedModule { id: id.clone(), linked: Arc::new(linked) };
        self.cache.memory_put(loaded.clone());
        Ok(Some(loaded))
    }

    pub(crate) fn load(&self, id: ModuleId, bytes: &[u8]) -> Result<LoadedModule, RunFailure> {
        if let Some(m) = self.cache.memory_get(&id) {
            return Ok(m);
        }
        let kind = ModuleKind::detect(bytes);
        if let Some(m) = self.load_from_disk(&id, kind)? {
            return Ok(m);
        }
        self.cache.record_compile();
        let linked = match kind {
            ModuleKind::Command => {
                let module = wasmtime::Module::new(&self.engine, bytes).map_err(|e| {
                    RunFailure::invalid_module(format!("not a valid WebAssembly module: {e:#}"))
                })?;
                let pre = self.link_command(&module)?;
                if let Ok(serialized) = module.serialize() {
                    self.cache.disk_put(&id, kind, &serialized);
                }
                Linked::Command(pre)
            }
            ModuleKind::Component => {
                let c = wasmtime::component::Component::new(&self.engine, bytes).map_err(|e| {
                    RunFailure::invalid_module(format!("not a valid WebAssembly component: {e:#}"))
                })?;
                let linked = component::link(&self.component_linker, &c)?;
                if let Ok(serialized) = c.serialize() {
                    self.cache.disk_put(&id, kind, &serialized);
                }
                Linked::Component(linked)
            }
        };
        let loaded = LoadedModule { id, linked: Arc::new(linked) };
        self.cache.memory_put(loaded.clone());
        Ok(loaded)
    }

    fn link_command(
        &self,
        module: &wasmtime::Module,
    ) -> Result<wasmtime::InstancePre<CoreState>, RunFailure> {
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(_)) => {}
            _ => {
                return Err(RunFailure::invalid_module(
                    "unsupported ABI: a core module must be a WASI command exporting a `_start` function",
                ));
            }
        }
        self.core_linker
            .instantiate_pre(module)
            .map_err(|e| RunFailure::invalid_module(format!("unsupported imports: {e:#}")))
    }
}
