//! The worker loop: claim a job, start it, keep its lease alive with
//! heartbeats while it runs, run it in a sandbox, report how it ended, repeat;
//! on stop, claim nothing new and finish what is running.
//!
//! One loop serves both kinds of worker: the server's in-process workers talk
//! to the queue directly, and `runbox worker` talks to a server over HTTP.
//! Only the [`Coordinator`] differs, so every guarantee tested for one holds
//! for the other (docs/workers.md).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runbox_core::{ErrorBody, JobSpec, JobStatus};
use runbox_engine::{Engine, EngineError, PreparedJob};
use runbox_queue::{Capabilities, Claim, Finished, Heartbeat, Outcome};
use runbox_sandbox::{CancelToken, Cancellable, NoEvents};
use tokio::sync::watch;

/// A failure to reach the coordinator (retried), as opposed to an answer.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where jobs come from and results go: the queue itself, or a server.
pub trait Coordinator: Send + Sync + 'static {
    /// A job this worker can run, waiting up to `wait` for one.
    fn claim(
        &self,
        caps: &Capabilities,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Claim>, Unreachable>> + Send;
    /// Marks the claimed job as running; false when the lease was lost.
    fn start(&self, claim: &Claim) -> impl Future<Output = Result<bool, Unreachable>> + Send;
    fn heartbeat(
        &self,
        claim: &Claim,
    ) -> impl Future<Output = Result<Heartbeat, Unreachable>> + Send;
    fn finish(
        &self,
        claim: &Claim,
        outcome: Outcome,
    ) -> impl Future<Output = Result<Finished, Unreachable>> + Send;
    /// The job already prepared by whoever enqueued it in this process, if any
    /// (saves planning it twice; a remote worker always plans it itself).
    fn prepared(&self, _claim: &Claim) -> Option<PreparedJob> {
        None
    }
}

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once.
    pub slots: usize,
    /// Longest single claim wait (a long poll). The capabilities advertised
    /// (the images held, above all) are looked at again between claims, so an
    /// image that arrives is offered within this time.
    pub claim_wait: Duration,
    /// Labels this worker advertises (jobs may require them).
    pub labels: Vec<String>,
}

/// What this machine offers: backend, architecture, CPUs, memory, the images in
/// the store (manifest digests), and the given labels.
pub fn capabilities(engine: &Engine, labels: Vec<String>) -> Capabilities {
    let images = engine
        .store()
        .list()
        .map(|l| {
            l.into_iter()
                .map(|r| r.manifest_digest.to_string())
                .collect()
        })
        .unwrap_or_default();
    Capabilities {
        backend: engine.backend().name().to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
        memory_bytes: memory_bytes(),
        images,
        labels,
    }
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs `options.slots` claim loops until `stop` turns true, then waits for the
/// jobs in progress to be reported (a drain) and returns.
pub async fn run<C: Coordinator>(
    engine: Arc<Engine>,
    coord: Arc<C>,
    options: WorkerOptions,
    stop: watch::Receiver<bool>,
) {
    let mut loops = Vec::new();
    for slot in 0..options.slots.max(1) {
        let (engine, coord, options, stop) =
            (engine.clone(), coord.clone(), options.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            claim_loop(slot, engine, coord, options, stop).await;
        }));
    }
    for l in loops {
        let _ = l.await;
    }
}

async fn claim_loop<C: Coordinator>(
    slot: usize,
    engine: Arc<Engine>,
    coord: Arc<C>,
    options: WorkerOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut caps: Option<(std::time::Instant, Capabilities)> = None;
    while !*stop.borrow() {
        if caps
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= Duration::from_secs(1))
        {
            let (e, labels) = (engine.clone(), options.labels.clone());
            let fresh = tokio::task::spawn_blocking(move || capabilities(&e, labels))
                .await
                .unwrap_or_default();
            caps = Some((std::time::Instant::now(), fresh));
        }
        let current = &caps.as_ref().expect("computed above").1;
        let claimed = tokio::select! {
            c = coord.claim(current, options.claim_wait) => c,
            // Stopping: a claim in flight is abandoned. If the coordinator
            // granted it anyway, its lease expires and the job is re-queued.
            _ = stop.wait_for(|s| *s) => break,
        };
        match claimed {
            Ok(Some(claim)) => {
                backoff = Duration::from_millis(100);
                work(&engine, coord.as_ref(), claim).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(slot, error = %e, retry_in = ?backoff, "cannot reach the coordinator");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs one claimed job to its report.
pub async fn work<C: Coordinator>(engine: &Arc<Engine>, coord: &C, claim: Claim) {
    let lease = Duration::from_millis(
        (claim.lease_expires_ms - runbox_queue::now_ms()).clamp(1_000, 3_600_000) as u64,
    );
    match coord.start(&claim).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job_id = %claim.job_id, "lease lost before the job started: dropped");
            return;
        }
        Err(e) => {
            // Not started, not running: the lease will expire and the job return.
            tracing::warn!(job_id = %claim.job_id, error = %e, "could not mark the job started: dropped");
            return;
        }
    }
    let token = CancelToken::new();
    let prepared = coord.prepared(&claim);
    let job = {
        let (engine, token, request, key) = (
            engine.clone(),
            token.clone(),
            claim.request.clone(),
            claim.cache_key.clone(),
        );
        let image = claim.requires.image.clone();
        tokio::task::spawn_blocking(move || {
            execute(&engine, prepared, &request, image, &key, token)
        })
    };
    tokio::pin!(job);
    // Heartbeats at a third of the lease while the job runs.
    let every = lease / 3;
    let mut lost = false;
    let outcome = loop {
        tokio::select! {
            done = &mut job => break done.unwrap_or_else(|e| Outcome::Failed(error_json(
                runbox_core::ErrorCode::Internal, &format!("the job's thread failed: {e}")))),
            () = tokio::time::sleep(every) => {
                match coord.heartbeat(&claim).await {
                    Ok(Heartbeat::Renewed { cancel, .. }) => {
                        if cancel && !token.is_cancelled() {
                            tracing::info!(job_id = %claim.job_id, "cancelled by request: stopping the sandbox");
                            token.cancel();
                        }
                    }
                    Ok(Heartbeat::LeaseLost) => {
                        if !lost {
                            tracing::warn!(job_id = %claim.job_id, "lease lost: stopping the job (another worker may have it)");
                            lost = true;
                            token.cancel();
                        }
                    }
                    // Retried at the next beat; the lease has two more beats of slack.
                    Err(e) => tracing::warn!(job_id = %claim.job_id, error = %e, "heartbeat failed"),
                }
            }
        }
    };
    report(coord, &claim, outcome, lease).await;
}

