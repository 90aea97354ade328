//! Jobs between the API and the workers: submitted jobs go into the queue in
//! the database (`runbox-queue`), the server's in-process workers claim them
//! through the same calls remote `runbox worker`s use (`runbox-worker`), and
//! every report comes back through [`Runner::complete`], which stores the
//! result in the cache.
//!
//! Each job submitted here also has a slot whose state (queued, running, done,
//! failed, cancelled) is a `watch` channel: `POST /api/run` awaits it,
//! `GET /api/jobs/{id}` reads it, the SSE stream follows it. Slots change when
//! this process learns something (a local worker or a worker connected here
//! reports) and, for what happens elsewhere (a lease expiring, another server
//! finishing the job), when [`Runner::sync`] reads the queue. Finished slots are
//! kept for the retention time, and their number is capped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runbox_core::{ErrorBody, ErrorCode, JobResult, LimitKind};
use runbox_engine::PreparedJob;
use runbox_queue::{
    Capabilities, Claim, Finished, Heartbeat, JobRow, NewJob, Outcome, Queue, Requirements,
};
use runbox_worker::{Coordinator, Unreachable};
use tokio::sync::watch;

use crate::db::Db;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::types::{JobInfo, JobPhase, RunResponse};

/// Most finished jobs kept for `GET /api/jobs/{id}`, whatever the retention time.
const MAX_FINISHED: usize = 10_000;

/// A job's state, as its watchers see it.
#[derive(Debug, Clone)]
pub enum JobState {
    /// `position`: jobs ahead of it when it was queued.
    Queued {
        position: u64,
    },
    Running,
    Done(Arc<RunResponse>),
    Failed(ErrorBody),
    /// With the partial result when it was stopped while running.
    Cancelled(Option<Arc<RunResponse>>),
}

impl JobState {
    pub fn phase(&self) -> JobPhase {
        match self {
            JobState::Queued { .. } => JobPhase::Queued,
            JobState::Running => JobPhase::Running,
            JobState::Done(_) => JobPhase::Done,
            JobState::Failed(_) => JobPhase::Failed,
            JobState::Cancelled(_) => JobPhase::Cancelled,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Done(_) | JobState::Failed(_) | JobState::Cancelled(_)
        )
    }
}

struct Slot {
    state: watch::Sender<JobState>,
    created: Instant,
}

/// The queue's settings.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// Jobs waiting beyond which submissions get 503.
    pub capacity: usize,
    pub lease: Duration,
    pub max_attempts: u32,
    /// How often waiting claimers and watchers look at the database for what
    /// other servers did.
    pub poll: Duration,
}

pub struct Runner {
    queue: Queue,
    db: Arc<Db>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Jobs submitted here and not yet claimed, already planned: an in-process
    /// worker that claims one runs it without planning it again.
    prepared: Mutex<HashMap<String, PreparedJob>>,
    running: AtomicU64,
    workers: usize,
    backend: String,
    policy: QueuePolicy,
    retention: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("workers", &self.workers)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Runner {
    pub fn new(
        queue: Queue,
        db: Arc<Db>,
        metrics: Arc<Metrics>,
        workers: usize,
        backend: String,
        policy: QueuePolicy,
        retention: Duration,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            queue,
            db,
            slots: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            running: AtomicU64::new(0),
            workers,
            backend,
            policy,
            retention,
            metrics,
        })
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn policy(&self) -> &QueuePolicy {
        &self.policy
    }

    pub async fn queued(&self) -> u64 {
        self.queue.queued().await.unwrap_or(0)
    }

