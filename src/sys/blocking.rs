//! The one way to run blocking work off the async worker threads.

use std::io;

/// Runs `f` on tokio's blocking pool and returns its result. A task that panicked, or was
/// cancelled because the runtime is shutting down, comes back as an `io::Error` of kind
/// `Other` carrying the `JoinError`'s text, so callers have one error path.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    run_blocking(f).await?
}

/// [`blocking`] for a closure with its own result type: its value comes back as it is, and
/// the `io::Error` only says that the task panicked or was cancelled. Callers map that into
/// their error type once.
pub(crate) async fn run_blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_and_errors_come_back_as_they_are() {
        let here = std::thread::current().id();
        let there = blocking(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(here, there, "ran on the calling thread");
        let err = blocking::<(), _>(|| Err(io::Error::from_raw_os_error(libc::EIO)))
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        let value: Result<u8, String> =
            run_blocking(|| Err("own error".to_string())).await.unwrap();
        assert_eq!(value, Err("own error".to_string()));
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error_not_a_crash() {
        let err = blocking::<(), _>(|| panic!("deliberate test panic"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert!(err.to_string().contains("panicked"), "{err}");
        let err = run_blocking(|| -> u8 { panic!("deliberate test panic") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
