//! `runbox serve`: the HTTP API (docs/api.md), the result cache and permalinks,
//! the in-process job queue and workers, and the web playground.
//!
//! The HTTP layer is thin: handlers parse and check, then hand a prepared job to
//! the runner; every refusal (bad body, bad option, unknown image, over a limit)
//! happens before anything is queued.

pub mod api;
pub mod builder;
pub mod config;
pub mod db;
pub mod error;
pub mod guard;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod runner;
pub mod types;
pub mod ui;
pub mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use runbox_catalog::{Catalog, Program};
use runbox_engine::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

pub use builder::ProgressFactory;
pub use config::ServerConfig;

use crate::builder::Builder;
use crate::db::Db;
use crate::guard::{BodyBudget, RateLimit};
use crate::metrics::Metrics;
use crate::runner::Runner;
use crate::types::ProgramInfo;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub cfg: ServerConfig,
    pub engine: Arc<Engine>,
    pub catalog: Arc<Catalog>,
    pub db: Arc<Db>,
    pub runner: Arc<Runner>,
    pub builder: Arc<Builder>,
    pub metrics: Arc<Metrics>,
    pub bodies: BodyBudget,
    pub limits: RateLimit,
    pub admin_token: String,
    /// Who created which live sandbox.
    pub owners: live::Owners,
    /// Execs into live sandboxes running at once.
    pub execs: Arc<Semaphore>,
    pub started: Instant,
    /// Turns true when the server starts stopping (long polls end at once).
    pub stopping: watch::Receiver<bool>,
}

impl AppState {
    fn program_info(&self, p: &Program) -> ProgramInfo {
        let image = self.catalog.image_name(p);
        let ready = match self.builder.state_of(&image) {
            Some(state) => state == types::BuildState::Ready,
            None => self.engine.store().resolve(&image).is_ok(),
        };
        ProgramInfo {
            program: p.clone(),
            image_name: image,
            ready,
        }
    }
}

/// Optional hooks for the process that embeds the server.
#[derive(Default)]
pub struct Hooks {
    /// Shows catalog image builds (the CLI draws progress bars).
    pub build_progress: Option<ProgressFactory>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Where the admin token is.
    pub admin_token_file: PathBuf,
    pub state: Arc<AppState>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    /// Tells the in-process workers to claim nothing more.
    workers_stop: watch::Sender<bool>,
    _workers: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stops accepting, lets requests in flight finish (up to `grace`), and returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        // No new claims. Jobs running here are not waited for: when the process
        // ends their sandboxes die with it, their leases expire, and the queue
        // gives them to a worker again (this server after a restart, or another).
        let _ = self.workers_stop.send(true);
        let _ = tokio::time::timeout(grace, self.accept).await;
    }
}