    /// Jobs this server's in-process workers are running.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues a prepared job; its slot follows it. A full queue is a
    /// `queue_full` error and queues nothing.
    pub async fn submit(
        &self,
        job: PreparedJob,
        request_json: String,
        requires: &crate::types::JobRequires,
    ) -> Result<(String, watch::Receiver<JobState>), ApiError> {
        let id = job.id().to_owned();
        let waiting = self.queue.queued().await.map_err(ApiError::internal)?;
        if waiting >= self.policy.capacity as u64 {
            let wait = 1 + waiting / self.workers.max(1) as u64;
            return Err(ApiError::new(
                ErrorCode::QueueFull,
                format!("the job queue is full ({waiting} waiting); retry in {wait} s"),
            )
            .retry_after(wait));
        }
        let new = NewJob {
            id: id.clone(),
            cache_key: job.cache_key().to_owned(),
            request: request_json,
            requires: Requirements {
                labels: requires.labels.clone(),
                arch: requires.arch.clone(),
                image: Some(job.image_digest().to_owned()),
                backend: Some(self.backend.clone()),
            },
            max_attempts: self.policy.max_attempts,
        };
        let (state, rx) = watch::channel(JobState::Queued { position: waiting });
        self.insert(id.clone(), state);
        self.prepared
            .lock()
            .expect("prepared lock")
            .insert(id.clone(), job);
        if let Err(e) = self.queue.enqueue(&new).await {
            self.prepared.lock().expect("prepared lock").remove(&id);
            self.slots.lock().expect("slots lock").remove(&id);
            return Err(ApiError::internal(e));
        }
        self.metrics.queued.set((waiting + 1) as i64);
        Ok((id, rx))
    }

    /// Registers a job that is already finished (a cache hit), so that it can be
    /// followed like any other.
    pub fn finished(&self, id: String, response: RunResponse) -> watch::Receiver<JobState> {
        let (state, rx) = watch::channel(JobState::Done(Arc::new(response)));
        self.insert(id, state);
        rx
    }

    fn insert(&self, id: String, state: watch::Sender<JobState>) {
        let mut slots = self.slots.lock().expect("slots lock");
        slots.insert(
            id,
            Slot {
                state,
                created: Instant::now(),
            },
        );
        if slots.len() > MAX_FINISHED {
            prune(&mut slots, self.retention, MAX_FINISHED);
        }
    }

    fn set(&self, id: &str, state: JobState) {
        let mut slots = self.slots.lock().expect("slots lock");
        if state.is_final() {
            // Claimed elsewhere, or ended: its plan (and store lease) is not needed.
            self.prepared.lock().expect("prepared lock").remove(id);
        }
        if let Some(slot) = slots.get_mut(id) {
            if state.is_final() {
                // Retention counts from the end of the job.
                slot.created = Instant::now();
            }
            slot.state.send_replace(state);
        }
    }

    /// Drops finished jobs older than the retention time (here and in the queue).
    pub async fn prune(&self) {
        {
            let mut slots = self.slots.lock().expect("slots lock");
            prune(&mut slots, self.retention, MAX_FINISHED);
        }
        let before = runbox_queue::now_ms() - self.retention.as_millis() as i64;
        if let Err(e) = self.queue.prune(before).await {
            tracing::warn!(error = %e, "pruning finished jobs failed");
        }
    }

