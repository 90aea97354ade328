//! Sandboxes: the [`Backend`] trait and the `namespace` backend (Linux namespaces,
//! cgroups, seccomp, an overlay of the image's layers on a size-capped tmpfs).
//!
//! A backend takes a [`JobPlan`] (what to run, already validated by [`plan::plan`])
//! and returns a [`JobResult`]. The trait is shaped so a `microvm` backend (a VMM
//! booting a kernel with an in-guest agent) can implement it too: nothing here
//! exposes cgroup paths or namespaces.

mod cancel;
pub mod cgroup;
pub mod namespace;
pub mod plan;
pub mod seccomp;
pub mod user;

use std::io;

use runbox_core::{ErrorCode, JobResult};

pub use cancel::{CancelToken, Cancellable};
pub use namespace::netns::NetnsPool;
pub use namespace::{LiveSandbox, NamespaceBackend, NamespaceConfig, SweepReport};
pub use plan::{plan, ImageDefaults, JobPlan, PlanError, RunImage};

/// Live events of a running job, and the way to cancel it. Every method has a
/// no-op default.
pub trait JobEvents {
    /// The program was executed.
    fn started(&mut self) {}
    /// Bytes the program wrote to stdout (only those kept within the output limit).
    fn stdout(&mut self, _chunk: &[u8]) {}
    fn stderr(&mut self, _chunk: &[u8]) {}
    /// Whether the job should stop now. A backend asks before the program starts (a
    /// job cancelled during set-up never runs) and, while it runs, after every event
    /// and at least every [`CANCEL_CHECK_INTERVAL`] when [`JobEvents::cancellable`]
    /// says so. A cancelled job is killed like one over its wall-time limit, and
    /// its result says [`runbox_core::JobStatus::Cancelled`]. Must be cheap.
    fn cancelled(&mut self) -> bool {
        false
    }
    /// Whether [`JobEvents::cancelled`] can ever become true without an event from
    /// the job. Only then does the backend wake up every [`CANCEL_CHECK_INTERVAL`]
    /// to ask, so jobs no one can cancel cost no extra wake-ups. Implement both or
    /// neither; [`Cancellable`] does.
    fn cancellable(&self) -> bool {
        false
    }
}

/// How long a running job may go on after it was cancelled, at most, before the
/// backend notices (when [`JobEvents::cancellable`]).
pub const CANCEL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

impl<E: JobEvents + ?Sized> JobEvents for &mut E {
    fn started(&mut self) {
        (**self).started();
    }
    fn stdout(&mut self, chunk: &[u8]) {
        (**self).stdout(chunk);
    }
    fn stderr(&mut self, chunk: &[u8]) {
        (**self).stderr(chunk);
    }
    fn cancelled(&mut self) -> bool {
        (**self).cancelled()
    }
    fn cancellable(&self) -> bool {
        (**self).cancellable()
    }
}

/// A [`JobEvents`] that ignores everything.
#[derive(Debug, Default)]
pub struct NoEvents;
impl JobEvents for NoEvents {}

/// How sandboxes are made.
pub trait Backend: Send + Sync {
    /// `"namespace"` or `"microvm"`.
    fn name(&self) -> &'static str;
    /// Changes whenever the same job could give a different result (a result-cache
    /// key component).
    fn version(&self) -> String;
    /// Runs one job in a fresh sandbox that is destroyed afterwards, leaving nothing
    /// behind on the host.
    fn run(&self, plan: &JobPlan, events: &mut dyn JobEvents) -> Result<JobResult, SandboxError>;
    /// Creates a live sandbox: the image's layers under a fresh writable layer,
    /// isolated like a job's, in which commands are then executed one by one.
    fn create(&self, plan: &LivePlan) -> Result<Box<dyn Sandbox>, SandboxError>;
}

/// What a live sandbox is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePlan {
    /// Names its cgroups and log lines (`a-z 0-9 - _`).
    pub id: String,
    pub image: RunImage,
    pub hostname: String,
    /// The whole sandbox's limits: memory, pids and CPU bandwidth of what keeps
    /// running between execs, and the writable layer's size. Each exec has its own.
    pub limits: runbox_core::Limits,
}

/// A live sandbox. Dropping it kills everything in it and removes it.
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    fn id(&self) -> &str;
    /// Runs a command in the sandbox with the plan's own limits, stdin, inputs
    /// and outputs (the plan's image and hostname are the sandbox's, not read).
    /// Processes the command leaves behind are killed when it ends, unless
    /// `keep_running` (daemons): then they stay, under the sandbox's limits.
    fn exec(
        &self,
        plan: &JobPlan,
        keep_running: bool,
        events: &mut dyn JobEvents,
    ) -> Result<JobResult, SandboxError>;
    /// Writes a file (missing directories are created), owned by `owner` (the
    /// default unprivileged user when `None`). Links are never followed.
    fn put_file(
        &self,
        file: &plan::PlannedInput,
        owner: Option<&user::UserSpec>,
    ) -> Result<(), SandboxError>;
    /// Reads a file, or every file under a directory, up to `max_bytes` in all.
    fn get_file(&self, path: &str, max_bytes: u64) -> Vec<runbox_core::OutputFile>;
    /// Whether its init still holds it (false once killed, e.g. by the OOM killer).
    fn is_alive(&self) -> bool;
    /// Ends every process in it now (execs running return, killed); it can no
    /// longer be used. Dropping it then removes what is left.
    fn kill(&self);
    /// Ends every process in the sandbox and returns its writable layer, which no
    /// process can change any more: what a snapshot is made of.
    fn freeze(self: Box<Self>) -> Result<FrozenLayer, SandboxError>;
}

/// The changes a sandbox made to its image, frozen: an overlayfs upper directory
/// (whiteouts as 0:0 character devices, opaque directories by xattr), with owners
/// in the sandbox's host id range. Read it through the descriptor only, never
/// following a link: the sandbox wrote it.
#[derive(Debug)]
pub struct FrozenLayer {
    pub dir: std::os::fd::OwnedFd,
    pub id_map: runbox_core::IdMap,
}

/// Why a job could not be run (as opposed to a program that ran and failed, which
/// is a [`JobResult`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("sandbox setup failed while {stage}: {source}")]
    Setup {
        stage: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("command {command:?} not found in the image (searched {searched})")]
    CommandNotFound { command: String, searched: String },
    #[error("command {command:?} cannot be executed: {source}")]
    CommandNotExecutable {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("input file {path}: {reason}")]
    Input { path: String, reason: String },
    #[error("working directory {path}: {reason}")]
    Workdir { path: String, reason: String },
    #[error("user: {0}")]
    User(#[from] user::UserError),
    #[error("sandbox {id} has ended{}", .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Ended { id: String, reason: Option<String> },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl SandboxError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SandboxError::Cgroup(_) | SandboxError::Setup { .. } => ErrorCode::SandboxSetup,
            SandboxError::CommandNotFound { .. } => ErrorCode::CommandNotFound,
            SandboxError::CommandNotExecutable { .. } => ErrorCode::CommandNotExecutable,
            SandboxError::Input { .. } | SandboxError::Workdir { .. } => ErrorCode::InvalidPath,
            SandboxError::User(_) => ErrorCode::InvalidArgument,
            SandboxError::Io { .. } => ErrorCode::Io,
            SandboxError::Ended { .. } => ErrorCode::SandboxEnded,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        SandboxError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}
