//! Live sandboxes on the namespace backend: created once, then entered by each exec.
//!
//! Creating one runs the one-shot set-up ([`NamespaceBackend::start`]) with `hold`:
//! the sandbox's init mounts the layers, pivots, unshares the user namespace, hands
//! the parent a descriptor of the writable layer, and then only holds the
//! namespaces (reaping the orphans it inherits). It runs no program of its own.
//!
//! An exec forks a waiter into a new cgroup with the exec's limits. The waiter, still
//! real root, joins the sandbox's mount, network, ipc, uts and pid namespaces (these
//! belong to the initial user namespace), then its user namespace and cgroup
//! namespace, and starts the program exactly as a one-shot init does (same ids,
//! capabilities, seccomp filter, session, working directory). The program is a
//! process of the sandbox's pid namespace; the waiter stays outside it, invisible to
//! everything in the sandbox, and reports the program's status on the sync socket.
//! When the program ends, what it left running is killed (everything in the exec's
//! cgroup), unless the exec keeps it: then it moves into the sandbox's cgroup.
//!
//! The host reads and writes files through `/proc/<init>/root` by the post-run rules
//! (no symbolic link followed): programs have run here and may have planted any.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::child::{self, EnterPlan};
use super::files::SandboxRoot;
use super::supervise::{self, Leftovers};
use super::{
    cancelled_before_start, exec_failure, job_pipes, job_result, rlimits, CgroupGuard, ChildGuard,
    NamespaceBackend, ProgramParts, Start, Started,
};
use crate::cgroup;
use crate::plan::{JobPlan, PlannedInput};
use crate::{user, FrozenLayer, JobEvents, LivePlan, NoEvents, Sandbox, SandboxError};

/// Largest /etc/passwd or /etc/group read from a live sandbox to resolve a user.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;

/// A live sandbox of the namespace backend.
#[derive(Debug)]
pub struct LiveSandbox {
    backend: NamespaceBackend,
    id: String,
    pid: i32,
    /// Declared before `init`: fields drop in order, and the layer descriptor and
    /// root go first, then init is killed, then its cgroup removed.
    upper: Option<OwnedFd>,
    root: SandboxRoot,
    /// Open while the sandbox lives: init exits when it closes.
    _sync: OwnedFd,
    /// Init's cgroup namespace, which execs join.
    cgroup_ns: OwnedFd,
    init: ChildGuard,
    cg: CgroupGuard,
    execs: AtomicU64,
}

pub(super) fn create(
    backend: &NamespaceBackend,
    lp: &LivePlan,
) -> Result<Box<dyn Sandbox>, SandboxError> {
    let plan = job_plan_of(lp);
    let s: Started = match backend.start(&plan, &mut NoEvents, true)? {
        Start::Ready(s) => s,
        Start::Cancelled(_) => {
            return Err(SandboxError::Ended {
                id: lp.id.clone(),
                reason: Some("cancelled while being created".into()),
            })
        }
    };
    let Started {
        pid,
        child,
        cg,
        root: _,
        pipes,
        upper,
        ..
    } = s;
    let upper = upper.ok_or_else(|| {
        SandboxError::io(
            "creating a live sandbox",
            io::Error::other("its init did not pass the writable layer"),
        )
    })?;
    let root = SandboxRoot::of_live_process(pid).map_err(|e| SandboxError::Setup {
        stage: "opening the sandbox root",
        source: e,
    })?;
    wait_held(&pipes.sync, &child.pidfd, backend.cfg.setup_timeout)?;
    let cgroup_ns = rustix::fs::open(
        format!("/proc/{pid}/ns/cgroup").as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| SandboxError::Setup {
        stage: "opening the sandbox's cgroup namespace",
        source: e.into(),
    })?;
    tracing::debug!(sandbox = %lp.id, pid, "live sandbox created");
    Ok(Box::new(LiveSandbox {
        backend: backend.clone(),
        id: lp.id.clone(),
        pid,
        upper: Some(upper),
        root,
        _sync: pipes.sync,
        cgroup_ns,
        init: child,
        cg,
        execs: AtomicU64::new(0),
    }))
}

/// Waits for init's HELD: its cgroup namespace exists from then on.
fn wait_held(
    sync: &OwnedFd,
    pidfd: &OwnedFd,
    timeout: std::time::Duration,
) -> Result<(), SandboxError> {
    let failed = |why: String| SandboxError::Setup {
        stage: "waiting for the live sandbox's init",
        source: io::Error::other(why),
    };
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [
        PollFd::new(sync, PollFlags::IN),
        PollFd::new(pidfd, PollFlags::IN),
    ];
    match poll(&mut fds, Some(&ts)) {
        Ok(0) => return Err(failed(format!("no answer within {timeout:?}"))),
        Ok(_) => {}
        Err(e) => return Err(failed(e.to_string())),
    }
    let mut b = [0u8; 1];
    match rustix::io::read(sync, &mut b) {
        Ok(1) if b[0] == child::HELD => Ok(()),
        _ => Err(failed("it ended during set-up".into())),
    }
}

impl LiveSandbox {
    fn ended(&self, reason: &str) -> SandboxError {
        SandboxError::Ended {
            id: self.id.clone(),
            reason: Some(reason.into()),
        }
    }

