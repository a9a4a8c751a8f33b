//! Compiled-module caches: an in-memory map of ready, linked modules and a content-addressed directory of
//! precompiled artifacts, keyed by the module's sha256 and a fingerprint of the engine configuration, so a
//! module is compiled at most once per machine.

use crate::error::RuntimeError;
use crate::module::{LoadedModule, ModuleId, ModuleKind};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;

/// Observable counters of the caches (tests assert on them instead of on timings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled from WebAssembly bytes by Cranelift.
    pub compiled: u64,
    /// Modules loaded from a precompiled artifact on disk.
    pub disk_hits: u64,
    /// Loads answered from the in-memory cache.
    pub memory_hits: u64,
    /// Artifacts written to disk.
    pub disk_writes: u64,
}

pub(crate) struct ModuleCache {
    dir: Option<PathBuf>,
    /// Engine fingerprint: artifacts of another wasmtime version or configuration are never loaded.
    fingerprint: String,
    ready: RwLock<HashMap<ModuleId, LoadedModule>>,
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
    disk_writes: AtomicU64,
}

impl ModuleCache {
    pub(crate) fn open(dir: Option<PathBuf>, engine: &Engine) -> Result<Self, RuntimeError> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)
                .map_err(|source| RuntimeError::CacheDir { path: dir.display().to_string(), source })?;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(ModuleCache {
            dir,
            fingerprint: format!("{:016x}", hasher.finish()),
            ready: RwLock::new(HashMap::new()),
            compiled: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            disk_writes: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_writes: self.disk_writes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn record_compile(&self) {
        self.compiled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn memory_get(&self, id: &ModuleId) -> Option<LoadedModule> {
        let hit = self.ready.read().get(id).cloned();
        if hit.is_some() {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    pub(crate) fn memory_put(&self, module: LoadedModule) {
        self.ready.write().insert(module.id.clone(), module);
    }

    fn path(&self, id: &ModuleId, kind: ModuleKind) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{}.{}.cwasm", id.hex(), self.fingerprint, kind.as_str())))
    }

    /// Which kind of artifact the disk holds for `id`, if any.
    pub(crate) fn disk_kind(&self, id: &ModuleId) -> Option<ModuleKind> {
        [ModuleKind::Command, ModuleKind::Component]
            .into_iter()
            .find(|kind| self.path(id, *kind).is_some_and(|p| p.is_file()))
    }

    pub(crate) fn disk_load_module(&self, engine: &Engine, id: &ModuleId) -> Option<wasmtime::Module> {
        let path = self.path(id, ModuleKind::Command)?;
        // SAFETY: the artifact was written by `disk_put` of this same engine configuration (the file name
        // carries the engine fingerprint) into a directory owned by this process's user; wasmtime also checks
        // the artifact's header and version before using it.
        let loaded = path.is_file().then(|| unsafe { wasmtime::Module::deserialize_file(engine, &path) });
        self.note_disk_load(&path, loaded)
    }

    pub(crate) fn disk_load_component(
        &self,
        engine: &Engine,
        id: &ModuleId,
    ) -> Option<wasmtime::component::Component> {
        let path = self.path(id, ModuleKind::Component)?;
        // SAFETY: as for `disk_load_module`.
        let loaded = path
            .is_file()
            .then(|| unsafe { wasmtime::component::Component::deserialize_file(engine, &path) });
        self.note_disk_load(&path, loaded)
    }

    fn note_disk_load<T>(&self, path: &Path, loaded: Option<wasmtime::Result<T>>) -> Option<T> {
        match loaded? {
            Ok(value) => {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                Some(value)
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "discarding unusable cached artifact");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Writes an artifact atomically (temporary file, then rename); failures only cost a recompile later.
    pub(crate) fn disk_put(&self, id: &ModuleId, kind: ModuleKind, bytes: &[u8]) {
        let Some(path) = self.path(id, kind) else { return };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        match result {
            Ok(()) => {
                self.disk_writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(path = %path.display(), error = %err, "cannot write the compiled-module cache");
            }
        }
    }
}
