//! The job queue shared by `runbox serve` and its workers, in SQLite (one
//! server, the default) or PostgreSQL (several servers behind a load balancer
//! sharing one queue). In-process workers and remote `runbox worker`s go
//! through the same calls.
//!
//! A job's life:
//!
//! ```text
//! queued ──claim──▶ claimed ──start──▶ running ──finish──▶ done | failed
//!   │  ▲               │                  │
//!   │  └──lease expired (attempts left)───┘
//!   └─cancel─▶ cancelled   (claimed/running: cancel_requested, seen on heartbeat)
//! ```
//!
//! **Claims are race-free**: on PostgreSQL candidates are locked with `FOR
//! UPDATE SKIP LOCKED`, so concurrent claimers never wait on or take the same
//! row; on SQLite, whose writers are serialized, the claim is a conditional
//! `UPDATE ... WHERE state = 'queued'` and only the claimer whose update
//! changed the row owns it. Either way a claim hands out a fresh random lease
//! id: every later call of the worker names it, so a worker whose lease was
//! lost (and the job given to another) can no longer touch the job.
//!
//! **Leases**: a claim holds the job until `lease_expires_ms`; heartbeats push
//! it forward. [`Queue::reap`] (run by every server's housekeeping) puts jobs
//! whose lease expired back in the queue while they have attempts left, and
//! fails them (`worker_lost`) after the last one; a job whose cancellation was
//! requested is cancelled instead.
//!
//! **Results are final once**: [`Queue::finish`] changes only a job still held
//! under the given lease. A repeat of the same submission, a late one after
//! the lease was lost, or one for a job already final changes nothing and says
//! which it was.
//!
//! Times are milliseconds since the Unix epoch from the caller's clock (servers
//! sharing a PostgreSQL queue are expected to keep their clocks in sync, as
//! with any lease system).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::Notify;

mod schema;

/// Errors of the queue: the database's, or a malformed stored value.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the queue database {0}")]
    Schema(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Which database holds the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Claimed,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Claimed => "claimed",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

impl FromStr for JobState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobState::Queued,
            "claimed" => JobState::Claimed,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(QueueError::Invalid(format!("unknown job state {other:?}"))),
        })
    }
}

/// What a worker must have to be given a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Every one of these labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// This CPU architecture (`x86_64`, `aarch64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// This sandbox backend (`namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The image, by manifest digest, in the worker's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// What a worker has, as it advertises when it claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub backend: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Manifest digests of the images in its store.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
}

impl Capabilities {
    /// Whether a job with these requirements may be given to this worker.
    pub fn satisfy(&self, r: &Requirements) -> bool {
        r.labels.iter().all(|l| self.labels.contains(l))
            && r.arch.as_ref().is_none_or(|a| *a == self.arch)
            && r.backend.as_ref().is_none_or(|b| *b == self.backend)
            && r.image.as_ref().is_none_or(|i| self.images.contains(i))
    }
}

/// A job to put in the queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    /// The result-cache key of the job.
    pub cache_key: String,
    /// What the worker runs: the request as the API received it (JSON).
    pub request: String,
    pub requires: Requirements,
    /// Claims allowed before the job fails (at least 1).
    pub max_attempts: u32,
}

/// A job as the queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub cache_key: String,
    pub request: String,
    pub requires: Requirements,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub worker_id: Option<String>,
    pub lease_id: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub cancel_requested: bool,
    pub created_ms: i64,
    pub claimed_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// When done: the JobResult (JSON).
    pub result: Option<String>,
    /// When failed (or cancelled before running): `{"code", "message"}` (JSON).
    pub error: Option<String>,
}

/// A job given to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub job_id: String,
    pub lease_id: String,
    pub lease_expires_ms: i64,
    /// 1 for the first claim of the job.
    pub attempt: u32,
    pub cache_key: String,
    pub request: String,
    pub requires: Requirements,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease now runs until this time; `cancel` asks the worker to stop the job.
    Renewed { lease_expires_ms: i64, cancel: bool },
    /// The job is no longer this lease's (expired and re-queued, or final).
    LeaseLost,
}

