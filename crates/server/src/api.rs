//! The `/api` handlers: a thin layer over the engine, the runner and the
//! database. Everything that can be refused is refused here, before a job is
//! queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::Stream;
use runbox_core::{ErrorCode, InputFile, JobResult};
use runbox_engine::{EngineError, PreparedJob};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::guard::{client_ip, require_admin};
use crate::runner::JobState;
use crate::types::*;
use crate::AppState;

type St = State<Arc<AppState>>;

/// Most parts of a multipart request.
const MAX_PARTS: usize = 256;

/// List the catalog's programs.
#[utoipa::path(get, path = "/api/programs", params(ProgramFilter),
    responses((status = 200, body = ProgramList), (status = 400, body = ErrorResponse)))]
pub async fn programs(State(s): St, Query(f): Query<ProgramFilter>) -> Json<ProgramList> {
    let q = runbox_catalog::Query {
        category: f.category,
        accepts: f.accepts,
        produces: f.produces,
    };
    let programs = s
        .catalog
        .query(&q)
        .into_iter()
        .map(|p| s.program_info(p))
        .collect();
    Json(ProgramList { programs })
}

/// One program's manifest, options form included.
#[utoipa::path(get, path = "/api/programs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ProgramInfo), (status = 404, body = ErrorResponse)))]
pub async fn program(State(s): St, Path(id): Path<String>) -> ApiResult<Json<ProgramInfo>> {
    let p = s.catalog.get(&id)?;
    Ok(Json(s.program_info(p)))
}

/// What the catalog's image builds are doing.
#[utoipa::path(get, path = "/api/catalog", responses((status = 200, body = CatalogStatus)))]
pub async fn catalog(State(s): St) -> Json<CatalogStatus> {
    Json(s.builder.status())
}

