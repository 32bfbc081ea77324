//! [`EdgeError`]: why an edge could not start.

use meridian_node::auth::KeyError;
use meridian_node::quic::TlsError;
use meridian_node::store::StoreError;

use crate::config::ConfigError;

/// Errors starting an edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] meridian_node::startup::BindError),
    #[error(transparent)]
    DataDir(#[from] meridian_node::startup::DataDirError),
    #[error("starting the storage thread: {0}")]
    Thread(std::io::Error),
    #[error("TLS for the QUIC listener: {0}")]
    Tls(TlsError),
    #[error("TLS for the HTTP listener (--tls-cert, --tls-key): {0}")]
    HttpsTls(TlsError),
    #[error("auth: {0}")]
    Auth(#[from] KeyError),
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
}
