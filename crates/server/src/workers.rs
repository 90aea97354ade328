//! The worker API (docs/workers.md): remote `runbox worker`s claim jobs with a
//! long poll, mark them started, renew their leases, and report how they
//! ended; and the admin endpoints that create, list and revoke their tokens.
//!
//! Every worker call carries `Authorization: Bearer rbw_...`, checked against
//! the queue's hashed tokens on each call, so a revoked token is refused at its
//! next call. A worker acts only on jobs it holds: the queue matches the job,
//! the worker's id and the lease id in one statement. Starts and results go
//! through the [`Runner`](crate::runner::Runner), exactly as the in-process
//! workers' do, so results are cached and local watchers see them the same
//! way.
//!
//! The worker endpoints are not rate-limited (a worker polls by design), but
//! their bodies are read within the server's body budget; the budget is given
//! back before a claim starts waiting.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use runbox_core::{ErrorBody, ErrorCode, JobResult};
use runbox_queue::{Capabilities, Claim, Finished, Heartbeat, Outcome, QueueError, Requirements};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::guard::require_admin;
use crate::AppState;

type St = State<Arc<AppState>>;

/// The longest claim wait a worker may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The claim wait when a worker names none.
pub const DEFAULT_WAIT_MS: u64 = 30_000;

// ---- bodies ----

/// What a worker has, as it advertises when it claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerCapabilities {
    /// The sandbox backend (`namespace`).
    pub backend: String,
    /// The CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Manifest digests of the images in its store.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
}

impl From<WorkerCapabilities> for Capabilities {
    fn from(c: WorkerCapabilities) -> Capabilities {
        Capabilities {
            backend: c.backend,
            arch: c.arch,
            cpus: c.cpus,
            memory_bytes: c.memory_bytes,
            images: c.images,
            labels: c.labels,
        }
    }
}

impl From<Capabilities> for WorkerCapabilities {
    fn from(c: Capabilities) -> WorkerCapabilities {
        WorkerCapabilities {
            backend: c.backend,
            arch: c.arch,
            cpus: c.cpus,
            memory_bytes: c.memory_bytes,
            images: c.images,
            labels: c.labels,
        }
    }
}

/// `POST /api/worker/claim`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimRequest {
    pub capabilities: WorkerCapabilities,
    /// How long to wait for a job (a long poll), at most 60000. Default 30000.
    #[serde(default = "default_wait")]
    pub wait_ms: u64,
}

fn default_wait() -> u64 {
    DEFAULT_WAIT_MS
}

/// What a worker must have to be given a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobRequirements {
    /// Every one of these labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The image by manifest digest: the worker runs the job in this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl From<Requirements> for JobRequirements {
    fn from(r: Requirements) -> JobRequirements {
        JobRequirements {
            labels: r.labels,
            arch: r.arch,
            backend: r.backend,
            image: r.image,
        }
    }
}

impl From<JobRequirements> for Requirements {
    fn from(r: JobRequirements) -> Requirements {
        Requirements {
            labels: r.labels,
            arch: r.arch,
            backend: r.backend,
            image: r.image,
        }
    }
}

/// A job given to a worker. Every later call about it names `lease_id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerClaim {
    pub job_id: String,
    pub lease_id: String,
    /// When the lease runs out unless renewed (the server's clock, ms since the
    /// Unix epoch).
    pub lease_expires_ms: i64,
    /// The lease's length: renew it (heartbeat) well within this.
    pub lease_ms: u64,
    /// 1 for the job's first claim.
    pub attempt: u32,
    /// The result-cache key the server computed: the worker's plan of the job
    /// must come to the same key.
    pub cache_key: String,
    /// The job, as the API received it: a `RunRequest` (documented as a plain
    /// object: the `RunRequest` schema, `JobSpec` with `additionalProperties:
    /// false` plus `cache` in an `allOf`, admits no body that has `cache`).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub requires: JobRequirements,
}

/// The lease a call is made under.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    pub lease_id: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// The lease now runs until this time (the server's clock).
    pub lease_expires_ms: i64,
    pub lease_ms: u64,
    /// The job was cancelled: stop it, and report it `cancelled`.
    pub cancel: bool,
}

