//! The `namespace` backend: each job is a process tree in its own mount, pid,
//! network, ipc, uts, user and cgroup namespaces, inside a cgroup with the job's
//! limits, under a seccomp filter, with no capabilities, on an overlay of the
//! image's read-only layers and a size-capped tmpfs.
//!
//! Nothing is mounted in the host's mount namespace: the tmpfs and the overlay exist
//! only in the sandbox's private namespace, and die with it. What outlives a crash
//! of runbox is at most a cgroup directory, named after its owner, which the next
//! start removes ([`NamespaceBackend::sweep`]).
//!
//! Order of events for one job (parent = this process, child = [`child`]):
//!
//! 1. parent: resolve the user from the image's /etc/passwd; create the cgroup;
//!    prepare every string the child needs; `clone3` into new namespaces.
//! 2. child: join the cgroup, mount tmpfs + overlay + /proc, pivot_root, unshare the
//!    user namespace, send READY.
//! 3. parent: through `/proc/<child>/root`, create the working directory and write
//!    the inputs (no link leads out); write the uid/gid maps; send GO.
//! 4. child: drop privileges, seccomp, exec. parent: [`supervise`].
//! 5. parent: read usage from the cgroup, collect outputs through the root
//!    descriptor (no link followed), close it (the last reference to the sandbox's
//!    file systems), remove the cgroup.
//!
//! A job cancelled (see [`JobEvents::cancelled`]) before step 4 never execs: its
//! sandbox is killed and removed. One cancelled later is killed like one over its
//! wall-time limit, and what it wrote and left is collected as usual.

mod child;
mod files;
mod live;
pub mod netns;
mod supervise;

pub use live::LiveSandbox;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runbox_core::{signal_name, IdMap, JobResult, JobStatus, LimitKind, Timings, Usage};
use runbox_sys::exec::ExecArgs;
use runbox_sys::fork::flags;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{pidfd_send_signal, waitid, Resource, Signal, WaitId, WaitIdOptions};

use self::child::{ChildError, ChildPlan, Marks, ProgramPlan, Stage, GO};
use self::files::SandboxRoot;
use self::supervise::{decide, Exit, Pipes};
use crate::cgroup::{self, Cgroups, JobCgroup};
use crate::plan::JobPlan;
use crate::{user, Backend, JobEvents, SandboxError};

/// The backend's settings.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// A directory for the backend's own use (holds the empty mount point).
    pub state_dir: PathBuf,
    /// The id range sandboxes run in; must match the image store's.
    pub id_map: IdMap,
    /// Directory (under each cgroup hierarchy root) holding the job cgroups.
    pub cgroup_parent: String,
    /// How long the sandbox may take to set up before it is abandoned.
    pub setup_timeout: Duration,
}

impl NamespaceConfig {
    pub fn new(state_dir: impl Into<PathBuf>, id_map: IdMap) -> Self {
        NamespaceConfig {
            state_dir: state_dir.into(),
            id_map,
            cgroup_parent: "runbox".into(),
            setup_timeout: Duration::from_secs(30),
        }
    }
}

/// What [`NamespaceBackend::sweep`] cleaned up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Cgroups of runbox processes that are gone (their processes were killed).
    pub cgroups_removed: usize,
}

/// Runs jobs in Linux namespaces. Cheap to clone and to share between threads
/// (live sandboxes hold a clone).
#[derive(Debug, Clone)]
pub struct NamespaceBackend(std::sync::Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    cfg: NamespaceConfig,
    cgroups: Box<dyn Cgroups>,
    seccomp: Vec<libc::sock_filter>,
    scratch: CString,
    root: CString,
    proc_dir: CString,
    empty_layer: String,
    cap_last: u32,
    arg_regions: runbox_sys::process::ArgRegions,
    /// `<pid>.<start time>` of this process: the owner tag of its cgroups.
    instance: String,
}

