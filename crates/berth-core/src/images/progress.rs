//! Progress of image work as containerd's Transfer service reports it: an event name, the
//! object it is about (`layer-sha256:…`, an image name, or empty for a status line), the
//! names of its parents in the tree a client draws, bytes done of a total, and the
//! descriptor. Pull, push, import and export report into a sink; the Transfer service
//! encodes the events at its edge.

use super::media::{self, Kind};
use super::resolve::BlobRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub event: String,
    pub name: String,
    pub parents: Vec<String>,
    pub progress: i64,
    pub total: i64,
    pub desc: Option<BlobRef>,
}

impl Progress {
    /// A status line: no object, no parents.
    pub fn status(event: impl Into<String>) -> Self {
        Progress {
            event: event.into(),
            name: String::new(),
            parents: Vec::new(),
            progress: 0,
            total: 0,
            desc: None,
        }
    }

    /// An event about a blob, named as containerd names it.
    pub fn blob(event: &str, blob: &BlobRef, parents: &[String], progress: i64) -> Self {
        Progress {
            event: event.to_owned(),
            name: ref_key(blob),
            parents: parents.to_vec(),
            progress,
            total: blob.size,
            desc: Some(blob.clone()),
        }
    }
}

/// containerd's name for a blob in progress reports and ingest refs: `<kind>-<digest>`.
pub fn ref_key(blob: &BlobRef) -> String {
    let kind = match media::kind(&blob.media_type) {
        Kind::Index => "index",
        Kind::Manifest => "manifest",
        Kind::Config => "config",
        Kind::Layer => "layer",
        Kind::Other => "unknown",
    };
    format!("{kind}-{}", blob.digest)
}

pub trait ProgressSink: Send + Sync {
    fn progress(&self, p: Progress);
}

/// A sink that drops everything.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _: Progress) {}
}
