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
    pub const NEWNET: i32 = libc::CLONE_NEWNET;
}

/// `unshare(2)` of namespaces only. (rustix marks its `unshare` unsafe because flags
/// like CLONE_FILES change which descriptors other code may assume it owns; namespace
/// flags do not.)
pub fn unshare_namespaces(flags: i32) -> io::Result<()> {
    let allowed = unshare_flags::NEWUSER | unshare_flags::NEWCGROUP | unshare_flags::NEWNET;
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

/// Resets every signal to its default action and unblocks all signals, so the
/// program does not inherit runbox's dispositions (Rust ignores SIGPIPE, for one).
/// Async-signal-safe.
pub fn reset_signals() -> io::Result<()> {
    /// The kernel's `struct sigaction` (not libc's): handler, flags, restorer, mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // The raw system call, because libc wrappers refuse the signals the libc reserves
    // for itself (32 and 33 in glibc), which may still arrive ignored.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads a valid kernel sigaction (SIG_DFL, no flags) of
        // the size we pass (8 bytes of mask); no old action is requested.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
    // SAFETY: an empty set built by sigemptyset; the old mask is not requested.
    let ret = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Makes this process ignore SIGCHLD with `SA_NOCLDWAIT`: its children (and the
/// orphans a pid namespace's init inherits) are reaped by the kernel as they end,
/// without a `wait`. Async-signal-safe.
pub fn reap_children_automatically() -> io::Result<()> {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let ign = KernelSigaction {
        handler: 1, // SIG_IGN
        flags: libc::SA_NOCLDWAIT as u64,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction reads a valid kernel sigaction (SIG_IGN) of the size we
    // pass (8 bytes of mask); no old action is requested.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::SIGCHLD,
            &ign as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where the kernel keeps this process's argument and environment strings (what
/// `/proc/<pid>/cmdline` and `environ` show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgRegions {
    arg: (usize, usize),
    env: (usize, usize),
}

impl ArgRegions {
    /// Reads the regions from `/proc/self/stat` (fields 48-51).
    pub fn of_current_process() -> io::Result<ArgRegions> {
        Self::from_stat(&std::fs::read_to_string("/proc/self/stat")?)
    }

    /// Parses the regions from the text of this process's `/proc/self/stat`.
    pub fn from_stat(stat: &str) -> io::Result<ArgRegions> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat");
        let after = stat
            .get(stat.rfind(')').ok_or_else(bad)? + 2..)
            .ok_or_else(bad)?;
        // `after` starts at field 3; fields 48..=51 are at indexes 45..=48.
        let f: Vec<usize> = after
            .split_whitespace()
            .skip(45)
            .take(4)
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if f.len() != 4 || f[0] > f[1] || f[2] > f[3] {
            return Err(bad());
        }
        Ok(ArgRegions {
            arg: (f[0], f[1]),
            env: (f[2], f[3]),
        })
    }

    /// Overwrites this process's copy of its arguments and environment with zeros,
    /// so a forked child shows neither. Async-signal-safe.
    pub fn scrub(&self) {
        for (start, end) in [self.arg, self.env] {
            if start != 0 && end > start {
                // SAFETY: the kernel reported these ranges for this process (or for
                // the process this one is a fork of, whose address space it copies):
                // they are mapped and writable (the initial stack). No Rust
                // reference points into them; std keeps only raw argv pointers,
                // which stay valid and now read empty strings.
                unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
            }
        }
    }
}

/// Closes every descriptor except `keep`.
pub fn close_all_except(keep: i32) -> io::Result<()> {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range only closes descriptors of this process; callers use it
    // in a forked child where no Rust object owns the closed descriptors any more.
    let ret = unsafe {
        let a = if keep > 0 {
            libc::syscall(
                libc::SYS_close_range,
                0 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            )
        } else {
            0
        };
        let b = libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        a | b
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `wait4(-1, ..., __WALL)`: reaps any child; returns its pid and raw wait status.
pub fn wait_any() -> io::Result<(i32, i32)> {
    let mut status: libc::c_int = 0;
    // SAFETY: wait4 writes the status into our local; no rusage requested.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::__WALL, std::ptr::null_mut()) };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((pid, status))
    }
}

/// Installs a seccomp BPF filter on the calling thread (`SECCOMP_SET_MODE_FILTER`).
/// Needs no_new_privs or CAP_SYS_ADMIN in the current user namespace.
/// Async-signal-safe.
pub fn install_seccomp(program: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_regions_cover_our_own_arguments() {
        let r = ArgRegions::of_current_process().unwrap();
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(r.arg.1 - r.arg.0, cmdline.len());
        // SAFETY: the range is our own, mapped argument strings, read while alive.
        let bytes = unsafe { std::slice::from_raw_parts(r.arg.0 as *const u8, r.arg.1 - r.arg.0) };
        assert_eq!(bytes, cmdline.as_slice());
    }
}