impl NamespaceBackend {
    /// Sets the backend up: checks the host, builds the seccomp filter and sweeps
    /// what crashed runbox processes left behind.
    pub fn new(cfg: NamespaceConfig) -> Result<(Self, SweepReport), SandboxError> {
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::Setup {
                stage: "checking privileges",
                source: io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "runbox must run as root (it creates namespaces, cgroups and mounts)",
                ),
            });
        }
        let mnt = cfg.state_dir.join("mnt");
        let empty = cfg.state_dir.join("empty");
        let ready = std::fs::metadata(&mnt).is_ok() && std::fs::metadata(&empty).is_ok();
        for d in [&cfg.state_dir, &mnt, &empty]
            .into_iter()
            .filter(|_| !ready)
        {
            std::fs::create_dir_all(d)
                .map_err(|e| SandboxError::io(format!("creating {}", d.display()), e))?;
        }
        if !ready {
            std::fs::set_permissions(
                &cfg.state_dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .map_err(|e| SandboxError::io(format!("chmod {}", cfg.state_dir.display()), e))?;
        }
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|e| SandboxError::io("state dir path", io::Error::other(e)))
        };
        let own_stat = std::fs::read_to_string("/proc/self/stat")
            .map_err(|e| SandboxError::io("reading /proc/self/stat", e))?;
        let cgroups = cgroup::detect(&cfg.cgroup_parent)?;
        let seccomp = crate::seccomp::sandbox_filter()
            .map_err(|e| SandboxError::io("seccomp", io::Error::other(e)))?;
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let backend = NamespaceBackend(std::sync::Arc::new(Shared {
            scratch: cstr(&mnt)?,
            root: cstr(&mnt.join("root"))?,
            proc_dir: cstr(&mnt.join("root/proc"))?,
            empty_layer: empty.to_string_lossy().into_owned(),
            cgroups,
            seccomp,
            cap_last,
            arg_regions: runbox_sys::process::ArgRegions::from_stat(&own_stat)
                .map_err(|e| SandboxError::io("parsing /proc/self/stat", e))?,
            instance: start_time(&own_stat)
                .map(|start| format!("{}.{start}", std::process::id()))
                .ok_or_else(|| {
                    SandboxError::io(
                        "parsing /proc/self/stat",
                        io::Error::other("unexpected format"),
                    )
                })?,
            cfg,
        }));
        let report = backend.sweep()?;
        Ok((backend, report))
    }

    /// "v1" or "v2".
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    /// Removes the cgroups of runbox processes that no longer exist, killing any
    /// process still in them.
    pub fn sweep(&self) -> Result<SweepReport, SandboxError> {
        let mut report = SweepReport::default();
        for name in self.cgroups.list()? {
            let Some((pid, start)) = parse_owner(&name) else {
                continue;
            };
            if instance_tag(pid).is_some_and(|t| t == format!("{pid}.{start}")) {
                continue; // its owner is alive (possibly us)
            }
            // Best effort: several runbox processes starting at once may sweep the
            // same leftover, and all but one then find it gone. A cgroup that
            // cannot be removed now is tried again at the next start; it must
            // not stop this one.
            let cg = self.cgroups.open(&name);
            match cg.kill_all().and_then(|()| cg.remove()) {
                Ok(()) => {
                    tracing::info!(cgroup = %name, "removed a crashed runbox's leftover cgroup");
                    report.cgroups_removed += 1;
                }
                Err(e) => tracing::debug!(cgroup = %name, error = %e,
                    "a crashed runbox's leftover cgroup was not removed (another runbox may have removed it first)"),
            }
        }
        Ok(report)
    }

    fn cgroup_name(&self, job_id: &str) -> String {
        format!("{}.{job_id}", self.instance)
    }
}

