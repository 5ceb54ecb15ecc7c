//! berth-cni: networking without a daemon's model around it. A CNI client (spec 1.0) that
//! runs a network configuration's plugins for ADD and DEL with results cached for DEL, and
//! network namespaces pinned on files so that they outlive the process that made them.
//! Used by the CRI's pods and by the `berth` command line's networks.

pub mod cni;
pub mod error;
pub mod netns;

pub use error::{Error, Result};
