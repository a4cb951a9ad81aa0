//! The ground floor: every file system call the crate makes through `libc`, and the one way
//! to run blocking work off the async threads. Nothing here depends on the rest of the crate.
//!
//! [`file`] is the only file with `unsafe` file I/O in the crate, so it is the one file to
//! review for it. Each wrapper retries EINTR itself and returns a type that names the outcomes
//! its callers decide on, instead of an `io::Error` whose errno every caller tests again:
//!
//! | wrapper | outcome | errno | why |
//! |---|---|---|---|
//! | [`file::pread_append`] | `Ok(n)`, `Ok(0)` at EOF | all errors | a blocking read has nothing to fall back to |
//! | [`file::pread_append_nowait`], [`file::pwrite_nowait`] | [`Nowait::WouldBlock`] | EAGAIN | the data is not (all) cached, or the write would wait for allocation or writeback: do the rest on a blocking thread, this time only |
//! | | [`Nowait::Unsupported`] | EOPNOTSUPP, EINVAL, ENOSYS | no `RWF_NOWAIT` for this file or operation (EOPNOTSUPP: a file system without it; EINVAL: older kernels so refuse buffered writes; ENOSYS: a kernel without `preadv2`): stop trying on this file |
//! | | [`Nowait::Failed`] | any other | a real error (EIO, …): the blocking path repeats the operation and reports it if it persists; the fast path stays on |
//! | [`file::punch_hole`] | [`Punch::Unsupported`] | EOPNOTSUPP, ENOSYS | the file system cannot deallocate: each caller picks its fallback (report unmap unsupported, or write zeros) |
//! | [`file::seek_data`], [`file::seek_hole`] | [`Region::None`] | ENXIO | no data at or after the offset, or the offset is at or past the end of the file: not an error, the end of the map |
//! | [`file::block_device_size`] | `io::Error` | all errors | only asked of block devices |
//! | [`file::free_space`] | `io::Error` | all errors | the caller goes on without the figure |
//!
//! Offsets and lengths that do not fit `off_t` are refused with `InvalidInput` before any
//! system call. `lseek` moves the file's shared offset; every file these wrappers see is read
//! and written only positionally, so that offset is never used.
//!
//! [`blocking`] and [`run_blocking`] run a closure on tokio's blocking pool and turn a task
//! that panicked or was cancelled (at runtime shutdown) into an `io::Error`, so no caller maps
//! a `JoinError` itself. [`physical_memory`] reads the machine's memory size.
//! [`open_file_limit`] reads the descriptor budget.
//! [`kill_process_group`] ends a child (a credential helper that hangs) with its own children.

mod blocking;
pub(crate) mod file;
mod limits;
mod memory;
mod process;

pub(crate) use blocking::{blocking, run_blocking};
pub(crate) use file::{free_space, Nowait, Punch, Region};
pub(crate) use limits::open_file_limit;
pub(crate) use memory::physical_memory;
pub(crate) use process::kill_process_group;
