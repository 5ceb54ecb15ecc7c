//! berth-runtime: the runtime side of the daemon. It writes OCI bundles under the state
//! directory, starts shim v2 binaries and drives their task API over ttrpc, keeps the book
//! of live tasks, notices shims that die, and finds running shims again after a restart.

pub mod bundle;
pub mod client;
pub mod error;
pub mod manager;
pub mod restart;
pub mod shim;
pub mod task;
pub mod warm;

pub use client::{ShimLauncher, TaskClient};
pub use error::{Error, Result};
pub use manager::{CreateTask, ManagerConfig, ShimManager, Task};
pub use task::{Exit, ProcessState, Stdio, TaskKey, TaskStatus};