/// How a job ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerOutcome {
    /// It ran (whatever its exit status).
    Done(JobResult),
    /// It could not run.
    Failed(ErrorBody),
    /// It was stopped on request; the partial result, when it had started.
    Cancelled(Option<JobResult>),
}

/// `POST /api/worker/jobs/{id}/result`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultRequest {
    pub lease_id: String,
    pub outcome: WorkerOutcome,
}

/// What became of a reported result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultAnswer {
    /// It is now the job's final state.
    Stored,
    /// The same lease had already reported: a repeat, ignored.
    Duplicate,
    /// The job had already ended otherwise (another worker's result, a
    /// cancellation, a lost lease): ignored.
    AlreadyFinal,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultResponse {
    pub finished: ResultAnswer,
}

/// `GET /api/worker/me`: whom a token belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerIdentity {
    pub id: String,
    pub name: String,
    /// The server's lease time.
    pub lease_ms: u64,
}

/// `POST /api/admin/workers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorker {
    /// 1-64 letters, digits, `-`, `_` or `.`; unique.
    pub name: String,
}

/// A new worker and its token (shown only this once; only a hash is stored).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedWorker {
    pub id: String,
    pub name: String,
    /// `rbw_...`: give it to the worker (`RUNBOX_WORKER_TOKEN`).
    pub token: String,
}

/// A worker, as the admin sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub name: String,
    /// ms since the Unix epoch.
    pub created_ms: i64,
    /// When its token was revoked.
    pub revoked_ms: Option<i64>,
    /// Its last claim.
    pub last_seen_ms: Option<i64>,
    /// As it last advertised them.
    pub capabilities: Option<WorkerCapabilities>,
}

impl From<runbox_queue::Worker> for WorkerInfo {
    fn from(w: runbox_queue::Worker) -> WorkerInfo {
        WorkerInfo {
            capabilities: w
                .capabilities
                .as_deref()
                .and_then(|c| serde_json::from_str::<Capabilities>(c).ok())
                .map(Into::into),
            id: w.id,
            name: w.name,
            created_ms: w.created_ms,
            revoked_ms: w.revoked_ms,
            last_seen_ms: w.last_seen_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    /// Revoked ones included, oldest first.
    pub workers: Vec<WorkerInfo>,
}

// ---- the worker calls ----

/// The worker a request's token belongs to.
async fn authenticate(s: &AppState, headers: &HeaderMap) -> ApiResult<runbox_queue::Worker> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "a worker call: send Authorization: Bearer rbw_... (create a token with \
                 `runbox workers create NAME`)",
            )
        })?;
    s.runner
        .queue()
        .authenticate(token)
        .await
        .map_err(queue_error)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the worker token is unknown or revoked: create one with `runbox workers create NAME`",
            )
        })
}

/// Reads a JSON body within the body budget (released on return).
async fn json_body<T: serde::de::DeserializeOwned>(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<T> {
    let (bytes, _permit) = s.bodies.read(headers, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))
}

fn queue_error(e: QueueError) -> ApiError {
    match e {
        QueueError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::new(ErrorCode::Io, other.to_string()),
    }
}

fn lease_lost(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::LeaseLost,
        format!(
            "job {id:?} is not held by this worker under that lease (the lease expired and the \
             job went back to the queue or to another worker, or it was never this worker's)"
        ),
    )
}

fn lease_ms(s: &AppState) -> u64 {
    s.runner.policy().lease.as_millis() as u64
}

/// Who this token is (a worker checks its token with this at start).
#[utoipa::path(get, path = "/api/worker/me", security(("worker" = [])),
    responses((status = 200, body = WorkerIdentity), (status = 401, body = ErrorResponse)))]
pub async fn me(State(s): St, headers: HeaderMap) -> ApiResult<Json<WorkerIdentity>> {
    let w = authenticate(&s, &headers).await?;
    Ok(Json(WorkerIdentity {
        id: w.id,
        name: w.name,
        lease_ms: lease_ms(&s),
    }))
}

