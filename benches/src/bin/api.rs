//! The HTTP API under load, side by side in one run with the CLI: `/bin/true` from
//! a busybox image through
//!   - `POST /api/run` with `"cache": false`, so every request runs a sandbox;
//!   - `POST /api/run` with the identical request cached, answered from the
//!     result cache (`"cached": true`);
//!   - `runbox run busybox -- /bin/true`, one CLI process per job;
//!
//! each at concurrency 1 and at 2 × CPUs (the server's workers default to the
//! CPUs, so the higher level keeps its queue non-empty). The load generator is a
//! closed loop on one thread (a tokio current-thread runtime with a
//! keep-alive reqwest client, so it takes as little CPU from the server as it
//! can): each of the C clients sends its next request when its previous answer
//! is in. Latency is send → whole body received; jobs/s is requests / wall time
//! of the blocks (each block ends when its last answer is in, so the drain at a
//! block's end is counted).
//!
//! Every answer is checked, so a broken server cannot make a fast figure: status
//! 200, `result.status` "ok" and `exit_code` 0, `cached` false or true as
//! expected; the CLI must exit 0 and print nothing. At the end the server's
//! /metrics must count exactly the jobs and cache hits sent.
//!
//! To keep drift (other load, page cache, the kernel's asynchronous namespace
//! teardown) from landing on one configuration, the N requests of each are split
//! into rounds: every round runs a block of each configuration, in a shuffled
//! order. A warmup round, not counted, comes first.
//!
//! Reports p50/p90/p99 latency, jobs/s and the ratios (API uncached vs CLI,
//! cached vs uncached), what part of the uncached latency the sandbox itself
//! took (the result's own timings), and the load average before and after, and
//! writes them as JSON to benches/results/api.json.
//!
//! Usage: `benches/run api [N [ROUNDS]]` (builds runbox in release first): N
//! requests per configuration that runs a sandbox (default 1000), 5 × N for the
//! cached ones (they take a tenth of the time, and short blocks time badly), in
//! ROUNDS interleaved rounds (default 10). About 30 s on a quiet 2-CPU machine.
//! `BENCH_WORKERS=W` starts the server with `--workers W` instead of its default
//! (the CPUs).

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbox_benches::serve::{checked_run, metric, sh, Server};
use runbox_benches::{loadavg, pct, Rng};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ApiUncached,
    ApiCached,
    Cli,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ApiUncached => "API uncached (cache: false)",
            Kind::ApiCached => "API cached (cache hit)",
            Kind::Cli => "CLI runbox run (process/job)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::ApiUncached => "api_uncached",
            Kind::ApiCached => "api_cached",
            Kind::Cli => "cli",
        }
    }
}

/// Cache hits are measured this many times more often than jobs that run.
const CACHED_FACTOR: usize = 5;

/// One configuration: what, at which concurrency, and what it measured.
struct Config {
    kind: Kind,
    conc: usize,
    ms: Vec<f64>,
    /// Wall time of its measured blocks.
    secs: f64,
    /// The sandbox's own timings from uncached results: setup, run, teardown, total.
    sandbox: [Vec<f64>; 4],
    /// Latency minus the sandbox's total, per uncached request.
    overhead: Vec<f64>,
}

impl Config {
    /// Requests to measure: `n`, or 5 × `n` for the cache hits.
    fn requests(&self, n: usize) -> usize {
        if self.kind == Kind::ApiCached {
            CACHED_FACTOR * n
        } else {
            n
        }
    }
    fn p(&self, q: f64) -> f64 {
        pct(&mut self.ms.clone(), q)
    }
    fn jobs_per_s(&self) -> f64 {
        self.ms.len() as f64 / self.secs
    }
}

/// What one request or process gave: its latency and, for a job that ran in the
/// server, the result's timings.
struct Sample {
    ms: f64,
    timings: Option<[f64; 4]>,
}

struct Ctx {
    client: reqwest::Client,
    run_url: String,
    uncached_body: Vec<u8>,
    cached_body: Vec<u8>,
    cli: Vec<String>,
}

impl Ctx {
    async fn api(&self, cached: bool) -> Result<Sample> {
        let body = if cached {
            &self.cached_body
        } else {
            &self.uncached_body
        };
        let (ms, v) = checked_run(&self.client, &self.run_url, body, cached).await?;
        let r = &v["result"];
        let text = || v.to_string();
        let timings = if cached {
            None
        } else {
            let t = &r["timings"];
            let f = |k: &str| {
                t[k].as_f64()
                    .with_context(|| format!("result.timings.{k} missing: {}", text()))
            };
            Some([
                f("setup_ms")?,
                f("run_ms")?,
                f("teardown_ms")?,
                f("total_ms")?,
            ])
        };
        Ok(Sample { ms, timings })
    }

