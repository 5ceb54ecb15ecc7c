//! What the book of tasks needs of shims, as two traits: `TaskClient`, one connection to a
//! shim's task API, and `ShimLauncher`, the bootstrap of shim binaries (start, the cleanup
//! of a dead one) and the watch on a shim process. The real ones speak ttrpc and exec
//! binaries (`shim.rs`); the manager's state machine is tested against fakes.

use std::collections::HashMap;
use std::sync::Arc;

use berth_core::containers::AnyValue;
use berth_core::mount::Mount;
use futures::future::BoxFuture;

use crate::bundle::Bundle;
use crate::error::Result;
use crate::shim::Bootstrap;
use crate::task::{Exit, ProcessState, Stdio, TaskKey};

/// One shim's task API, for one task (its init process and execs).
#[async_trait::async_trait]
pub trait TaskClient: Send + Sync {
    async fn create(
        &self,
        bundle: &Bundle,
        rootfs: &[Mount],
        stdio: &Stdio,
        options: Option<&AnyValue>,
    ) -> Result<u32>;
    async fn start(&self, exec_id: &str) -> Result<u32>;
    async fn delete(&self, exec_id: &str) -> Result<Exit>;
    async fn state(&self, exec_id: &str) -> Result<ProcessState>;
    async fn wait(&self, exec_id: &str) -> Result<Exit>;
    async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()>;
    async fn exec(&self, exec_id: &str, stdio: &Stdio, spec: &AnyValue) -> Result<()>;
    async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()>;
    async fn close_io(&self, exec_id: &str, stdin: bool) -> Result<()>;
    async fn pause(&self) -> Result<()>;
    async fn resume(&self) -> Result<()>;
    /// The task's processes: pid and, where the shim gives it, runtime-specific info.
    async fn pids(&self) -> Result<Vec<(u32, Option<AnyValue>)>>;
    async fn update(
        &self,
        resources: Option<&AnyValue>,
        annotations: HashMap<String, String>,
    ) -> Result<()>;
    /// Cgroup statistics as the shim encodes them (cgroups v1 or v2 metrics types).
    async fn stats(&self) -> Result<Option<AnyValue>>;
    /// The shim's own pid and the task's, as a liveness check.
    async fn connect_info(&self) -> Result<(u32, u32)>;
    /// Asks the shim to exit once it has no tasks left.
    async fn shutdown(&self) -> Result<()>;
}

/// Starting shims, reaching them, and cleaning up after them.
#[async_trait::async_trait]
pub trait ShimLauncher: Send + Sync {
    /// Runs `SHIM start` in the bundle; returns the address the shim serves on.
    async fn start(
        &self,
        bootstrap: &Bootstrap,
        bundle: &Bundle,
        options: Option<&AnyValue>,
    ) -> Result<String>;
    async fn connect(&self, address: &str, key: &TaskKey) -> Result<Arc<dyn TaskClient>>;
    /// Runs `SHIM delete` for a shim that is gone: what is left is killed and unmounted.
    async fn cleanup(&self, bootstrap: &Bootstrap, bundle: &Bundle) -> Result<Exit>;
    /// Resolves when the shim process `pid` has exited; None when it cannot be watched.
    fn exited(&self, pid: u32) -> Option<BoxFuture<'static, ()>>;
}