/// Claim a job this worker can run, waiting up to `wait_ms` for one (a long
/// poll): 200 with the job, or 204 when none came in time (or the server is
/// stopping).
#[utoipa::path(post, path = "/api/worker/claim", request_body = ClaimRequest,
    security(("worker" = [])),
    responses((status = 200, body = WorkerClaim), (status = 204),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn claim(State(s): St, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let w = authenticate(&s, &headers).await?;
    let req: ClaimRequest = json_body(&s, &headers, body).await?;
    if req.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms {} is over the longest wait, {MAX_WAIT_MS}",
            req.wait_ms
        )));
    }
    let caps: Capabilities = req.capabilities.into();
    let queue = s.runner.queue();
    queue.seen(&w.id, &caps).await.map_err(queue_error)?;
    let policy = s.runner.policy();
    let mut stopping = s.stopping.clone();
    let claimed = tokio::select! {
        c = queue.claim_wait(&w.id, &caps, policy.lease, Duration::from_millis(req.wait_ms), policy.poll) => {
            c.map_err(queue_error)?
        }
        // The server is stopping: the worker asks again (elsewhere, or later).
        _ = stopping.wait_for(|v| *v) => None,
    };
    let Some(c) = claimed else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    s.metrics.queued.set(s.runner.queued().await as i64);
    tracing::Span::current().record("job_id", &c.job_id);
    tracing::info!(job_id = %c.job_id, worker = %w.name, attempt = c.attempt, "claimed by a remote worker");
    let request = serde_json::from_str(&c.request).map_err(ApiError::internal)?;
    Ok(Json(WorkerClaim {
        job_id: c.job_id,
        lease_id: c.lease_id,
        lease_expires_ms: c.lease_expires_ms,
        lease_ms: lease_ms(&s),
        attempt: c.attempt,
        cache_key: c.cache_key,
        request,
        requires: c.requires.into(),
    })
    .into_response())
}

/// The job as a [`Claim`] under `lease_id`, from the queue (`None`: no such job).
async fn claim_of(s: &AppState, id: &str, lease_id: &str) -> ApiResult<Option<Claim>> {
    let row = s.runner.queue().get(id).await.map_err(queue_error)?;
    Ok(row.map(|r| Claim {
        job_id: r.id,
        lease_id: lease_id.to_owned(),
        lease_expires_ms: r.lease_expires_ms.unwrap_or(0),
        attempt: r.attempts,
        cache_key: r.cache_key,
        request: r.request,
        requires: r.requires,
    }))
}

/// Mark a claimed job as running (its sandbox is starting). Repeating it is
/// harmless.
#[utoipa::path(post, path = "/api/worker/jobs/{id}/start", params(("id" = String, Path)),
    request_body = LeaseRequest, security(("worker" = [])),
    responses((status = 204), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn start(
    State(s): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let w = authenticate(&s, &headers).await?;
    let req: LeaseRequest = json_body(&s, &headers, body).await?;
    tracing::Span::current().record("job_id", &id);
    let Some(claim) = claim_of(&s, &id, &req.lease_id).await? else {
        return Err(lease_lost(&id));
    };
    if s.runner
        .start(&claim, &w.id)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(StatusCode::NO_CONTENT);
    }
    // A repeat (the first answer was lost) finds the job running under this lease.
    match s.runner.queue().get(&id).await.map_err(queue_error)? {
        Some(r)
            if r.state == runbox_queue::JobState::Running
                && r.worker_id.as_deref() == Some(&w.id)
                && r.lease_id.as_deref() == Some(&req.lease_id) =>
        {
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(lease_lost(&id)),
    }
}

/// Renew the lease on a job; the answer says whether it was cancelled.
#[utoipa::path(post, path = "/api/worker/jobs/{id}/heartbeat", params(("id" = String, Path)),
    request_body = LeaseRequest, security(("worker" = [])),
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn heartbeat(
    State(s): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<HeartbeatResponse>> {
    let w = authenticate(&s, &headers).await?;
    let req: LeaseRequest = json_body(&s, &headers, body).await?;
    tracing::Span::current().record("job_id", &id);
    let lease = s.runner.policy().lease;
    match s
        .runner
        .queue()
        .heartbeat(&id, &w.id, &req.lease_id, lease)
        .await
        .map_err(queue_error)?
    {
        Heartbeat::Renewed {
            lease_expires_ms,
            cancel,
        } => Ok(Json(HeartbeatResponse {
            lease_expires_ms,
            lease_ms: lease_ms(&s),
            cancel,
        })),
        Heartbeat::LeaseLost => Err(lease_lost(&id)),
    }
}

/// Report how a job ended. Stored only if this lease still holds the job;
/// repeating it is harmless (`duplicate`).
#[utoipa::path(post, path = "/api/worker/jobs/{id}/result", params(("id" = String, Path)),
    request_body = ResultRequest, security(("worker" = [])),
    responses((status = 200, body = ResultResponse), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 413, body = ErrorResponse)))]