/// Run a job and answer with its result.
#[utoipa::path(post, path = "/api/run",
    request_body(content(
        (RunRequest = "application/json"),
        (RunRequest = "multipart/form-data", example = json!({"spec": "RunRequest JSON", "<path>": "file bytes"})))),
    responses(
        (status = 200, body = RunResponse),
        (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse), (status = 422, body = ErrorResponse),
        (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub async fn run(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<RunResponse>> {
    let mut rx = match submit(&s, peer, &headers, body).await? {
        Submitted::Cached(_, resp) => return Ok(Json(*resp)),
        Submitted::Queued(_, rx) => rx,
    };
    loop {
        let state = rx.borrow_and_update().clone();
        match state {
            JobState::Done(resp) | JobState::Cancelled(Some(resp)) => {
                return Ok(Json((*resp).clone()))
            }
            JobState::Failed(e) => return Err(ApiError::new(e.code, e.message)),
            JobState::Cancelled(None) => {
                return Err(ApiError::new(
                    ErrorCode::Cancelled,
                    "the job was cancelled before it ran",
                ))
            }
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(ApiError::internal("the job was lost"));
        }
    }
}

/// Queue a job; follow it with `GET /api/jobs/{id}` or its event stream.
#[utoipa::path(post, path = "/api/jobs",
    request_body(content((RunRequest = "application/json"), (RunRequest = "multipart/form-data"))),
    responses(
        (status = 202, body = JobAccepted),
        (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse), (status = 429, body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn create_job(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<JobAccepted>)> {
    let (id, phase) = match submit(&s, peer, &headers, body).await? {
        Submitted::Cached(id, resp) => {
            s.runner.finished(id.clone(), *resp);
            (id, JobPhase::Done)
        }
        Submitted::Queued(id, _) => (id, JobPhase::Queued),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            url: format!("/api/jobs/{id}"),
            events_url: format!("/api/jobs/{id}/events"),
            id,
            status: phase,
        }),
    ))
}

/// Where a job is, and its result once done.
#[utoipa::path(get, path = "/api/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobInfo), (status = 404, body = ErrorResponse)))]
pub async fn job(State(s): St, Path(id): Path<String>) -> ApiResult<Json<JobInfo>> {
    let state = match s.runner.watch(&id) {
        Some(rx) => rx.borrow().clone(),
        // Submitted through another server sharing the queue.
        None => s.runner.lookup(&id).await?.ok_or_else(|| no_job(&id))?,
    };
    Ok(Json(s.runner.info(&id, &state)))
}

/// A job's transitions as Server-Sent Events: `queued` (data: `{"position": N}`),
/// `running`, then `done` (data: RunResponse) or `failed` (data: ErrorResponse).
#[utoipa::path(get, path = "/api/jobs/{id}/events", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorResponse)))]
pub async fn job_events(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let rx = s.runner.watch(&id).ok_or_else(|| no_job(&id))?;
    let runner = s.runner.clone();
    let stream = futures_util::stream::unfold((rx, true, false), move |(mut rx, first, done)| {
        let runner = runner.clone();
        async move {
            if done {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let state = rx.borrow_and_update().clone();
            let event = sse_event(&runner, &state);
            Some((Ok(event), (rx, false, state.is_final())))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_event(runner: &crate::runner::Runner, state: &JobState) -> Event {
    let ev = Event::default();
    let data = match state {
        JobState::Queued { .. } => {
            let info = runner.info("", state);
            serde_json::json!({ "position": info.position })
        }
        JobState::Running => serde_json::json!({}),
        JobState::Done(r) | JobState::Cancelled(Some(r)) => {
            serde_json::to_value(&**r).unwrap_or_default()
        }
        JobState::Failed(e) => {
            serde_json::to_value(ErrorResponse { error: e.clone() }).unwrap_or_default()
        }
        JobState::Cancelled(None) => serde_json::json!({}),
    };
    let name = match state.phase() {
        JobPhase::Queued => "queued",
        JobPhase::Running => "running",
        JobPhase::Done => "done",
        JobPhase::Failed => "failed",
        JobPhase::Cancelled => "cancelled",
    };
    ev.event(name).data(data.to_string())
}

/// Cancel a job: a waiting one never runs; a running one is stopped by its
/// worker (within a heartbeat) and ends `cancelled` with its partial result.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = JobInfo), (status = 202, body = JobInfo),
        (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn cancel_job(
    State(s): St,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobInfo>)> {
    use runbox_queue::Cancel;
    let status = match s.runner.cancel(&id).await? {
        Cancel::Cancelled => StatusCode::OK,
        Cancel::Requested => StatusCode::ACCEPTED,
        Cancel::AlreadyFinal => {
            return Err(ApiError::new(
                ErrorCode::Cancelled,
                format!("job {id} has already ended; nothing to cancel"),
            ))
        }
        Cancel::NotFound => return Err(no_job(&id)),
    };
    let state = match s.runner.watch(&id) {
        Some(rx) => rx.borrow().clone(),
        None => s.runner.lookup(&id).await?.ok_or_else(|| no_job(&id))?,
    };
    Ok((status, Json(s.runner.info(&id, &state))))
}

fn no_job(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no job {id:?} (jobs are kept for a while after they end; results stay under their permalink)"
    ))
}

/// A stored result with the request that made it (what a permalink shows).
#[utoipa::path(get, path = "/api/results/{key}", params(("key" = String, Path)),
    responses((status = 200, body = StoredResult), (status = 404, body = ErrorResponse)))]
pub async fn result(State(s): St, Path(key): Path<String>) -> ApiResult<Json<StoredResult>> {
    check_key(&key)?;
    let row = s.db.get(&key).await?.ok_or_else(|| no_result(&key))?;
    let result: JobResult = serde_json::from_str(&row.result).map_err(ApiError::internal)?;
    let request = serde_json::from_str(&row.request).map_err(ApiError::internal)?;
    Ok(Json(StoredResult {
        key: row.key,
        request,
        result,
        created_at: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(row.created_at.max(0) as u64),
        )
        .to_string(),
        hits: row.hits,
    }))
}

/// Forget a stored result (admin).
#[utoipa::path(delete, path = "/api/results/{key}", params(("key" = String, Path)),
    security(("admin" = [])),
    responses((status = 204), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete_result(
    State(s): St,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&headers, &s.admin_token)?;
    check_key(&key)?;
    if s.db.delete(&key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_result(&key))
    }
}

fn check_key(key: &str) -> ApiResult<()> {
    if key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{key:?} is not a result key (64 lowercase hex digits)"
        )))
    }
}

fn no_result(key: &str) -> ApiError {
    ApiError::not_found(format!(
        "no stored result {key}: it never existed, or it was dropped to make room"
    ))
}

