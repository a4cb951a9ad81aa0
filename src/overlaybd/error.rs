//! The error type of the overlaybd layer code.

use crate::block::BlockError;
use crate::source::SourceError;

/// Why opening, reading or writing an LSMT layer, a layer stack or an image config failed.
///
/// Every variant names the file (or blob) it concerns, so a message is actionable on its own.
#[derive(Debug, thiserror::Error)]
pub enum LsmtError {
    /// The file is not a valid LSMT file of the expected kind, or its contents are inconsistent.
    #[error("{file}: {reason}")]
    Corrupt {
        /// Path or description of the offending file.
        file: String,
        /// What is wrong, naming the field where possible.
        reason: String,
    },
    /// An I/O error while accessing a file.
    #[error("{file}: {source}")]
    Io {
        /// Path or description of the file.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a layer's bytes failed; the [`SourceError`] says how (not found, unavailable,
    /// corrupt, ...), and keeps saying it up to the SCSI layer.
    #[error("{file}: {source}")]
    Source {
        /// Path or description of the layer's bytes.
        file: String,
        /// The typed failure.
        #[source]
        source: SourceError,
    },
    /// An image config (`config.v1.json`) is malformed or names something that does not work.
    #[error("{file}: field `{field}`: {reason}")]
    Config {
        /// Path of the config file.
        file: String,
        /// JSON path of the field, e.g. `lowers[2].digest`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request the layer cannot honour (misaligned, out of range, a limit exceeded).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The operation needs a feature this implementation does not provide.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl LsmtError {
    /// Builds a [`LsmtError::Corrupt`] for `file`.
    pub fn corrupt(file: impl Into<String>, reason: impl Into<String>) -> Self {
        LsmtError::Corrupt {
            file: file.into(),
            reason: reason.into(),
        }
    }

    /// Builds a [`LsmtError::Source`] for `file`.
    pub fn source(file: impl Into<String>, source: SourceError) -> Self {
        LsmtError::Source {
            file: file.into(),
            source,
        }
    }

    /// Builds a [`LsmtError::Io`] for `file`.
    pub fn io(file: impl Into<String>, source: std::io::Error) -> Self {
        LsmtError::Io {
            file: file.into(),
            source,
        }
    }
}

/// Result type of the overlaybd layer code.
pub type LsmtResult<T> = Result<T, LsmtError>;

impl From<LsmtError> for BlockError {
    fn from(e: LsmtError) -> Self {
        match e {
            // Keeps the kind, so a full upper layer still reads as out of space.
            LsmtError::Io { file, source } => BlockError::from(std::io::Error::new(
                source.kind(),
                format!("{file}: {source}"),
            )),
            LsmtError::Source { file, source } => BlockError::from_source(&file, source),
            LsmtError::Invalid(m) => {
                BlockError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, m))
            }
            LsmtError::Unsupported(_) => {
                BlockError::Unsupported("operation not supported by this layer")
            }
            other => BlockError::Corrupt(other.to_string()),
        }
    }
}
