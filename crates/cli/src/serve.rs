//! `runbox serve`: the server on a multi-threaded runtime, until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runbox_server::{Hooks, ServerConfig};

use crate::cli::ServeArgs;
use crate::Exit;

pub fn run(data_dir: &Path, catalog_dir: Option<&Path>, args: ServeArgs) -> anyhow::Result<Exit> {
    let mut cfg = ServerConfig::new(data_dir);
    cfg.catalog_dir = catalog_dir.map(Path::to_path_buf);
    cfg.listen = args.listen;
    if let Some(w) = args.workers {
        // 0: no in-process workers; the server only coordinates `runbox worker`s.
        cfg.workers = w;
    }
    cfg.queue_capacity = args.queue;
    cfg.body_limit = usize::try_from(args.body_limit)?;
    cfg.header_timeout = Duration::from_millis(args.header_timeout);
    cfg.body_timeout = Duration::from_millis(args.body_timeout);
    cfg.max_connections = args.max_connections.max(1);
    cfg.rate_per_minute = args.rate_limit;
    cfg.rate_burst = args.rate_burst;
    cfg.trusted_proxies = args.trusted_proxies;
    cfg.admin_token_file = args.admin_token_file;
    cfg.results_max_bytes = args.results_max;
    cfg.build_catalog = !args.no_build;
    cfg.build_scratch_dir = args.scratch_dir;
    cfg.database = args.database;
    anyhow::ensure!(args.lease >= 1000, "--lease must be at least 1s");
    cfg.lease = Duration::from_millis(args.lease);
    anyhow::ensure!(args.max_attempts >= 1, "--max-attempts must be at least 1");
    cfg.max_attempts = args.max_attempts;
    anyhow::ensure!(
        args.max_sandboxes >= 1,
        "--max-sandboxes must be at least 1"
    );
    cfg.max_sandboxes = args.max_sandboxes;
    cfg.max_sandboxes_per_client = args.max_sandboxes_per_client.max(1);
    anyhow::ensure!(
        args.sandbox_idle_timeout >= 1000,
        "--sandbox-idle-timeout must be at least 1s"
    );
    cfg.sandbox_idle_timeout = Duration::from_millis(args.sandbox_idle_timeout);
    cfg.max_execs = args.max_execs.max(1);
    cfg.max_snapshots = args.max_snapshots;
    anyhow::ensure!(args.pool_size >= 1, "--pool-size must be at least 1");
    cfg.pool_size = args.pool_size;
    anyhow::ensure!(
        args.queries_per_instance >= 1,
        "--queries-per-instance must be at least 1"
    );
    cfg.queries_per_instance = args.queries_per_instance;
    anyhow::ensure!(
        args.query_timeout >= 100,
        "--query-timeout must be at least 100ms"
    );
    cfg.query_timeout = Duration::from_millis(args.query_timeout);
    cfg.warm_systems = !args.no_warm;
    let hooks = Hooks {
        build_progress: Some(Arc::new(|name: &str| {
            Box::new(crate::progress::BuildBar::new(true, name))
                as Box<dyn runbox_image::BuildProgress + Send + Sync>
        })),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("http")
        .build()?;
    rt.block_on(async move {
        let server = runbox_server::start(cfg, hooks).await?;
        let url = format!("http://{}", server.addr);
        // The first line on stdout, for scripts and tests that start a server on
        // port 0 and need to know where it is.
        println!("runbox serve: listening on {url}");
        eprintln!("  playground:  {url}/");
        eprintln!("  API:         {url}/api (guide: docs/api.md; {url}/api/openapi.json)");
        eprintln!("  admin token: {}", server.admin_token_file.display());
        let status = server.state.builder.status();
        let pending = status
            .images
            .iter()
            .filter(|i| i.state != runbox_server::types::BuildState::Ready)
            .count();
        if pending > 0 && server.state.cfg.build_catalog {
            eprintln!(
                "  catalog:     building {pending} image(s) in the background (GET /api/catalog)"
            );
        }
        wait_for_signal().await;
        eprintln!("runbox serve: stopping (requests in flight may finish for 30 s)");
        server.shutdown(Duration::from_secs(30)).await;
        anyhow::Ok(())
    })?;
    // Jobs still running in worker threads are not waited for (dropping the
    // runtime would): their sandboxes die with this process, and their leases
    // return them to the queue (docs/workers.md).
    rt.shutdown_background();
    Ok(Exit::Ok)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
