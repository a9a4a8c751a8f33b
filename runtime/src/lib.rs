//! `hivemind-runtime`: the sandbox every subtask runs in.
//!
//! The crate wraps wasmtime and exposes only what Hivemind supports: a [`Runtime`] (one per process: the
//! engine, its epoch ticker and the compiled-module caches), a [`LoadedModule`] (a module or component
//! compiled and linked, ready to instantiate in microseconds), a [`RunRequest`] with its
//! [`Limits`](hivemind_proto::Limits), and the [`RunOutput`] or [`RunFailure`] that comes back with a
//! [`Usage`](hivemind_proto::Usage) report. No other crate touches wasmtime types.
//!
//! Guests follow the ABI of SPEC §2: WASI command modules (`wasm32-wasip1`, input on stdin, output on stdout,
//! phase in `argv[1]`) and components of the `hivemind:task` WIT world (`wasm32-wasip2`).

mod cache;
mod component;
mod engine;
mod error;
mod module;
mod pipe;
mod sandbox;

pub use cache::CacheStats;
pub use engine::{AllocatorKind, RuntimeConfig};
pub use error::{RunFailure, RuntimeError};
pub use module::{LoadedModule, ModuleId, ModuleKind};
pub use sandbox::{CancelToken, RunOutput, RunRequest};

use std::sync::Arc;

/// The per-process sandbox runtime: cheap to clone, shareable across threads.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<engine::Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("allocator", &self.inner.allocator).finish()
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator sized to the host, falling back when the address space is
    /// small), starts the epoch ticker and opens the on-disk cache, if one is configured.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        Ok(Runtime { inner: Arc::new(engine::Inner::new(config)?) })
    }

    /// Which instance allocator the engine ended up with.
    pub fn allocator(&self) -> AllocatorKind {
        self.inner.allocator
    }

    /// Compiles `bytes` (or loads them from the caches) and links them against the Hivemind host.
    /// Fails with [`ErrorKind::InvalidModule`](hivemind_proto::ErrorKind) when the bytes are not valid
    /// WebAssembly or do not follow a supported ABI.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedModule, RunFailure> {
        self.inner.load(ModuleId::of(bytes), bytes)
    }

    /// Like [`Runtime::load`] for bytes whose id the caller already knows (and has verified).
    pub fn load_with_id(&self, id: ModuleId, bytes: &[u8]) -> Result<LoadedModule, RunFailure> {
        self.inner.load(id, bytes)
    }

    /// The module, if this process already holds it compiled (memory cache) or precompiled on disk.
    pub fn cached(&self, id: &ModuleId) -> Option<LoadedModule> {
        self.inner.cached(id)
    }

    /// Runs one subtask synchronously on the calling thread.
    pub fn run(&self, module: &LoadedModule, request: RunRequest) -> Result<RunOutput, RunFailure> {
        sandbox::run(&self.inner, module, request)
    }

    /// Runs one subtask on tokio's blocking pool, so async callers never block their runtime threads.
    pub async fn run_async(
        &self,
        module: &LoadedModule,
        request: RunRequest,
    ) -> Result<RunOutput, RunFailure> {
        let this = self.clone();
        let module = module.clone();
        tokio::task::spawn_blocking(move || this.run(&module, request))
            .await
            .unwrap_or_else(|join| Err(RunFailure::internal(format!("sandbox thread panicked: {join}"))))
    }

    /// Counters of the compiled-module caches.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }
}