    async fn cli(&self) -> Result<Sample> {
        let t = Instant::now();
        let out = tokio::process::Command::new(&self.cli[0])
            .args(&self.cli[1..])
            .stdin(Stdio::null())
            .output()
            .await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success() && out.stdout.is_empty(),
            "runbox run: {}, stdout {:?}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Sample { ms, timings: None })
    }

    async fn once(&self, kind: Kind) -> Result<Sample> {
        match kind {
            Kind::ApiUncached => self.api(false).await,
            Kind::ApiCached => self.api(true).await,
            Kind::Cli => self.cli().await,
        }
    }

    /// `n` requests of `kind` from `conc` closed-loop clients; the samples and
    /// the block's wall time.
    async fn block(&self, kind: Kind, conc: usize, n: usize) -> Result<(Vec<Sample>, f64)> {
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        let clients = (0..conc).map(|_| async {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                mine.push(self.once(kind).await?);
            }
            anyhow::Ok(mine)
        });
        let all = futures_util::future::try_join_all(clients).await?;
        let secs = t.elapsed().as_secs_f64();
        Ok((all.into_iter().flatten().collect(), secs))
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n = args.next().transpose()?.unwrap_or(1000).max(1);
    let rounds = args.next().transpose()?.unwrap_or(10).clamp(1, n);
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let high = 2 * cpus;
    let runbox = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/runbox");
    if !runbox.exists() {
        bail!(
            "{} is missing: run scripts/build (benches/run does)",
            runbox.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let layout = runbox_testkit::oci::busybox_image(tmp.path());
    // The server and the CLI each get their own store, so neither waits on the
    // other's locks or sees the other's sandboxes.
    let (server_data, cli_data) = (tmp.path().join("serve-data"), tmp.path().join("cli-data"));
    for data in [&server_data, &cli_data] {
        sh(Command::new(&runbox)
            .args(["image", "import", "--name", "busybox"])
            .arg(&layout)
            .env("RUNBOX_DATA_DIR", data))?;
    }
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .map(|w| w.parse::<usize>())
        .transpose()
        .context("BENCH_WORKERS")?;
    let workers_arg = workers.map(|w| format!("--workers={w}"));
    let server = Server::start(
        &runbox,
        &server_data,
        &workers_arg.iter().map(String::as_str).collect::<Vec<_>>(),
        tmp.path().join("serve.log"),
    )?;

    let job = json!({"image": "busybox", "argv": ["/bin/true"]});
    let mut uncached = job.clone();
    uncached["cache"] = false.into();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ctx = Ctx {
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?,
        run_url: format!("{}/api/run", server.url),
        uncached_body: serde_json::to_vec(&uncached)?,
        cached_body: serde_json::to_vec(&job)?,
        cli: [
            runbox.display().to_string(),
            "--data-dir".into(),
            cli_data.display().to_string(),
        ]
        .into_iter()
        .chain(
            "run --no-stdin busybox -- /bin/true"
                .split(' ')
                .map(str::to_owned),
        )
        .collect(),
    };

    let mut configs: Vec<Config> = [Kind::ApiUncached, Kind::ApiCached, Kind::Cli]
        .into_iter()
        .flat_map(|kind| {
            [1, high].map(|conc| Config {
                kind,
                conc,
                ms: Vec::new(),
                secs: 0.0,
                sandbox: Default::default(),
                overhead: Vec::new(),
            })
        })
        .collect();

    let load_before = loadavg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = rt.block_on(async {
        let health: Value = ctx
            .client
            .get(format!("{}/healthz", server.url))
            .send()
            .await?
            .json()
            .await?;
        let workers = health["workers"].as_u64().context("/healthz: no workers")?;
        // The uncached job stores its result, so from here on the identical
        // request with the cache on is a hit.
        ctx.api(false).await?;
        let mut sent = [1usize, 0];
        let warmup = n.div_ceil(rounds).min(30).max(2 * high);
        let mut rng = Rng::seeded(0x9e37_79b9_7f4a_7c15);
        let mut order: Vec<usize> = (0..configs.len()).collect();
        for round in 0..=rounds {
            rng.shuffle(&mut order);
            for &i in &order {
                let c = &mut configs[i];
                let total = c.requests(n);
                let todo = if round == 0 {
                    warmup
                } else {
                    total.div_ceil(rounds).min(total - c.ms.len())
                };
                if todo == 0 {
                    continue;
                }
                let (samples, secs) = ctx.block(c.kind, c.conc, todo).await?;
                match c.kind {
                    Kind::ApiUncached => sent[0] += todo,
                    Kind::ApiCached => sent[1] += todo,
                    Kind::Cli => {}
                }
                if round == 0 {
                    continue;
                }
                c.secs += secs;
                for s in samples {
                    c.ms.push(s.ms);
                    if let Some(t) = s.timings {
                        for (v, x) in c.sandbox.iter_mut().zip(t) {
                            v.push(x);
                        }
                        c.overhead.push(s.ms - t[3]);
                    }
                }
            }
        }
        let metrics = ctx
            .client
            .get(format!("{}/metrics", server.url))
            .send()
            .await?
            .text()
            .await?;
        let (jobs, hits, misses) = (
            metric(&metrics, "runbox_jobs_total{status=\"ok\"}"),
            metric(&metrics, "runbox_cache_lookups_total{result=\"hit\"}"),
            metric(&metrics, "runbox_cache_lookups_total{result=\"miss\"}"),
        );
        ensure!(
            jobs == sent[0] as f64 && hits == sent[1] as f64 && misses == 0.0,
            "/metrics disagrees with what was sent: {jobs} jobs ok (sent {} uncached), \
             {hits} cache hits (sent {} cached), {misses} misses (expected 0)",
            sent[0],
            sent[1]
        );
        anyhow::Ok((workers, json!({"jobs_ok": jobs, "cache_hits": hits})))
    });
    let (workers, metrics) = measured.map_err(|e| {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        e.context(format!("the server's log ends with:\n{}", tail.join("\n")))
    })?;
    let load_after = loadavg();
    drop(server);

    println!(
        "/bin/true in busybox: {n} requests per configuration ({} cached) in {rounds} \
         interleaved rounds (+1 warmup round); {cpus} CPUs, server workers {workers}",
        CACHED_FACTOR * n
    );
    println!(
        "{:<30} {:>5} {:>8} {:>8} {:>8} {:>9}",
        "", "conc", "p50 ms", "p90 ms", "p99 ms", "jobs/s"
    );
    for c in &configs {
        println!(
            "{:<30} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>9.0}",
            c.kind.name(),
            c.conc,
            c.p(0.5),
            c.p(0.9),
            c.p(0.99),
            c.jobs_per_s()
        );
    }
    let find = |kind: Kind, conc: usize| {
        configs
            .iter()
            .find(|c| c.kind == kind && c.conc == conc)
            .expect("every configuration ran")
    };
    println!("\nratios (p50 latency; jobs/s)");
    let mut ratios = Vec::new();
    for conc in [1, high] {
        let (u, c, cli) = (
            find(Kind::ApiUncached, conc),
            find(Kind::ApiCached, conc),
            find(Kind::Cli, conc),
        );
        for (name, a, b) in [
            ("API uncached / CLI", u, cli),
            ("API cached / API uncached", c, u),
        ] {
            let (lat, thr) = (a.p(0.5) / b.p(0.5), a.jobs_per_s() / b.jobs_per_s());
            println!("  {name:<26} conc {conc:>2}: latency x{lat:.2}, jobs/s x{thr:.2}");
            ratios.push(json!({"name": name, "concurrency": conc,
                "p50_latency_ratio": lat, "jobs_per_s_ratio": thr}));
        }
    }
    println!("\nwhere uncached API latency goes (medians, ms; the result's own timings)");
    let mut split = Vec::new();
    for conc in [1, high] {
        let u = find(Kind::ApiUncached, conc);
        let m = |v: &[f64]| pct(&mut v.to_vec(), 0.5);
        let [setup, run, teardown, total] = [0, 1, 2, 3].map(|i| m(&u.sandbox[i]));
        let rest = m(&u.overhead);
        println!(
            "  conc {conc:>2}: latency {:.2} = sandbox {total:.2} (setup {setup:.2}, run {run:.2}, \
             teardown {teardown:.2}) + HTTP, queue, prepare, cache store {rest:.2}",
            u.p(0.5)
        );
        split.push(json!({"concurrency": conc, "latency_p50_ms": u.p(0.5),
            "sandbox_total_ms": total, "setup_ms": setup, "run_ms": run,
            "teardown_ms": teardown, "outside_sandbox_ms": rest}));
    }
    println!("\nload average (1 5 15 min): before {load_before}, after {load_after}");

    let results: Vec<Value> = configs
        .iter()
        .map(|c| {
            let mean = c.ms.iter().sum::<f64>() / c.ms.len() as f64;
            json!({"name": c.kind.name(), "config": c.kind.key(), "concurrency": c.conc,
                "requests": c.ms.len(), "p50_ms": c.p(0.5), "p90_ms": c.p(0.9),
                "p99_ms": c.p(0.99), "mean_ms": mean, "jobs_per_s": c.jobs_per_s()})
        })
        .collect();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/api.json");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "job": "busybox /bin/true", "requests_per_config": n, "rounds": rounds,
            "cpus": cpus, "server_workers": workers, "cli": ctx.cli.join(" "),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "server_metrics": metrics, "results": results, "ratios": ratios,
            "uncached_latency_split": split,
        }))?,
    )?;
    println!("\n(JSON: {})", out.display());
    Ok(())
}