    /// Follows a job submitted here.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<JobState>> {
        let slots = self.slots.lock().expect("slots lock");
        slots.get(id).map(|s| s.state.subscribe())
    }

    /// A job's state from the queue (a job submitted through another server).
    pub async fn lookup(&self, id: &str) -> Result<Option<JobState>, ApiError> {
        let row = self.queue.get(id).await.map_err(ApiError::internal)?;
        Ok(row.map(|r| state_of(&r)))
    }

    /// A job's state as the API shows it.
    pub fn info(&self, id: &str, state: &JobState) -> JobInfo {
        JobInfo {
            id: id.to_owned(),
            status: state.phase(),
            position: match state {
                JobState::Queued { position } => Some(*position),
                _ => None,
            },
            response: match state {
                JobState::Done(r) => Some((**r).clone()),
                JobState::Cancelled(Some(r)) => Some((**r).clone()),
                _ => None,
            },
            error: match state {
                JobState::Failed(e) => Some(e.clone()),
                JobState::Cancelled(None) => Some(ErrorBody {
                    code: ErrorCode::Cancelled,
                    message: "the job was cancelled before it ran".into(),
                }),
                _ => None,
            },
        }
    }

    /// Cancels a job: at once when it waits, else through its worker.
    pub async fn cancel(&self, id: &str) -> Result<runbox_queue::Cancel, ApiError> {
        let r = self.queue.cancel(id).await.map_err(ApiError::internal)?;
        if r == runbox_queue::Cancel::Cancelled {
            self.prepared.lock().expect("prepared lock").remove(id);
            self.set(id, JobState::Cancelled(None));
        }
        Ok(r)
    }

    /// A worker started a job.
    pub async fn start(&self, claim: &Claim, worker_id: &str) -> Result<bool, Unreachable> {
        let ok = self
            .queue
            .start(&claim.job_id, worker_id, &claim.lease_id)
            .await
            .map_err(unreachable)?;
        if ok {
            self.set(&claim.job_id, JobState::Running);
        }
        Ok(ok)
    }

    /// A worker reports how a job ended: stored once (the queue decides), and
    /// then cached, counted, and told to whoever waits for it here.
    pub async fn complete(
        &self,
        claim: &Claim,
        worker_id: &str,
        outcome: &Outcome,
    ) -> Result<Finished, Unreachable> {
        let finished = self
            .queue
            .finish(&claim.job_id, worker_id, &claim.lease_id, outcome)
            .await
            .map_err(unreachable)?;
        if finished != Finished::Stored {
            tracing::info!(job_id = %claim.job_id, worker_id, answer = ?finished, "a result was not stored");
            return Ok(finished);
        }
        let id = &claim.job_id;
        let key = &claim.cache_key;
        let state = match outcome {
            Outcome::Done(json) => match serde_json::from_str::<JobResult>(json) {
                Ok(result) => {
                    self.metrics.job_done(result.status.as_str());
                    self.metrics
                        .job_seconds
                        .observe(result.timings.total_ms / 1000.0);
                    // A job stopped by its wall-clock limit may finish another time,
                    // on a less busy machine: it is kept for its permalink, never
                    // served from the cache.
                    let cacheable = !result.limits_hit.contains(&LimitKind::WallTime);
                    if let Err(e) = self.db.store(key, &claim.request, json, cacheable).await {
                        // The answer still goes out; only its permalink is lost.
                        tracing::error!(job_id = %id, error = %e, "storing a result failed");
                    }
                    tracing::info!(job_id = %id, key = %key, worker_id, status = result.status.as_str(),
                        total_ms = result.timings.total_ms, "job done");
                    JobState::Done(Arc::new(response(key, result)))
                }
                Err(e) => JobState::Failed(ErrorBody {
                    code: ErrorCode::Internal,
                    message: format!("the worker's result is unreadable: {e}"),
                }),
            },
            Outcome::Failed(json) => {
                self.metrics.job_done("error");
                let e = error_body(json);
                tracing::warn!(job_id = %id, worker_id, error = %e.message, "job could not run");
                JobState::Failed(e)
            }
            Outcome::Cancelled(partial) => {
                self.metrics.job_done("cancelled");
                let partial = partial
                    .as_deref()
                    .and_then(|j| serde_json::from_str::<JobResult>(j).ok())
                    .map(|r| Arc::new(response(key, r)));
                tracing::info!(job_id = %id, worker_id, "job cancelled");
                JobState::Cancelled(partial)
            }
        };
        self.set(id, state);
        Ok(finished)
    }

    /// Brings the slots of jobs not yet final in line with the queue: leases
    /// that expired (back to queued, or failed), and jobs other servers'
    /// workers finished.
    pub async fn sync(&self) {
        let open: Vec<(String, JobPhase)> = {
            let slots = self.slots.lock().expect("slots lock");
            slots
                .iter()
                .filter_map(|(id, s)| {
                    let st = s.state.borrow();
                    (!st.is_final()).then(|| (id.clone(), st.phase()))
                })
                .collect()
        };
        for (id, phase) in open {
            let row = match self.queue.get(&id).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the queue failed");
                    return;
                }
            };
            let now = state_of(&row);
            let moved = match (&now, phase) {
                (s, _) if s.is_final() => true,
                (JobState::Queued { .. }, JobPhase::Running) => true,
                (JobState::Running, JobPhase::Queued) => true,
                _ => false,
            };
            if moved {
                self.set(&id, now);
            }
        }
    }

    /// Jobs that expired: re-queued, failed or cancelled (every server does
    /// this; the queue's updates make doing it twice harmless).
    pub async fn reap(&self) {
        match self.queue.reap(runbox_queue::now_ms()).await {
            Ok(r) => {
                for id in &r.requeued {
                    tracing::warn!(job_id = %id, "lease expired: job re-queued");
                }
                for id in &r.failed {
                    tracing::warn!(job_id = %id, "lease expired with no attempts left: job failed");
                    self.metrics.job_done("error");
                }
                if !(r.requeued.is_empty() && r.failed.is_empty() && r.cancelled.is_empty()) {
                    self.sync().await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
    }
}

fn response(key: &str, result: JobResult) -> RunResponse {
    RunResponse {
        permalink: format!("/r/{key}"),
        key: key.to_owned(),
        cached: false,
        result,
    }
}

fn error_body(json: &str) -> ErrorBody {
    serde_json::from_str(json).unwrap_or_else(|_| ErrorBody {
        code: ErrorCode::Internal,
        message: json.to_owned(),
    })
}

fn unreachable(e: runbox_queue::QueueError) -> Unreachable {
    Unreachable(e.to_string())
}

/// What the API shows for a queue row.
fn state_of(row: &JobRow) -> JobState {
    use runbox_queue::JobState as Q;
    let result = || {
        row.result
            .as_deref()
            .and_then(|j| serde_json::from_str::<JobResult>(j).ok())
            .map(|r| Arc::new(response(&row.cache_key, r)))
    };
    match row.state {
        Q::Queued => JobState::Queued { position: 0 },
        Q::Claimed | Q::Running => JobState::Running,
        Q::Done => match result() {
            Some(r) => JobState::Done(r),
            None => JobState::Failed(ErrorBody {
                code: ErrorCode::Internal,
                message: "the job's stored result is unreadable".into(),
            }),
        },
        Q::Failed => JobState::Failed(error_body(row.error.as_deref().unwrap_or("{}"))),
        Q::Cancelled => JobState::Cancelled(result()),
    }
}

fn prune(slots: &mut HashMap<String, Slot>, retention: Duration, max: usize) {
    slots.retain(|_, s| !s.state.borrow().is_final() || s.created.elapsed() < retention);
    if slots.len() > max {
        let mut finished: Vec<(Instant, String)> = slots
            .iter()
            .filter(|(_, s)| s.state.borrow().is_final())
            .map(|(id, s)| (s.created, id.clone()))
            .collect();
        finished.sort();
        for (_, id) in finished.into_iter().take(slots.len() - max) {
            slots.remove(&id);
        }
    }
}

/// The server's own workers' coordinator: the queue, directly.
#[derive(Debug, Clone)]
pub struct LocalCoordinator {
    pub runner: Arc<Runner>,
    pub worker_id: String,
}

impl Coordinator for LocalCoordinator {
    async fn claim(
        &self,
        caps: &Capabilities,
        wait: Duration,
    ) -> Result<Option<Claim>, Unreachable> {
        let r = &self.runner;
        let claim = r
            .queue
            .claim_wait(&self.worker_id, caps, r.policy.lease, wait, r.policy.poll)
            .await
            .map_err(unreachable)?;
        if claim.is_some() {
            r.metrics.queued.set(r.queued().await as i64);
        }
        Ok(claim)
    }

    async fn start(&self, claim: &Claim) -> Result<bool, Unreachable> {
        let ok = self.runner.start(claim, &self.worker_id).await?;
        if ok {
            let n = self.runner.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.runner.metrics.running.set(n as i64);
        }
        Ok(ok)
    }

    async fn heartbeat(&self, claim: &Claim) -> Result<Heartbeat, Unreachable> {
        self.runner
            .queue
            .heartbeat(
                &claim.job_id,
                &self.worker_id,
                &claim.lease_id,
                self.runner.policy.lease,
            )
            .await
            .map_err(unreachable)
    }

    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Finished, Unreachable> {
        let r = self.runner.complete(claim, &self.worker_id, &outcome).await;
        if r.is_ok() {
            // (An unreachable database is retried: the job is still running.)
            let n = self
                .runner
                .running
                .fetch_sub(1, Ordering::SeqCst)
                .saturating_sub(1);
            self.runner.metrics.running.set(n as i64);
        }
        r
    }

    fn prepared(&self, claim: &Claim) -> Option<PreparedJob> {
        self.runner
            .prepared
            .lock()
            .expect("prepared lock")
            .remove(&claim.job_id)
    }
}
