//! Why reading layer bytes failed, by kind, so that each layer above can act on the kind (retry,
//! refetch, report NOT READY or MEDIUM ERROR) without parsing messages or `io::ErrorKind`s.
//!
//! The kind is decided where the failure is understood: the registry client knows a 404 from a
//! 503, the ZFile reader knows a CRC mismatch. Everything above only forwards. The error is
//! `Clone` (its payloads are shared) because one fetch can fail many waiting readers at once.

use std::error::Error;
use std::io;
use std::sync::Arc;

/// Why a [`LayerSource`](super::LayerSource) read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The blob is not where the source looks (HTTP 404, a layer file deleted).
    #[error("{0}")]
    NotFound(String),
    /// The store refused access (HTTP 401/403 after authentication was tried).
    #[error("{0}")]
    Denied(String),
    /// The store could not answer now, but may later: network errors, timeouts, HTTP 5xx and
    /// 429, a truncated or malformed answer.
    #[error("{0}")]
    Unavailable(String),
    /// The bytes are damaged: a checksum failed, or a format's structure is inconsistent. The
    /// payload is the finding (e.g. a `ZFileError`), kept for downcasting by tests and logs.
    #[error("{0}")]
    Corrupt(Arc<dyn Error + Send + Sync>),
    /// The read passes the end of the source (or overflows): a damaged index pointing past its
    /// blob, or a caller's bug.
    #[error("read of {len} bytes at {offset} is past the end ({size} bytes)")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Size of the source.
        size: u64,
    },
    /// The source broke its contract: it answered with fewer or more bytes than asked.
    #[error("{source_name}: returned {got} of {expected} bytes")]
    WrongLength {
        /// The source's [`describe`](super::LayerSource::describe).
        source_name: String,
        /// Bytes asked for.
        expected: usize,
        /// Bytes returned.
        got: usize,
    },
    /// A local I/O error (a layer file, the cache disk, a blocking task that died).
    #[error("{0}")]
    Io(Arc<io::Error>),
}

/// Result of a layer-bytes operation.
pub type SourceResult<T> = Result<T, SourceError>;

impl SourceError {
    /// Damaged bytes, with the finding (an error value or a message).
    pub fn corrupt(finding: impl Into<Box<dyn Error + Send + Sync>>) -> SourceError {
        SourceError::Corrupt(Arc::from(finding.into()))
    }

    /// The finding behind [`SourceError::Corrupt`], to downcast (e.g. to a `ZFileError`).
    pub fn finding(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self {
            SourceError::Corrupt(f) => Some(f.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for SourceError {
    /// A local I/O error; no guessing from its kind (a source that knows better, like the
    /// registry client, builds the right variant itself).
    fn from(e: io::Error) -> Self {
        SourceError::Io(Arc::new(e))
    }
}

impl From<SourceError> for io::Error {
    /// For code that speaks `io::Error` (tools, downloads): each kind keeps a matching
    /// `ErrorKind`, and the `SourceError` stays inside for a downcast.
    fn from(e: SourceError) -> Self {
        let kind = match &e {
            SourceError::NotFound(_) => io::ErrorKind::NotFound,
            SourceError::Denied(_) => io::ErrorKind::PermissionDenied,
            SourceError::Unavailable(_) => io::ErrorKind::Other,
            SourceError::Corrupt(_) => io::ErrorKind::InvalidData,
            SourceError::OutOfRange { .. } | SourceError::WrongLength { .. } => {
                io::ErrorKind::UnexpectedEof
            }
            SourceError::Io(inner) => inner.kind(),
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_the_kind_and_the_finding() {
        #[derive(Debug, thiserror::Error)]
        #[error("crc mismatch")]
        struct Crc;
        let e = SourceError::corrupt(Crc);
        assert_eq!(e.to_string(), "crc mismatch");
        assert!(e.finding().and_then(|f| f.downcast_ref::<Crc>()).is_some());
        let io = io::Error::from(e.clone());
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        let back = io.get_ref().and_then(|i| i.downcast_ref::<SourceError>());
        assert!(matches!(back, Some(SourceError::Corrupt(_))));
        let local = SourceError::from(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(local, SourceError::Io(_)));
        let eio = io::Error::from_raw_os_error(libc::EIO).kind();
        assert_eq!(
            io::Error::from(local).kind(),
            eio,
            "a local error keeps its kind"
        );
    }
}