    /// The user `spec` names, from the sandbox's own account files as they are now.
    fn resolve_user(
        &self,
        spec: Option<&user::UserSpec>,
    ) -> Result<user::ResolvedUser, SandboxError> {
        let read = |p: &str| {
            self.root
                .read_small(p, MAX_ACCOUNT_FILE)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(user::resolve(
            spec,
            &read("/etc/passwd"),
            &read("/etc/group"),
        )?)
    }
}

impl Sandbox for LiveSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn exec(
        &self,
        plan: &JobPlan,
        keep_running: bool,
        events: &mut dyn JobEvents,
    ) -> Result<JobResult, SandboxError> {
        let t0 = Instant::now();
        if !self.is_alive() {
            return Err(self.ended("its processes were killed"));
        }
        if events.cancelled() {
            return Ok(cancelled_before_start(plan, t0, t0));
        }
        let b = &self.backend;
        let map = b.cfg.id_map;
        let who = self.resolve_user(plan.user.as_ref())?;
        let (host_uid, host_gid) = (map.to_host(who.uid), map.to_host(who.gid));
        let program = ProgramParts::new(plan, &who)?;
        let l = &plan.limits;
        let rlimits = rlimits(l);

        self.root
            .ensure_dir(&plan.workdir, host_uid, host_gid)
            .map_err(|e| SandboxError::Workdir {
                path: e.path,
                reason: e.reason,
            })?;
        for input in &plan.inputs {
            self.root
                .write_input(input, host_uid, host_gid)
                .map_err(|e| SandboxError::Input {
                    path: e.path,
                    reason: e.reason,
                })?;
        }

        let (pipes, ends) = job_pipes()?;

        let n = self.execs.fetch_add(1, Ordering::Relaxed);
        let cg = CgroupGuard(Some(
            b.cgroups
                .create(&b.cgroup_name(&format!("{}.x{n}", self.id)), l)?,
        ));
        let join = cg.get().join_by()?;
        let (cgroup_tasks, clone_into) = join.parts();
        let enter = EnterPlan {
            sync: ends.sync.as_fd(),
            prog: program.plan(&ends, 0),
            target: self.init.pidfd.as_fd(),
            cgroup_ns: self.cgroup_ns.as_fd(),
            cgroup_tasks,
            rlimits: &rlimits,
            seccomp: &b.seccomp,
            cap_last: b.cap_last,
        };
        let go = Instant::now();
        let (_pid, pidfd) =
            child::spawn_enter(&enter, clone_into).map_err(|e| SandboxError::Setup {
                stage: "creating the exec's process (clone3)",
                source: e,
            })?;
        let mut waiter = ChildGuard {
            pidfd,
            reaped: false,
        };
        drop((ends, join));
        let outcome = supervise::supervise(
            &waiter.pidfd,
            pipes,
            &plan.stdin,
            l,
            cg.get(),
            events,
            go,
            if keep_running {
                Leftovers::Keep
            } else {
                Leftovers::Kill
            },
        )?;
        waiter.reaped = true;
        if let Some(ce) = outcome.child_error {
            return Err(exec_failure(&plan.argv[0], &program.candidates, ce));
        }
        let stats = cg.get().stats()?;
        let outputs = self.root.collect_outputs(plan);
        if keep_running && outcome.killed.is_none() {
            let moved = cgroup::move_procs(cg.get(), self.cg.get())?;
            tracing::debug!(sandbox = %self.id, moved, "processes kept running");
        } else {
            cg.get().kill_all()?;
        }
        cg.remove_empty();
        let end = Instant::now();
        Ok(job_result(plan, outcome, &stats, outputs, t0, go, end))
    }

    fn put_file(
        &self,
        file: &PlannedInput,
        owner: Option<&user::UserSpec>,
    ) -> Result<(), SandboxError> {
        if !self.is_alive() {
            return Err(self.ended("its processes were killed"));
        }
        let who = self.resolve_user(owner)?;
        let map = self.backend.cfg.id_map;
        self.root
            .write_input(file, map.to_host(who.uid), map.to_host(who.gid))
            .map_err(|e| SandboxError::Input {
                path: e.path,
                reason: e.reason,
            })
    }

    fn get_file(&self, path: &str, max_bytes: u64) -> Vec<runbox_core::OutputFile> {
        let mut budget = max_bytes;
        self.root.collect(path, path, &mut budget)
    }

    fn is_alive(&self) -> bool {
        // A pidfd polls readable once its process has exited.
        let mut fds = [PollFd::new(&self.init.pidfd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(0))
    }

    fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&self.init.pidfd, rustix::process::Signal::KILL);
    }

    fn freeze(mut self: Box<Self>) -> Result<FrozenLayer, SandboxError> {
        let dir = self.upper.take().expect("present until frozen");
        let id_map = self.backend.cfg.id_map;
        tracing::debug!(sandbox = %self.id, pid = self.pid, "freezing: ending every process");
        // Killing init ends the pid namespace, every process in it with it; the
        // exec cgroups of execs still running lose their programs the same way.
        // Dropping the sandbox does exactly that, and removes its cgroup.
        drop(self);
        Ok(FrozenLayer { dir, id_map })
    }
}

use runbox_core::JobResult;

/// Turns a [`LivePlan`] into the plan [`NamespaceBackend::start`] takes.
pub(crate) fn job_plan_of(lp: &LivePlan) -> JobPlan {
    JobPlan {
        job_id: lp.id.clone(),
        image: lp.image.clone(),
        // Never executed: a live sandbox's init runs no program.
        argv: vec!["/".into()],
        env: BTreeMap::new(),
        workdir: "/".into(),
        user: None,
        hostname: lp.hostname.clone(),
        stdin: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        limits: lp.limits,
    }
}
