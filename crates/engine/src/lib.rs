//! Running a job end to end, the one way every front end does it (the CLI, the
//! script driver, the server, workers): resolve the image in the store, hold the
//! store while the job uses its layers, plan the job against the host's limits,
//! run it in the sandbox backend.

mod sandboxes;
mod systems;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use sandboxes::{SandboxesConfig, SnapshotMade, SANDBOX_SNAPSHOT_LABEL, SNAPSHOT_EXCLUDES};
pub use systems::{ProvisionReport, QueryAnswer, SnapshotRecord, SystemsConfig};

use runbox_catalog::{Catalog, CatalogError};
use runbox_core::{ErrorCode, JobResult, JobSpec, Limits, LimitsPolicy};
use runbox_image::{ImageError, ImageRecord, Store, StoreLease, StoreOptions};
use runbox_sandbox::{
    plan, Backend, ImageDefaults, JobEvents, JobPlan, NamespaceBackend, NamespaceConfig, NetnsPool,
    PlanError, RunImage, SandboxError,
};

/// Where the engine keeps its data and which limits it applies.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Limits a request's overrides apply to.
    pub base_limits: Limits,
    /// Bounds every request's limits must stay within.
    pub policy: LimitsPolicy,
    /// Network namespaces kept ready for jobs (0 in one-shot use).
    pub netns_ready: usize,
    /// The program catalog `program` jobs are resolved against.
    pub catalog: Option<Arc<Catalog>>,
    /// Bounds on live sandboxes.
    pub sandboxes: SandboxesConfig,
    /// Warm pools of system instances.
    pub systems: SystemsConfig,
}

impl EngineConfig {
    /// The documented default limits, bounded by this host's memory and CPUs.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            base_limits: Limits::default(),
            policy: host_policy(),
            netns_ready: 0,
            catalog: None,
            sandboxes: SandboxesConfig::default(),
            systems: SystemsConfig::default(),
        }
    }
}

/// Why a job could not run (a program that ran and failed is a [`JobResult`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Request(String),
    #[error("program {program}'s image {image} is not in the store; build the catalog's images with `runbox catalog build`")]
    ProgramImageMissing { program: String, image: String },
    #[error("{message}")]
    Coded { code: ErrorCode, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Image(e) => e.code(),
            EngineError::Plan(e) => e.code(),
            EngineError::Sandbox(e) => e.code(),
            EngineError::Catalog(e) => e.code(),
            EngineError::Request(_) => ErrorCode::InvalidArgument,
            EngineError::ProgramImageMissing { .. } => ErrorCode::ImageNotFound,
            EngineError::Coded { code, .. } => *code,
            EngineError::Io { .. } => ErrorCode::Io,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The image store and a sandbox backend, ready to run jobs. Share it between
/// threads: `run` takes `&self`.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    store: Store,
    backend: NamespaceBackend,
    live: sandboxes::LiveSet,
    pools: systems::Pools,
}

