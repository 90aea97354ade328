//! The server's settings, each with a documented default (`runbox serve --help`
//! prints them; README "Serving" lists them).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Everything `runbox serve` can be told. [`ServerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where images, the catalog, the database and the admin token live.
    pub data_dir: PathBuf,
    /// The catalog directory (default: the built-in catalog, written under `data_dir`).
    pub catalog_dir: Option<PathBuf>,
    /// Address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Jobs run at once. Default: the number of CPUs.
    pub workers: usize,
    /// Jobs waiting beyond the running ones before new ones get 503. Default 64.
    pub queue_capacity: usize,
    /// Largest request body. Default 32 MiB.
    pub body_limit: usize,
    /// Time a client has to send the request head. Default 10 s.
    pub header_timeout: Duration,
    /// Time a client has to send the request body. Default 30 s.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog. Default 1024.
    pub max_connections: usize,
    /// Job submissions (run and jobs) per client address per minute. Default 120;
    /// 0 turns the limit off.
    pub rate_per_minute: u32,
    /// Submissions a client may make at once before the per-minute rate applies.
    /// Default 20.
    pub rate_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies). Default: none,
    /// so the header is ignored and the peer address is the client.
    pub trusted_proxies: Vec<IpAddr>,
    /// The admin token file. Default `DATA_DIR/admin-token`, created (random,
    /// mode 0600) when missing.
    pub admin_token_file: Option<PathBuf>,
    /// Bytes of stored results (cache and permalinks) before the least recently
    /// used are dropped. Default 1 GiB.
    pub results_max_bytes: u64,
    /// How long a finished asynchronous job stays queryable. Default 10 min.
    pub job_retention: Duration,
    /// Build the catalog's missing images in the background at start. Default on.
    pub build_catalog: bool,
    /// Where image builds run mmdebstrap (default: $TMPDIR).
    pub build_scratch_dir: Option<PathBuf>,
    /// Network namespaces kept ready for jobs. Default: workers + 1.
    pub netns_ready: Option<usize>,
    /// The database holding the queue and the stored results: `sqlite://...` or
    /// `postgres://...`. Default: SQLite at `DATA_DIR/runbox.db`.
    pub database: Option<String>,
    /// How long a claim holds a job without a heartbeat. Default 30 s.
    pub lease: Duration,
    /// Claims of a job before it fails with `worker_lost`. Default 3.
    pub max_attempts: u32,
    /// How often the queue is read for what other servers did. Default 250 ms.
    pub queue_poll: Duration,
    /// Live sandboxes at once, system instances included. Default 32.
    pub max_sandboxes: usize,
    /// Live sandboxes one client address may hold. Default 4.
    pub max_sandboxes_per_client: usize,
    /// Idle time before a live sandbox is deleted (also the most a request may
    /// ask). Default 10 min.
    pub sandbox_idle_timeout: Duration,
    /// Execs into live sandboxes running at once; more wait. Default 8.
    pub max_execs: usize,
    /// Images made by sandbox snapshots the store may hold; past it a snapshot
    /// gets 429 until an admin removes some (`runbox image rm`). Default 64.
    pub max_snapshots: usize,
    /// Warm instances kept per system. Default 2.
    pub pool_size: usize,
    /// Queries one warm instance answers at once; more wait. Default 2.
    pub queries_per_instance: usize,
    /// The most wall and CPU time a system query may take. Default 30 s.
    pub query_timeout: Duration,
    /// Provision the catalog's systems and start their warm pools at start
    /// (after the catalog build). Default on.
    pub warm_systems: bool,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            catalog_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue_capacity: 64,
            body_limit: 32 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            rate_per_minute: 120,
            rate_burst: 20,
            trusted_proxies: Vec::new(),
            admin_token_file: None,
            results_max_bytes: 1 << 30,
            job_retention: Duration::from_secs(600),
            build_catalog: true,
            build_scratch_dir: None,
            netns_ready: None,
            database: None,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            queue_poll: Duration::from_millis(250),
            max_sandboxes: 32,
            max_sandboxes_per_client: 4,
            sandbox_idle_timeout: Duration::from_secs(600),
            max_execs: 8,
            max_snapshots: 64,
            pool_size: 2,
            queries_per_instance: 2,
            query_timeout: Duration::from_secs(30),
            warm_systems: true,
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("runbox.db").display()
            )
        })
    }
}
