//! Systems: catalog programs with lifecycle scripts (a database, say), provisioned
//! once, frozen as a snapshot keyed by a fingerprint, and served from warm
//! instances.
//!
//! - **Fingerprint**: sha256 over a canonical JSON of everything that produces the
//!   snapshot: runbox's snapshot format and backend version, the image's manifest
//!   digest, the system's scripts, user, environment, state and limits, and each
//!   dataset's name and sha256. Any change gives another fingerprint.
//! - **Provision** (cold): datasets made ready (generated once, checked against
//!   their digests, stored as read-only layers), then in a live sandbox over the
//!   image and the dataset layers: install, start (daemons kept), check (polled
//!   until ready, bounded), load, stop (state `disk`), then every process ended and
//!   the writable layer committed as an image (`runbox-snapshot/<system>:<fp>`),
//!   recorded under `<data>/snapshots/<fingerprint>.json` with the layer's tree
//!   digest. A failed step stops everything: nothing is recorded, the output of the
//!   step is in the error (a snapshot of a half-provisioned system is never made).
//! - **Consume**: the record for the current fingerprint, verified (the record, the
//!   image, and the layer's tree digest recomputed on the first use in this
//!   process); anything missing or wrong means a cold provision, logged with why.
//!   A stale snapshot (another fingerprint) is never looked at.
//! - **Instances**: live sandboxes over the snapshot image, each with its own
//!   hostname; the system's `clone` script re-creates per-instance identity, then
//!   `start` and `check`. A pool per system keeps up to `pool_size` of them, each
//!   serving at most `per_instance` queries at once; a dead one is replaced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use runbox_catalog::{Dataset, System, SystemState};
use runbox_core::{Data, ErrorCode, ExecSpec, JobResult, JobSpec, JobStatus, Limits};
use runbox_image::{CommitFile, ImageError, ImageRecord, LayerRef, NoProgress};
use runbox_sandbox::NoEvents;
use serde::{Deserialize, Serialize};

use crate::sandboxes::{unix_now, Entry};
use crate::{Engine, EngineError};

/// Part of every fingerprint: bump when the same inputs would freeze differently.
const SNAPSHOT_FORMAT: &str = "runbox-snapshot/1";

/// Warm pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemsConfig {
    /// Instances kept per system.
    pub pool_size: usize,
    /// Queries one instance serves at once.
    pub per_instance: usize,
    /// How long `check` may take to pass after `start`.
    pub ready_timeout: Duration,
    /// The most wall and CPU time one query may take (a system's own limits may
    /// be lower): a slow query must not hold an instance others wait for.
    pub query_time: Duration,
}

impl Default for SystemsConfig {
    fn default() -> Self {
        SystemsConfig {
            pool_size: 2,
            per_instance: 2,
            ready_timeout: Duration::from_secs(60),
            query_time: Duration::from_secs(30),
        }
    }
}

/// What `<data>/snapshots/<fingerprint>.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotRecord {
    pub format: String,
    pub fingerprint: String,
    pub system: String,
    /// The snapshot image's name and manifest digest.
    pub image: String,
    pub manifest_digest: String,
    /// The frozen layer (diff_id) and the tree digest of its unpacked form.
    pub layer: String,
    pub tree_digest: String,
    /// Bytes of file content and files in the frozen layer.
    pub layer_bytes: u64,
    pub files: u64,
    pub created_at: u64,
    /// Milliseconds per provisioning step.
    pub steps_ms: BTreeMap<String, f64>,
}

/// The outcome of a provision or consume.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvisionReport {
    pub system: String,
    pub fingerprint: String,
    /// `warm` (a verified snapshot matched) or `cold` (provisioned now).
    pub path: String,
    /// Why a cold provision ran (no snapshot, corrupted, forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub snapshot: SnapshotRecord,
    pub total_ms: f64,
}

/// One system's answer to a query.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueryAnswer {
    pub system: String,
    /// The instance (live sandbox) that answered.
    pub instance: String,
    /// The instance was already running (false: started from the snapshot now).
    pub warm: bool,
    /// Time to start the instance from the snapshot (0 when warm), in ms; a cold
    /// provision before it is not included (see `provisioned.total_ms`).
    pub start_ms: f64,
    /// The cold provision starting the instance ran first (no snapshot matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<ProvisionReport>,
    pub result: JobResult,
}

