//! A few writer threads per writable file: writes are queued to them and each wake-up takes a
//! run of queued writes at once.
//!
//! Why not one `spawn_blocking` per write: buffered writes to one file are serialised by the
//! kernel anyway (ext4 and XFS take the inode lock exclusively), so a pool thread per write
//! only adds a thread wake-up per command and lock contention between the pool threads
//! (measured at queue depth 32: a fifth of the target's CPU time in futex waits, wake-ups and
//! `rwsem_spin_on_owner`). A thread that takes a run of queued writes in one go pays one
//! wake-up per run instead. There are [`WRITERS`] threads rather than one so that a writer
//! preempted or stalled between two writes (page allocation, writeback throttling) does not
//! stall the whole queue.
//!
//! Guarantees:
//! - Overlapping writes reach the file in the order they were queued: threads take jobs from
//!   the head of the FIFO queue only, a run stops before a job that overlaps a write another
//!   thread has in progress, and each thread writes its run in order. So of two overlapping
//!   writes the later-queued one wins.
//! - A write is answered only after `pwrite` returned: a read issued after the answer sees it.
//! - A FUA write is answered only after an `fdatasync` that started after its `pwrite`
//!   returned; the FUA writes of one batch share one `fdatasync` (group commit).
//! - A write is carried out even if its caller stopped waiting (an aborted command), like a
//!   `spawn_blocking` call would be.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Writer threads per file.
const WRITERS: usize = 4;

/// Most jobs one thread takes per wake-up, so that the other threads get a share of a burst.
const MAX_RUN: usize = 8;

/// A queued write and where its outcome goes.
struct Job {
    offset: u64,
    data: Bytes,
    fua: bool,
    done: oneshot::Sender<io::Result<()>>,
}

/// What the submitters and the writer thread share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when jobs arrive or the queue closes.
    wake: Condvar,
    /// Jobs queued or being written, not yet answered.
    pending: AtomicUsize,
    /// `fdatasync` calls made for FUA writes (observable by tests).
    syncs: AtomicU64,
}

struct State {
    jobs: VecDeque<Job>,
    /// Byte ranges `[start, end)` the threads are writing now, one entry per taken job.
    in_flight: Vec<(u64, u64)>,
    /// Set when the device is dropped; the thread ends once the queue is empty.
    closed: bool,
}

/// The submitting side of a file's writer thread. Dropping it lets the thread finish what is
/// queued and end.
pub(crate) struct WriteQueue {
    shared: Arc<Shared>,
}

impl WriteQueue {
    /// Starts the writer thread for `file`.
    pub(crate) fn start(file: Arc<File>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                in_flight: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            pending: AtomicUsize::new(0),
            syncs: AtomicU64::new(0),
        });
        for _ in 0..WRITERS {
            let theirs = Arc::clone(&shared);
            let file = Arc::clone(&file);
            std::thread::Builder::new()
                .name("block-writer".into())
                .spawn(move || run(&file, &theirs))?;
        }
        Ok(WriteQueue { shared })
    }

    /// True when no write is queued or in progress, so a write done elsewhere now cannot
    /// overtake a queued one.
    pub(crate) fn is_idle(&self) -> bool {
        self.shared.pending.load(Ordering::Acquire) == 0
    }

    /// `fdatasync` calls made for FUA writes so far.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Queues `data` to be written at `offset` (and made durable when `fua`) and waits for the
    /// outcome. The write is queued before the first await, so writes submitted one after
    /// another are written in that order.
    pub(crate) async fn write(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()> {
        let outcome = self.enqueue(offset, data, fua);
        match outcome.await {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("block writer thread ended")),
        }
    }

    /// Puts a job at the end of the queue, waking the thread if it may be asleep; returns
    /// where its outcome will arrive. (Not async: the lock is never held across an await.)
    fn enqueue(&self, offset: u64, data: Bytes, fua: bool) -> oneshot::Receiver<io::Result<()>> {
        let (done, outcome) = oneshot::channel();
        let job = Job {
            offset,
            data,
            fua,
            done,
        };
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        let was_empty = {
            let mut state = lock(&self.shared.state);
            let was_empty = state.jobs.is_empty();
            state.jobs.push_back(job);
            was_empty
        };
        if was_empty {
            // The thread only sleeps with an empty queue; otherwise it will see this job.
            self.shared.wake.notify_one();
        }
        outcome
    }
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
    }
}