pub async fn result(
    State(s): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ResultResponse>> {
    let w = authenticate(&s, &headers).await?;
    let req: ResultRequest = json_body(&s, &headers, body).await?;
    tracing::Span::current().record("job_id", &id);
    let Some(claim) = claim_of(&s, &id, &req.lease_id).await? else {
        return Err(lease_lost(&id));
    };
    // The sandbox's own id is the worker's; the job is known by the queue's.
    let json = |mut r: JobResult| {
        r.job_id = id.clone();
        serde_json::to_string(&r).map_err(ApiError::internal)
    };
    let outcome = match req.outcome {
        WorkerOutcome::Done(r) => Outcome::Done(json(r)?),
        WorkerOutcome::Failed(e) => {
            Outcome::Failed(serde_json::to_string(&e).map_err(ApiError::internal)?)
        }
        WorkerOutcome::Cancelled(r) => Outcome::Cancelled(r.map(json).transpose()?),
    };
    let finished = s
        .runner
        .complete(&claim, &w.id, &outcome)
        .await
        .map_err(ApiError::internal)?;
    let answer = match finished {
        Finished::Stored => ResultAnswer::Stored,
        Finished::Duplicate => ResultAnswer::Duplicate,
        Finished::AlreadyFinal => ResultAnswer::AlreadyFinal,
        Finished::LeaseLost | Finished::NotFound => return Err(lease_lost(&id)),
    };
    tracing::info!(job_id = %id, worker = %w.name, answer = ?answer, "a remote worker reported");
    Ok(Json(ResultResponse { finished: answer }))
}

// ---- admin ----

/// Create a worker and its token (admin). The token is in this answer only.
#[utoipa::path(post, path = "/api/admin/workers", request_body = NewWorker,
    security(("admin" = [])),
    responses((status = 201, body = CreatedWorker), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse)))]
pub async fn create_worker(
    State(s): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<CreatedWorker>)> {
    require_admin(&headers, &s.admin_token)?;
    let req: NewWorker = json_body(&s, &headers, body).await?;
    let (w, token) = s
        .runner
        .queue()
        .create_worker(&req.name)
        .await
        .map_err(queue_error)?;
    tracing::info!(worker = %w.name, id = %w.id, "worker token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWorker {
            id: w.id,
            name: w.name,
            token,
        }),
    ))
}

/// List the workers, revoked ones included (admin).
#[utoipa::path(get, path = "/api/admin/workers", security(("admin" = [])),
    responses((status = 200, body = WorkerList), (status = 401, body = ErrorResponse)))]
pub async fn list_workers(State(s): St, headers: HeaderMap) -> ApiResult<Json<WorkerList>> {
    require_admin(&headers, &s.admin_token)?;
    let workers = s.runner.queue().workers().await.map_err(queue_error)?;
    Ok(Json(WorkerList {
        workers: workers.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke a worker's token, by name or id (admin): its next call is refused,
/// and the jobs it holds return to the queue when their leases expire.
#[utoipa::path(delete, path = "/api/admin/workers/{name}", params(("name" = String, Path)),
    security(("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn revoke_worker(
    State(s): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&headers, &s.admin_token)?;
    if s.runner
        .queue()
        .revoke_worker(&name)
        .await
        .map_err(queue_error)?
    {
        tracing::info!(worker = %name, "worker token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no worker {name:?} with a live token (see GET /api/admin/workers)"
        )))
    }
}