#[derive(Debug, Default)]
pub(crate) struct Pools {
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// One provision per system at a time.
    provisioning: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Snapshot fingerprints whose layer was verified in this process.
    verified: Mutex<HashSet<String>>,
}

#[derive(Debug, Default)]
struct Pool {
    state: Mutex<Vec<Slot>>,
    /// Instances being started for the pool: they count against its size (so
    /// that concurrent queries do not start one each). Changed only while
    /// `state` is locked.
    starting: AtomicUsize,
    freed: Condvar,
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Entry>,
    busy: usize,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn provision_failed(system: &str, step: &str, r: &JobResult) -> EngineError {
    let tail = |s: &str| {
        let s = s.trim_end();
        let start = s.len().saturating_sub(2000);
        let start = (start..=s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[start..].to_owned()
    };
    EngineError::Coded {
        code: ErrorCode::ProvisionFailed,
        message: format!(
            "system {system}: the {step} script ended {} (exit code {:?}); nothing was snapshotted.\nstdout: {}\nstderr: {}",
            r.status.as_str(),
            r.exit_code,
            tail(&r.stdout),
            tail(&r.stderr)
        ),
    }
}

impl Engine {
    /// A catalog system by id.
    pub fn system(&self, id: &str) -> Option<System> {
        self.catalog()?.system(id).ok().cloned()
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("snapshots")
    }

    fn record_path(&self, fingerprint: &str) -> PathBuf {
        self.snapshots_dir().join(format!("{fingerprint}.json"))
    }

    fn dataset(&self, name: &str) -> Result<Dataset, EngineError> {
        let catalog = self
            .catalog()
            .ok_or_else(|| EngineError::Request("no catalog is loaded".into()))?;
        Ok(catalog.dataset(name)?.clone())
    }

    /// The system's image in the store.
    fn system_image(&self, system: &System) -> Result<ImageRecord, EngineError> {
        let catalog = self
            .catalog()
            .ok_or_else(|| EngineError::Request("no catalog is loaded".into()))?;
        let name = catalog.source_image_name(&system.image);
        self.store.resolve(&name).map_err(|e| match e {
            ImageError::NotFound { .. } => EngineError::ProgramImageMissing {
                program: system.id.clone(),
                image: name,
            },
            e => e.into(),
        })
    }

    /// The fingerprint of what would produce the system's snapshot now.
    pub fn fingerprint(&self, system: &System) -> Result<String, EngineError> {
        use sha2::{Digest as _, Sha256};
        let image = self.system_image(system)?;
        let mut datasets = Vec::new();
        for name in &system.datasets {
            let d = self.dataset(name)?;
            datasets.push((d.name.clone(), d.sha256.clone()));
        }
        let doc = serde_json::json!({
            "format": SNAPSHOT_FORMAT,
            "backend": runbox_sandbox::Backend::version(&self.backend),
            "image": image.manifest_digest.to_string(),
            "system": hex::encode(Sha256::digest(system.fingerprint_inputs().canonical_json())),
            "datasets": datasets,
        });
        let bytes = serde_json::to_vec(&doc).expect("json");
        Ok(hex::encode(Sha256::digest(&bytes)))
    }

    /// A dataset's layer: made once (the generator run in a sandbox, its output
    /// checked against the declared sha256), then found by name.
    fn dataset_layer(&self, d: &Dataset) -> Result<LayerRef, EngineError> {
        let name = format!("runbox-dataset/{}:{}", d.name, &d.sha256[..16]);
        if let Ok(rec) = self.store.resolve(&name) {
            return Ok(rec.layers[0].clone());
        }
        let t0 = Instant::now();
        tracing::info!(dataset = %d.name, rows = d.rows, "generating a dataset");
        let catalog = self
            .catalog()
            .ok_or_else(|| EngineError::Request("no catalog is loaded".into()))?;
        let g = &d.generate;
        let inputs = d.generator_inputs();
        let mut limits = g.limits;
        // The whole file comes back as the job's output.
        limits.output_files_bytes = Some(limits.output_files_bytes.unwrap_or(0).max(d.size + 1));
        let r = self.run(
            JobSpec {
                image: catalog.source_image_name(&g.image),
                argv: Some(g.argv.clone()),
                inputs,
                outputs: vec![g.output.clone()],
                limits,
                ..Default::default()
            },
            &mut NoEvents,
        )?;
        if r.status != JobStatus::Ok {
            return Err(EngineError::Coded {
                code: ErrorCode::ProvisionFailed,
                message: format!(
                    "dataset {}: the generator ended {}: {}",
                    d.name,
                    r.status.as_str(),
                    r.stderr.trim_end()
                ),
            });
        }
        let out = r
            .outputs
            .first()
            .and_then(|o| o.content.as_ref())
            .ok_or_else(|| EngineError::Coded {
                code: ErrorCode::ProvisionFailed,
                message: format!("dataset {}: the generator wrote no {}", d.name, g.output),
            })?;
        let got = {
            use sha2::{Digest as _, Sha256};
            hex::encode(Sha256::digest(&out.0))
        };
        if got != d.sha256 {
            return Err(EngineError::Coded {
                code: ErrorCode::ProvisionFailed,
                message: format!(
                    "dataset {}: the generated file's sha256 is {got}, the manifest says {}; nothing was stored",
                    d.name, d.sha256
                ),
            });
        }
        let tmp =
            crate::sandboxes::tempfile_in(&crate::sandbox_dir(&self.cfg.data_dir).join("tmp"))?;
        std::fs::write(&tmp.0, &out.0)
            .map_err(|e| EngineError::io(format!("writing {}", tmp.0.display()), e))?;
        let report = self.store.commit_files_image(
            &name,
            &[CommitFile {
                path: d.mount_path(),
                host: tmp.0.clone(),
                mode: 0o444,
            }],
            Default::default(),
            &NoProgress,
        )?;
        tracing::info!(dataset = %d.name, bytes = out.0.len(), ms = t0.elapsed().as_millis() as u64, "dataset ready");
        Ok(report.image.layers[0].clone())
    }

    /// The verified snapshot record for `fingerprint`, or why there is none.
    fn verified_record(&self, fingerprint: &str) -> Result<SnapshotRecord, String> {
        let path = self.record_path(fingerprint);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("no snapshot matches the fingerprint".into())
            }
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let rec: SnapshotRecord = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the snapshot record is corrupted ({e})"))?;
        if rec.format != SNAPSHOT_FORMAT || rec.fingerprint != fingerprint {
            return Err("the snapshot record does not match its fingerprint".into());
        }
        let image = self
            .store
            .resolve(&rec.image)
            .map_err(|e| format!("the snapshot image is missing ({e})"))?;
        if image.manifest_digest.to_string() != rec.manifest_digest {
            return Err("the snapshot image is not the one recorded".into());
        }
        if self.pools.verified.lock().unwrap().contains(fingerprint) {
            return Ok(rec);
        }
        let layer = image
            .layers
            .last()
            .filter(|l| l.diff_id.to_string() == rec.layer)
            .ok_or("the snapshot image's last layer is not the recorded one")?;
        let t0 = Instant::now();
        let tree = self
            .store
            .layer_tree_digest(&layer.diff_id)
            .map_err(|e| format!("the snapshot layer cannot be read ({e})"))?;
        if tree.to_string() != rec.tree_digest {
            return Err(format!(
                "the snapshot layer's content changed on disk (tree digest {tree}, recorded {})",
                rec.tree_digest
            ));
        }
        tracing::debug!(
            fingerprint,
            ms = t0.elapsed().as_millis() as u64,
            "snapshot verified"
        );
        self.pools
            .verified
            .lock()
            .unwrap()
            .insert(fingerprint.to_owned());
        Ok(rec)
    }

    /// Finds the system's snapshot by fingerprint (verified), else provisions it
    /// cold. `force`: provision cold even when a snapshot matches.
    pub fn consume(&self, system: &System, force: bool) -> Result<ProvisionReport, EngineError> {
        let t0 = Instant::now();
        let fingerprint = self.fingerprint(system)?;
        let lock = self
            .pools
            .provisioning
            .lock()
            .unwrap()
            .entry(system.id.clone())
            .or_default()
            .clone();
        let _one = lock.lock().unwrap();
        let reason = if force {
            "a cold provision was asked for".to_owned()
        } else {
            match self.verified_record(&fingerprint) {
                Ok(snapshot) => {
                    tracing::info!(system = %system.id, %fingerprint, path = "warm", "snapshot found");
                    return Ok(ProvisionReport {
                        system: system.id.clone(),
                        fingerprint,
                        path: "warm".into(),
                        reason: None,
                        snapshot,
                        total_ms: ms(t0.elapsed()),
                    });
                }
                Err(why) => why,
            }
        };
        tracing::warn!(system = %system.id, %fingerprint, path = "cold", reason = %reason, "provisioning cold");
        // Whatever was there for this fingerprint is not used again: the record,
        // and the snapshot layer's unpacked form (a new provision that freezes the
        // same bytes must not find it "already unpacked" and reuse the damage).
        if let Some(old) = std::fs::read(self.record_path(&fingerprint))
            .ok()
            .and_then(|b| serde_json::from_slice::<SnapshotRecord>(&b).ok())
        {
            if let Ok(d) = old.layer.parse::<runbox_core::Digest>() {
                if let Err(e) = self.store.discard_layer(&d) {
                    tracing::warn!(error = %e, "could not discard the old snapshot layer");
                }
            }
        }
        let _ = std::fs::remove_file(self.record_path(&fingerprint));
        self.pools.verified.lock().unwrap().remove(&fingerprint);
        let snapshot = self.provision(system, &fingerprint)?;
        Ok(ProvisionReport {
            system: system.id.clone(),
            fingerprint,
            path: "cold".into(),
            reason: Some(reason),
            snapshot,
            total_ms: ms(t0.elapsed()),
        })
    }

    /// The exec of one lifecycle script.
    fn script(
        &self,
        system: &System,
        script: &str,
        stdin: Option<Vec<u8>>,
        keep: bool,
        limits: &runbox_core::LimitsSpec,
    ) -> ExecSpec {
        ExecSpec {
            argv: vec!["sh".into(), "-c".into(), script.to_owned()],
            env: system.env.clone(),
            user: system.user.clone(),
            stdin: stdin.map(Data),
            limits: *limits,
            keep_running: keep,
            ..Default::default()
        }
    }

    /// Runs `check` until it passes (bounded by `ready_timeout`).
    fn wait_ready(&self, system: &System, entry: &Entry) -> Result<(), EngineError> {
        let Some(check) = &system.scripts.check else {
            return Ok(());
        };
        let deadline = Instant::now() + self.cfg.systems.ready_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let r = self.exec_entry(
                entry,
                &self.script(system, check, None, false, &system.limits),
                &mut NoEvents,
            )?;
            if r.status == JobStatus::Ok {
                return Ok(());
            }
            if Instant::now() + pause > deadline {
                return Err(provision_failed(&system.id, "check", &r));
            }
            // A readiness probe: the daemon gives no other signal that it is up.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn sandbox_limits(&self, system: &System) -> Result<Limits, EngineError> {
        Limits::resolve(&self.cfg.base_limits, &system.limits, &self.cfg.policy)
            .map_err(|e| EngineError::Plan(e.into()))
    }

    /// Runs lifecycle steps in order, timing each into `steps`: a script (`start`
    /// keeps what it leaves running), or `check` (polled until ready). A missing
    /// script is skipped; a failing one stops everything with its output.
    fn run_steps(
        &self,
        system: &System,
        entry: &Entry,
        order: &[&str],
        steps: &mut BTreeMap<String, f64>,
    ) -> Result<(), EngineError> {
        let s = &system.scripts;
        for &step in order {
            let t = Instant::now();
            if step == "check" {
                if s.check.is_some() {
                    self.wait_ready(system, entry)?;
                    steps.insert(step.to_owned(), ms(t.elapsed()));
                }
                continue;
            }
            let script = match step {
                "install" => &s.install,
                "start" => &s.start,
                "load" => &s.load,
                "stop" => &s.stop,
                "clone" => &s.clone,
                other => unreachable!("no lifecycle step {other}"),
            };
            let Some(script) = script else { continue };
            let keep = step == "start";
            let r = self.exec_entry(
                entry,
                &self.script(system, script, None, keep, &system.limits),
                &mut NoEvents,
            )?;
            steps.insert(step.to_owned(), ms(t.elapsed()));
            if r.status != JobStatus::Ok {
                return Err(provision_failed(&system.id, step, &r));
            }
        }
        Ok(())
    }

    /// Provisions cold and records the snapshot. A system whose state is on disk
    /// is installed, started, loaded and stopped (its files then consistent) before
    /// the freeze; one whose state lives in memory (which the namespace backend
    /// cannot freeze) only installed: each instance starts and loads anew.
    fn provision(&self, system: &System, fingerprint: &str) -> Result<SnapshotRecord, EngineError> {
        let mut steps = BTreeMap::new();
        let t = Instant::now();
        let base = self.system_image(system)?;
        let mut layers = Vec::new();
        for name in &system.datasets {
            layers.push(self.dataset_layer(&self.dataset(name)?)?);
        }
        steps.insert("datasets".to_owned(), ms(t.elapsed()));
        let lease = self.store.lock_shared()?;
        let image_name = self
            .catalog()
            .map(|c| c.source_image_name(&system.image))
            .unwrap_or_default();
        let mut source = self.source(image_name, base.clone(), Some(system.id.clone()));
        source
            .run_image
            .layers
            .extend(layers.iter().map(|l| l.diff_id.hex().to_owned()));
        let limits = self.sandbox_limits(system)?;
        let entry = self.spawn_sandbox(source, limits, self.cfg.sandboxes.idle_timeout, lease)?;
        let id = entry.id.clone();
        let order: &[&str] = match system.state {
            SystemState::Disk => &["install", "start", "check", "load", "stop"],
            SystemState::Memory => &["install"],
        };
        let outcome = self.run_steps(system, &entry, order, &mut steps);
        drop(entry);
        if let Err(e) = outcome {
            let _ = self.delete_sandbox(&id);
            return Err(e);
        }
        let t = Instant::now();
        let taken = self.take_sandbox(&id)?;
        let name = format!("runbox-snapshot/{}:{}", system.id, &fingerprint[..16]);
        let mut config = base.config.clone();
        config.labels.insert(
            "org.runbox.snapshot.fingerprint".into(),
            fingerprint.to_owned(),
        );
        let frozen = taken.sandbox.freeze()?;
        let made = self.commit_layer(&frozen, &name, &base, layers, config, &limits)?;
        drop(frozen);
        let tree = self.store.layer_tree_digest(&made.layer.diff_id)?;
        steps.insert("snapshot".to_owned(), ms(t.elapsed()));
        let rec = SnapshotRecord {
            format: SNAPSHOT_FORMAT.into(),
            fingerprint: fingerprint.to_owned(),
            system: system.id.clone(),
            image: name,
            manifest_digest: made.image.manifest_digest.to_string(),
            layer: made.layer.diff_id.to_string(),
            tree_digest: tree.to_string(),
            layer_bytes: made.layer_bytes,
            files: made.files,
            created_at: unix_now(),
            steps_ms: steps,
        };
        std::fs::create_dir_all(self.snapshots_dir())
            .map_err(|e| EngineError::io("creating the snapshots directory", e))?;
        let tmp = self.snapshots_dir().join(format!(".{fingerprint}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&rec).expect("json"))
            .and_then(|()| std::fs::rename(&tmp, self.record_path(fingerprint)))
            .map_err(|e| EngineError::io("writing the snapshot record", e))?;
        self.pools
            .verified
            .lock()
            .unwrap()
            .insert(fingerprint.to_owned());
        tracing::info!(system = %system.id, fingerprint, bytes = rec.layer_bytes, "system provisioned and snapshotted");
        Ok(rec)
    }

    /// Starts an instance of the system from its snapshot (provisioning it first
    /// when no snapshot matches).
    pub(crate) fn start_instance(
        &self,
        system: &System,
        limits: Limits,
        idle: Duration,
    ) -> Result<(Arc<Entry>, ProvisionReport), EngineError> {
        let report = self.consume(system, false)?;
        let lease = self.store.lock_shared()?;
        let record = self.store.resolve(&report.snapshot.image)?;
        let source = self.source(
            report.snapshot.image.clone(),
            record,
            Some(system.id.clone()),
        );
        let entry = self.spawn_sandbox(source, limits, idle, lease)?;
        let order: &[&str] = match system.state {
            SystemState::Disk => &["clone", "start", "check"],
            SystemState::Memory => &["clone", "start", "check", "load"],
        };
        let outcome = self.run_steps(system, &entry, order, &mut BTreeMap::new());
        if let Err(e) = outcome {
            let _ = self.delete_sandbox(&entry.id);
            return Err(e);
        }
        Ok((entry, report))
    }

    fn pool(&self, system: &str) -> Arc<Pool> {
        self.pools
            .pools
            .lock()
            .unwrap()
            .entry(system.to_owned())
            .or_default()
            .clone()
    }

    /// Starts instances until the system's pool is full.
    pub fn warm_pool(&self, system_id: &str) -> Result<usize, EngineError> {
        let system = self.system_or_err(system_id)?;
        let pool = self.pool(system_id);
        let mut started = 0;
        loop {
            {
                let mut st = pool.state.lock().unwrap();
                self.prune(&mut st);
                if st.len() + pool.starting.load(Ordering::SeqCst) >= self.cfg.systems.pool_size {
                    return Ok(started);
                }
                pool.starting.fetch_add(1, Ordering::SeqCst);
            }
            self.start_pooled(&system, &pool, 0)?;
            started += 1;
        }
    }

    /// Starts an instance and adds it to the pool with `busy` queries, the pool's
    /// `starting` count having been raised by the caller (lowered here, in the
    /// same step as the instance is added, or on failure).
    fn start_pooled(
        &self,
        system: &System,
        pool: &Pool,
        busy: usize,
    ) -> Result<(Arc<Entry>, ProvisionReport), EngineError> {
        let started = self.sandbox_limits(system).and_then(|limits| {
            self.start_instance(system, limits, self.cfg.sandboxes.idle_timeout)
        });
        let mut st = pool.state.lock().unwrap();
        pool.starting.fetch_sub(1, Ordering::SeqCst);
        // Waiting queries may use it (per_instance > 1), or start another in
        // place of one that failed.
        pool.freed.notify_all();
        let (entry, report) = started?;
        entry.pooled.store(true, Ordering::SeqCst);
        st.push(Slot {
            entry: entry.clone(),
            busy,
        });
        Ok((entry, report))
    }

    fn system_or_err(&self, id: &str) -> Result<System, EngineError> {
        self.system(id).ok_or_else(|| EngineError::Coded {
            code: ErrorCode::NotFound,
            message: format!(
                "no system {id:?} in the catalog (`runbox system ls` or GET /api/systems lists them)"
            ),
        })
    }

    /// Runs one query on a warm instance of the system (starting one from the
    /// snapshot when the pool has room and every instance is busy or there is
    /// none; else waiting for a free one). A dead instance is replaced.
    pub fn query(&self, system_id: &str, query: &[u8]) -> Result<QueryAnswer, EngineError> {
        let system = self.system_or_err(system_id)?;
        let pool = self.pool(system_id);
        for attempt in 0..2 {
            let (entry, warm, start_ms, provisioned) = self.take_slot(&system, &pool)?;
            let spec = self.script(
                &system,
                &system.scripts.query,
                Some(query.to_vec()),
                false,
                &self.query_limits(&system),
            );
            let r = self.exec_entry(&entry, &spec, &mut NoEvents);
            self.release_slot(&pool, &entry);
            match r {
                // Found dead before the exec, or died while it entered (which
                // fails to join its namespaces: ESRCH).
                Err(EngineError::Sandbox(ref e))
                    if attempt == 0
                        && (matches!(e, runbox_sandbox::SandboxError::Ended { .. })
                            || !entry.sandbox.is_alive()) =>
                {
                    tracing::warn!(system = %system.id, instance = %entry.id, "instance died; replacing it");
                    self.drop_instance(&pool, &entry);
                }
                Err(e) => return Err(e),
                Ok(result) => {
                    if !entry.sandbox.is_alive() {
                        self.drop_instance(&pool, &entry);
                    }
                    return Ok(QueryAnswer {
                        system: system.id.clone(),
                        instance: entry.id.clone(),
                        warm,
                        start_ms,
                        provisioned,
                        result,
                    });
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// The system's limits with wall and CPU time capped at `query_time`.
    fn query_limits(&self, system: &System) -> runbox_core::LimitsSpec {
        let cap = u64::try_from(self.cfg.systems.query_time.as_millis()).unwrap_or(u64::MAX);
        let mut l = system.limits;
        l.wall_time_ms = Some(l.wall_time_ms.map_or(cap, |w| w.min(cap)));
        l.cpu_time_ms = Some(l.cpu_time_ms.map_or(cap, |c| c.min(cap)));
        l
    }

    /// Runs one query on several systems at once.
    pub fn query_many(
        &self,
        systems: &[String],
        query: &[u8],
    ) -> Vec<Result<QueryAnswer, EngineError>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = systems
                .iter()
                .map(|id| s.spawn(move || self.query(id, query)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EngineError::Request("a query thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    fn take_slot(
        &self,
        system: &System,
        pool: &Pool,
    ) -> Result<(Arc<Entry>, bool, f64, Option<ProvisionReport>), EngineError> {
        let per = self.cfg.systems.per_instance.max(1);
        let mut st = pool.state.lock().unwrap();
        loop {
            self.prune(&mut st);
            if let Some(slot) = st
                .iter_mut()
                .filter(|s| s.busy < per)
                .min_by_key(|s| s.busy)
            {
                slot.busy += 1;
                return Ok((slot.entry.clone(), true, 0.0, None));
            }
            if st.len() + pool.starting.load(Ordering::SeqCst) < self.cfg.systems.pool_size.max(1) {
                pool.starting.fetch_add(1, Ordering::SeqCst);
                drop(st);
                let t = Instant::now();
                let (entry, report) = self.start_pooled(system, pool, 1)?;
                let cold = (report.path == "cold").then_some(report);
                // The instance's own start: a cold provision before it is
                // reported apart (`provisioned.total_ms`).
                let provision_ms = cold.as_ref().map_or(0.0, |r| r.total_ms);
                let start_ms = ms(t.elapsed()) - provision_ms;
                let start_ms = (start_ms.max(0.0) * 1e3).round() / 1e3;
                return Ok((entry, false, start_ms, cold));
            }
            st = pool.freed.wait(st).unwrap();
        }
    }

    /// Forgets instances that died or left the live set (expired, deleted).
    fn prune(&self, slots: &mut Vec<Slot>) {
        slots.retain(|s| s.entry.sandbox.is_alive() && self.entry(&s.entry.id).is_ok());
    }

    fn release_slot(&self, pool: &Pool, entry: &Arc<Entry>) {
        let mut st = pool.state.lock().unwrap();
        if let Some(s) = st.iter_mut().find(|s| Arc::ptr_eq(&s.entry, entry)) {
            s.busy = s.busy.saturating_sub(1);
        }
        pool.freed.notify_one();
    }

    fn drop_instance(&self, pool: &Pool, entry: &Arc<Entry>) {
        pool.state
            .lock()
            .unwrap()
            .retain(|s| !Arc::ptr_eq(&s.entry, entry));
        let _ = self.delete_sandbox(&entry.id);
        pool.freed.notify_all();
    }

    /// The system's warm instances alive now.
    pub fn pool_instances(&self, system_id: &str) -> usize {
        let Some(pool) = self.pools.pools.lock().unwrap().get(system_id).cloned() else {
            return 0;
        };
        let mut st = pool.state.lock().unwrap();
        self.prune(&mut st);
        st.len()
    }

    /// The snapshot record stored for a fingerprint ([`Engine::fingerprint`]), if
    /// any (not verified).
    pub fn snapshot_record(&self, fingerprint: &str) -> Option<SnapshotRecord> {
        std::fs::read(self.record_path(fingerprint))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}
