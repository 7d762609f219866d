//! What can go wrong when the owner asks for something.

use crate::data_dir::PathError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("file_path: {0}")]
    Path(PathError),
    /// One of several paths (`file_paths`) is wrong.
    #[error("file_paths: {path}: {error}")]
    PathOf { path: String, error: PathError },
    /// The folder of an upload link.
    #[error("folder: {0}")]
    FolderPath(PathError),
    /// The request is well formed but cannot be done to this folder or link (409).
    #[error("{0}")]
    Conflict(String),
    #[error("unknown tunnel id")]
    NotFound,
    #[error("tunnel could not be opened: {0}")]
    Tunnel(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}
