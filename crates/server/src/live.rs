//! `/api/sandboxes` and `/api/systems`: live sandboxes (create, exec, files,
//! snapshot, delete) and the catalog's database systems (list, query one or
//! several at once, provision).
//!
//! A sandbox id is the capability to use it: it is random, only its creator
//! learns it, and listing every sandbox is an admin request. Instances of the
//! systems' warm pools answer queries only: no client may exec in them, read or
//! write their files, snapshot or delete them (they would change or see what
//! every other visitor's queries read).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use runbox_core::{CreateSandbox, Data, ErrorBody, ErrorCode, ExecSpec, InputFile, JobResult};
use runbox_core::{OutputFile, SandboxInfo};
use runbox_engine::{Engine, EngineError, ProvisionReport, QueryAnswer};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::guard::{client_ip, require_admin};
use crate::types::*;
use crate::AppState;

type St = State<Arc<AppState>>;

/// The longest query a system is sent (PostgreSQL's is a command-line argument).
pub const MAX_QUERY_BYTES: usize = 128 << 10;
/// Systems one fan-out request may ask.
pub const MAX_FAN_OUT: usize = 16;

/// Which client created which live sandbox (for the per-client maximum).
#[derive(Debug, Default)]
pub struct Owners(Mutex<HashMap<String, IpAddr>>);

impl Owners {
    /// Forgets sandboxes that are gone; counts the client's others.
    fn count(&self, engine: &Engine, client: IpAddr) -> usize {
        let live: BTreeSet<String> = engine.list_sandboxes().into_iter().map(|i| i.id).collect();
        let mut map = self.0.lock().unwrap();
        map.retain(|id, _| live.contains(id));
        map.values().filter(|c| **c == client).count()
    }
}

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// Parses a JSON body, naming the field a problem is in.
fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid {what}: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("{what}.{path}: {}", e.inner()))
        }
    })
}

/// Counts a request against the client's submission rate.
fn rate(s: &AppState, peer: SocketAddr, headers: &HeaderMap) -> ApiResult<IpAddr> {
    let client = client_ip(peer.ip(), headers, &s.cfg.trusted_proxies);
    tracing::Span::current().record("client", tracing::field::display(client));
    if let Err(e) = s.limits.check(client) {
        s.metrics.rate_limited.inc();
        return Err(e);
    }
    Ok(client)
}

/// The sandbox, unless it is a system's pooled instance (which clients cannot
/// see as a sandbox at all).
fn client_sandbox(s: &AppState, id: &str) -> ApiResult<SandboxInfo> {
    match s.engine.sandbox_info(id) {
        Ok(info) if !info.pooled => Ok(info),
        Ok(_) => Err(ApiError::not_found(format!(
            "no live sandbox {id}: it is an instance of a system's warm pool, which only answers queries (POST /api/systems/query)"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Create a live sandbox from an image, a catalog program or system, or a snapshot.
#[utoipa::path(post, path = "/api/sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = SandboxInfo), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse),
        (status = 429, body = ErrorResponse)))]
pub async fn create_sandbox(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<SandboxInfo>)> {
    let client = rate(&s, peer, &headers)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    let req: CreateSandbox = parse_json(&bytes, "CreateSandbox")?;
    let max = s.cfg.max_sandboxes_per_client;
    if s.owners.count(&s.engine, client) >= max {
        return Err(ApiError::new(
            ErrorCode::TooManySandboxes,
            format!("this client has {max} live sandboxes already (the server's --max-sandboxes-per-client); delete one (DELETE /api/sandboxes/ID) or let one expire"),
        ));
    }
    let engine = s.engine.clone();
    let info = blocking(move || engine.create_sandbox(&req)).await?;
    s.owners.0.lock().unwrap().insert(info.id.clone(), client);
    tracing::Span::current().record("job_id", &info.id);
    Ok((StatusCode::CREATED, Json(info)))
}

/// Every live sandbox, system instances included (admin).
#[utoipa::path(get, path = "/api/sandboxes", security(("admin" = [])),
    responses((status = 200, body = SandboxList), (status = 401, body = ErrorResponse)))]