impl std::ops::Deref for NamespaceBackend {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The rlimits of a job's processes.
fn rlimits(l: &runbox_core::Limits) -> [(Resource, u64); 5] {
    // The CPU-time rlimit backs up the cgroup check for a single busy process.
    let cpu_secs = l.cpu_time_ms.div_ceil(1000).max(1);
    [
        (Resource::Nofile, u64::from(l.nofile)),
        (Resource::Fsize, l.file_size_bytes),
        (Resource::Core, 0),
        (Resource::Cpu, cpu_secs + 1),
        (Resource::Memlock, 64 * 1024),
    ]
}

/// `<pid>.<start time in clock ticks>` for a live process.
fn instance_tag(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(format!("{pid}.{}", start_time(&stat)?))
}

/// The start time (field 22) of a `/proc/<pid>/stat` text.
fn start_time(stat: &str) -> Option<&str> {
    // Fields after the command name, which may itself contain spaces and parens.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split_whitespace().nth(19)
}

/// Parses `<pid>.<start>.<job>` cgroup names.
fn parse_owner(name: &str) -> Option<(i32, u64)> {
    let mut it = name.splitn(3, '.');
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    it.next()?;
    Some((pid, start))
}

/// What [`NamespaceBackend::start`] leads to.
enum Start {
    Ready(Started),
    /// Cancelled before the program could start: the result says so.
    Cancelled(Box<JobResult>),
}

/// What starting the program needs, built before the fork (the child may not
/// allocate): argv and env (HOME defaulted), the paths to try for argv[0], the
/// user's ids and groups, the working directory.
struct ProgramParts {
    uid: u32,
    gid: u32,
    exec: ExecArgs,
    /// Paths to try for argv[0], in PATH order (also for the error when none runs).
    candidates: Vec<String>,
    candidates_c: Vec<CString>,
    groups: Vec<rustix::process::Gid>,
    workdir: CString,
}

impl ProgramParts {
    fn new(plan: &JobPlan, who: &user::ResolvedUser) -> Result<ProgramParts, SandboxError> {
        let mut env = plan.env.clone();
        env.entry("HOME".into())
            .or_insert_with(|| who.home.clone().unwrap_or_else(|| plan.workdir.clone()));
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let exec = ExecArgs::new(&plan.argv, &env)
            .map_err(|e| SandboxError::io("arguments", io::Error::other(e)))?;
        let candidates = plan.exec_candidates();
        let candidates_c = candidates
            .iter()
            .filter_map(|c| CString::new(c.as_str()).ok())
            .collect();
        Ok(ProgramParts {
            uid: who.uid,
            gid: who.gid,
            exec,
            candidates,
            candidates_c,
            groups: who
                .groups
                .iter()
                .map(|&g| rustix::process::Gid::from_raw(g))
                .collect(),
            workdir: CString::new(plan.workdir.as_str())
                .map_err(|e| SandboxError::io("workdir", io::Error::other(e)))?,
        })
    }

    /// The child's plan for the program, over the child's ends of the job's pipes.
    fn plan<'a>(&'a self, ends: &'a ChildEnds, parent_pid: i32) -> ProgramPlan<'a> {
        ProgramPlan {
            err: ends.err.as_fd(),
            stdin: ends.stdin.as_fd(),
            stdout: ends.stdout.as_fd(),
            stderr: ends.stderr.as_fd(),
            uid: self.uid,
            gid: self.gid,
            groups: &self.groups,
            workdir: &self.workdir,
            exec: &self.exec,
            candidates: &self.candidates_c,
            parent_pid,
        }
    }
}

/// A sandbox set up and told to go.
struct Started {
    pid: i32,
    child: ChildGuard,
    cg: CgroupGuard,
    root: SandboxRoot,
    t0: Instant,
    go: Instant,
    candidates: Vec<String>,
    /// runbox's ends of the job's pipes.
    pipes: Pipes,
    /// A live sandbox's writable layer (the overlay's upper directory).
    upper: Option<OwnedFd>,
}

/// Kills and removes a job's cgroup when dropped, whatever happened before.
#[derive(Debug)]
struct CgroupGuard(Option<Box<dyn JobCgroup>>);

impl CgroupGuard {
    fn get(&self) -> &dyn JobCgroup {
        self.0.as_deref().expect("present until removed")
    }

    /// Removes the cgroup of a job whose sandbox has ended (its pid namespace is
    /// gone, so nothing is left to kill).
    fn remove_empty(mut self) {
        if let Some(cg) = self.0.take() {
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "removing a job cgroup failed; the next start sweeps it");
            }
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = cg.kill_all();
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "removing a job cgroup failed; the next start sweeps it");
            }
        }
    }
}

/// Kills and reaps the sandbox's pid 1 when dropped, unless already reaped.
#[derive(Debug)]
struct ChildGuard {
    pidfd: OwnedFd,
    reaped: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
            let _ = waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED);
        }
    }
}

/// The child's ends of a job's pipes and sync socket (runbox's ends are a
/// [`Pipes`]), closed in runbox once the child has them.
struct ChildEnds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    err: OwnedFd,
    sync: OwnedFd,
}

