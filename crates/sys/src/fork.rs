//! `clone3` as a fork into new namespaces.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Namespace and behaviour flags for [`fork_into`] (the `CLONE_*` constants).
pub mod flags {
    pub const NEWNS: u64 = libc::CLONE_NEWNS as u64;
    pub const NEWPID: u64 = libc::CLONE_NEWPID as u64;
    pub const NEWNET: u64 = libc::CLONE_NEWNET as u64;
    pub const NEWIPC: u64 = libc::CLONE_NEWIPC as u64;
    pub const NEWUTS: u64 = libc::CLONE_NEWUTS as u64;
    pub const NEWCGROUP: u64 = libc::CLONE_NEWCGROUP as u64;
    pub const NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
    pub(crate) const PIDFD: u64 = libc::CLONE_PIDFD as u64;
    pub(crate) const INTO_CGROUP: u64 = 0x200000000; // CLONE_INTO_CGROUP, Linux 5.7
}

/// Which side of [`fork_into`] we are on.
#[derive(Debug)]
pub enum Forked {
    /// In the new process.
    Child,
    /// In the caller: the child's pid (as seen from here) and a pidfd for it.
    Parent { pid: i32, pidfd: OwnedFd },
}

/// `struct clone_args` of `clone3(2)` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks the calling process with `clone3`, creating the namespaces in `ns_flags`
/// and, when `cgroup` is given (a cgroup v2 directory), starting the child in that
/// cgroup. The child gets a copy of the address space, like `fork`.
///
/// # Safety
///
/// The child is a copy of one thread of a possibly multi-threaded process: locks
/// held by other threads (the allocator's among them) stay locked forever in it. In
/// the child, the caller may only run async-signal-safe code (raw system calls on
/// data prepared before the fork), must not allocate, lock or unwind, and must end
/// with `execve` or [`crate::process::exit_now`].
pub unsafe fn fork_into(ns_flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: ns_flags | flags::PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(cg) = cgroup {
        args.flags |= flags::INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid, fully initialised clone_args of the size we pass, and
    // `pidfd` outlives the call. With a zero stack the child resumes here on a copy of
    // our stack, like fork(); the caller upholds the post-fork rules documented above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new, owned pidfd in `pidfd`.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}

/// Starts a child that shares this process's memory and runs `child` on `stack`,
/// suspending the caller until the child execs or exits (`CLONE_VM | CLONE_VFORK`,
/// what `posix_spawn` does). Nothing is copied, so it costs the same whatever the
/// size of the address space. Returns the child's pid.
///
/// # Safety
///
/// `child` runs in our address space on `stack` while we are suspended: it must not
/// unwind, must not touch locks or the allocator, must leave our memory as it found
/// it apart from `stack` and its own locals, and must end in execve or `_exit`.
/// `stack` must stay valid until then (we are suspended, so a local is fine).
pub unsafe fn vfork_on_stack(stack: &mut [u8], child: &mut dyn FnMut() -> i32) -> io::Result<i32> {
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut &mut dyn FnMut` passed below, alive while the
        // parent is suspended in clone().
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut() -> i32) };
        f()
    }
    // The stack grows down: start at its 16-byte-aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    let mut f: &mut dyn FnMut() -> i32 = child;
    // SAFETY: `top` is the aligned end of a writable buffer we own; the trampoline
    // and argument match clone(2)'s contract; the caller upholds the vfork rules.
    let pid = unsafe {
        libc::clone(
            trampoline,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut f as *mut &mut dyn FnMut() -> i32 as *mut libc::c_void,
        )
    };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}