pub async fn list_sandboxes(State(s): St, headers: HeaderMap) -> ApiResult<Json<SandboxList>> {
    require_admin(&headers, &s.admin_token)?;
    Ok(Json(SandboxList {
        sandboxes: s.engine.list_sandboxes(),
    }))
}

/// One live sandbox.
#[utoipa::path(get, path = "/api/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorResponse)))]
pub async fn sandbox(State(s): St, Path(id): Path<String>) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(client_sandbox(&s, &id)?))
}

/// Delete a live sandbox: everything in it is killed and its files are gone.
#[utoipa::path(delete, path = "/api/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorResponse)))]
pub async fn delete_sandbox(State(s): St, Path(id): Path<String>) -> ApiResult<StatusCode> {
    client_sandbox(&s, &id)?;
    let engine = s.engine.clone();
    blocking(move || engine.delete_sandbox(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run one command in a live sandbox, with its own limits; answers its result.
#[utoipa::path(post, path = "/api/sandboxes/{id}/exec", params(("id" = String, Path)),
    request_body = ExecSpec,
    responses((status = 200, body = JobResult), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 410, body = ErrorResponse),
        (status = 429, body = ErrorResponse)))]
pub async fn exec(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JobResult>> {
    rate(&s, peer, &headers)?;
    client_sandbox(&s, &id)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    let spec: ExecSpec = parse_json(&bytes, "ExecSpec")?;
    // Execs wait for a slot: at most --max-execs run at once.
    let _slot = s
        .execs
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let engine = s.engine.clone();
    tracing::Span::current().record("job_id", &id);
    let result =
        blocking(move || engine.exec_sandbox(&id, &spec, &mut runbox_sandbox::NoEvents)).await?;
    Ok(Json(result))
}

/// Write a file into a live sandbox (the body is its content).
#[utoipa::path(put, path = "/api/sandboxes/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path), PutFileParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse)))]
pub async fn put_file(
    State(s): St,
    Path((id, path)): Path<(String, String)>,
    Query(params): Query<PutFileParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    client_sandbox(&s, &id)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    let file = InputFile {
        path,
        content: Data(bytes.to_vec()),
        executable: params.executable,
    };
    let engine = s.engine.clone();
    blocking(move || engine.put_sandbox_file(&id, file, params.user)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read a file, or every file under a directory, from a live sandbox.
#[utoipa::path(get, path = "/api/sandboxes/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = FilesResponse), (status = 404, body = ErrorResponse)))]
pub async fn get_file(
    State(s): St,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Json<FilesResponse>> {
    client_sandbox(&s, &id)?;
    let engine = s.engine.clone();
    let files: Vec<OutputFile> = blocking(move || engine.get_sandbox_file(&id, &path)).await?;
    Ok(Json(FilesResponse { files }))
}

/// Freeze a live sandbox's changes into a new image; the sandbox ends.
#[utoipa::path(post, path = "/api/sandboxes/{id}/snapshot", params(("id" = String, Path)),
    request_body = SnapshotRequest,
    responses((status = 201, body = SnapshotResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 429, body = ErrorResponse)))]
pub async fn snapshot(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<SnapshotResponse>)> {
    rate(&s, peer, &headers)?;
    client_sandbox(&s, &id)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    let req: SnapshotRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        SnapshotRequest::default()
    } else {
        parse_json(&bytes, "SnapshotRequest")?
    };
    if req.name.is_some() {
        // A name could replace any image in the store (a system's snapshot too).
        require_admin(&headers, &s.admin_token).map_err(|e| {
            ApiError::new(
                e.code,
                format!("naming a snapshot is for admins ({}); without a name it is runbox-snapshot/{id}:latest", e.message),
            )
        })?;
    }
    let engine = s.engine.clone();
    let held = blocking(move || engine.sandbox_snapshots()).await?;
    if held >= s.cfg.max_snapshots {
        return Err(ApiError::new(
            ErrorCode::TooManySandboxes,
            format!(
                "the store holds {held} sandbox snapshots, the server's --max-snapshots; an admin can remove some (runbox image rm NAME) and run gc"
            ),
        ));
    }
    let name = req
        .name
        .unwrap_or_else(|| format!("runbox-snapshot/{id}:latest"));
    let engine = s.engine.clone();
    let image = name.clone();
    let made = blocking(move || engine.snapshot_sandbox(&id, Some(&image))).await?;
    Ok((
        StatusCode::CREATED,
        Json(SnapshotResponse {
            image: name,
            digest: made.image.manifest_digest.to_string(),
            layer_bytes: made.layer_bytes,
            files: made.files,
        }),
    ))
}

fn system_info(s: &AppState, system: &runbox_catalog::System) -> SystemInfo {
    let image = s.catalog.source_image_name(&system.image);
    let ready = match s.builder.state_of(&image) {
        Some(state) => state == BuildState::Ready,
        None => s.engine.store().resolve(&image).is_ok(),
    };
    let datasets = system
        .datasets
        .iter()
        .filter_map(|d| s.catalog.dataset(d).ok())
        .map(|d| DatasetInfo {
            name: d.name.clone(),
            description: d.description.clone(),
            rows: d.rows,
            size: d.size,
        })
        .collect();
    let fingerprint = ready.then(|| s.engine.fingerprint(system).ok()).flatten();
    let snapshot = fingerprint
        .as_deref()
        .and_then(|fp| s.engine.snapshot_record(fp));
    SystemInfo {
        id: system.id.clone(),
        name: system.name.clone(),
        version: system.version.clone(),
        description: system.description.clone(),
        category: system.category.clone(),
        query_mime: system.query_mime.clone(),
        answer_mime: system.answer_mime.clone(),
        datasets,
        example: system.example.clone(),
        image_name: image,
        ready,
        fingerprint,
        snapshot,
        instances: s.engine.pool_instances(&system.id),
    }
}

/// The catalog's database systems and their snapshots.
#[utoipa::path(get, path = "/api/systems", responses((status = 200, body = SystemList)))]
pub async fn systems(State(s): St) -> ApiResult<Json<SystemList>> {
    let st = s.clone();
    let systems = tokio::task::spawn_blocking(move || {
        st.catalog
            .systems()
            .map(|sys| system_info(&st, sys))
            .collect()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(SystemList { systems }))
}

/// One system.
#[utoipa::path(get, path = "/api/systems/{id}", params(("id" = String, Path)),
    responses((status = 200, body = SystemInfo), (status = 404, body = ErrorResponse)))]
