//! The sandbox's first process, from `clone3` to `execve`.
//!
//! It starts as real root in fresh mount, pid, ipc, uts and network namespaces, and:
//! joins the job's cgroup, brings up its own loopback, mounts a size-capped tmpfs
//! and an overlay of the image's read-only layers on it, mounts /proc, pivots into
//! the overlay, and unshares a user (and cgroup) namespace. It then tells the parent,
//! which writes the uid/gid maps and places the input files, and waits for "go". Last it drops every privilege and execs the program, which
//! becomes pid 1 of the sandbox: when it exits, the kernel kills everything else.
//!
//! The parent may be multi-threaded, so this code runs under post-fork rules: no
//! allocation, no locks, no panics. Everything it needs is prepared in [`ChildPlan`]
//! before the fork; failures are reported as a fixed-size [`ChildError`] on a pipe.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use runbox_sys::exec::ExecArgs;
use runbox_sys::process::{exit_now, unshare_flags};
use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Resource, Rlimit};

/// Where the child failed. The numbers travel in [`ChildError`]; keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    DeathSignal = 1,
    JoinCgroup,
    Loopback,
    MountPrivate,
    MountTmpfs,
    PrepareUpper,
    MountOverlay,
    MountProc,
    PivotRoot,
    Hostname,
    Rlimit,
    Unshare,
    WaitForParent,
    DropCapabilities,
    SetIds,
    Session,
    Workdir,
    Stdio,
    NoNewPrivs,
    Seccomp,
    Signals,
    /// execve failed for every candidate path.
    Exec,
    /// Joining a live sandbox's namespaces (an exec into it).
    EnterNamespaces,
}

impl Stage {
    pub(crate) fn from_u32(n: u32) -> Option<Stage> {
        use Stage::*;
        const ALL: [Stage; 23] = [
            DeathSignal,
            JoinCgroup,
            Loopback,
            MountPrivate,
            MountTmpfs,
            PrepareUpper,
            MountOverlay,
            MountProc,
            PivotRoot,
            Hostname,
            Rlimit,
            Unshare,
            WaitForParent,
            DropCapabilities,
            SetIds,
            Session,
            Workdir,
            Stdio,
            NoNewPrivs,
            Seccomp,
            Signals,
            Exec,
            EnterNamespaces,
        ];
        ALL.into_iter().find(|s| *s as u32 == n)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::DeathSignal => "setting the parent-death signal",
            Stage::JoinCgroup => "joining the job's cgroup",
            Stage::Loopback => "entering the network namespace",
            Stage::MountPrivate => "making mounts private",
            Stage::MountTmpfs => "mounting the writable tmpfs",
            Stage::PrepareUpper => "preparing the writable layer (/dev, /etc/hosts)",
            Stage::MountOverlay => "mounting the image layers (overlayfs)",
            Stage::MountProc => "mounting /proc",
            Stage::PivotRoot => "switching to the sandbox root (pivot_root)",
            Stage::Hostname => "setting the hostname",
            Stage::Rlimit => "setting resource limits",
            Stage::Unshare => "creating the user namespace",
            Stage::WaitForParent => "waiting for the parent",
            Stage::DropCapabilities => "dropping capabilities",
            Stage::SetIds => "switching to the job's user and groups",
            Stage::Session => "starting a new session",
            Stage::Workdir => "entering the working directory",
            Stage::Stdio => "connecting stdin/stdout/stderr",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Seccomp => "installing the seccomp filter",
            Stage::Signals => "resetting signal handling",
            Stage::Exec => "executing the command",
            Stage::EnterNamespaces => "entering the sandbox's namespaces",
        }
    }
}

/// What the child writes on its error pipe before exiting: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildError {
    pub stage: Stage,
    pub errno: i32,
}