/// Opens everything (engine, catalog, database), starts the workers and the
/// catalog build, binds the listener and serves in the background.
pub async fn start(cfg: ServerConfig, hooks: Hooks) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    let catalog_dir = match &cfg.catalog_dir {
        Some(d) => d.clone(),
        None => runbox_catalog::extract_default(&cfg.data_dir.join("catalog"))?,
    };
    let catalog = Arc::new(Catalog::load(catalog_dir)?);
    let mut ecfg = EngineConfig::new(&cfg.data_dir);
    ecfg.catalog = Some(catalog.clone());
    ecfg.netns_ready = cfg.netns_ready.unwrap_or(cfg.workers + 1);
    ecfg.sandboxes.max_live = cfg.max_sandboxes;
    ecfg.sandboxes.idle_timeout = cfg.sandbox_idle_timeout;
    ecfg.systems.pool_size = cfg.pool_size;
    ecfg.systems.per_instance = cfg.queries_per_instance;
    ecfg.systems.query_time = cfg.query_timeout;
    let state_execs = cfg.max_execs.max(1);
    let engine = Arc::new(
        tokio::task::spawn_blocking(move || Engine::open(ecfg))
            .await
            .context("opening the engine")??,
    );
    let url = cfg.database_url();
    let queue = runbox_queue::Queue::open(&url)
        .await
        .with_context(|| format!("opening the database {}", redact(&url)))?;
    let db = Arc::new(Db::open(queue.pool().clone(), cfg.results_max_bytes).await?);
    let metrics = Arc::new(Metrics::new());
    let runner = Runner::new(
        queue,
        db.clone(),
        metrics.clone(),
        cfg.workers,
        engine.backend().name().to_owned(),
        runner::QueuePolicy {
            capacity: cfg.queue_capacity,
            lease: cfg.lease,
            max_attempts: cfg.max_attempts,
            poll: cfg.queue_poll,
        },
        cfg.job_retention,
    );
    // The in-process workers: the same loop, and the same queue calls, as a
    // remote `runbox worker`.
    let (workers_stop, workers_stopped) = watch::channel(false);
    let workers = if cfg.workers > 0 {
        let coord = Arc::new(runner::LocalCoordinator {
            runner: runner.clone(),
            worker_id: format!("local-{}", std::process::id()),
        });
        let options = runbox_worker::WorkerOptions {
            slots: cfg.workers,
            claim_wait: Duration::from_secs(5),
            labels: Vec::new(),
        };
        Some(tokio::spawn(runbox_worker::run(
            engine.clone(),
            coord,
            options,
            workers_stopped,
        )))
    } else {
        None
    };
    let builder = Arc::new(Builder::new(
        &catalog,
        engine.store(),
        cfg.build_scratch_dir.clone(),
        hooks.build_progress,
    ));
    let (admin_token_file, admin_token) = admin_token(&cfg)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(AppState {
        bodies: BodyBudget::new(cfg.body_limit, cfg.body_limit * 8, cfg.body_timeout),
        limits: RateLimit::new(cfg.rate_per_minute, cfg.rate_burst),
        cfg,
        engine,
        catalog,
        db,
        runner,
        builder,
        metrics,
        admin_token,
        owners: live::Owners::default(),
        execs: Arc::new(Semaphore::new(state_execs)),
        started: Instant::now(),
        stopping: stopped.clone(),
    });
    // Systems are provisioned (or found warm) after the images they run in.
    let warm: Option<Box<dyn FnOnce() + Send>> = state.cfg.warm_systems.then(|| {
        let st = state.clone();
        Box::new(move || live::warm_systems(&st)) as Box<dyn FnOnce() + Send>
    });
    if state.cfg.build_catalog {
        state.builder.start(state.engine.clone(), false, warm);
    } else if let Some(warm) = warm {
        std::thread::Builder::new()
            .name("warm-systems".into())
            .spawn(warm)
            .context("starting the systems' warm-up")?;
    }
    let app = router(state.clone());
    let accept = tokio::spawn(accept_loop(listener, app, state.clone(), stopped));
    tokio::spawn(housekeeping(state.clone()));
    Ok(Server {
        addr,
        admin_token_file,
        state,
        stop,
        accept,
        workers_stop,
        _workers: workers,
    })
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/programs", get(api::programs))
        .route("/api/programs/{id}", get(api::program))
        .route("/api/catalog", get(api::catalog))
        .route("/api/run", post(api::run))
        .route("/api/jobs", post(api::create_job))
        .route("/api/jobs/{id}", get(api::job))
        .route("/api/jobs/{id}/events", get(api::job_events))
        .route("/api/jobs/{id}/cancel", post(api::cancel_job))
        .route(
            "/api/results/{key}",
            get(api::result).delete(api::delete_result),
        )
        .route(
            "/api/sandboxes",
            post(live::create_sandbox).get(live::list_sandboxes),
        )
        .route(
            "/api/sandboxes/{id}",
            get(live::sandbox).delete(live::delete_sandbox),
        )
        .route("/api/sandboxes/{id}/exec", post(live::exec))
        .route(
            "/api/sandboxes/{id}/files/{*path}",
            get(live::get_file).put(live::put_file),
        )
        .route("/api/sandboxes/{id}/snapshot", post(live::snapshot))
        .route("/api/systems", get(live::systems))
        .route("/api/systems/query", post(live::query_many))
        .route("/api/systems/{id}", get(live::system))
        .route("/api/systems/{id}/query", post(live::query_one))
        .route("/api/systems/{id}/provision", post(live::provision))
        .route("/api/admin/catalog/build", post(api::build_catalog))
        .route("/api/admin/gc", post(api::gc))
        .route(
            "/api/admin/workers",
            post(workers::create_worker).get(workers::list_workers),
        )
        .route(
            "/api/admin/workers/{name}",
            axum::routing::delete(workers::revoke_worker),
        )
        .route("/api/worker/me", get(workers::me))
        .route("/api/worker/claim", post(workers::claim))
        .route("/api/worker/jobs/{id}/start", post(workers::start))
        .route("/api/worker/jobs/{id}/heartbeat", post(workers::heartbeat))
        .route("/api/worker/jobs/{id}/result", post(workers::result))
        .route(
            "/api/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .route("/api/{*rest}", axum::routing::any(api::not_found))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics));
    let ui = Router::new()
        .route("/", get(ui::index))
        .route("/r/{key}", get(ui::permalink))
        .route("/assets/{*path}", get(ui::asset))
        .route("/{file}", get(ui::file));
    api.merge(ui)
        .fallback(api::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::new(
        runbox_core::ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Request logs (one span per request, with the client, and the job id and result
/// key when the request made or found one) and request metrics by route.
async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %req.uri().path(),
        peer = ?peer,
        client = tracing::field::Empty,
        job_id = tracing::field::Empty,
        key = tracing::field::Empty,
    );
    let t = Instant::now();
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| tracing::info!(status, ms = t.elapsed().as_secs_f64() * 1e3, "request"));
    s.metrics
        .requests
        .get_or_create(&metrics::RequestLabels {
            route,
            method: method.to_string(),
            status,
        })
        .inc();
    resp
}

/// Accepts connections (at most `max_connections` served at once) and serves
/// them with hyper: HTTP/1.1 with a deadline for the request head (slow-header
/// clients are cut off), or HTTP/2. A connection whose first request has not
/// arrived within the header timeout is closed, whatever its protocol. On stop,
/// stops accepting and lets the connections finish their requests.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.cfg.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.cfg.max_connections));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        // Told when the connection's first request head has arrived.
        let first_request = Arc::new(tokio::sync::Notify::new());
        let told = first_request.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                told.notify_one();
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        let header_timeout = state.cfg.header_timeout;
        tokio::spawn(async move {
            // hyper times a request head only once it knows the protocol: a
            // client that sends nothing, half an HTTP/2 preface, or a preface and
            // no request would hold its connection slot for good. The first
            // request head must arrive within the header timeout whatever the
            // protocol; after that, HTTP/1.1 times each later head itself.
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = &mut conn => Some(r),
                () = first_request.notified() => None,
                () = tokio::time::sleep(header_timeout) => {
                    tracing::debug!(peer = %peer, "no request within the header timeout: closing");
                    return;
                }
            };
            let result = match ended {
                Some(r) => r,
                None => conn.await,
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Periodic upkeep: expired jobs, idle rate-limit buckets.
async fn housekeeping(state: Arc<AppState>) {
    // Expired leases are looked for every second (a job leaves a dead worker
    // within lease + 1 s); jobs other servers moved, every poll interval.
    let mut leases = tokio::time::interval(Duration::from_secs(1));
    let mut sync = tokio::time::interval(state.cfg.queue_poll);
    let mut slow = tokio::time::interval(Duration::from_secs(30));
    // Idle live sandboxes go within a few seconds of their timeout.
    let mut sandboxes = tokio::time::interval(Duration::from_secs(5));
    for t in [&mut leases, &mut sync, &mut slow, &mut sandboxes] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = leases.tick() => state.runner.reap().await,
            _ = sync.tick() => state.runner.sync().await,
            _ = sandboxes.tick() => {
                let engine = state.engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.reap_sandboxes()).await;
            }
            _ = slow.tick() => {
                state.runner.prune().await;
                state.limits.sweep();
            }
        }
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The admin token: read from the configured file, or from `DATA_DIR/admin-token`,
/// which is created with a random token (mode 0600) when missing.
fn admin_token(cfg: &ServerConfig) -> anyhow::Result<(PathBuf, String)> {
    let path = cfg
        .admin_token_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("admin-token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok((path, t.trim().to_owned())),
        Ok(_) => anyhow::bail!("the admin token file {} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cfg.admin_token_file.is_none() => {
            let token = new_token();
            write_private(&path, &token)?;
            Ok((path, token))
        }
        Err(e) => Err(e).with_context(|| format!("reading the admin token {}", path.display())),
    }
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
