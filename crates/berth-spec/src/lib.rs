//! What every container berth makes starts from, whoever asks for it (the CRI, the `berth`
//! command line): containerd's default capabilities, berth's default seccomp profile, the
//! /proc and /sys paths masked or made read-only, and the system mounts. Plain data and
//! pure functions over `serde_json` values, so that clients and the daemon agree.

pub mod caps;
pub mod linux;
pub mod seccomp;
pub mod users;
