//! What an interrupted tool leaves behind: nothing. Files a tool is writing (its outputs and
//! scratch files) are tracked while they are incomplete; SIGINT or SIGTERM removes them and
//! ends the process with the conventional status 128 + signal number. A tool that fails
//! removes them itself (see `removing_partial_output`); one that succeeds stops tracking
//! them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Paths of files being written, removed on interruption.
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A file tracked while it is incomplete; dropping the guard stops tracking it (the file
/// itself is left alone).
pub struct Partial(PathBuf);

impl Partial {
    /// Tracks `path` until the guard is dropped.
    pub fn track(path: &Path) -> Partial {
        lock().push(path.to_path_buf());
        Partial(path.to_path_buf())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let mut list = lock();
        if let Some(i) = list.iter().rposition(|p| *p == self.0) {
            list.remove(i);
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PARTIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every tracked file; returns the paths removed.
pub fn remove_partial_files() -> Vec<PathBuf> {
    let list = std::mem::take(&mut *lock());
    list.into_iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect()
}

/// Waits for SIGINT or SIGTERM; returns its number.
pub async fn interrupted() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) applies; nothing to wait for.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => libc::SIGINT,
        _ = term.recv() => libc::SIGTERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Removal itself is tested with the real binary and a real SIGINT (tests/images.rs):
    // removing here would race other tests' tracked outputs in this process.
    #[test]
    fn a_guard_tracks_its_file_until_dropped() {
        let a = Path::new("/nonexistent/interrupt-test.a");
        let tracked = |p: &Path| lock().iter().any(|q| q == p);
        let guard = Partial::track(a);
        assert!(tracked(a));
        drop(guard);
        assert!(!tracked(a));
    }
}
