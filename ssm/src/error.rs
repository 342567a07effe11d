//! The library's single error type, grouped by kind (shape, config, io, device).

use std::path::PathBuf;

/// Every fallible operation of the library returns this error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor's shape does not fit the operation.
    #[error("{op}: {what}: expected shape {expected}, got {got:?}")]
    Shape {
        op: &'static str,
        what: String,
        expected: String,
        got: Vec<usize>,
    },
    /// A configuration value is impossible or inconsistent.
    #[error("config: {field}: {reason}")]
    Config { field: String, reason: String },
    /// A checkpoint (or another file) is malformed, incomplete or does not match the model.
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The requested device cannot be used.
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    /// A shape or size the CUDA kernels do not take (e.g. a state size above their maximum).
    #[error("CUDA kernels: {reason}")]
    Kernel { reason: String },
    /// Tensors that must share a device live on different ones.
    #[error("{op}: tensors live on different devices ({a} and {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(
        op: &'static str,
        what: impl Into<String>,
        expected: impl Into<String>,
        got: &[usize],
    ) -> Self {
        Error::Shape {
            op,
            what: what.into(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
