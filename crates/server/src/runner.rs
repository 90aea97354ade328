//! The in-process job queue and its workers.
//!
//! A bounded FIFO channel feeds `workers` OS threads (a job is blocking work:
//! forks, waits, file I/O). A full queue refuses new jobs at once (503 with
//! Retry-After) instead of letting latency grow without bound. Every job has a
//! slot in a registry whose state (queued, running, done, failed) is a
//! `watch` channel: `POST /api/run` awaits it, `GET /api/jobs/{id}` reads it,
//! and the SSE stream follows it. Finished slots are kept for the retention
//! time, and their number is capped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runbox_core::{ErrorBody, ErrorCode, LimitKind};
use runbox_engine::{Engine, PreparedJob};
use runbox_sandbox::NoEvents;
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
    /// `seq` orders the queue: jobs ahead = seq - started.
    Queued {
        seq: u64,
    },
    Running,
    Done(Arc<RunResponse>),
    Failed(ErrorBody),
}

impl JobState {
    pub fn phase(&self) -> JobPhase {
        match self {
            JobState::Queued { .. } => JobPhase::Queued,
            JobState::Running => JobPhase::Running,
            JobState::Done(_) => JobPhase::Done,
            JobState::Failed(_) => JobPhase::Failed,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, JobState::Done(_) | JobState::Failed(_))
    }
}

struct Slot {
    state: watch::Sender<JobState>,
    created: Instant,
}

struct Task {
    job: PreparedJob,
    /// The request as stored with the result (for the permalink).
    request_json: String,
    state: watch::Sender<JobState>,
}

pub struct Runner {
    tx: crossbeam_channel::Sender<Task>,
    slots: Mutex<HashMap<String, Slot>>,
    enqueued: AtomicU64,
    started: AtomicU64,
    running: AtomicU64,
    workers: usize,
    retention: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Starts `workers` threads taking jobs from a queue of `capacity`.
    pub fn start(
        engine: Arc<Engine>,
        db: Arc<Db>,
        metrics: Arc<Metrics>,
        workers: usize,
        capacity: usize,
        retention: Duration,
        rt: tokio::runtime::Handle,
    ) -> Arc<Runner> {
        let (tx, rx) = crossbeam_channel::bounded::<Task>(capacity);
        let runner = Arc::new(Runner {
            tx,
            slots: Mutex::new(HashMap::new()),
            enqueued: AtomicU64::new(0),
            started: AtomicU64::new(0),
            running: AtomicU64::new(0),
            workers,
            retention,
            metrics,
        });
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let engine = engine.clone();
            let db = db.clone();
            let rt = rt.clone();
            let me = Arc::downgrade(&runner);
            std::thread::Builder::new()
                .name(format!("worker-{n}"))
                .spawn(move || {
                    // Ends when the runner (every sender) is gone.
                    while let Ok(task) = rx.recv() {
                        let Some(runner) = me.upgrade() else { break };
                        runner.work(&engine, &db, &rt, task);
                    }
                })
                .expect("spawning a worker thread");
        }
        runner
    }

    pub fn queued(&self) -> u64 {
        self.enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(self.started.load(Ordering::Relaxed))
    }

    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues a prepared job; its state channel follows it. A full queue is a
    /// `queue_full` error and queues nothing.
    pub fn submit(
        &self,
        job: PreparedJob,
        request_json: String,
    ) -> Result<(String, watch::Receiver<JobState>), ApiError> {
        let id = job.id().to_owned();
        let seq = self.enqueued.fetch_add(1, Ordering::SeqCst);
        let (state, rx) = watch::channel(JobState::Queued { seq });
        let task = Task {
            job,
            request_json,
            state: state.clone(),
        };
        if let Err(e) = self.tx.try_send(task) {
            // Not queued: undo the count. The task (and its store lease) drops here.
            self.enqueued.fetch_sub(1, Ordering::SeqCst);
            let why = match e {
                crossbeam_channel::TrySendError::Full(_) => "the job queue is full",
                crossbeam_channel::TrySendError::Disconnected(_) => "the workers have stopped",
            };
            let wait = 1 + self.queued() / self.workers.max(1) as u64;
            return Err(
                ApiError::new(ErrorCode::QueueFull, format!("{why}; retry in {wait} s"))
                    .retry_after(wait),
            );
        }
        self.metrics.queued.set(self.queued() as i64);
        self.insert(id.clone(), state);
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

    /// Drops finished jobs older than the retention time.
    pub fn prune(&self) {
        let mut slots = self.slots.lock().expect("slots lock");
        prune(&mut slots, self.retention, MAX_FINISHED);
    }

    /// Follows a job by id.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<JobState>> {
        let slots = self.slots.lock().expect("slots lock");
        slots.get(id).map(|s| s.state.subscribe())
    }

    /// A job's state as the API shows it.
    pub fn info(&self, id: &str, state: &JobState) -> JobInfo {
        let started = self.started.load(Ordering::Relaxed);
        JobInfo {
            id: id.to_owned(),
            status: state.phase(),
            position: match state {
                JobState::Queued { seq } => Some(seq.saturating_sub(started)),
                _ => None,
            },
            response: match state {
                JobState::Done(r) => Some((**r).clone()),
                _ => None,
            },
            error: match state {
                JobState::Failed(e) => Some(e.clone()),
                _ => None,
            },
        }
    }

    fn work(&self, engine: &Engine, db: &Db, rt: &tokio::runtime::Handle, task: Task) {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        self.metrics.queued.set(self.queued() as i64);
        self.metrics.running.set(self.running() as i64);
        task.state.send_replace(JobState::Running);
        let id = task.job.id().to_owned();
        let key = task.job.cache_key().to_owned();
        let t = Instant::now();
        let outcome = engine.execute(task.job, &mut NoEvents);
        self.metrics.job_seconds.observe(t.elapsed().as_secs_f64());
        let state = match outcome {
            Ok(result) => {
                self.metrics.job_done(result.status.as_str());
                // A job stopped by its wall-clock limit may finish another time, on
                // a less busy machine: it is kept for its permalink, never served
                // from the cache.
                let cacheable = !result.limits_hit.contains(&LimitKind::WallTime);
                let stored = match serde_json::to_string(&result) {
                    Ok(json) => rt.block_on(db.store(&key, &task.request_json, &json, cacheable)),
                    Err(e) => Err(sqlx::Error::Protocol(e.to_string())),
                };
                if let Err(e) = stored {
                    // The job's answer still goes out; only its permalink is lost.
                    tracing::error!(job_id = %id, error = %e, "storing a result failed");
                }
                tracing::info!(
                    job_id = %id,
                    key = %key,
                    status = result.status.as_str(),
                    total_ms = result.timings.total_ms,
                    "job done"
                );
                JobState::Done(Arc::new(RunResponse {
                    permalink: format!("/r/{key}"),
                    key,
                    cached: false,
                    result,
                }))
            }
            Err(e) => {
                self.metrics.job_done("error");
                tracing::warn!(job_id = %id, error = %e, "job could not run");
                JobState::Failed(ErrorBody {
                    code: e.code(),
                    message: e.to_string(),
                })
            }
        };
        task.state.send_replace(state);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.metrics.running.set(self.running() as i64);
        if let Some(slot) = self.slots.lock().expect("slots lock").get_mut(&id) {
            // Retention counts from the end of the job.
            slot.created = Instant::now();
        }
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
