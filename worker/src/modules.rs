//! Modules on a worker: each is downloaded at most once, checked against its sha256 id, and compiled (or
//! loaded from the runtime's on-disk cache) at most once, however many subtasks need it at the same time.

use hivemind_client::Client;
use hivemind_proto::ErrorKind;
use hivemind_runtime::{LoadedModule, ModuleId, RunFailure, Runtime};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OnceCell;

pub(crate) struct ModuleCache {
    client: Client,
    runtime: Runtime,
    /// One cell per module id: concurrent first uses wait for the same download.
    cells: Mutex<HashMap<String, Arc<OnceCell<LoadedModule>>>>,
}

fn failure(kind: ErrorKind, message: String) -> RunFailure {
    RunFailure { kind, message, log: Vec::new(), usage: Default::default() }
}

impl ModuleCache {
    pub(crate) fn new(client: Client, runtime: Runtime) -> Self {
        ModuleCache { client, runtime, cells: Mutex::new(HashMap::new()) }
    }

    /// Modules this worker holds ready to run.
    pub(crate) fn held(&self) -> Vec<String> {
        self.cells.lock().iter().filter(|(_, cell)| cell.initialized()).map(|(id, _)| id.clone()).collect()
    }

    pub(crate) async fn get(&self, id: &str) -> Result<LoadedModule, RunFailure> {
        let cell = self.cells.lock().entry(id.to_owned()).or_default().clone();
        cell.get_or_try_init(|| self.fetch(id)).await.cloned()
    }

    async fn fetch(&self, id: &str) -> Result<LoadedModule, RunFailure> {
        let module_id: ModuleId = id.parse().map_err(|e: String| failure(ErrorKind::InvalidModule, e))?;
        if let Some(module) = self.runtime.cached(&module_id) {
            return Ok(module);
        }
        let bytes = self
            .client
            .download_module(id)
            .await
            .map_err(|e| failure(ErrorKind::Internal, format!("cannot download module `{id}`: {e}")))?;
        let actual = ModuleId::of(&bytes);
        if actual != module_id {
            return Err(failure(
                ErrorKind::Internal,
                format!("downloaded module `{id}` hashes to `{actual}`: refusing to run it"),
            ));
        }
        tracing::info!(module = %id, bytes = bytes.len(), "module downloaded");
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load_with_id(module_id, &bytes))
            .await
            .map_err(|e| failure(ErrorKind::Internal, format!("module compilation panicked: {e}")))?
    }
}
