//! Live sandboxes, as every front end (API, CLI, scripts) manages them: create from
//! an image, a program or a snapshot; exec with per-exec limits; put and get files;
//! list; snapshot (freeze the writable layer into an image); delete. Each holds a
//! store lease (gc keeps its layers) and has an idle timeout; [`Engine::reap_sandboxes`]
//! removes the expired, and a maximum count bounds how many live at once.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runbox_core::{
    CreateSandbox, ErrorCode, ExecSpec, InputFile, JobResult, JobSpec, Limits, OutputFile,
    SandboxInfo,
};
use runbox_image::{
    write_upper_tar, CommitSpec, ImageRecord, NoProgress, StoreLease, UpperTarOptions,
};
use runbox_sandbox::{plan, Backend as _, JobEvents, LivePlan, RunImage, Sandbox};

use crate::{new_job_id, run_image, Engine, EngineError};

/// Bounds on live sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxesConfig {
    /// Most live sandboxes at once (system instances in warm pools included).
    pub max_live: usize,
    /// Idle time after which a sandbox is deleted; also the most a request may ask.
    pub idle_timeout: Duration,
}

impl Default for SandboxesConfig {
    fn default() -> Self {
        SandboxesConfig {
            max_live: 32,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The label a sandbox's snapshot image carries: the id of the sandbox it froze.
pub const SANDBOX_SNAPSHOT_LABEL: &str = "org.runbox.snapshot.sandbox";

/// Paths a snapshot leaves out: runbox makes them afresh in every sandbox.
pub const SNAPSHOT_EXCLUDES: [&str; 3] = ["dev", "proc", "etc/hosts"];

/// The live sandboxes of one engine.
#[derive(Debug, Default)]
pub(crate) struct LiveSet {
    map: Mutex<BTreeMap<String, Arc<Entry>>>,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) sandbox: Box<dyn Sandbox>,
    image_name: String,
    pub(crate) record: ImageRecord,
    run_image: RunImage,
    pub(crate) system: Option<String>,
    hostname: String,
    created_at: u64,
    idle_timeout: Duration,
    last_used: Mutex<(Instant, u64)>,
    execs: AtomicU64,
    running: AtomicU64,
    /// An instance in a system's warm pool (front ends keep clients out of it).
    pub(crate) pooled: std::sync::atomic::AtomicBool,
    /// The writable layer's size etc.: the sandbox's own limits.
    limits: Limits,
    _lease: StoreLease,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Entry {
    fn touch(&self) {
        *self.last_used.lock().unwrap() = (Instant::now(), unix_now());
    }

    fn expired(&self, now: Instant) -> bool {
        let (last, _) = *self.last_used.lock().unwrap();
        self.running.load(Ordering::SeqCst) == 0 && now.duration_since(last) >= self.idle_timeout
    }

    pub(crate) fn info(&self) -> SandboxInfo {
        let (_, last) = *self.last_used.lock().unwrap();
        SandboxInfo {
            id: self.id.clone(),
            image: self.image_name.clone(),
            image_digest: self.record.manifest_digest.to_string(),
            system: self.system.clone(),
            hostname: self.hostname.clone(),
            created_at: self.created_at,
            last_used_at: last,
            expires_at: last + self.idle_timeout.as_secs(),
            execs: self.execs.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
            alive: self.sandbox.is_alive(),
            pooled: self.pooled.load(Ordering::SeqCst),
        }
    }
}

/// Counts a running exec for as long as it lives.
struct Running<'a>(&'a Entry);
impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// What a sandbox is made from, resolved.
pub(crate) struct SandboxSource {
    pub image_name: String,
    pub record: ImageRecord,
    pub run_image: RunImage,
    pub system: Option<String>,
}

fn not_found(id: &str) -> EngineError {
    EngineError::Coded {
        code: ErrorCode::NotFound,
        message: format!("no live sandbox {id} (it may have expired or been deleted; `runbox sandbox ls` lists them)"),
    }
}

impl Engine {
    /// Creates a live sandbox from an image, a catalog program or system, or a
    /// snapshot.
    pub fn create_sandbox(&self, req: &CreateSandbox) -> Result<SandboxInfo, EngineError> {
        let given = [
            !req.image.is_empty(),
            req.program.is_some(),
            req.snapshot.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(EngineError::Request(
                "give exactly one of image, program or snapshot".into(),
            ));
        }
        let idle = match req.idle_timeout_s {
            Some(0) => {
                return Err(EngineError::Request(
                    "idle_timeout_s must be at least 1".into(),
                ))
            }
            Some(s) if Duration::from_secs(s) > self.cfg.sandboxes.idle_timeout => {
                return Err(EngineError::Request(format!(
                    "idle_timeout_s {s} is over this server's maximum of {}",
                    self.cfg.sandboxes.idle_timeout.as_secs()
                )))
            }
            Some(s) => Duration::from_secs(s),
            None => self.cfg.sandboxes.idle_timeout,
        };
        let limits = Limits::resolve(&self.cfg.base_limits, &req.limits, &self.cfg.policy)
            .map_err(|e| EngineError::Plan(e.into()))?;
        if let Some(system) = req.program.as_deref().and_then(|p| self.system(p)) {
            let (inst, _) = self.start_instance(&system, limits, idle)?;
            return Ok(inst.info());
        }
        let lease = self.store.lock_shared()?;
        let source = if let Some(p) = &req.program {
            let catalog = self
                .catalog()
                .ok_or_else(|| EngineError::Request("no program catalog is loaded".into()))?;
            let program = catalog.get(p)?;
            let name = catalog.image_name(program);
            let record = self.store.resolve(&name).map_err(|e| match e {
                runbox_image::ImageError::NotFound { .. } => EngineError::ProgramImageMissing {
                    program: p.clone(),
                    image: name.clone(),
                },
                e => e.into(),
            })?;
            self.source(name, record, None)
        } else {
            let name = req.snapshot.clone().unwrap_or_else(|| req.image.clone());
            let record = self.store.resolve(&name)?;
            self.source(name, record, None)
        };
        let entry = self.spawn_sandbox(source, limits, idle, lease)?;
        Ok(entry.info())
    }

    pub(crate) fn source(
        &self,
        image_name: String,
        record: ImageRecord,
        system: Option<String>,
    ) -> SandboxSource {
        SandboxSource {
            run_image: run_image(&self.store, &record),
            image_name,
            record,
            system,
        }
    }

    /// Makes the sandbox and registers it (counting against the maximum).
    pub(crate) fn spawn_sandbox(
        &self,
        source: SandboxSource,
        limits: Limits,
        idle_timeout: Duration,
        lease: StoreLease,
    ) -> Result<Arc<Entry>, EngineError> {
        self.reap_sandboxes();
        let max = self.cfg.sandboxes.max_live;
        if self.live.map.lock().unwrap().len() >= max {
            return Err(EngineError::Coded {
                code: ErrorCode::TooManySandboxes,
                message: format!(
                    "{max} live sandboxes already (the server's --max-sandboxes); delete one or retry when one expires"
                ),
            });
        }
        let id = new_job_id();
        let hostname = match &source.system {
            Some(s) => format!("{s}-{}", &id[..8]),
            None => format!("sbx-{}", &id[..8]),
        };
        let sandbox = self.backend.create(&LivePlan {
            id: id.clone(),
            image: source.run_image.clone(),
            hostname: hostname.clone(),
            limits,
        })?;
        let now = unix_now();
        let entry = Arc::new(Entry {
            id: id.clone(),
            sandbox,
            image_name: source.image_name,
            record: source.record,
            run_image: source.run_image,
            system: source.system,
            hostname,
            created_at: now,
            idle_timeout,
            last_used: Mutex::new((Instant::now(), now)),
            execs: AtomicU64::new(0),
            running: AtomicU64::new(0),
            pooled: std::sync::atomic::AtomicBool::new(false),
            limits,
            _lease: lease,
        });
        let mut map = self.live.map.lock().unwrap();
        if map.len() >= max {
            return Err(EngineError::Coded {
                code: ErrorCode::TooManySandboxes,
                message: format!("{max} live sandboxes already; delete one or retry later"),
            });
        }
        map.insert(id.clone(), entry.clone());
        tracing::info!(sandbox = %id, image = %entry.image_name, "live sandbox created");
        Ok(entry)
    }

    pub(crate) fn entry(&self, id: &str) -> Result<Arc<Entry>, EngineError> {
        self.live
            .map
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Runs one command in a live sandbox.
    pub fn exec_sandbox(
        &self,
        id: &str,
        spec: &ExecSpec,
        events: &mut dyn JobEvents,
    ) -> Result<JobResult, EngineError> {
        let entry = self.entry(id)?;
        self.exec_entry(&entry, spec, events)
    }

    pub(crate) fn exec_entry(
        &self,
        entry: &Entry,
        spec: &ExecSpec,
        events: &mut dyn JobEvents,
    ) -> Result<JobResult, EngineError> {
        if spec.argv.is_empty() {
            return Err(EngineError::Request(
                "argv is empty: give the command to run".into(),
            ));
        }
        let plan = self.plan_in(entry, spec.to_job_spec(&entry.image_name))?;
        entry.running.fetch_add(1, Ordering::SeqCst);
        entry.execs.fetch_add(1, Ordering::SeqCst);
        let _running = Running(entry);
        entry.touch();
        Ok(entry.sandbox.exec(&plan, spec.keep_running, events)?)
    }

    /// Plans `spec` against the sandbox's image and this engine's limits and policy.
    fn plan_in(
        &self,
        entry: &Entry,
        spec: JobSpec,
    ) -> Result<runbox_sandbox::plan::JobPlan, EngineError> {
        Ok(plan(
            new_job_id(),
            spec,
            entry.run_image.clone(),
            &self.cfg.base_limits,
            &self.cfg.policy,
        )?)
    }

    /// Writes a file into a live sandbox (relative paths under the image's working
    /// directory), owned by `user` (default: the image's user, else 1000).
    pub fn put_sandbox_file(
        &self,
        id: &str,
        file: InputFile,
        user: Option<String>,
    ) -> Result<(), EngineError> {
        let entry = self.entry(id)?;
        entry.touch();
        // Planned like a job's input: the same path rules and size limit, and the
        // owner is the job's user (the one asked for, else the image's).
        let planned = self.plan_in(
            &entry,
            JobSpec {
                image: entry.image_name.clone(),
                argv: Some(vec!["true".into()]),
                user,
                inputs: vec![file],
                ..Default::default()
            },
        )?;
        Ok(entry
            .sandbox
            .put_file(&planned.inputs[0], planned.user.as_ref())?)
    }

    /// Reads a file (or every file under a directory) from a live sandbox, up to the
    /// output-files limit.
    pub fn get_sandbox_file(&self, id: &str, path: &str) -> Result<Vec<OutputFile>, EngineError> {
        let entry = self.entry(id)?;
        entry.touch();
        let planned = self.plan_in(
            &entry,
            JobSpec {
                image: entry.image_name.clone(),
                argv: Some(vec!["true".into()]),
                outputs: vec![path.to_owned()],
                ..Default::default()
            },
        )?;
        let mut files = entry.sandbox.get_file(
            &planned.outputs[0].path,
            self.cfg.base_limits.output_files_bytes,
        );
        for f in &mut files {
            if let Some(rest) = f.path.strip_prefix(&planned.outputs[0].path) {
                f.path = format!("{path}{rest}");
            }
        }
        Ok(files)
    }

    pub fn list_sandboxes(&self) -> Vec<SandboxInfo> {
        let map = self.live.map.lock().unwrap();
        map.values().map(|e| e.info()).collect()
    }

    pub fn sandbox_info(&self, id: &str) -> Result<SandboxInfo, EngineError> {
        Ok(self.entry(id)?.info())
    }

    /// Deletes a live sandbox: everything in it is killed (execs running return
    /// killed) and its files are gone.
    pub fn delete_sandbox(&self, id: &str) -> Result<(), EngineError> {
        let entry = self
            .live
            .map
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| not_found(id))?;
        entry.sandbox.kill();
        tracing::info!(sandbox = %id, "live sandbox deleted");
        Ok(())
    }

    /// Deletes the sandboxes idle past their timeout; returns how many.
    pub fn reap_sandboxes(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<Arc<Entry>> = {
            let mut map = self.live.map.lock().unwrap();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, e)| e.expired(now) || !e.sandbox.is_alive())
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for e in &expired {
            e.sandbox.kill();
            tracing::info!(sandbox = %e.id, alive = e.sandbox.is_alive(), "live sandbox expired");
        }
        expired.len()
    }

    /// Takes a sandbox out of the live set for good, once no exec runs in it.
    pub(crate) fn take_sandbox(&self, id: &str) -> Result<Entry, EngineError> {
        let mut map = self.live.map.lock().unwrap();
        let entry = map.remove(id).ok_or_else(|| not_found(id))?;
        match Arc::try_unwrap(entry) {
            Ok(e) => Ok(e),
            Err(shared) => {
                let running = shared.running.load(Ordering::SeqCst);
                map.insert(id.to_owned(), shared);
                Err(EngineError::Coded {
                    code: ErrorCode::SandboxBusy,
                    message: format!(
                        "sandbox {id} is busy ({running} exec(s) running); snapshot it when they end"
                    ),
                })
            }
        }
    }

    /// Images in the store made by [`Engine::snapshot_sandbox`].
    pub fn sandbox_snapshots(&self) -> Result<usize, EngineError> {
        Ok(self
            .store
            .list()?
            .iter()
            .filter(|r| r.config.labels.contains_key(SANDBOX_SNAPSHOT_LABEL))
            .count())
    }

    /// Freezes a sandbox's changes into a new image named `name` (default
    /// `runbox-snapshot/<id>:latest`) on top of its image. The sandbox ends: its
    /// processes are killed first, so nothing changes while it is read. Start
    /// new sandboxes from the snapshot to go on.
    pub fn snapshot_sandbox(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<SnapshotMade, EngineError> {
        let entry = self.take_sandbox(id)?;
        let name = name.map_or_else(|| format!("runbox-snapshot/{id}:latest"), str::to_owned);
        let record = entry.record.clone();
        let limits = entry.limits;
        let mut config = record.config.clone();
        config
            .labels
            .insert(SANDBOX_SNAPSHOT_LABEL.into(), id.to_owned());
        let t0 = Instant::now();
        let frozen = entry.sandbox.freeze()?;
        let made = self.commit_layer(&frozen, &name, &record, Vec::new(), config, &limits)?;
        tracing::info!(sandbox = %id, image = %name, ms = t0.elapsed().as_millis() as u64, "sandbox snapshot");
        Ok(made)
    }

    /// Writes a frozen layer as a tar and commits it on top of `base` (plus
    /// `extra` layers) as the image `name`.
    pub(crate) fn commit_layer(
        &self,
        frozen: &runbox_sandbox::FrozenLayer,
        name: &str,
        base: &ImageRecord,
        extra: Vec<runbox_image::LayerRef>,
        config: runbox_image::ImageConfig,
        limits: &Limits,
    ) -> Result<SnapshotMade, EngineError> {
        use std::os::fd::AsFd;
        let tmp = tempfile_in(&crate::sandbox_dir(&self.cfg.data_dir).join("tmp"))?;
        let opts = UpperTarOptions {
            exclude: SNAPSHOT_EXCLUDES.iter().map(|s| (*s).to_owned()).collect(),
            max_bytes: limits.tmpfs_bytes.max(1),
            ..Default::default()
        };
        let file = std::fs::File::create(&tmp.0)
            .map_err(|e| EngineError::io(format!("creating {}", tmp.0.display()), e))?;
        let (w, stats) = write_upper_tar(
            frozen.dir.as_fd(),
            frozen.id_map,
            &opts,
            BufWriter::new(file),
        )?;
        w.into_inner()
            .map_err(|e| EngineError::io("writing the snapshot layer", e.into_error()))?
            .flush()
            .map_err(|e| EngineError::io("writing the snapshot layer", e))?;
        let report = self.store.commit_image(
            &CommitSpec {
                name: name.to_owned(),
                base: base.clone(),
                extra_layers: extra,
                new_layer_tar: Some(tmp.0.clone()),
                config,
            },
            &NoProgress,
        )?;
        let layer = report
            .image
            .layers
            .last()
            .cloned()
            .expect("a committed image has its new layer");
        Ok(SnapshotMade {
            image: report.image,
            layer_bytes: stats.bytes,
            files: stats.files,
            layer,
        })
    }
}

/// What a snapshot made.
#[derive(Debug, Clone)]
pub struct SnapshotMade {
    pub image: ImageRecord,
    /// Bytes of file content in the new layer.
    pub layer_bytes: u64,
    pub files: u64,
    pub layer: runbox_image::LayerRef,
}

/// A temporary file path under `dir`, removed on drop.
pub(crate) struct TempPath(pub std::path::PathBuf);
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn tempfile_in(dir: &std::path::Path) -> Result<TempPath, EngineError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
    Ok(TempPath(dir.join(format!("snapshot-{}.tar", new_job_id()))))
}
