//! A synchronous wrapper of [`crate::Client`] for code without an async runtime.

use crate::{
    Error, ModuleInfo, SubmitTask, SubtaskList, TaskList, TaskResult, TaskState, TaskStatus, WorkerList,
};
use std::time::Duration;

/// The blocking client: each call runs the async client on a private single-threaded runtime.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::with_token(url, None)
    }

    pub fn with_token(url: &str, token: Option<String>) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Client { inner: crate::Client::with_token(url, token)?, runtime })
    }

    /// The async client underneath.
    pub fn async_client(&self) -> &crate::Client {
        &self.inner
    }

    pub fn upload_module(&self, bytes: Vec<u8>) -> Result<ModuleInfo, Error> {
        self.runtime.block_on(self.inner.upload_module(bytes))
    }

    pub fn submit_task(&self, task: &SubmitTask) -> Result<TaskStatus, Error> {
        self.runtime.block_on(self.inner.submit_task(task))
    }

    pub fn status(&self, task_id: &str) -> Result<TaskStatus, Error> {
        self.runtime.block_on(self.inner.status(task_id))
    }

    pub fn wait(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
        progress: impl FnMut(&TaskStatus),
    ) -> Result<TaskStatus, Error> {
        self.runtime.block_on(self.inner.wait(task_id, timeout, progress))
    }

    pub fn get_result(&self, task_id: &str) -> Result<TaskResult, Error> {
        self.runtime.block_on(self.inner.get_result(task_id))
    }

    pub fn wait_result(&self, task_id: &str, timeout: Option<Duration>) -> Result<TaskResult, Error> {
        self.runtime.block_on(self.inner.wait_result(task_id, timeout))
    }

    pub fn cancel(&self, task_id: &str) -> Result<TaskStatus, Error> {
        self.runtime.block_on(self.inner.cancel(task_id))
    }

    pub fn list_tasks(&self, state: Option<TaskState>, limit: u32) -> Result<TaskList, Error> {
        self.runtime.block_on(self.inner.list_tasks(state, limit))
    }

    pub fn list_subtasks(&self, task_id: &str, offset: u64, limit: u32) -> Result<SubtaskList, Error> {
        self.runtime.block_on(self.inner.list_subtasks(task_id, offset, limit))
    }

    pub fn list_workers(&self) -> Result<WorkerList, Error> {
        self.runtime.block_on(self.inner.list_workers())
    }
}