/// The pipes between runbox and a job's process and the sync socket, all
/// close-on-exec and numbered 3 or above: runbox's ends and the child's.
fn job_pipes() -> Result<(Pipes, ChildEnds), SandboxError> {
    let pipe = || -> Result<(OwnedFd, OwnedFd), SandboxError> {
        let (r, w) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| SandboxError::io("creating a pipe", e))?;
        Ok((
            above_stdio(r).map_err(|e| SandboxError::io("pipe", e))?,
            above_stdio(w).map_err(|e| SandboxError::io("pipe", e))?,
        ))
    };
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (sync_parent, sync_child) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| SandboxError::io("creating a socket pair", e))?;
    Ok((
        Pipes {
            stdin: Some(stdin_w),
            stdout: stdout_r,
            stderr: stderr_r,
            err: err_r,
            sync: sync_parent,
        },
        ChildEnds {
            stdin: stdin_r,
            stdout: stdout_w,
            stderr: stderr_w,
            err: err_w,
            sync: sync_child,
        },
    ))
}

/// Moves a descriptor to 3 or above, so the child's dup2 onto 0-2 cannot clobber it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

fn setup_err(stage: &'static str) -> impl Fn(Errno) -> SandboxError {
    move |e| SandboxError::Setup {
        stage,
        source: e.into(),
    }
}

impl NamespaceBackend {
    /// Sets a sandbox up to the moment its program is told to go (one-shot), or to
    /// the moment its init holds the namespaces (`hold`: a live sandbox).
    fn start(
        &self,
        plan: &JobPlan,
        events: &mut dyn JobEvents,
        hold: bool,
    ) -> Result<Start, SandboxError> {
        let t0 = Instant::now();
        let t0_ns = child::now_ns();
        if events.cancelled() {
            return Ok(Start::Cancelled(Box::new(cancelled_before_start(
                plan, t0, t0,
            ))));
        }
        // First: the network namespace (the slowest namespace to create) is taken
        // ready-made or starts being made while this thread prepares the job.
        let netns_ticket = netns::NetnsPool::global().take();
        let span = tracing::debug_span!("job", job_id = %plan.job_id);
        let _enter = span.enter();
        let img = &plan.image;

        // Who runs: from the image's own account files, read from its layers.
        let read = |p| {
            files::read_image_file(&img.layers_dir, &img.layers, p, 1 << 20)
                .map(|o| String::from_utf8_lossy(&o.unwrap_or_default()).into_owned())
                .map_err(|e| SandboxError::io(format!("reading {p} from the image"), e))
        };
        let (passwd, group) = (read("/etc/passwd")?, read("/etc/group")?);
        let who = user::resolve(plan.user.as_ref(), &passwd, &group)?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "user resolved");
        let map = self.cfg.id_map;
        let (host_uid, host_gid) = (map.to_host(who.uid), map.to_host(who.gid));

        // Everything the child needs, built now: it may not allocate.
        let program = ProgramParts::new(plan, &who)?;
        let lower = if img.layers.is_empty() {
            self.empty_layer.clone()
        } else {
            img.layers
                .iter()
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join(":")
        };
        let scratch = self.scratch.to_string_lossy();
        // The upper directory must be a plain layer whatever the host kernel's
        // defaults: no redirects (a renamed directory is copied up whole), no
        // metadata-only copy-ups (a file's data is in the upper layer when it
        // changes there), no index. A snapshot reads it as an OCI layer.
        let overlay_opts = CString::new(format!(
            "lowerdir={lower},upperdir={scratch}/upper,workdir={scratch}/work,redirect_dir=off,metacopy=off,index=off"
        ))
        .map_err(|e| SandboxError::io("overlay options", io::Error::other(e)))?;
        if overlay_opts.as_bytes().len() >= 4096 {
            return Err(SandboxError::io(
                "mounting the image",
                io::Error::other(format!(
                    "the image has too many layers ({}) for one overlay mount",
                    img.layers.len()
                )),
            ));
        }
        let l = &plan.limits;
        let tmpfs_opts = CString::new(format!(
            "size={},nr_inodes={},mode=0755,uid={},gid={}",
            l.tmpfs_bytes, l.tmpfs_inodes, map.base, map.base
        ))
        .expect("no NUL in numbers");
        let hostname = CString::new(plan.hostname.as_str())
            .map_err(|e| SandboxError::io("hostname", io::Error::other(e)))?;
        let etc_hosts = format!(
            "127.0.0.1\tlocalhost {h}\n::1\tlocalhost ip6-localhost ip6-loopback {h}\n",
            h = plan.hostname
        );
        let rlimits = rlimits(l);
        let layers_dir = CString::new(img.layers_dir.as_os_str().as_encoded_bytes())
            .map_err(|e| SandboxError::io("layers path", io::Error::other(e)))?;