impl Engine {
    /// Opens the store and sets the backend up (sweeping what a crashed runbox left).
    pub fn open(cfg: EngineConfig) -> Result<Engine, EngineError> {
        if cfg.netns_ready > 0 {
            NetnsPool::global().keep_ready(cfg.netns_ready);
        }
        let store = Store::open(&cfg.data_dir, StoreOptions::default())?;
        let (backend, sweep) = NamespaceBackend::new(NamespaceConfig::new(
            sandbox_dir(&cfg.data_dir),
            store.id_map(),
        ))?;
        if sweep.cgroups_removed > 0 {
            tracing::info!(
                removed = sweep.cgroups_removed,
                "cleaned up after a crashed runbox"
            );
        }
        Ok(Engine {
            cfg,
            store,
            backend,
            live: Default::default(),
            pools: Default::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backend(&self) -> &dyn Backend {
        &self.backend
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn catalog(&self) -> Option<&Catalog> {
        self.cfg.catalog.as_deref()
    }

    /// Runs one job in a fresh sandbox and returns its result. A job names an image,
    /// or a catalog program whose manifest supplies the image, command line, default
    /// inputs and limits. `events` sees its output live and can cancel it: wrap them
    /// in a [`runbox_sandbox::Cancellable`] with a [`runbox_sandbox::CancelToken`]
    /// that another thread cancels; the result then says `cancelled`.
    pub fn run(&self, spec: JobSpec, events: &mut dyn JobEvents) -> Result<JobResult, EngineError> {
        let job = self.prepare(spec)?;
        self.execute(job, events)
    }

    /// Everything about a job that can fail before it runs: resolving the program
    /// and the image, planning against the limits. The prepared job holds the store
    /// (gc waits) until it is executed or dropped, and knows its cache key.
    pub fn prepare(&self, spec: JobSpec) -> Result<PreparedJob, EngineError> {
        let program = spec.program.clone();
        let (spec, base) = match (&spec.program, spec.image.is_empty()) {
            (Some(_), true) => {
                let catalog = self
                    .catalog()
                    .ok_or_else(|| EngineError::Request("no program catalog is loaded".into()))?;
                let resolved = catalog.resolve(spec)?;
                (
                    resolved.spec,
                    self.cfg.base_limits.overlay(&resolved.defaults),
                )
            }
            (None, false) => (spec, self.cfg.base_limits),
            (Some(_), false) => {
                return Err(EngineError::Request(
                    "give an image or a program, not both".into(),
                ))
            }
            (None, true) => {
                return Err(EngineError::Request(
                    "give an image or a program to run".into(),
                ))
            }
        };
        // Held until the job ends, so gc cannot delete the layers it mounts.
        let lease = self.store.lock_shared()?;
        let record = match (self.store.resolve(&spec.image), program) {
            (Err(ImageError::NotFound { .. }), Some(program)) => {
                return Err(EngineError::ProgramImageMissing {
                    program,
                    image: spec.image,
                })
            }
            (r, _) => r?,
        };
        let plan = plan(
            new_job_id(),
            spec,
            run_image(&self.store, &record),
            &base,
            &self.cfg.policy,
        )?;
        let cache_key = cache_key(&plan, &record, &self.backend);
        Ok(PreparedJob {
            plan,
            cache_key,
            image_digest: record.manifest_digest.to_string(),
            _lease: lease,
        })
    }

    /// Runs a prepared job in a fresh sandbox.
    pub fn execute(
        &self,
        job: PreparedJob,
        events: &mut dyn JobEvents,
    ) -> Result<JobResult, EngineError> {
        Ok(self.backend.run(&job.plan, events)?)
    }
}

/// A job that passed every check and is ready to run: see [`Engine::prepare`].
#[derive(Debug)]
pub struct PreparedJob {
    plan: JobPlan,
    cache_key: String,
    image_digest: String,
    _lease: StoreLease,
}

impl PreparedJob {
    /// The job's id (also the `job_id` of its result).
    pub fn id(&self) -> &str {
        &self.plan.job_id
    }
    /// Hex sha256 of everything that determines the job's output: see [`cache_key`].
    pub fn cache_key(&self) -> &str {
        &self.cache_key
    }
    /// The manifest digest of the image it runs.
    pub fn image_digest(&self) -> &str {
        &self.image_digest
    }
    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }
}

/// The result-cache key of a planned job: a sha256 over everything that decides
/// what the job does, in a length-prefixed encoding (so no two different jobs
/// encode the same): the key format version, the backend and its version, the
/// image (manifest digest: config and layers), the final argv, environment,
/// working directory, user and hostname, stdin, every input file (path, mode,
/// content), the outputs collected and the resolved limits. The job id is not in
/// it. Two requests that differ only in how they were written (a program's
/// default option given explicitly, an input given as text or base64) get the
/// same key, because the key is taken after resolution and planning.
pub fn cache_key(plan: &JobPlan, image: &ImageRecord, backend: &dyn Backend) -> String {
    use sha2::{Digest as _, Sha256};
    struct Enc(Sha256);
    impl Enc {
        fn bytes(&mut self, b: &[u8]) {
            self.0.update((b.len() as u64).to_le_bytes());
            self.0.update(b);
        }
        fn str(&mut self, s: &str) {
            self.bytes(s.as_bytes());
        }
        fn count(&mut self, n: usize) {
            self.0.update((n as u64).to_le_bytes());
        }
    }
    let mut e = Enc(Sha256::new());
    e.str("runbox-cache/1");
    e.str(backend.name());
    e.str(&backend.version());
    e.str(&image.manifest_digest.to_string());
    e.count(plan.argv.len());
    plan.argv.iter().for_each(|a| e.str(a));
    e.count(plan.env.len());
    for (k, v) in &plan.env {
        e.str(k);
        e.str(v);
    }
    e.str(&plan.workdir);
    e.str(&format!("{:?}", plan.user));
    e.str(&plan.hostname);
    e.bytes(&plan.stdin);
    e.count(plan.inputs.len());
    for i in &plan.inputs {
        e.str(&i.path);
        e.0.update(i.mode.to_le_bytes());
        e.bytes(&i.content);
    }
    e.count(plan.outputs.len());
    for o in &plan.outputs {
        e.str(&o.requested);
        e.str(&o.path);
    }
    e.str(&serde_json::to_string(&plan.limits).expect("limits serialize"));
    hex::encode(e.0.finalize())
}

/// Where the sandbox backend keeps its state under a data directory.
pub fn sandbox_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sandbox")
}

/// What the backend needs of an image: its layer directories and config.
pub fn run_image(store: &Store, record: &ImageRecord) -> RunImage {
    RunImage {
        layers_dir: store.layers_dir().to_path_buf(),
        layers: record
            .layers
            .iter()
            .map(|l| l.diff_id.hex().to_owned())
            .collect(),
        defaults: ImageDefaults {
            entrypoint: record.config.entrypoint.clone(),
            cmd: record.config.cmd.clone(),
            env: record.config.env.clone(),
            working_dir: record.config.working_dir.clone(),
            user: record.config.user.clone(),
        },
    }
}

/// Limits allowed on this machine: memory and tmpfs up to its RAM, CPUs up to its count.
pub fn host_policy() -> LimitsPolicy {
    let mem = rustix::system::sysinfo();
    let total = mem.totalram.saturating_mul(u64::from(mem.mem_unit));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    LimitsPolicy::for_host(total, cpus)
}

/// A random job id (16 hex characters).
pub fn new_job_id() -> String {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    runbox_core::new_id(u64::from_le_bytes(b))
}
