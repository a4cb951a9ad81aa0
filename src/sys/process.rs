//! Ending a child process together with everything it started.

/// Sends SIGKILL to the process group `pgid` (a child started as the leader of its own group),
/// so the programs a hung child started die with it. A group that is already gone is not an
/// error: there is nothing left to end.
pub(crate) fn kill_process_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        // 0 would be our own group and 1 init: never a child's group.
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid
    // names the process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