impl ChildError {
    pub(crate) const SIZE: usize = 8;

    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(self.stage as u32).to_le_bytes());
        b[4..].copy_from_slice(&self.errno.to_le_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8; 8]) -> Option<ChildError> {
        let stage = Stage::from_u32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        Some(ChildError {
            stage,
            errno: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The byte the parent sends with the job's network namespace (SCM_RIGHTS).
pub(crate) const NETNS: u8 = b'N';
/// Monotonic timestamps (ns) the child takes at each step of its set-up, sent to the
/// parent with READY so slow hosts can be diagnosed (`--log debug`).
pub(crate) struct Marks {
    pub t: [u64; Marks::N],
    n: usize,
}

impl Marks {
    pub(crate) const N: usize = 12;
    pub(crate) const NAMES: [&'static str; Marks::N] = [
        "start",
        "cgroup",
        "private",
        "tmpfs",
        "upper",
        "overlay",
        "proc",
        "pivot",
        "limits",
        "netns received",
        "netns entered",
        "userns",
    ];
    pub(crate) const SIZE: usize = 1 + 8 * Marks::N;

    fn new() -> Marks {
        let mut m = Marks {
            t: [0; Marks::N],
            n: 0,
        };
        m.mark();
        m
    }

    fn mark(&mut self) {
        if self.n < Marks::N {
            self.t[self.n] = now_ns();
            self.n += 1;
        }
    }

    fn to_bytes(&self) -> [u8; Marks::SIZE] {
        let mut b = [0u8; Marks::SIZE];
        b[0] = READY;
        for (i, t) in self.t.iter().enumerate() {
            b[1 + 8 * i..9 + 8 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    /// Parses READY with its marks.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Marks> {
        if b.len() != Marks::SIZE || b[0] != READY {
            return None;
        }
        let mut m = Marks {
            t: [0; Marks::N],
            n: Marks::N,
        };
        for (i, t) in m.t.iter_mut().enumerate() {
            *t = u64::from_le_bytes(b[1 + 8 * i..9 + 8 * i].try_into().ok()?);
        }
        Some(m)
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the vDSO; no allocation).
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The byte the child sends when it is ready for its id maps.
pub(crate) const READY: u8 = b'R';
/// The byte the parent sends once the maps are written and the inputs placed.
pub(crate) const GO: u8 = b'G';
/// A live sandbox's init, once set up completely (its cgroup namespace included)
/// and holding.
pub(crate) const HELD: u8 = b'H';
/// Init's report when the program ends: this byte, then its wait status (4 bytes LE).
pub(crate) const STATUS: u8 = b'S';

/// What the program's own process needs: its descriptors, ids and command.
pub(crate) struct ProgramPlan<'a> {
    pub err: BorrowedFd<'a>,
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// Ids inside the sandbox to run the program as.
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [rustix::process::Gid],
    pub workdir: &'a CStr,
    pub exec: &'a ExecArgs,
    /// Paths to try for argv[0], in PATH order.
    pub candidates: &'a [CString],
    /// What `getppid` shows the program while the process that waits for it lives:
    /// 1 (the sandbox's init) for a one-shot job, 0 for an exec into a live sandbox
    /// (its waiter is outside the sandbox's pid namespace).
    pub parent_pid: i32,
}

/// Everything the child needs, prepared by the parent before the fork.
pub(crate) struct ChildPlan<'a> {
    pub sync: BorrowedFd<'a>,
    /// The program (ignored with `hold`).
    pub prog: ProgramPlan<'a>,
    /// A live sandbox: init runs no program, sends the writable layer's descriptor
    /// with READY, and after GO only holds the namespaces (reaping orphans) until
    /// the parent closes the sync socket or kills it.
    pub hold: bool,
    /// cgroup v1: the job cgroup's `tasks` files, to move ourselves into (empty on v2,
    /// where the clone starts inside).
    pub cgroup_tasks: &'a [OwnedFd],
    /// Mount point for the tmpfs (an empty host directory; the mount is only ever
    /// visible in the sandbox's private mount namespace).
    pub scratch: &'a CStr,
    pub tmpfs_opts: &'a CStr,
    /// The layer store directory. A path, not a descriptor: overlayfs only accepts
    /// lower directories reached through this mount namespace.
    pub layers_dir: &'a CStr,
    pub overlay_opts: &'a CStr,
    /// `<scratch>/root`, where the overlay is mounted.
    pub root: &'a CStr,
    /// `<scratch>/root/proc`.
    pub proc_dir: &'a CStr,
    pub etc_hosts: &'a [u8],
    pub id_base: u32,
    pub hostname: &'a CStr,
    pub rlimits: &'a [(Resource, u64)],
    pub seccomp: &'a [libc::sock_filter],
    pub cap_last: u32,
    /// runbox's own argv/environment memory, wiped in the child.
    pub arg_regions: &'a runbox_sys::process::ArgRegions,
}

type Step<T> = Result<T, ChildError>;

fn at(stage: Stage) -> impl Fn(Errno) -> ChildError {
    move |e| ChildError {
        stage,
        errno: e.raw_os_error(),
    }
}

fn io_at(stage: Stage) -> impl Fn(std::io::Error) -> ChildError {
    move |e| ChildError {
        stage,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Forks the sandbox's first process into new namespaces (`ns`, `CLONE_*` flags) and,
/// with `cgroup`, into that cgroup v2 directory. Returns the child's pid and pidfd;
/// the child runs [`run`] and never returns here.
#[allow(unsafe_code)]
pub(crate) fn spawn(
    plan: &ChildPlan<'_>,
    ns: u64,
    cgroup: Option<BorrowedFd<'_>>,
) -> std::io::Result<(i32, OwnedFd)> {
    // SAFETY: the child branch only calls `run`, which makes raw system calls on data
    // prepared before the fork (no allocation, locks or unwinding) and ends in execve
    // or _exit.
    match unsafe { runbox_sys::fork::fork_into(ns, cgroup) }? {
        runbox_sys::fork::Forked::Child => run(plan),
        runbox_sys::fork::Forked::Parent { pid, pidfd } => Ok((pid, pidfd)),
    }
}

/// Runs the child to its exec; never returns.
fn run(plan: &ChildPlan<'_>) -> ! {
    match setup_and_exec(plan) {
        Ok(never) => match never {},
        Err(e) => fail(plan.prog.err, e),
    }
}

/// Reports `err` to the parent and exits.
fn fail(err_pipe: BorrowedFd<'_>, err: ChildError) -> ! {
    let _ = rustix::io::write(err_pipe, &err.to_bytes());
    exit_now(match (err.stage, err.errno) {
        (Stage::Exec, libc::ENOENT) => 127,
        (Stage::Exec, _) => 126,
        _ => 125,
    })
}

fn setup_and_exec(p: &ChildPlan<'_>) -> Step<std::convert::Infallible> {
    use rustix::process::Signal;
    let mut marks = Marks::new();
    // If runbox dies, so does the sandbox (pid 1's death takes the namespace with it).
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(at(Stage::DeathSignal))?;
    rustix::process::umask(Mode::empty());
    for fd in p.cgroup_tasks {
        rustix::io::write(fd, b"0").map_err(at(Stage::JoinCgroup))?;
    }
    marks.mark();
    // This process becomes the sandbox's pid 1, whose command line anyone inside can
    // read: it must not show runbox's own arguments (or environment).
    p.arg_regions.scrub();

    // Nothing mounted from here on may propagate back to the host.
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(at(Stage::MountPrivate))?;
    marks.mark();
    rustix::mount::mount(
        c"tmpfs",
        p.scratch,
        c"tmpfs",
        MountFlags::NOSUID,
        Some(p.tmpfs_opts),
    )
    .map_err(at(Stage::MountTmpfs))?;
    marks.mark();
    let upper = prepare_upper(p)?;
    marks.mark();

    // lowerdir names are relative to the layer store, which keeps the option short.
    rustix::process::chdir(p.layers_dir).map_err(at(Stage::MountOverlay))?;
    rustix::mount::mount(
        c"overlay",
        p.root,
        c"overlay",
        MountFlags::NOSUID,
        Some(p.overlay_opts),
    )
    .map_err(at(Stage::MountOverlay))?;
    marks.mark();
    rustix::mount::mount(
        c"proc",
        p.proc_dir,
        c"proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(at(Stage::MountProc))?;
    marks.mark();

    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the
    // overlay as the only tree this namespace can reach.
    rustix::process::chdir(p.root).map_err(at(Stage::PivotRoot))?;
    rustix::process::pivot_root(c".", c".").map_err(at(Stage::PivotRoot))?;
    rustix::mount::unmount(c".", UnmountFlags::DETACH).map_err(at(Stage::PivotRoot))?;
    rustix::process::chdir(c"/").map_err(at(Stage::PivotRoot))?;
    marks.mark();

    rustix::system::sethostname(p.hostname.to_bytes()).map_err(at(Stage::Hostname))?;
    // Limits are set while still real root: raising a hard limit above runbox's own
    // needs CAP_SYS_RESOURCE in the initial user namespace.
    for &(res, value) in p.rlimits {
        rustix::process::setrlimit(
            res,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
        .map_err(at(Stage::Rlimit))?;
    }
    marks.mark();
    // The network namespace was made (loopback up) by a thread of the parent while we
    // mounted: creating one is the slowest namespace, so it runs in parallel.
    let netns = receive_netns(p.sync)?;
    marks.mark();
    rustix::thread::move_into_link_name_space(
        netns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(at(Stage::Loopback))?;
    drop(netns);
    marks.mark();
    // From here, root inside is an unprivileged id outside. The mount, network, uts
    // and ipc namespaces stay owned by the initial user namespace, so no capability
    // gained in the new one reaches them.
    runbox_sys::process::unshare_namespaces(unshare_flags::NEWUSER)
        .map_err(io_at(Stage::Unshare))?;
    marks.mark();

    if p.hold {
        // The parent keeps the writable layer's descriptor: after the sandbox's
        // processes are gone, it reads the layer through it (to snapshot it).
        send_fd(p.sync, &marks.to_bytes(), upper.as_fd()).map_err(at(Stage::WaitForParent))?;
    } else {
        rustix::io::write(p.sync, &marks.to_bytes()).map_err(at(Stage::WaitForParent))?;
    }
    drop(upper);
    // While the parent places the inputs: nothing exec'd from here may regain a
    // capability (even as root), and no signal stays ignored or blocked (only
    // ignored ones survive exec; Rust ignores SIGPIPE). The program inherits both.
    runbox_sys::process::drop_bounding_set(p.cap_last).map_err(io_at(Stage::DropCapabilities))?;
    runbox_sys::process::reset_signals().map_err(io_at(Stage::Signals))?;
    // We are in the job's cgroup (joined first thing): this makes it the root of what
    // the program sees in /proc/self/cgroup.
    runbox_sys::process::unshare_namespaces(unshare_flags::NEWCGROUP)
        .map_err(io_at(Stage::Unshare))?;
    // Installing a filter costs ~0.25 ms here (the kernel compiles it), so it is done
    // now, in parallel with the parent's work, and inherited by the program. Init
    // itself only waits, writes and exits after this, which the filter allows.
    rustix::thread::set_no_new_privs(true).map_err(at(Stage::NoNewPrivs))?;
    runbox_sys::process::install_seccomp(p.seccomp).map_err(io_at(Stage::Seccomp))?;
    let mut buf = [0u8; 1];
    let n = rustix::io::read(p.sync, &mut buf).map_err(at(Stage::WaitForParent))?;
    if n != 1 || buf[0] != GO {
        // EOF: the parent gave up (or died); leave quietly.
        exit_now(125);
    }

    if p.hold {
        hold(p.sync)
    }
    // This process stays as the sandbox's init (pid 1); the program runs as its child.
    // The kernel ignores signals that pid 1 has no handler for unless they come from
    // an ancestor namespace, so a program that is pid 1 would survive SIGXFSZ,
    // SIGXCPU and SIGPIPE, and nothing would reap orphans.
    let pid = spawn_program(&p.prog)?;
    init(p.sync, pid)
}

/// Starts the program's process sharing init's memory (nothing to copy), with init
/// suspended until it execs or fails.
#[allow(unsafe_code)]
fn spawn_program(p: &ProgramPlan<'_>) -> Step<i32> {
    let mut stack = [0u8; 128 * 1024];
    let mut child = || -> i32 {
        match program(p) {
            Ok(never) => match never {},
            Err(e) => fail(p.err, e),
        }
    };
    // SAFETY: `program` makes raw system calls on the prepared plan, writes only its
    // own stack (inside `stack`, alive while we are suspended), never unwinds, and
    // ends in execve or `fail` (_exit).
    unsafe { runbox_sys::fork::vfork_on_stack(&mut stack, &mut child) }.map_err(io_at(Stage::Exec))
}

/// The program's process: drops every privilege and execs.
fn program(p: &ProgramPlan<'_>) -> Step<std::convert::Infallible> {
    use rustix::process::Signal;
    // Everything below is allowed by the seccomp filter init installed before GO.
    rustix::thread::set_thread_groups(p.groups).map_err(at(Stage::SetIds))?;
    let gid = rustix::process::Gid::from_raw(p.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(at(Stage::SetIds))?;
    let uid = rustix::process::Uid::from_raw(p.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(at(Stage::SetIds))?;
    drop_capabilities()?;
    // Changing credentials cleared the death signal; set it again, then make sure
    // our waiter did not die in between (we would have been reparented).
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(at(Stage::DeathSignal))?;
    if rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()) != p.parent_pid {
        exit_now(125);
    }

    // A new session has no controlling terminal: no TIOCSTI into the host's tty.
    rustix::process::setsid().map_err(at(Stage::Session))?;
    let wd = rfs::openat2(
        rfs::CWD,
        p.workdir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(at(Stage::Workdir))?;
    rustix::process::fchdir(&wd).map_err(at(Stage::Workdir))?;
    rustix::process::umask(Mode::from_raw_mode(0o022));

    dup_onto(p.stdin, 0)?;
    dup_onto(p.stdout, 1)?;
    dup_onto(p.stderr, 2)?;
    // Everything else (the error pipe included) closes on exec.
    runbox_sys::process::cloexec_from(3).map_err(io_at(Stage::Stdio))?;

    // Like execvp: the first candidate that exists wins; EACCES is remembered in case
    // nothing else is found (126 rather than 127).
    let mut errno = libc::ENOENT;
    for path in p.candidates {
        let e = p.exec.execve(path).raw_os_error().unwrap_or(libc::EIO);
        match e {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => errno = libc::EACCES,
            other => {
                errno = other;
                break;
            }
        }
    }
    Err(ChildError {
        stage: Stage::Exec,
        errno,
    })
}

fn drop_capabilities() -> Step<()> {
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .map_err(at(Stage::DropCapabilities))?;
    rustix::thread::clear_ambient_capability_set().map_err(at(Stage::DropCapabilities))
}

/// The sandbox's init: reaps every process that ends, and when the program ends,
/// reports its wait status to the parent and exits (which ends the sandbox). It
/// keeps only the sync socket, holds no capability, and is not dumpable, so the
/// processes in the sandbox cannot read its memory or environment.
fn init(sync: BorrowedFd<'_>, program: i32) -> ! {
    use std::os::fd::AsRawFd;
    // Without the parent's stdio and the pipes, EOF on the job's stdout reaches the
    // parent as soon as the program's side closes, and exec success shows on the
    // error pipe.
    let _ = runbox_sys::process::close_all_except(sync.as_raw_fd());
    let _ = rustix::thread::set_name(c"init");
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = drop_capabilities();
    loop {
        match runbox_sys::process::wait_any() {
            Ok((pid, status)) if pid == program => {
                let mut msg = [0u8; 5];
                msg[0] = STATUS;
                msg[1..].copy_from_slice(&status.to_le_bytes());
                let _ = rustix::io::write(sync, &msg);
                exit_now(0);
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => exit_now(0),
        }
    }
}

/// Everything an exec into a live sandbox needs, prepared before the fork.
pub(crate) struct EnterPlan<'a> {
    pub sync: BorrowedFd<'a>,
    pub prog: ProgramPlan<'a>,
    /// A pidfd of the live sandbox's init, whose namespaces are joined.
    pub target: BorrowedFd<'a>,
    /// Its cgroup namespace (`/proc/<init>/ns/cgroup`).
    pub cgroup_ns: BorrowedFd<'a>,
    /// cgroup v1: the exec cgroup's `tasks` files (empty on v2).
    pub cgroup_tasks: &'a [OwnedFd],
    pub rlimits: &'a [(Resource, u64)],
    pub seccomp: &'a [libc::sock_filter],
    pub cap_last: u32,
}

/// Forks the waiter of an exec into a live sandbox: it joins the exec's cgroup and
/// the sandbox's namespaces, starts the program (which lands in the sandbox's pid
/// namespace), waits for it and reports its status like [`init`] does. The waiter
/// itself stays in the host's pid namespace, where nothing in the sandbox can see
/// or signal it.
#[allow(unsafe_code)]
pub(crate) fn spawn_enter(
    plan: &EnterPlan<'_>,
    cgroup: Option<BorrowedFd<'_>>,
) -> std::io::Result<(i32, OwnedFd)> {
    // SAFETY: the child branch only calls `enter`, which makes raw system calls on
    // data prepared before the fork (no allocation, locks or unwinding) and ends in
    // _exit.
    match unsafe { runbox_sys::fork::fork_into(0, cgroup) }? {
        runbox_sys::fork::Forked::Child => match enter(plan) {
            Ok(never) => match never {},
            Err(e) => fail(plan.prog.err, e),
        },
        runbox_sys::fork::Forked::Parent { pid, pidfd } => Ok((pid, pidfd)),
    }
}

fn enter(p: &EnterPlan<'_>) -> Step<std::convert::Infallible> {
    use rustix::process::Signal;
    use rustix::thread::{move_into_thread_name_spaces, ThreadNameSpaceType as Ns};
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(at(Stage::DeathSignal))?;
    rustix::process::umask(Mode::empty());
    for fd in p.cgroup_tasks {
        rustix::io::write(fd, b"0").map_err(at(Stage::JoinCgroup))?;
    }
    // Limits are set while still real root (see `setup_and_exec`).
    for &(res, value) in p.rlimits {
        rustix::process::setrlimit(
            res,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
        .map_err(at(Stage::Rlimit))?;
    }
    // The mount, network, ipc and uts namespaces belong to the initial user
    // namespace: join them as real root first. The pid namespace applies to the
    // program we start (not to us). Then the sandbox's user namespace, whose
    // capabilities let us join its cgroup namespace, set the program's ids and
    // drop the bounding set.
    for ns in [
        Ns::MOUNT,
        Ns::NETWORK,
        Ns::INTER_PROCESS_COMMUNICATION,
        Ns::HOST_NAME_AND_NIS_DOMAIN_NAME,
        Ns::PROCESS_ID,
        Ns::USER,
    ] {
        move_into_thread_name_spaces(p.target, ns).map_err(at(Stage::EnterNamespaces))?;
    }
    // Through a pidfd, setns also asks for ptrace access to init, which is not
    // dumpable: no longer granted once we are in its user namespace. The
    // namespace's own descriptor needs only the capability we now have there.
    rustix::thread::move_into_link_name_space(
        p.cgroup_ns,
        Some(rustix::thread::LinkNameSpaceType::ControlGroup),
    )
    .map_err(at(Stage::EnterNamespaces))?;
    runbox_sys::process::drop_bounding_set(p.cap_last).map_err(io_at(Stage::DropCapabilities))?;
    runbox_sys::process::reset_signals().map_err(io_at(Stage::Signals))?;
    rustix::thread::set_no_new_privs(true).map_err(at(Stage::NoNewPrivs))?;
    runbox_sys::process::install_seccomp(p.seccomp).map_err(io_at(Stage::Seccomp))?;
    let pid = spawn_program(&p.prog)?;
    init(p.sync, pid)
}

/// A live sandbox's init: holds the namespaces while the parent execs into them.
/// Orphans it inherits are reaped by the kernel (SIGCHLD ignored), so it only
/// waits for the parent to close the sync socket: runbox deletes the sandbox, or
/// dies (the kernel closes its descriptors). Like [`init`], it keeps nothing but
/// the socket, holds no capability and is not dumpable.
fn hold(sync: BorrowedFd<'_>) -> ! {
    use std::os::fd::AsRawFd;
    let _ = runbox_sys::process::close_all_except(sync.as_raw_fd());
    // No parent-death signal: it fires when the *thread* that created the
    // sandbox ends (a request's worker thread), not runbox, and a live sandbox
    // outlives that thread. The socket's end-of-file is the signal to go.
    if rustix::process::set_parent_process_death_signal(None).is_err() {
        exit_now(125);
    }
    if rustix::io::write(sync, &[HELD]).is_err() {
        exit_now(125);
    }
    let _ = rustix::thread::set_name(c"init");
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = drop_capabilities();
    if runbox_sys::process::reap_children_automatically().is_err() {
        exit_now(125);
    }
    let mut buf = [0u8; 16];
    loop {
        match rustix::io::read(sync, &mut buf) {
            Ok(0) => exit_now(0),
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => exit_now(0),
        }
    }
}

/// Sends `bytes` with one descriptor (SCM_RIGHTS), from a buffer on the stack.
fn send_fd(sync: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<(), Errno> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    sendmsg(
        sync,
        &[std::io::IoSlice::new(bytes)],
        &mut cmsg,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives the network namespace descriptor the parent sends (SCM_RIGHTS), into a
/// buffer on the stack.
fn receive_netns(sync: BorrowedFd<'_>) -> Step<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        sync,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(at(Stage::Loopback))?;
    if got.bytes != 1 || byte[0] != NETNS {
        // EOF: the parent gave up (or died); leave quietly.
        exit_now(125);
    }
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(ChildError {
        stage: Stage::Loopback,
        errno: libc::EBADMSG,
    })
}

/// Creates, on the fresh tmpfs: `upper/` (owned by root inside) with /dev, /proc,
/// /tmp and /etc/hosts entries that the overlay shows over the image's, and `work/`
/// and `root/` for overlayfs. Nothing here can have been planted: the tmpfs was
/// empty a moment ago and no sandboxed code has run yet.
fn prepare_upper(p: &ChildPlan<'_>) -> Step<OwnedFd> {
    let e = at(Stage::PrepareUpper);
    let dirf = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let scratch = rfs::open(p.scratch, dirf, Mode::empty()).map_err(&e)?;
    let root_id = Some(rustix::fs::Uid::from_raw(p.id_base));
    let root_gid = Some(rustix::fs::Gid::from_raw(p.id_base));
    let mkdir = |parent: &OwnedFd, name: &CStr, mode: u32| -> Step<OwnedFd> {
        rfs::mkdirat(parent, name, Mode::from_raw_mode(mode)).map_err(&e)?;
        let fd = rfs::openat(parent, name, dirf, Mode::empty()).map_err(&e)?;
        rfs::chownat(
            parent,
            name,
            root_id,
            root_gid,
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(&e)?;
        Ok(fd)
    };
    for name in [c"work", c"root"] {
        rfs::mkdirat(&scratch, name, Mode::from_raw_mode(0o700)).map_err(&e)?;
    }
    let upper = mkdir(&scratch, c"upper", 0o755)?;
    mkdir(&upper, c"proc", 0o555)?;
    mkdir(&upper, c"tmp", 0o1777)?;
    let dev = mkdir(&upper, c"dev", 0o755)?;
    mkdir(&dev, c"shm", 0o1777)?;
    for (name, minor) in [
        (c"null", 3),
        (c"zero", 5),
        (c"full", 7),
        (c"random", 8),
        (c"urandom", 9),
    ] {
        rfs::mknodat(
            &dev,
            name,
            rfs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rfs::makedev(1, minor),
        )
        .map_err(&e)?;
        rfs::chownat(
            &dev,
            name,
            root_id,
            root_gid,
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(&e)?;
    }
    for (name, target) in [
        (c"fd", c"/proc/self/fd"),
        (c"stdin", c"/proc/self/fd/0"),
        (c"stdout", c"/proc/self/fd/1"),
        (c"stderr", c"/proc/self/fd/2"),
    ] {
        rfs::symlinkat(target, &dev, name).map_err(&e)?;
        rfs::chownat(
            &dev,
            name,
            root_id,
            root_gid,
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(&e)?;
    }
    let etc = mkdir(&upper, c"etc", 0o755)?;
    let hosts = rfs::openat(
        &etc,
        c"hosts",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o644),
    )
    .map_err(&e)?;
    write_all(&hosts, p.etc_hosts).map_err(&e)?;
    rfs::fchown(&hosts, root_id, root_gid).map_err(&e)?;
    drop(etc);
    Ok(upper)
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        let n = rustix::io::write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Makes `fd` the descriptor `target` (0, 1 or 2), without close-on-exec. The parent
/// numbers the pipes 3 or above, so dup2 never clobbers one of them with another.
fn dup_onto(fd: BorrowedFd<'_>, target: i32) -> Step<()> {
    match target {
        0 => rustix::stdio::dup2_stdin(fd),
        1 => rustix::stdio::dup2_stdout(fd),
        _ => rustix::stdio::dup2_stderr(fd),
    }
    .map_err(at(Stage::Stdio))
}
