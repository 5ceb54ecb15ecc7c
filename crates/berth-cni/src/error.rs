//! The error type of berth-cni; every message names the plugin, network or path.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the host lacks (a configuration, a plugin, a namespace).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A CNI plugin failed: its own code and message.
    #[error("CNI plugin {plugin} {command} for network {network:?} failed: {message}")]
    Cni {
        plugin: String,
        command: &'static str,
        network: String,
        message: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