/// Sends the outcome, retrying while the coordinator is unreachable (the call
/// is idempotent), for at most two lease times.
async fn report<C: Coordinator>(coord: &C, claim: &Claim, outcome: Outcome, lease: Duration) {
    let give_up = tokio::time::Instant::now() + lease * 2;
    let mut backoff = Duration::from_millis(100);
    loop {
        match coord.finish(claim, outcome.clone()).await {
            Ok(Finished::Stored) => {
                tracing::debug!(job_id = %claim.job_id, "result stored");
                return;
            }
            Ok(other) => {
                tracing::info!(job_id = %claim.job_id, answer = ?other, "result not stored (the job was final or taken over)");
                return;
            }
            Err(e) if tokio::time::Instant::now() < give_up => {
                tracing::warn!(job_id = %claim.job_id, error = %e, retry_in = ?backoff, "reporting failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(job_id = %claim.job_id, error = %e, "giving up on reporting; the job will be re-queued when its lease expires");
                return;
            }
        }
    }
}

/// Plans (unless given a plan) and runs the job; every way it can end becomes
/// an [`Outcome`].
fn execute(
    engine: &Engine,
    prepared: Option<PreparedJob>,
    request: &str,
    image: Option<String>,
    key: &str,
    token: CancelToken,
) -> Outcome {
    let job = match prepared {
        Some(p) => p,
        None => match plan(engine, request, image, key) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        },
    };
    let mut events = Cancellable::new(NoEvents, token);
    match engine.execute(job, &mut events) {
        Ok(result) => {
            let json = serde_json::to_string(&result).unwrap_or_default();
            if result.status == JobStatus::Cancelled {
                Outcome::Cancelled(Some(json))
            } else {
                Outcome::Done(json)
            }
        }
        Err(e) => Outcome::Failed(engine_error(&e)),
    }
}

/// The job as this worker runs it: the request's spec, with the image pinned to
/// the digest the server resolved, and a cache key that must be the server's
/// (else this worker's image or catalog differs, and its result would be
/// stored under the wrong key).
fn plan(
    engine: &Engine,
    request: &str,
    image: Option<String>,
    key: &str,
) -> Result<PreparedJob, String> {
    let mut value: serde_json::Value = serde_json::from_str(request).map_err(|e| {
        error_json(
            runbox_core::ErrorCode::InvalidArgument,
            &format!("the job's request: {e}"),
        )
    })?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("cache");
        obj.remove("requires");
        if let (Some(digest), Some(img)) = (image, obj.get("image")) {
            if img.as_str().is_some_and(|s| !s.is_empty()) {
                obj.insert("image".into(), serde_json::Value::String(digest));
            }
        }
    }
    let spec: JobSpec = serde_json::from_value(value).map_err(|e| {
        error_json(
            runbox_core::ErrorCode::InvalidArgument,
            &format!("the job's request: {e}"),
        )
    })?;
    let job = engine.prepare(spec).map_err(|e| engine_error(&e))?;
    if job.cache_key() != key {
        return Err(error_json(
            runbox_core::ErrorCode::InvalidArgument,
            "this worker plans the job differently from the server (another image under that \
             name, another catalog, or another runbox version); it was not run here",
        ));
    }
    Ok(job)
}

fn engine_error(e: &EngineError) -> String {
    error_json(e.code(), &e.to_string())
}

fn error_json(code: runbox_core::ErrorCode, message: &str) -> String {
    serde_json::to_string(&ErrorBody {
        code,
        message: message.to_owned(),
    })
    .unwrap_or_default()
}