        let (pipes, ends) = job_pipes()?;

        // The child joins its cgroup without waiting (see `JoinBy`).
        let cg = CgroupGuard(Some(
            self.cgroups.create(&self.cgroup_name(&plan.job_id), l)?,
        ));
        let join = cg.get().join_by()?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "cgroup created");
        let (cgroup_tasks, clone_into) = join.parts();
        let child_plan = ChildPlan {
            sync: ends.sync.as_fd(),
            prog: program.plan(&ends, 1),
            hold,
            cgroup_tasks,
            scratch: &self.scratch,
            tmpfs_opts: &tmpfs_opts,
            layers_dir: &layers_dir,
            overlay_opts: &overlay_opts,
            root: &self.root,
            proc_dir: &self.proc_dir,
            etc_hosts: etc_hosts.as_bytes(),
            id_base: map.base,
            hostname: &hostname,
            rlimits: &rlimits,
            seccomp: &self.seccomp,
            cap_last: self.cap_last,
            arg_regions: &self.arg_regions,
        };
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "child plan ready");
        let ns = flags::NEWNS | flags::NEWPID | flags::NEWIPC | flags::NEWUTS;
        let (pid, pidfd) =
            child::spawn(&child_plan, ns, clone_into).map_err(|e| SandboxError::Setup {
                stage: "creating the sandbox process (clone3)",
                source: e,
            })?;
        let child = ChildGuard {
            pidfd,
            reaped: false,
        };
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "sandbox process forked"
        );
        drop((ends, join));

        let netns = netns_ticket.wait().map_err(|e| SandboxError::Setup {
            stage: "creating the network namespace",
            source: e,
        })?;
        send_netns(&pipes.sync, &netns)?;
        drop(netns);
        // Wait for READY (or the child's death, with its reason on the error pipe).
        let Some((marks, upper)) = wait_ready(
            &pipes.sync,
            &pipes.err,
            &child.pidfd,
            self.cfg.setup_timeout,
            events,
        )?
        else {
            let at = Instant::now();
            drop(child); // kills and reaps the sandbox
            cg.remove_empty();
            return Ok(Start::Cancelled(Box::new(cancelled_before_start(
                plan, t0, at,
            ))));
        };
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "sandbox mounted");
        if tracing::enabled!(tracing::Level::DEBUG) {
            let steps: Vec<String> = Marks::NAMES
                .iter()
                .zip(marks.t)
                .map(|(n, t)| format!("{n}={}", t.saturating_sub(t0_ns) / 1000))
                .collect();
            tracing::debug!(steps = %steps.join(" "), "sandbox set-up steps (us since job start)");
        }
        let root = SandboxRoot::of_process(pid).map_err(|e| SandboxError::Setup {
            stage: "opening the sandbox root",
            source: e,
        })?;
        root.ensure_dir(&plan.workdir, host_uid, host_gid)
            .map_err(|e| SandboxError::Workdir {
                path: e.path,
                reason: e.reason,
            })?;
        for input in &plan.inputs {
            root.write_input(input, host_uid, host_gid)
                .map_err(|e| SandboxError::Input {
                    path: e.path,
                    reason: e.reason,
                })?;
        }
        let id_map_line = format!("0 {} {}\n", map.base, IdMap::SIZE);
        for f in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{f}"), &id_map_line).map_err(|e| {
                SandboxError::Setup {
                    stage: "writing the user namespace's id maps",
                    source: e,
                }
            })?;
        }
        // The last moment to cancel without the program ever running.
        if events.cancelled() {
            let at = Instant::now();
            drop(root);
            drop(child); // kills and reaps the sandbox: its file systems go with it
            cg.remove_empty();
            tracing::debug!("job cancelled before it started");
            return Ok(Start::Cancelled(Box::new(cancelled_before_start(
                plan, t0, at,
            ))));
        }
        if let Err(e) = rustix::io::write(&pipes.sync, &[GO]) {
            // The child died after READY: its error pipe says why.
            return Err(
                child_failure(&pipes.err).unwrap_or_else(|| setup_err("starting the program")(e))
            );
        }
        let go = Instant::now();
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "inputs placed, go sent"
        );
        Ok(Start::Ready(Started {
            pid,
            child,
            cg,
            root,
            t0,
            go,
            candidates: program.candidates,
            pipes,
            upper,
        }))
    }
}