/// (Re)build the catalog's images in the background (admin).
#[utoipa::path(post, path = "/api/admin/catalog/build", request_body = BuildRequest,
    security(("admin" = [])),
    responses((status = 202, body = CatalogStatus), (status = 401, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn build_catalog(
    State(s): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<CatalogStatus>)> {
    require_admin(&headers, &s.admin_token)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    let req: BuildRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        BuildRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    if !s.builder.start(s.engine.clone(), req.force, None) {
        return Err(ApiError::new(
            ErrorCode::StoreBusy,
            "a catalog build is already running; follow it with GET /api/catalog",
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(s.builder.status())))
}

/// Remove image blobs and layers no image uses (admin).
#[utoipa::path(post, path = "/api/admin/gc", security(("admin" = [])),
    responses((status = 200, body = GcSummary), (status = 401, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn gc(State(s): St, headers: HeaderMap) -> ApiResult<Json<GcSummary>> {
    require_admin(&headers, &s.admin_token)?;
    let engine = s.engine.clone();
    let report = tokio::task::spawn_blocking(move || engine.store().gc())
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(GcSummary {
        blobs_removed: report.blobs_removed as u64,
        layers_removed: report.layers_removed as u64,
        bytes_freed: report.bytes_freed,
    }))
}

/// Liveness and load.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(s): St) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        workers: s.runner.workers(),
        queued: s.runner.queued().await,
        running: s.runner.running(),
        uptime_s: s.started.elapsed().as_secs_f64(),
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(s): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// How a submission ended up.
enum Submitted {
    Cached(String, Box<RunResponse>),
    Queued(String, watch::Receiver<JobState>),
}

/// The path every job takes: rate limit, read and parse the body, resolve and
/// plan (every refusal happens here, before anything is queued), answer from the
/// cache, or queue.
async fn submit(
    s: &Arc<AppState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Submitted> {
    let client = client_ip(peer.ip(), headers, &s.cfg.trusted_proxies);
    tracing::Span::current().record("client", tracing::field::display(client));
    if let Err(e) = s.limits.check(client) {
        s.metrics.rate_limited.inc();
        return Err(e);
    }
    let req = parse_request(s, headers, body).await?;
    let request_json = serde_json::to_string(&req).map_err(ApiError::internal)?;
    let engine = s.engine.clone();
    let spec = req.spec;
    let requires = req.requires;
    let prepared: Result<PreparedJob, EngineError> =
        tokio::task::spawn_blocking(move || engine.prepare(spec))
            .await
            .map_err(ApiError::internal)?;
    let job = match prepared {
        Ok(job) => job,
        Err(EngineError::ProgramImageMissing { program, image }) => {
            return Err(match s.builder.state_of(&image) {
                Some(crate::types::BuildState::Queued | crate::types::BuildState::Building) => {
                    ApiError::new(
                        ErrorCode::ImageNotReady,
                        format!("{program}'s image {image} is still being built; retry shortly (progress: GET /api/catalog)"),
                    )
                    .retry_after(5)
                }
                _ => ApiError::new(
                    ErrorCode::ImageNotFound,
                    format!("{program}'s image {image} is not in the store, and its build failed or was not started (see GET /api/catalog; an admin can start one with POST /api/admin/catalog/build)"),
                ),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let key = job.cache_key().to_owned();
    tracing::Span::current().record("key", &key);
    if req.cache {
        let hit = s.db.cached(&key).await?;
        s.metrics.cache_lookup(hit.is_some());
        if let Some(json) = hit {
            let result: JobResult = serde_json::from_str(&json).map_err(ApiError::internal)?;
            let id = job.id().to_owned();
            tracing::Span::current().record("job_id", &id);
            tracing::info!(job_id = %id, key = %key, "answered from the cache");
            return Ok(Submitted::Cached(
                id,
                Box::new(RunResponse {
                    permalink: format!("/r/{key}"),
                    key,
                    cached: true,
                    result,
                }),
            ));
        }
    }
    let (id, rx) = s.runner.submit(job, request_json, &requires).await?;
    tracing::Span::current().record("job_id", &id);
    Ok(Submitted::Queued(id, rx))
}

/// A RunRequest from a JSON body, or from a multipart body whose first part
/// (`spec`) is the JSON and whose other parts are input files named by path.
async fn parse_request(s: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<RunRequest> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime: Option<mime_guess::mime::Mime> = ctype.parse().ok();
    let essence = mime
        .as_ref()
        .map(|m| m.essence_str().to_owned())
        .unwrap_or_default();
    match essence.as_str() {
        "application/json" => {
            let (bytes, _permit) = s.bodies.read(headers, body).await?;
            RunRequest::from_json(&bytes)
        }
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(ctype)
                .map_err(|e| ApiError::bad_request(format!("multipart: {e}")))?;
            let (bytes, _permit) = s.bodies.read(headers, body).await?;
            parse_multipart(bytes, boundary).await
        }
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type {ctype:?}: send application/json (a RunRequest) or multipart/form-data (a `spec` part, then files)"),
        )),
    }
}

async fn parse_multipart(bytes: bytes::Bytes, boundary: String) -> ApiResult<RunRequest> {
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| ApiError::bad_request(format!("multipart: {e}"));
    let first =
        mp.next_field().await.map_err(bad)?.ok_or_else(|| {
            ApiError::bad_request("multipart: empty; the first part must be `spec`")
        })?;
    if first.name() != Some("spec") {
        return Err(ApiError::bad_request(format!(
            "multipart: the first part must be named `spec` (the RunRequest JSON), not {:?}",
            first.name().unwrap_or("")
        )));
    }
    let spec = first.bytes().await.map_err(bad)?;
    let mut req = RunRequest::from_json(&spec)?;
    let mut parts = 1;
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::bad_request(format!(
                "multipart: more than {MAX_PARTS} parts"
            )));
        }
        let path = field
            .name()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "multipart: a file part without a name (its path in the sandbox)",
                )
            })?
            .to_owned();
        let content = field.bytes().await.map_err(bad)?;
        req.spec.inputs.retain(|i| i.path != path);
        req.spec.inputs.push(InputFile {
            path,
            content: content.to_vec().into(),
            executable: false,
        });
    }
    Ok(req)
}

/// The body of error answers to requests that matched no route.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}