/// How a job ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran: the JobResult (JSON).
    Done(String),
    /// It could not run: `{"code", "message"}` (JSON).
    Failed(String),
    /// It was stopped on request; the partial JobResult (JSON), if any.
    Cancelled(Option<String>),
}

/// What [`Queue::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The outcome is now the job's final state.
    Stored,
    /// The same lease had already finished the job: a repeat, ignored.
    Duplicate,
    /// The job had become final otherwise (another worker's result, a
    /// cancellation, a lost-lease failure): ignored.
    AlreadyFinal,
    /// The lease was lost and the job is back in the queue or held by another
    /// worker: ignored.
    LeaseLost,
    NotFound,
}

/// What [`Queue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// It was waiting: it is cancelled and will never run.
    Cancelled,
    /// It is claimed or running: its worker is told on its next heartbeat.
    Requested,
    /// It had already ended.
    AlreadyFinal,
    NotFound,
}

/// What [`Queue::reap`] did with jobs whose lease expired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub requeued: Vec<String>,
    pub failed: Vec<String>,
    pub cancelled: Vec<String>,
}

/// A worker allowed to claim jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// As last advertised (JSON).
    pub capabilities: Option<String>,
}

enum Batch {
    Claimed(Claim),
    Next((i64, String)),
    Exhausted,
}

/// Prefix of worker tokens, so a leaked one is recognisable (and greppable).
pub const TOKEN_PREFIX: &str = "rbw_";

/// The queue: a database pool plus a local wake-up for claimers waiting in
/// this process.
#[derive(Debug, Clone)]
pub struct Queue {
    pool: AnyPool,
    dialect: Dialect,
    wake: Arc<Notify>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn new_secret(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// The stored form of a worker token: tokens carry 256 random bits, so a fast
/// hash is enough (nothing to brute-force), and lookups stay a single indexed
/// query.
fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

const JOB_COLUMNS: &str = "id, cache_key, request, requires, state, attempts, max_attempts, \
     worker_id, lease_id, lease_expires_ms, cancel_requested, created_ms, claimed_ms, \
     started_ms, finished_ms, result, error";

fn job_row(r: &AnyRow) -> Result<JobRow> {
    let requires: String = r.try_get("requires")?;
    let state: String = r.try_get("state")?;
    Ok(JobRow {
        id: r.try_get("id")?,
        cache_key: r.try_get("cache_key")?,
        request: r.try_get("request")?,
        requires: serde_json::from_str(&requires)
            .map_err(|e| QueueError::Invalid(format!("job requirements: {e}")))?,
        state: state.parse()?,
        attempts: r.try_get::<i64, _>("attempts")? as u32,
        max_attempts: r.try_get::<i64, _>("max_attempts")? as u32,
        worker_id: r.try_get("worker_id")?,
        lease_id: r.try_get("lease_id")?,
        lease_expires_ms: r.try_get("lease_expires_ms")?,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        created_ms: r.try_get("created_ms")?,
        claimed_ms: r.try_get("claimed_ms")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        result: r.try_get("result")?,
        error: r.try_get("error")?,
    })
}

fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"code": code, "message": message}).to_string()
}