impl Backend for NamespaceBackend {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn version(&self) -> String {
        format!("namespace/{}", env!("CARGO_PKG_VERSION"))
    }

    fn create(&self, plan: &crate::LivePlan) -> Result<Box<dyn crate::Sandbox>, SandboxError> {
        live::create(self, plan)
    }

    fn run(&self, plan: &JobPlan, events: &mut dyn JobEvents) -> Result<JobResult, SandboxError> {
        let s = match self.start(plan, events, false)? {
            Start::Ready(s) => s,
            Start::Cancelled(result) => return Ok(*result),
        };
        let Started {
            pid: _,
            mut child,
            cg,
            root,
            t0,
            go,
            candidates,
            pipes,
            upper: _,
        } = s;
        let l = &plan.limits;

        let outcome = supervise::supervise(
            &child.pidfd,
            pipes,
            &plan.stdin,
            l,
            cg.get(),
            events,
            go,
            supervise::Leftovers::DieWithInit,
        )?;
        child.reaped = true;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "job exited");

        if let Some(ce) = outcome.child_error {
            return Err(exec_failure(&plan.argv[0], &candidates, ce));
        }
        let stats = cg.get().stats()?;
        let outputs = root.collect_outputs(plan);
        // The last reference to the sandbox's overlay and tmpfs: closing it frees them.
        drop(root);
        cg.remove_empty();
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "outputs collected, cgroup removed"
        );
        let end = Instant::now();

        let result = job_result(plan, outcome, &stats, outputs, t0, go, end);
        Ok(result)
    }
}

fn exec_failure(command: &str, candidates: &[String], ce: ChildError) -> SandboxError {
    let command = command.to_owned();
    match (ce.stage, ce.errno) {
        (Stage::Exec, libc::ENOENT) => SandboxError::CommandNotFound {
            command,
            searched: candidates.join(", "),
        },
        (Stage::Exec, errno) => SandboxError::CommandNotExecutable {
            command,
            source: io::Error::from_raw_os_error(errno),
        },
        (stage, errno) => SandboxError::Setup {
            stage: stage.describe(),
            source: io::Error::from_raw_os_error(errno),
        },
    }
}

/// The result of a program that ran (one-shot or exec).
fn job_result(
    plan: &JobPlan,
    outcome: supervise::Outcome,
    stats: &cgroup::CgroupStats,
    outputs: Vec<runbox_core::OutputFile>,
    t0: Instant,
    go: Instant,
    end: Instant,
) -> JobResult {
    let l = &plan.limits;
    let (status, mut limits_hit) = decide(outcome.exit, outcome.killed, stats);
    if outcome.stdout.truncated() || outcome.stderr.truncated() {
        limits_hit.push(LimitKind::Output);
    }
    if outputs.iter().any(|o| o.truncated) {
        limits_hit.push(LimitKind::OutputFiles);
    }
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let (exit_code, signal) = match outcome.exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    let mut result = JobResult {
        job_id: plan.job_id.clone(),
        status,
        exit_code,
        signal,
        signal_name: signal.map(signal_name),
        stdout: String::new(),
        stdout_base64: None,
        stdout_bytes: outcome.stdout.total,
        stdout_truncated: outcome.stdout.truncated(),
        stderr: String::new(),
        stderr_base64: None,
        stderr_bytes: outcome.stderr.total,
        stderr_truncated: outcome.stderr.truncated(),
        outputs,
        limits_hit,
        timings: Timings {
            setup_ms: ms(go - t0),
            run_ms: ms(outcome.exited_at - go),
            teardown_ms: ms(end - outcome.exited_at),
            total_ms: ms(end - t0),
        },
        usage: Usage {
            cpu_time_ms: stats.cpu_ns as f64 / 1e6,
            cpu_user_ms: stats.cpu_user_ns as f64 / 1e6,
            cpu_system_ms: stats.cpu_system_ns as f64 / 1e6,
            peak_memory_bytes: stats.peak_memory_bytes,
        },
        limits: *l,
    };
    result.set_stdout(&outcome.stdout.kept);
    result.set_stderr(&outcome.stderr.kept);
    tracing::debug!(
        status = result.status.as_str(),
        total_ms = result.timings.total_ms,
        "job finished"
    );
    result
}