pub async fn system(State(s): St, Path(id): Path<String>) -> ApiResult<Json<SystemInfo>> {
    let st = s.clone();
    let info = tokio::task::spawn_blocking(move || -> ApiResult<SystemInfo> {
        let sys = st.catalog.system(&id)?;
        Ok(system_info(&st, sys))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(info))
}

fn check_query(query: &[u8]) -> ApiResult<()> {
    if query.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the query is empty: send the query text (e.g. SQL)",
        ));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the query is {} bytes, over the limit of {MAX_QUERY_BYTES}",
                query.len()
            ),
        ));
    }
    Ok(())
}

fn answer(system: String, r: Result<QueryAnswer, EngineError>) -> SystemAnswer {
    match r {
        Ok(a) => SystemAnswer {
            system,
            ok: true,
            answer: Some(a),
            error: None,
        },
        Err(e) => SystemAnswer {
            system,
            ok: false,
            answer: None,
            error: Some(ErrorBody {
                code: e.code(),
                message: e.to_string(),
            }),
        },
    }
}

/// Run one query on several systems at once; answers side by side.
#[utoipa::path(post, path = "/api/systems/query", request_body = FanOutRequest,
    responses((status = 200, body = FanOutResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 429, body = ErrorResponse)))]
pub async fn query_many(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<FanOutResponse>> {
    rate(&s, peer, &headers)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    let req: FanOutRequest = parse_json(&bytes, "FanOutRequest")?;
    if req.systems.is_empty() || req.systems.len() > MAX_FAN_OUT {
        return Err(ApiError::bad_request(format!(
            "systems: give 1 to {MAX_FAN_OUT} system ids (GET /api/systems lists them), not {}",
            req.systems.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for id in &req.systems {
        s.catalog.system(id)?;
        if !seen.insert(id) {
            return Err(ApiError::bad_request(format!(
                "systems: {id:?} is given twice"
            )));
        }
    }
    check_query(req.query.as_bytes())?;
    let t = Instant::now();
    let engine = s.engine.clone();
    let ids = req.systems.clone();
    let query = req.query.into_bytes();
    let query_bytes = query.len();
    let results = tokio::task::spawn_blocking(move || engine.query_many(&ids, &query))
        .await
        .map_err(ApiError::internal)?;
    let answers = req
        .systems
        .into_iter()
        .zip(results)
        .map(|(id, r)| answer(id, r))
        .collect();
    Ok(Json(FanOutResponse {
        query_bytes,
        total_ms: (t.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        answers,
    }))
}

/// Run one query (the body, as it is) on a system.
#[utoipa::path(post, path = "/api/systems/{id}/query", params(("id" = String, Path)),
    request_body(content = String, content_type = "application/sql"),
    responses((status = 200, body = SystemAnswer), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 429, body = ErrorResponse)))]
pub async fn query_one(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SystemAnswer>> {
    rate(&s, peer, &headers)?;
    s.catalog.system(&id)?;
    let (bytes, _permit) = s.bodies.read(&headers, body).await?;
    check_query(&bytes)?;
    let engine = s.engine.clone();
    let sid = id.clone();
    let r = tokio::task::spawn_blocking(move || engine.query(&sid, &bytes))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(answer(id, r)))
}

/// Provision a system (admin): use its snapshot when one matches its
/// fingerprint, else (or with `force`) provision it cold.
#[utoipa::path(post, path = "/api/systems/{id}/provision",
    params(("id" = String, Path), ProvisionParams), security(("admin" = [])),
    responses((status = 200, body = ProvisionReport), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn provision(
    State(s): St,
    Path(id): Path<String>,
    Query(params): Query<ProvisionParams>,
    headers: HeaderMap,
) -> ApiResult<Json<ProvisionReport>> {
    require_admin(&headers, &s.admin_token)?;
    let system = s.catalog.system(&id)?.clone();
    let engine = s.engine.clone();
    let report = blocking(move || engine.consume(&system, params.force)).await?;
    Ok(Json(report))
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProvisionParams {
    /// Provision cold even when a snapshot matches.
    #[serde(default)]
    pub force: bool,
}

/// Provisions every system whose image is ready and fills its warm pool, one
/// system after the other (in the background at start, after the catalog build).
pub fn warm_systems(s: &AppState) {
    for system in s.catalog.systems() {
        let image = s.catalog.source_image_name(&system.image);
        if s.engine.store().resolve(&image).is_err() {
            tracing::warn!(system = %system.id, %image, "not warming the system: its image is missing");
            continue;
        }
        let t = Instant::now();
        match s.engine.warm_pool(&system.id) {
            Ok(n) => {
                tracing::info!(system = %system.id, started = n, ms = t.elapsed().as_millis() as u64, "system warm")
            }
            Err(e) => tracing::error!(system = %system.id, error = %e, "warming the system failed"),
        }
    }
}
