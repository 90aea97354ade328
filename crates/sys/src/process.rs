//! Process-wide calls for the pre-exec child.

use std::io;

/// Ends the calling process at once with `code`, without running destructors or
/// atexit handlers (safe after a fork).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Marks every descriptor from `first` up close-on-exec (`close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11), so nothing the parent held leaks into the
/// program.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; it touches no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Namespace flags for [`unshare`].
pub mod unshare_flags {
    pub const NEWUSER: i32 = libc::CLONE_NEWUSER;
    pub const NEWCGROUP: i32 = libc::CLONE_NEWCGROUP;
}

/// `unshare(2)` of namespaces only. (rustix marks its `unshare` unsafe because flags
/// like CLONE_FILES change which descriptors other code may assume it owns; namespace
/// flags do not.)
pub fn unshare_namespaces(flags: i32) -> io::Result<()> {
    let allowed = unshare_flags::NEWUSER | unshare_flags::NEWCGROUP;
    if flags & !allowed != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: only namespace flags pass the check above; they change no memory or
    // descriptor that Rust code relies on.
    let ret = unsafe { libc::unshare(flags) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raw `errno` of an `io::Error` (0 when it has none).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Removes capabilities `0..=cap_last` from the bounding set (needs CAP_SETPCAP), so
/// no later exec, not even of a file with capabilities or as root, can regain them.
pub fn drop_bounding_set(cap_last: u32) -> io::Result<()> {
    for cap in 0..=cap_last {
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number; no memory is passed.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the kernel knows fewer capabilities than cap_last; the rest are gone.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}