/// The result of a job cancelled before its program started: nothing ran, so no
/// exit code, signal, output or usage. `cancelled_at` is when the cancel was seen.
fn cancelled_before_start(plan: &JobPlan, t0: Instant, cancelled_at: Instant) -> JobResult {
    let end = Instant::now();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    JobResult {
        job_id: plan.job_id.clone(),
        status: JobStatus::Cancelled,
        exit_code: None,
        signal: None,
        signal_name: None,
        stdout: String::new(),
        stdout_base64: None,
        stdout_bytes: 0,
        stdout_truncated: false,
        stderr: String::new(),
        stderr_base64: None,
        stderr_bytes: 0,
        stderr_truncated: false,
        outputs: Vec::new(),
        limits_hit: Vec::new(),
        timings: Timings {
            setup_ms: ms(cancelled_at - t0),
            run_ms: 0.0,
            teardown_ms: ms(end - cancelled_at),
            total_ms: ms(end - t0),
        },
        usage: Usage::default(),
        limits: plan.limits,
    }
}

/// Passes the network namespace to the child (SCM_RIGHTS on the sync socket).
fn send_netns(sync: &OwnedFd, netns: &OwnedFd) -> Result<(), SandboxError> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [netns.as_fd()];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(
        sync,
        &[std::io::IoSlice::new(&[child::NETNS])],
        &mut cmsg,
        SendFlags::empty(),
    )
    .map_err(setup_err("passing the network namespace"))?;
    Ok(())
}

/// The error the child reported on its error pipe, if any.
fn child_failure(err: &OwnedFd) -> Option<SandboxError> {
    let mut buf = [0u8; ChildError::SIZE];
    let n = rustix::io::read(err, &mut buf).ok()?;
    let ce = (n == ChildError::SIZE)
        .then(|| ChildError::from_bytes(&buf))
        .flatten()?;
    Some(SandboxError::Setup {
        stage: ce.stage.describe(),
        source: io::Error::from_raw_os_error(ce.errno),
    })
}

/// Waits until the child reports READY (with its set-up timestamps, and a live
/// sandbox's writable layer). If it dies first, its error pipe says why. `None`:
/// the job was cancelled meanwhile.
fn wait_ready(
    sync: &OwnedFd,
    err: &OwnedFd,
    pidfd: &OwnedFd,
    timeout: Duration,
    events: &mut dyn JobEvents,
) -> Result<Option<(Marks, Option<OwnedFd>)>, SandboxError> {
    let deadline = Instant::now() + timeout;
    loop {
        if events.cancelled() {
            return Ok(None);
        }
        let mut left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SandboxError::Setup {
                stage: "waiting for the sandbox to set up",
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            });
        }
        if events.cancellable() {
            left = left.min(crate::CANCEL_CHECK_INTERVAL);
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [
            PollFd::new(sync, PollFlags::IN),
            PollFd::new(pidfd, PollFlags::IN),
        ];
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(setup_err("waiting for the sandbox")(e)),
        }
        let (sync_ready, died) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if sync_ready {
            use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
            let mut b = [0u8; Marks::SIZE];
            let mut space =
                [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = RecvAncillaryBuffer::new(&mut space);
            if let Ok(got) = recvmsg(
                sync,
                &mut [io::IoSliceMut::new(&mut b)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                // A live sandbox's init sends its writable layer with READY.
                let mut fd = None;
                for msg in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                        fd = fds.next();
                    }
                }
                if let Some(marks) = Marks::from_bytes(&b[..got.bytes]) {
                    return Ok(Some((marks, fd)));
                }
            }
        }
        if sync_ready || died {
            return Err(child_failure(err).unwrap_or_else(|| SandboxError::Setup {
                stage: "setting up the sandbox",
                source: io::Error::other("the sandbox process died without a report"),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tags_parse_and_match_live_processes() {
        assert_eq!(parse_owner("123.456.abcdef"), Some((123, 456)));
        assert_eq!(parse_owner("123.456"), None);
        assert_eq!(parse_owner("runbox-other"), None);
        let me = instance_tag(std::process::id() as i32).unwrap();
        assert!(me.starts_with(&format!("{}.", std::process::id())));
        let (pid, start) = parse_owner(&format!("{me}.job")).unwrap();
        assert_eq!(instance_tag(pid).unwrap(), format!("{pid}.{start}"));
    }
}
