//! berth's shim v2 (`containerd-shim-berth-v2`, runtime `io.containerd.berth.v2`): one
//! process per container or per pod, serving containerd's task API over ttrpc to berthd or
//! to containerd itself, and making containers with berth's own OCI runtime (the
//! `berth-container` binary beside it: youki's libcontainer in a fresh single-threaded
//! process) or a runc-compatible binary.
//!
//! The binary is three things by its arguments: `start` (launch or reuse the serving shim and
//! print its address), `delete` (clean up after a shim that is gone), and the server itself
//! (`-socket`).

mod bootstrap;
mod cgroup;
mod container;
mod error;
mod events;
mod own_state;
mod reaper;
mod residency;
mod runtime;
mod service;
mod stdio;
mod warm;

pub use bootstrap::main;
pub use error::Error;
