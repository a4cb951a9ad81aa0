//! The open-file limit (which `main` raises to the hard limit at start), read by parts that
//! keep descriptors open for speed (the disk tier) so they take a share of it, never all.

/// The soft limit on open files now; `None` when it cannot be read. "Unlimited" reads as
/// `u64::MAX`.
pub(crate) fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read() {
        let limit = open_file_limit().expect("getrlimit works on Linux");
        assert!(limit >= 16, "a soft limit of {limit}");
    }
}
