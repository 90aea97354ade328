//! Prometheus metrics (`GET /metrics`), through the prometheus-client crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/api/jobs/{id}`), not the raw path, so the label set
    /// stays small whatever clients send.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub result: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub jobs: Family<StatusLabel, Counter>,
    pub cache: Family<CacheLabel, Counter>,
    pub queued: Gauge,
    pub running: Gauge,
    pub job_seconds: Histogram,
    pub rate_limited: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("runbox");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let jobs = Family::<StatusLabel, Counter>::default();
        registry.register(
            "jobs",
            "Jobs run, by result status (error: could not run)",
            jobs.clone(),
        );
        let cache = Family::<CacheLabel, Counter>::default();
        registry.register(
            "cache_lookups",
            "Result cache lookups by result (hit, miss)",
            cache.clone(),
        );
        let queued = Gauge::default();
        registry.register("jobs_queued", "Jobs waiting for a worker", queued.clone());
        let running = Gauge::default();
        registry.register("jobs_running", "Jobs running now", running.clone());
        let job_seconds = Histogram::new(exponential_buckets(0.002, 2.0, 14));
        registry.register(
            "job_duration_seconds",
            "Time from a job's start to its result",
            job_seconds.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused by the per-client rate limit",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            requests,
            jobs,
            cache,
            queued,
            running,
            job_seconds,
            rate_limited,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn cache_lookup(&self, hit: bool) {
        self.cache
            .get_or_create(&CacheLabel {
                result: if hit { "hit" } else { "miss" }.into(),
            })
            .inc();
    }

    pub fn job_done(&self, status: &str) {
        self.jobs
            .get_or_create(&StatusLabel {
                status: status.into(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