/// Locks the queue; a poisoned lock (a panic while holding it, which nothing here does) still
/// holds a consistent queue.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A writer thread: takes a run of jobs from the head of the queue, writes them in order, syncs
/// once for the run's FUA writes, answers.
fn run(file: &File, shared: &Shared) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_RUN);
    let mut awaiting_sync: Vec<oneshot::Sender<io::Result<()>>> = Vec::new();
    loop {
        {
            let mut state = lock(&shared.state);
            loop {
                take_run(&mut state, &mut batch);
                if !batch.is_empty() {
                    break;
                }
                if state.closed && state.jobs.is_empty() {
                    return;
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if !state.jobs.is_empty() {
                // More than one run is waiting: let another thread take the next.
                shared.wake.notify_one();
            }
        }
        let ranges: Vec<(u64, u64)> = batch.iter().map(Job::range).collect();
        for job in batch.drain(..) {
            match file.write_all_at(&job.data, job.offset) {
                Ok(()) if job.fua => awaiting_sync.push(job.done),
                // Answered at once: the data is in the file, a read now sees it.
                result => answer(shared, job.done, result),
            }
        }
        if !awaiting_sync.is_empty() {
            let synced = file.sync_data();
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            for done in awaiting_sync.drain(..) {
                answer(shared, done, copy_result(&synced));
            }
        }
        {
            // Only now may overlapping jobs behind these be taken by another thread.
            let mut state = lock(&shared.state);
            for range in &ranges {
                if let Some(i) = state.in_flight.iter().position(|r| r == range) {
                    state.in_flight.swap_remove(i);
                }
            }
        }
        shared.wake.notify_all();
    }
}

/// Moves jobs from the head of the queue into `batch` (at most [`MAX_RUN`]), stopping before
/// the first one that overlaps a write another thread has in progress; records what it took
/// as in progress.
fn take_run(state: &mut State, batch: &mut Vec<Job>) {
    while batch.len() < MAX_RUN {
        let Some(head) = state.jobs.front() else {
            break;
        };
        let (start, end) = head.range();
        if state.in_flight.iter().any(|&(s, e)| start < e && s < end) {
            break;
        }
        if let Some(job) = state.jobs.pop_front() {
            state.in_flight.push((start, end));
            batch.push(job);
        }
    }
}

impl Job {
    /// The bytes `[start, end)` this job writes (saturating: ranges were checked before).
    fn range(&self) -> (u64, u64) {
        (
            self.offset,
            self.offset.saturating_add(self.data.len() as u64),
        )
    }
}

/// Sends a job's outcome (its submitter may be gone: then nobody is told) and counts it done.
fn answer(shared: &Shared, done: oneshot::Sender<io::Result<()>>, result: io::Result<()>) {
    shared.pending.fetch_sub(1, Ordering::AcqRel);
    let _ = done.send(result);
}

/// One outcome for each of several waiters (`io::Error` is not `Clone`).
fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_on_temp(len: u64) -> (tempfile::NamedTempFile, Arc<File>, WriteQueue) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(len).unwrap();
        let file = Arc::new(tmp.reopen().unwrap());
        let queue = WriteQueue::start(Arc::clone(&file)).unwrap();
        (tmp, file, queue)
    }

    #[tokio::test]
    async fn queued_overlapping_writes_land_in_queue_order() {
        let (_tmp, file, queue) = queue_on_temp(1 << 20);
        // 64 writes to the same 4 KiB queued together (each is queued on its first poll, and
        // join_all polls in order); the last one must win.
        let writes = (0..64u8).map(|i| queue.write(8192, Bytes::from(vec![i; 4096]), false));
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
        let mut back = vec![0u8; 4096];
        file.read_exact_at(&mut back, 8192).unwrap();
        assert!(back.iter().all(|&b| b == 63), "first byte {}", back[0]);
        assert!(queue.is_idle());
    }

    #[tokio::test]
    async fn a_read_after_the_answer_sees_the_write() {
        let (_tmp, file, queue) = queue_on_temp(1 << 20);
        // Keep the thread busy with a large write so the small ones wait in the queue.
        let big = queue.write(0, Bytes::from(vec![7u8; 512 << 10]), false);
        let small = async {
            for i in 0..16u64 {
                let off = (512 << 10) + i * 4096;
                queue
                    .write(off, Bytes::from(vec![i as u8 + 1; 4096]), false)
                    .await
                    .unwrap();
                let mut back = vec![0u8; 4096];
                file.read_exact_at(&mut back, off).unwrap();
                assert!(back.iter().all(|&b| b == i as u8 + 1), "write {i}");
            }
        };
        let (big, ()) = tokio::join!(big, small);
        big.unwrap();
    }

    #[tokio::test]
    async fn fua_writes_wait_for_a_sync_and_share_it() {
        let (_tmp, file, queue) = queue_on_temp(1 << 20);
        queue
            .write(0, Bytes::from(vec![1u8; 4096]), false)
            .await
            .unwrap();
        assert_eq!(queue.syncs(), 0, "a write without FUA syncs nothing");
        queue
            .write(0, Bytes::from(vec![2u8; 4096]), true)
            .await
            .unwrap();
        assert_eq!(queue.syncs(), 1, "a FUA write is answered after its sync");
        let writes = (0..32u64).map(|i| queue.write(i * 4096, Bytes::from(vec![3u8; 4096]), true));
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
        let syncs = queue.syncs();
        assert!((2..=33).contains(&syncs), "{syncs} syncs for 32 FUA writes");
        let mut back = vec![0u8; 32 * 4096];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 3));
    }

    #[tokio::test]
    async fn write_errors_reach_the_submitter() {
        // Every write to /dev/full fails with ENOSPC.
        let full = Arc::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        let queue = WriteQueue::start(full).unwrap();
        let err = queue
            .write(0, Bytes::from_static(&[1; 512]), false)
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        let err = queue
            .write(0, Bytes::from_static(&[1; 512]), true)
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(queue.syncs(), 0, "a failed FUA write is not synced");
        assert!(queue.is_idle());
    }

    #[test]
    fn copied_results_keep_the_os_error() {
        let e = copy_result(&Err(io::Error::from_raw_os_error(libc::EIO))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let e = copy_result(&Err(io::Error::other("x"))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(copy_result(&Ok(())).is_ok());
    }
}