impl Queue {
    /// Opens the queue at `url` (`sqlite:///path/to/runbox.db` or
    /// `postgres://...`), creating its tables when missing and refusing a
    /// database made by an incompatible version.
    pub async fn open(url: &str) -> Result<Queue> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(QueueError::Invalid(format!(
                "{url}: the database URL must start with sqlite:// or postgres://"
            )));
        };
        let mut opts = AnyConnectOptions::from_str(url)?;
        opts = sqlx::ConnectOptions::log_statements(opts, tracing::log::LevelFilter::Trace);
        let pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 4,
                Dialect::Postgres => 8,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL: no fsync
                        // per commit (a power cut may lose the last commits, never
                        // corrupt); a writer waits up to 5 s for another's lock.
                        sqlx::Executor::execute(
                            &mut *conn,
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        schema::migrate(&pool, dialect).await?;
        Ok(Queue {
            pool,
            dialect,
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool, for the server's other tables in the same database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Adds a job; claimers waiting in this process wake up.
    pub async fn enqueue(&self, job: &NewJob) -> Result<()> {
        if job.max_attempts == 0 {
            return Err(QueueError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
        let requires =
            serde_json::to_string(&job.requires).map_err(|e| QueueError::Invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO jobs (id, cache_key, request, requires, state, attempts, max_attempts, \
             cancel_requested, created_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $5, 0, $6)",
        )
        .bind(&job.id)
        .bind(&job.cache_key)
        .bind(&job.request)
        .bind(requires)
        .bind(i64::from(job.max_attempts))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.wake.notify_waiters();
        Ok(())
    }

    /// Gives the oldest queued job this worker can run to `worker_id`, under a
    /// new lease of `lease`; `None` when there is none.
    pub async fn claim(
        &self,
        worker_id: &str,
        caps: &Capabilities,
        lease: Duration,
    ) -> Result<Option<Claim>> {
        // Looked at in batches, oldest first: jobs this worker cannot run are
        // skipped, not waited on.
        let mut after = (i64::MIN, String::new());
        loop {
            let mut conn = self.pool.acquire().await?;
            let step = match self.dialect {
                // Candidates are locked (SKIP LOCKED: rows another claimer holds are
                // passed over, not waited for) until the transaction ends.
                Dialect::Postgres => {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    let step = self
                        .claim_batch(&mut tx, worker_id, caps, lease, &after)
                        .await?;
                    tx.commit().await?;
                    step
                }
                // No transaction: SQLite serializes writers, and a read-then-write
                // transaction would fail when another writer got in between.
                Dialect::Sqlite => {
                    self.claim_batch(&mut conn, worker_id, caps, lease, &after)
                        .await?
                }
            };
            match step {
                Batch::Claimed(c) => return Ok(Some(c)),
                Batch::Exhausted => return Ok(None),
                Batch::Next(cursor) => after = cursor,
            }
        }
    }

    /// Looks at one batch of queued jobs after `after` and claims the first this
    /// worker can run.
    async fn claim_batch(
        &self,
        conn: &mut sqlx::AnyConnection,
        worker_id: &str,
        caps: &Capabilities,
        lease: Duration,
        after: &(i64, String),
    ) -> Result<Batch> {
        const BATCH: i64 = 64;
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "SELECT id, requires, created_ms FROM jobs WHERE state = 'queued' \
             AND (created_ms > $1 OR (created_ms = $1 AND id > $2)) \
             ORDER BY created_ms, id LIMIT $3{lock}"
        ))
        .bind(after.0)
        .bind(&after.1)
        .bind(BATCH)
        .fetch_all(&mut *conn)
        .await?;
        let mut last = None;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let requires: String = r.try_get("requires")?;
            last = Some((r.try_get::<i64, _>("created_ms")?, id.clone()));
            let requires: Requirements = match serde_json::from_str(&requires) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "unreadable job requirements: skipped");
                    continue;
                }
            };
            if !caps.satisfy(&requires) {
                continue;
            }
            let now = now_ms();
            let lease_id = new_secret(16);
            let expires = now + lease.as_millis() as i64;
            // The state check makes the claim exclusive on SQLite (a claimer that
            // lost the race changes nothing and moves on); on PostgreSQL the row
            // is already locked by this transaction.
            let claimed = sqlx::query(&format!(
                "UPDATE jobs SET state = 'claimed', worker_id = $1, lease_id = $2, \
                 lease_expires_ms = $3, attempts = attempts + 1, claimed_ms = $4, \
                 started_ms = NULL WHERE id = $5 AND state = 'queued' RETURNING {JOB_COLUMNS}"
            ))
            .bind(worker_id)
            .bind(&lease_id)
            .bind(expires)
            .bind(now)
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = claimed {
                let job = job_row(&row)?;
                return Ok(Batch::Claimed(Claim {
                    job_id: job.id,
                    lease_id,
                    lease_expires_ms: expires,
                    attempt: job.attempts,
                    cache_key: job.cache_key,
                    request: job.request,
                    requires: job.requires,
                }));
            }
        }
        Ok(match last {
            Some(cursor) if rows.len() as i64 == BATCH => Batch::Next(cursor),
            _ => Batch::Exhausted,
        })
    }

    /// Waits up to `wait` for a job this worker can run (a long poll): wakes on
    /// jobs enqueued in this process at once, and looks again every `poll`
    /// for jobs other servers enqueued.
    pub async fn claim_wait(
        &self,
        worker_id: &str,
        caps: &Capabilities,
        lease: Duration,
        wait: Duration,
        poll: Duration,
    ) -> Result<Option<Claim>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an enqueue between the look and the
            // wait is not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(c) = self.claim(worker_id, caps, lease).await? {
                return Ok(Some(c));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let until = deadline.min(now + poll);
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Wakes claimers waiting in this process (after a re-queue).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Marks a claimed job as running (its sandbox is starting).
    pub async fn start(&self, job_id: &str, worker_id: &str, lease_id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'running', started_ms = $1 \
             WHERE id = $2 AND worker_id = $3 AND lease_id = $4 AND state = 'claimed'",
        )
        .bind(now_ms())
        .bind(job_id)
        .bind(worker_id)
        .bind(lease_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Renews a lease for another `lease`.
    pub async fn heartbeat(
        &self,
        job_id: &str,
        worker_id: &str,
        lease_id: &str,
        lease: Duration,
    ) -> Result<Heartbeat> {
        let expires = now_ms() + lease.as_millis() as i64;
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_ms = $1 WHERE id = $2 AND worker_id = $3 \
             AND lease_id = $4 AND state IN ('claimed', 'running') RETURNING cancel_requested",
        )
        .bind(expires)
        .bind(job_id)
        .bind(worker_id)
        .bind(lease_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Heartbeat::Renewed {
                lease_expires_ms: expires,
                cancel: r.try_get::<i64, _>("cancel_requested")? != 0,
            },
            None => Heartbeat::LeaseLost,
        })
    }

    /// Records how a job ended, if `lease_id` still holds it; otherwise changes
    /// nothing and says why.
    pub async fn finish(
        &self,
        job_id: &str,
        worker_id: &str,
        lease_id: &str,
        outcome: &Outcome,
    ) -> Result<Finished> {
        let (state, result, error) = match outcome {
            Outcome::Done(r) => ("done", Some(r.as_str()), None),
            Outcome::Failed(e) => ("failed", None, Some(e.as_str())),
            Outcome::Cancelled(r) => ("cancelled", r.as_deref(), None),
        };
        let changed = sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, error = $3, finished_ms = $4, \
             lease_expires_ms = NULL WHERE id = $5 AND worker_id = $6 AND lease_id = $7 \
             AND state IN ('claimed', 'running')",
        )
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .bind(job_id)
        .bind(worker_id)
        .bind(lease_id)
        .execute(&self.pool)
        .await?;
        if changed.rows_affected() == 1 {
            return Ok(Finished::Stored);
        }
        let Some(job) = self.get(job_id).await? else {
            return Ok(Finished::NotFound);
        };
        Ok(if job.state.is_final() {
            if job.lease_id.as_deref() == Some(lease_id)
                && job.worker_id.as_deref() == Some(worker_id)
            {
                Finished::Duplicate
            } else {
                Finished::AlreadyFinal
            }
        } else {
            Finished::LeaseLost
        })
    }

    /// Cancels a waiting job, or asks the worker running it to stop.
    pub async fn cancel(&self, job_id: &str) -> Result<Cancel> {
        let now = now_ms();
        let queued = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_ms = $1, cancel_requested = 1, \
             error = $2 WHERE id = $3 AND state = 'queued'",
        )
        .bind(now)
        .bind(error_json(
            "cancelled",
            "the job was cancelled before it started",
        ))
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        if queued.rows_affected() == 1 {
            return Ok(Cancel::Cancelled);
        }
        let held = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND state IN ('claimed', 'running')",
        )
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        if held.rows_affected() == 1 {
            return Ok(Cancel::Requested);
        }
        Ok(match self.get(job_id).await? {
            Some(_) => Cancel::AlreadyFinal,
            None => Cancel::NotFound,
        })
    }

    /// Deals with jobs whose lease expired before `now_ms`: back to the queue
    /// while attempts are left, else failed (`worker_lost`); cancelled when
    /// their cancellation was requested.
    pub async fn reap(&self, now_ms: i64) -> Result<Reaped> {
        let ids = |rows: Vec<AnyRow>| -> Result<Vec<String>> {
            rows.iter()
                .map(|r| r.try_get::<String, _>("id").map_err(QueueError::from))
                .collect()
        };
        let cancelled = ids(sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_ms = $1, lease_expires_ms = NULL, \
             error = $2 WHERE state IN ('claimed', 'running') AND lease_expires_ms < $1 \
             AND cancel_requested = 1 RETURNING id",
        )
        .bind(now_ms)
        .bind(error_json(
            "cancelled",
            "the job was cancelled; its worker stopped renewing its lease",
        ))
        .fetch_all(&self.pool)
        .await?)?;
        let requeued = ids(sqlx::query(
            "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_id = NULL, \
             lease_expires_ms = NULL, claimed_ms = NULL, started_ms = NULL \
             WHERE state IN ('claimed', 'running') AND lease_expires_ms < $1 \
             AND attempts < max_attempts RETURNING id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?)?;
        let failed = ids(sqlx::query(
            "UPDATE jobs SET state = 'failed', finished_ms = $1, lease_expires_ms = NULL, \
             error = $2 WHERE state IN ('claimed', 'running') AND lease_expires_ms < $1 \
             RETURNING id",
        )
        .bind(now_ms)
        .bind(error_json(
            "worker_lost",
            "every worker given this job stopped renewing its lease (crashed, stopped or \
             cut off) before reporting a result, and it has no attempts left",
        ))
        .fetch_all(&self.pool)
        .await?)?;
        if !requeued.is_empty() {
            self.wake();
        }
        Ok(Reaped {
            requeued,
            failed,
            cancelled,
        })
    }

    /// A job by id.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_row).transpose()
    }

    /// Jobs waiting to be claimed.
    pub async fn queued(&self) -> Result<u64> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get::<i64, _>("n")? as u64)
    }

    /// Drops final jobs that ended before `before_ms`.
    pub async fn prune(&self, before_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_ms < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    // ---- workers ----

    /// Creates a worker and its token. The token is returned once; only its
    /// hash is stored.
    pub async fn create_worker(&self, name: &str) -> Result<(Worker, String)> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(QueueError::Invalid(format!(
                "worker name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let token = format!("{TOKEN_PREFIX}{}", new_secret(32));
        let worker = Worker {
            id: new_secret(8),
            name: name.to_owned(),
            created_ms: now_ms(),
            revoked_ms: None,
            last_seen_ms: None,
            capabilities: None,
        };
        let r = sqlx::query(
            "INSERT INTO workers (id, name, token_hash, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&worker.id)
        .bind(&worker.name)
        .bind(token_hash(&token))
        .bind(worker.created_ms)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok((worker, token)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(QueueError::Invalid(
                format!("a worker named {name:?} exists already (revoke it, or pick another name)"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes a worker's token (by name or id): its next call is refused, and
    /// the jobs it holds go back to the queue when their leases expire.
    pub async fn revoke_worker(&self, name_or_id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE workers SET revoked_ms = $1 WHERE (name = $2 OR id = $2) AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(name_or_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The worker a token belongs to, unless unknown or revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Worker>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, name, created_ms, revoked_ms, last_seen_ms, capabilities FROM workers \
             WHERE token_hash = $1 AND revoked_ms IS NULL",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(worker_row).transpose()
    }

    /// Records what a worker advertised, and when it was last heard from.
    pub async fn seen(&self, worker_id: &str, caps: &Capabilities) -> Result<()> {
        let caps = serde_json::to_string(caps).map_err(|e| QueueError::Invalid(e.to_string()))?;
        sqlx::query("UPDATE workers SET last_seen_ms = $1, capabilities = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(caps)
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every worker, revoked ones included.
    pub async fn workers(&self) -> Result<Vec<Worker>> {
        let rows = sqlx::query(
            "SELECT id, name, created_ms, revoked_ms, last_seen_ms, capabilities FROM workers \
             ORDER BY created_ms, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_row).collect()
    }
}

fn worker_row(r: &AnyRow) -> Result<Worker> {
    Ok(Worker {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_ms: r.try_get("created_ms")?,
        revoked_ms: r.try_get("revoked_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        capabilities: r.try_get("capabilities")?,
    })
}
