//! Remote workers (`runbox worker`) behind a coordinating `runbox serve
//! --workers 0`, side by side in one run with the server's own in-process
//! workers. Two figures:
//!
//! 1. **Throughput through the coordinator.** `/bin/true` from a busybox image,
//!    `POST /api/run` with `"cache": false` (every request runs a sandbox), from
//!    C closed-loop clients (the load generator of benches/src/bin/api.rs: one
//!    thread, a tokio current-thread runtime, a keep-alive reqwest client; each
//!    client sends its next request when its previous answer is in), against:
//!      - 1 `runbox worker --jobs 1` process;
//!      - 4 `runbox worker --jobs 1` processes;
//!      - 4 `runbox worker --jobs 2` processes;
//!      - for reference, `runbox serve --workers 2` with no remote workers (its
//!        in-process workers; a second server with its own store).
//!
//!    The configurations do not have the same number of job slots (1, 4, 8, 2):
//!    they are what an operator would start, one process per slot or not. The
//!    remote workers' processes are started for each block of requests (their
//!    "connected" line, then 300 ms to settle) and stopped after it with SIGTERM,
//!    which drains them: each must exit 0. Each block begins with C unmeasured
//!    requests, so a freshly started worker's first jobs do not count against
//!    it (the in-process blocks get the same). Latency is send → whole body
//!    received; jobs/s is measured requests / wall time of the measured part of
//!    the blocks. Reports p50/p90/p99 latency, jobs/s, how much of the median
//!    latency is outside the sandbox (latency minus the result's own
//!    `timings.total_ms`), the ratios to the in-process workers, and how the
//!    jobs spread over the worker processes (the claims in their JSON logs,
//!    each block's unmeasured requests included).
//!
//!    Every answer is checked: status 200, `result.status` "ok", `exit_code` 0,
//!    `cached` false; every worker's log must show each of its claims reported
//!    and stored, and the claims must add up to the requests. At the end each server's /metrics must count exactly the jobs it
//!    was sent, all ok, and no cache lookups. The N requests of each
//!    configuration are split into ROUNDS interleaved rounds (every round runs
//!    a block of each configuration, in a shuffled order), after one warmup
//!    round that is not counted, so drift does not land on one configuration.
//!
//! 2. **Time from a worker's death to its job's re-queue.** A third server,
//!    `runbox serve --workers 0 --lease 2s`, and one `runbox worker --jobs 1`.
//!    A job `sh -c 'sleep 60'` is submitted with `POST /api/jobs` and polled
//!    (`GET /api/jobs/{id}`, every 5 ms) until it is "running" (claimed); then,
//!    after a random delay in [0, lease / 3) so the kill lands anywhere between
//!    two heartbeats, the worker process is SIGKILLed, and the job is polled
//!    every 5 ms until it is "queued" again: that interval is death → re-queue.
//!    The job is then cancelled (`POST /api/jobs/{id}/cancel`: 200,
//!    "cancelled") and a fresh worker is started for the next repetition, whose
//!    job is submitted after a random wait in [0, 1 s): the previous repetition
//!    ended just after one of the server's once-a-second reaper ticks, and
//!    without it every lease would end at the same point between two ticks.
//!    The policy's bound is lease + 1 s (the reaper's tick); the floor is
//!    lease − lease / 3 (a heartbeat was due just as the worker died). Also
//!    checks that the killed worker's sandbox died with it (no `sleep 60` left).
//!
//!    Then death → done with a second worker waiting: the same, but the job
//!    carries `"limits": {"wall_time_ms": 2000}`, and a standby worker is
//!    started once the first has claimed it. After the kill the standby claims
//!    the job and runs it until its wall-time limit; death → done is timed, and
//!    death → re-run start is that minus the re-run's own `timings.total_ms`.
//!    The kill must come within 2 s of the claim (else the first run could have
//!    finished), and the result must be `wall_time_limit`.
//!
//! Every server and worker has its own data directory with the busybox test
//! image imported (`runbox image import`); the manifest digests are checked to
//! be the same everywhere. They live in a temporary directory under BENCH_DIR
//! (default /var/tmp), removed at the end (`BENCH_KEEP=1` keeps it, with the
//! servers' and workers' logs in logs/).
//!
//! Writes everything, with the load average before and after, as JSON to
//! benches/results/coordinator.json.
//!
//! Usage: `benches/run coordinator [N [ROUNDS [KILLS]]]` (builds runbox in
//! release first): N measured requests per configuration (default 1000) in
//! ROUNDS rounds (default 10), KILLS repetitions of each death measurement
//! (default 10). `BENCH_CONC=C` sets the clients (default 8). About 3 minutes
//! on a quiet 2-CPU machine.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbox_benches::serve::{checked_run, first_line, metric, sh, tail, Server};
use runbox_benches::{loadavg, pct, Rng};
use serde_json::{json, Value};

/// One `runbox worker` process's setup: its token and its own data directory.
struct WorkerSpec {
    token: String,
    data: PathBuf,
}

/// A running `runbox worker` child (JSON log lines at `info` in its own file);
/// SIGKILLed when dropped unless it was stopped.
struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    /// Starts the processes at once, then waits for each one's "connected" line.
    fn start_all(
        runbox: &Path,
        url: &str,
        specs: &[&WorkerSpec],
        jobs: usize,
        logs: &Path,
        tag: &str,
    ) -> Result<Vec<Worker>> {
        let mut workers = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let log = logs.join(format!("worker-{tag}-{i}.log"));
            let child = Command::new(runbox)
                .args(["worker", "--server", url, "--log-format", "json"])
                .arg(format!("--jobs={jobs}"))
                .env("RUNBOX_DATA_DIR", &spec.data)
                .env("RUNBOX_WORKER_TOKEN", &spec.token)
                .env("RUNBOX_LOG", "info")
                .env_remove("RUNBOX_CATALOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("starting runbox worker")?;
            workers.push(Worker {
                child: Some(child),
                log,
            });
        }
        for w in &mut workers {
            let line = first_line(w.child.as_mut().expect("started"))?;
            if !line.starts_with("runbox worker: connected to ") {
                bail!(
                    "runbox worker did not connect: {line:?}\n{}",
                    tail(&w.log, 20)
                );
            }
        }
        Ok(workers)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM (a drain: it finishes and reports its jobs), then waits for it;
    /// it must exit 0.
    async fn stop(&mut self) -> Result<()> {
        sh(Command::new("kill")
            .args(["-TERM", "--"])
            .arg(self.pid().to_string()))?;
        // Until it has exited it stays in `self.child`, for `drop` to kill and reap.
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                self.child = None;
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "runbox worker did not exit within 30 s of SIGTERM\n{}",
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        ensure!(
            status.success(),
            "runbox worker exited with {status} after SIGTERM\n{}",
            tail(&self.log, 20)
        );
        Ok(())
    }

    /// SIGKILL, now; the instant it was sent.
    fn kill(&mut self) -> Result<Instant> {
        // On an error the child stays in `self.child`, for `drop` to reap.
        let child = self.child.as_mut().expect("running");
        child.kill()?;
        let t = Instant::now();
        child.wait()?;
        self.child = None;
        Ok(t)
    }

    /// Its JSON log events with this message.
    fn events(&self, message: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message || v["fields"]["message"] == message)
            .collect()
    }

    /// The jobs it claimed, after checking that each was reported and stored.
    fn claims_checked(&self) -> Result<usize> {
        let claimed = self.events("claimed a job");
        let reported = self.events("reported a result");
        let id = |e: &Value| {
            let e = if e["job_id"].is_null() {
                &e["fields"]
            } else {
                e
            };
            (
                e["job_id"].as_str().unwrap_or("").to_owned(),
                e["answer"].as_str().unwrap_or("").to_owned(),
            )
        };
        let mut claimed: Vec<String> = claimed.iter().map(|e| id(e).0).collect();
        let mut stored: Vec<String> = reported
            .iter()
            .map(id)
            .filter(|(_, answer)| answer.eq_ignore_ascii_case("stored"))
            .map(|(id, _)| id)
            .collect();
        claimed.sort();
        stored.sort();
        ensure!(
            claimed == stored && !claimed.iter().any(String::is_empty),
            "worker log {}: {} claims but {} results stored ({} reports)\n{}",
            self.log.display(),
            claimed.len(),
            stored.len(),
            reported.len(),
            tail(&self.log, 10)
        );
        Ok(claimed.len())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where configuration 1's jobs run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `runbox serve --workers 2`.
    InProcess,
    /// `procs` × `runbox worker --jobs jobs` behind `runbox serve --workers 0`.
    Remote { procs: usize, jobs: usize },
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::InProcess => format!("in-process (serve --workers {INPROCESS_WORKERS})"),
            Kind::Remote { procs, jobs } => {
                format!("{procs} runbox worker x --jobs {jobs}")
            }
        }
    }
    fn key(self) -> String {
        match self {
            Kind::InProcess => "in_process".into(),
            Kind::Remote { procs, jobs } => format!("remote_{procs}x{jobs}"),
        }
    }
    fn slots(self) -> usize {
        match self {
            Kind::InProcess => INPROCESS_WORKERS,
            Kind::Remote { procs, jobs } => procs * jobs,
        }
    }
}

const INPROCESS_WORKERS: usize = 2;
/// The most worker processes a configuration starts (each has its own store).
const MAX_PROCS: usize = 4;
/// The death measurements' lease.
const LEASE: Duration = Duration::from_secs(2);
/// The housekeeping tick that reaps expired leases.
const REAPER_TICK: Duration = Duration::from_secs(1);
/// The re-run's wall-time limit in the death → done measurement.
const RERUN_WALL_MS: u64 = 2000;

struct Config {
    kind: Kind,
    ms: Vec<f64>,
    secs: f64,
    /// Latency minus the sandbox's own total, per request.
    outside: Vec<f64>,
    /// Jobs claimed per worker process, summed over the blocks (remote only).
    per_proc: Vec<usize>,
}

impl Config {
    fn p(&self, q: f64) -> f64 {
        pct(&mut self.ms.clone(), q)
    }
    fn jobs_per_s(&self) -> f64 {
        self.ms.len() as f64 / self.secs
    }
}

struct Sample {
    ms: f64,
    sandbox_ms: f64,
}

struct Ctx {
    client: reqwest::Client,
    body: Vec<u8>,
}

impl Ctx {
    async fn run(&self, base: &str) -> Result<Sample> {
        let url = format!("{base}/api/run");
        let (ms, v) = checked_run(&self.client, &url, &self.body, false).await?;
        let r = &v["result"];
        let text = || v.to_string();
        let sandbox_ms = r["timings"]["total_ms"]
            .as_f64()
            .with_context(|| format!("result.timings.total_ms missing: {}", text()))?;
        Ok(Sample { ms, sandbox_ms })
    }

    /// `n` requests from `conc` closed-loop clients; the samples and the wall time.
    async fn block(&self, base: &str, conc: usize, n: usize) -> Result<(Vec<Sample>, f64)> {
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        let clients = (0..conc).map(|_| async {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                mine.push(self.run(base).await?);
            }
            anyhow::Ok(mine)
        });
        let all = futures_util::future::try_join_all(clients).await?;
        let secs = t.elapsed().as_secs_f64();
        Ok((all.into_iter().flatten().collect(), secs))
    }

    async fn get(&self, url: &str) -> Result<Value> {
        let resp = self.client.get(url).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        ensure!(status == 200, "GET {url}: status {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
    }

    async fn post(&self, url: &str, body: &Value) -> Result<(u16, Value)> {
        let resp = self.client.post(url).json(body).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text)
            .with_context(|| format!("POST {url}: status {status}, not JSON: {text}"))?;
        Ok((status, v))
    }

    async fn metrics(&self, base: &str) -> Result<String> {
        Ok(self
            .client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Submits a job with `POST /api/jobs`; its id.
    async fn submit(&self, base: &str, req: &Value) -> Result<String> {
        let (status, v) = self.post(&format!("{base}/api/jobs"), req).await?;
        ensure!(status == 202, "POST /api/jobs: status {status}: {v}");
        v["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("POST /api/jobs: no id: {v}"))
    }

    /// Polls the job every 5 ms until `until` says yes about its status (the
    /// whole JobInfo then, and when it was seen); fails after `within`.
    async fn poll(
        &self,
        base: &str,
        id: &str,
        within: Duration,
        until: impl Fn(&str) -> bool,
    ) -> Result<(Value, Instant)> {
        let url = format!("{base}/api/jobs/{id}");
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(&url).await?;
            let t = Instant::now();
            let status = v["status"].as_str().unwrap_or("");
            if until(status) {
                return Ok((v, t));
            }
            ensure!(
                t < deadline,
                "job {id} still {status:?} after {within:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Checks that a server's /metrics counts exactly `sent` jobs, all ok, and no
/// cache lookups.
fn check_metrics(text: &str, sent: usize, who: &str) -> Result<Value> {
    let (ok, all, hits, misses) = (
        metric(text, "runbox_jobs_total{status=\"ok\"}"),
        metric(text, "runbox_jobs_total{"),
        metric(text, "runbox_cache_lookups_total{result=\"hit\"}"),
        metric(text, "runbox_cache_lookups_total{result=\"miss\"}"),
    );
    ensure!(
        ok == sent as f64 && all == ok && hits == 0.0 && misses == 0.0,
        "{who}'s /metrics disagrees with what was sent ({sent} jobs): {ok} ok, {all} in all, \
         {hits} cache hits, {misses} misses"
    );
    Ok(json!({"jobs_ok": ok, "jobs_total": all}))
}

/// Processes on this machine whose command line is the death test's job.
fn sleepers() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c == b"sleep\x0060\x00" || c == b"sh\x00-c\x00sleep 60\x00")
        .count()
}

/// The busybox image's manifest digest in `data`.
fn digest(runbox: &Path, data: &Path) -> Result<String> {
    let out = sh(Command::new(runbox)
        .args(["image", "ls", "--json"])
        .env("RUNBOX_DATA_DIR", data))?;
    let images: Value = serde_json::from_str(&out)?;
    images
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.to_string().contains("busybox"))
        .and_then(|i| i["manifest_digest"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no busybox in {}: {out}", data.display()))
}

fn stats(v: &[f64]) -> Value {
    let mut v = v.to_vec();
    json!({"n": v.len(), "min_ms": pct(&mut v, 0.0), "median_ms": pct(&mut v, 0.5),
        "max_ms": pct(&mut v, 1.0), "all_ms": v})
}

fn summary(v: &[f64]) -> String {
    let mut v = v.to_vec();
    format!(
        "min {:.0}  median {:.0}  max {:.0} ms  (n = {}; all: {})",
        pct(&mut v, 0.0),
        pct(&mut v, 0.5),
        pct(&mut v, 1.0),
        v.len(),
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n = args.next().transpose()?.unwrap_or(1000).max(1);
    let rounds = args.next().transpose()?.unwrap_or(10).clamp(1, n);
    let kills = args.next().transpose()?.unwrap_or(10).max(1);
    let conc = std::env::var("BENCH_CONC")
        .ok()
        .map(|c| c.parse::<usize>())
        .transpose()
        .context("BENCH_CONC")?
        .unwrap_or(8)
        .max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let runbox = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/runbox");
    if !runbox.exists() {
        bail!(
            "{} is missing: run scripts/build (benches/run does)",
            runbox.display()
        );
    }
    let bench_dir = std::env::var_os("BENCH_DIR").map_or_else(|| "/var/tmp".into(), PathBuf::from);
    let tmp = tempfile::Builder::new()
        .prefix("runbox-bench-coordinator-")
        .tempdir_in(&bench_dir)
        .with_context(|| format!("a temporary directory in {}", bench_dir.display()))?;
    let dir = tmp.path();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let layout = runbox_testkit::oci::busybox_image(&dir.join("layout"));

    // Stores: the coordinator, the in-process server, the death test's server,
    // MAX_PROCS remote workers, and the death test's two workers.
    let data = |name: &str| dir.join(format!("data-{name}"));
    let worker_names: Vec<String> = (0..MAX_PROCS)
        .map(|i| format!("w{i}"))
        .chain(["victim".into(), "standby".into()])
        .collect();
    let stores: Vec<PathBuf> = ["coord", "inproc", "death"]
        .iter()
        .map(|s| data(s))
        .chain(worker_names.iter().map(|w| data(w)))
        .collect();
    let mut digests = Vec::new();
    for d in &stores {
        sh(Command::new(&runbox)
            .args(["image", "import", "--name", "busybox"])
            .arg(&layout)
            .env("RUNBOX_DATA_DIR", d))?;
        digests.push(digest(&runbox, d)?);
    }
    ensure!(
        digests.iter().all(|d| *d == digests[0]),
        "the busybox image has different digests in the stores: {digests:?}"
    );
    // Tokens, made in the servers' databases before they start.
    let token = |server: &str, name: &str| -> Result<String> {
        let out = sh(Command::new(&runbox)
            .args(["workers", "create", name])
            .env("RUNBOX_DATA_DIR", data(server))
            .env_remove("RUNBOX_DATABASE"))?;
        let t = out.trim().to_owned();
        ensure!(
            t.starts_with("rbw_") && !t.contains('\n'),
            "runbox workers create {name}: not a token alone on stdout: {out:?}"
        );
        Ok(t)
    };
    let remote: Vec<WorkerSpec> = worker_names[..MAX_PROCS]
        .iter()
        .map(|w| {
            Ok(WorkerSpec {
                token: token("coord", w)?,
                data: data(w),
            })
        })
        .collect::<Result<_>>()?;
    let victim = WorkerSpec {
        token: token("death", "victim")?,
        data: data("victim"),
    };
    let standby = WorkerSpec {
        token: token("death", "standby")?,
        data: data("standby"),
    };

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ctx = Ctx {
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?,
        body: serde_json::to_vec(
            &json!({"image": "busybox", "argv": ["/bin/true"], "cache": false}),
        )?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // ---- 1. throughput ----
    let coord = Server::start(
        &runbox,
        &data("coord"),
        &["--workers", "0"],
        logs.join("serve-coord.log"),
    )?;
    let inproc = Server::start(
        &runbox,
        &data("inproc"),
        &["--workers", &INPROCESS_WORKERS.to_string()],
        logs.join("serve-inproc.log"),
    )?;
    let mut configs: Vec<Config> = [
        Kind::Remote { procs: 1, jobs: 1 },
        Kind::Remote { procs: 4, jobs: 1 },
        Kind::Remote { procs: 4, jobs: 2 },
        Kind::InProcess,
    ]
    .into_iter()
    .map(|kind| Config {
        kind,
        ms: Vec::new(),
        secs: 0.0,
        outside: Vec::new(),
        per_proc: match kind {
            Kind::InProcess => Vec::new(),
            Kind::Remote { procs, .. } => vec![0; procs],
        },
    })
    .collect();

    let load_before = loadavg();
    println!("load average before: {load_before}");
    let started = Instant::now();
    let throughput = rt.block_on(async {
        for (s, w) in [(&coord, 0), (&inproc, INPROCESS_WORKERS)] {
            let h = ctx.get(&format!("{}/healthz", s.url)).await?;
            ensure!(
                h["workers"] == w,
                "{}: /healthz says {} workers, expected {w}",
                s.url,
                h["workers"]
            );
        }
        let mut sent = [0usize; 2]; // coordinator, in-process
        let warmup = n.div_ceil(rounds).min(30).max(2 * conc);
        let mut rng = Rng::seeded(0x2545_f491_4f6c_dd1d);
        let mut order: Vec<usize> = (0..configs.len()).collect();
        for round in 0..=rounds {
            rng.shuffle(&mut order);
            for &i in &order {
                let c = &mut configs[i];
                let todo = if round == 0 {
                    warmup
                } else {
                    n.div_ceil(rounds).min(n - c.ms.len())
                };
                if todo == 0 {
                    continue;
                }
                let (base, mut workers) = match c.kind {
                    Kind::InProcess => (&inproc.url, Vec::new()),
                    Kind::Remote { procs, jobs } => {
                        let specs: Vec<&WorkerSpec> = remote[..procs].iter().collect();
                        let tag = format!("{}-r{round}", c.kind.key());
                        let w = Worker::start_all(&runbox, &coord.url, &specs, jobs, &logs, &tag)?;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        (&coord.url, w)
                    }
                };
                // A fresh worker's first jobs are not counted (nor, for
                // symmetry, the in-process workers').
                ctx.block(base, conc, conc).await?;
                let (samples, secs) = ctx.block(base, conc, todo).await?;
                let who = usize::from(c.kind == Kind::InProcess);
                sent[who] += conc + todo;
                let mut claims = 0;
                for (p, w) in workers.iter_mut().enumerate() {
                    w.stop().await?;
                    let k = w.claims_checked()?;
                    claims += k;
                    if round > 0 {
                        c.per_proc[p] += k;
                    }
                }
                ensure!(
                    workers.is_empty() || claims == conc + todo,
                    "{}: the workers claimed {claims} jobs, {} were sent",
                    c.kind.name(),
                    conc + todo
                );
                if round == 0 {
                    continue;
                }
                c.secs += secs;
                for s in samples {
                    c.ms.push(s.ms);
                    c.outside.push(s.ms - s.sandbox_ms);
                }
            }
        }
        let m_coord = check_metrics(&ctx.metrics(&coord.url).await?, sent[0], "the coordinator")?;
        let m_inproc = check_metrics(
            &ctx.metrics(&inproc.url).await?,
            sent[1],
            "the in-process server",
        )?;
        anyhow::Ok(json!({"coordinator": m_coord, "in_process": m_inproc}))
    });
    let throughput_metrics = throughput.map_err(|e| {
        coord.explain(e).context(format!(
            "(the in-process server's log: {})",
            tail(&inproc.log, 10)
        ))
    })?;
    let throughput_secs = started.elapsed().as_secs_f64();
    let load_mid = loadavg();
    drop(coord);
    drop(inproc);

    // ---- 2. death → re-queue ----
    let lease_arg = format!("{}ms", LEASE.as_millis());
    let death = Server::start(
        &runbox,
        &data("death"),
        &["--workers", "0", "--lease", &lease_arg],
        logs.join("serve-death.log"),
    )?;
    let heartbeat = LEASE / 3;
    let died = rt.block_on(async {
        let url = &death.url;
        let mut rng = Rng::seeded(0x9e37_79b9_7f4a_7c15);
        // A random time below `max`.
        let mut random =
            |max: Duration| Duration::from_micros(rng.next_u64() % max.as_micros() as u64);
        let mut requeue = Vec::new();
        let mut leftovers = 0;
        let sleeper = json!({"image": "busybox", "argv": ["sh", "-c", "sleep 60"], "cache": false});
        for k in 0..kills {
            let mut w =
                Worker::start_all(&runbox, url, &[&victim], 1, &logs, &format!("victim-{k}"))?
                    .pop()
                    .expect("one");
            // The previous repetition ended just after a reaper tick: without
            // this the claim, and so the lease's end, would always come at the
            // same point between two ticks.
            tokio::time::sleep(random(REAPER_TICK)).await;
            let id = ctx.submit(url, &sleeper).await?;
            ctx.poll(url, &id, Duration::from_secs(30), |s| s != "queued")
                .await
                .and_then(|(v, _)| {
                    ensure!(v["status"] == "running", "job {id}: {v}");
                    Ok(())
                })?;
            tokio::time::sleep(random(heartbeat)).await;
            let t0 = w.kill()?;
            let (v, t1) = ctx
                .poll(url, &id, LEASE + REAPER_TICK * 5, |s| s != "running")
                .await?;
            ensure!(
                v["status"] == "queued",
                "job {id} after its worker died: {v}"
            );
            requeue.push((t1 - t0).as_secs_f64() * 1e3);
            let (status, v) = ctx
                .post(&format!("{url}/api/jobs/{id}/cancel"), &json!({}))
                .await?;
            ensure!(
                status == 200 && v["status"] == "cancelled",
                "cancelling the re-queued job {id}: {status} {v}"
            );
            leftovers += sleepers();
        }

        let mut done = Vec::new();
        let mut rerun_start = Vec::new();
        let mut limited = sleeper.clone();
        limited["limits"] = json!({"wall_time_ms": RERUN_WALL_MS});
        for k in 0..kills {
            let mut w =
                Worker::start_all(&runbox, url, &[&victim], 1, &logs, &format!("victim2-{k}"))?
                    .pop()
                    .expect("one");
            // The previous repetition ended just after a reaper tick: without
            // this the claim, and so the lease's end, would always come at the
            // same point between two ticks.
            tokio::time::sleep(random(REAPER_TICK)).await;
            let id = ctx.submit(url, &limited).await?;
            let (v, claimed) = ctx
                .poll(url, &id, Duration::from_secs(30), |s| s != "queued")
                .await?;
            ensure!(v["status"] == "running", "job {id}: {v}");
            let mut s =
                Worker::start_all(&runbox, url, &[&standby], 1, &logs, &format!("standby-{k}"))?
                    .pop()
                    .expect("one");
            tokio::time::sleep(Duration::from_millis(200) + random(heartbeat)).await;
            let t0 = w.kill()?;
            ensure!(
                t0 - claimed < Duration::from_millis(RERUN_WALL_MS),
                "the first worker was killed {:?} after its claim: its run may have ended",
                t0 - claimed
            );
            let (v, t1) = ctx
                .poll(
                    url,
                    &id,
                    LEASE + REAPER_TICK * 5 + Duration::from_secs(30),
                    |s| s != "running" && s != "queued",
                )
                .await?;
            let r = &v["response"]["result"];
            ensure!(
                v["status"] == "done" && r["status"] == "wall_time_limit",
                "job {id} after its first worker died: expected done with wall_time_limit: {v}"
            );
            let total = r["timings"]["total_ms"]
                .as_f64()
                .with_context(|| format!("no timings.total_ms: {v}"))?;
            let ms = (t1 - t0).as_secs_f64() * 1e3;
            done.push(ms);
            rerun_start.push(ms - total);
            s.stop().await?;
            ensure!(
                s.claims_checked()? == 1,
                "the standby worker did not claim and store exactly the one job"
            );
        }
        // The last killed worker left its sandbox's cgroup and directory; a
        // runbox that opens its store sweeps them (as each new victim did for
        // the one before).
        Worker::start_all(&runbox, url, &[&victim], 1, &logs, "sweep")?
            .pop()
            .expect("one")
            .stop()
            .await?;
        anyhow::Ok((requeue, leftovers, done, rerun_start))
    });
    let (requeue, leftovers, done, rerun_start) = died.map_err(|e| death.explain(e))?;
    drop(death);
    let load_after = loadavg();

    // ---- report ----
    println!(
        "\n/bin/true in busybox, POST /api/run with \"cache\": false: {n} requests per \
         configuration in {rounds} interleaved rounds (+1 warmup round), {conc} closed-loop \
         clients; {cpus} CPUs; {throughput_secs:.0} s"
    );
    println!(
        "{:<34} {:>5} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "", "slots", "p50 ms", "p90 ms", "p99 ms", "jobs/s", "outside ms"
    );
    let inproc_cfg = configs
        .iter()
        .find(|c| c.kind == Kind::InProcess)
        .expect("ran");
    let (ref_p50, ref_thr) = (inproc_cfg.p(0.5), inproc_cfg.jobs_per_s());
    let mut results = Vec::new();
    for c in &configs {
        let outside = pct(&mut c.outside.clone(), 0.5);
        println!(
            "{:<34} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.0} {:>10.2}",
            c.kind.name(),
            c.kind.slots(),
            c.p(0.5),
            c.p(0.9),
            c.p(0.99),
            c.jobs_per_s(),
            outside
        );
        let mean = c.ms.iter().sum::<f64>() / c.ms.len() as f64;
        results.push(json!({"name": c.kind.name(), "config": c.kind.key(),
            "slots": c.kind.slots(), "requests": c.ms.len(), "p50_ms": c.p(0.5),
            "p90_ms": c.p(0.9), "p99_ms": c.p(0.99), "mean_ms": mean,
            "jobs_per_s": c.jobs_per_s(), "outside_sandbox_p50_ms": outside,
            "p50_latency_vs_in_process": c.p(0.5) / ref_p50,
            "jobs_per_s_vs_in_process": c.jobs_per_s() / ref_thr,
            "jobs_per_worker_process": c.per_proc}));
    }
    println!("(outside ms: median of latency minus the sandbox's own timings.total_ms)");
    println!("\nvs in-process (p50 latency; jobs/s), and jobs claimed per worker process (warm-ups included)");
    for c in configs.iter().filter(|c| c.kind != Kind::InProcess) {
        println!(
            "  {:<34} latency x{:.2}, jobs/s x{:.2}; per process {:?}",
            c.kind.name(),
            c.p(0.5) / ref_p50,
            c.jobs_per_s() / ref_thr,
            c.per_proc
        );
    }
    let bound = (LEASE + REAPER_TICK).as_secs_f64() * 1e3;
    let floor = (LEASE - heartbeat).as_secs_f64() * 1e3;
    println!(
        "\nworker SIGKILLed → job queued again (lease {} ms, heartbeat every {} ms, \
         kill at a random point between heartbeats; bound lease + 1 s tick = {bound:.0} ms, \
         floor lease - heartbeat = {floor:.0} ms):\n  {}",
        LEASE.as_millis(),
        heartbeat.as_millis(),
        summary(&requeue)
    );
    println!(
        "worker SIGKILLed → job done by a waiting second worker (re-run to its {RERUN_WALL_MS} ms \
         wall-time limit):\n  {}\n  minus the re-run's own total: {}",
        summary(&done),
        summary(&rerun_start)
    );
    println!(
        "`sleep 60` processes left after the kills: {leftovers} (summed over the checks; 0 means \
         each sandbox died with its worker)"
    );
    println!(
        "\nload average (1 5 15 min): before {load_before}, after the throughput part \
         {load_mid}, at the end {load_after}"
    );
    let over: Vec<&f64> = requeue.iter().filter(|&&ms| ms > bound).collect();
    if !over.is_empty() {
        println!(
            "NOTE: {} re-queue time(s) over the bound: {over:?}",
            over.len()
        );
    }

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/coordinator.json");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "job": "busybox /bin/true, cache: false", "requests_per_config": n,
            "rounds": rounds, "concurrency": conc, "cpus": cpus,
            "image_digest": digests[0],
            "loadavg_before": load_before, "loadavg_after_throughput": load_mid,
            "loadavg_after": load_after, "server_metrics": throughput_metrics,
            "throughput": results,
            "death_to_requeue": {"lease_ms": LEASE.as_millis() as u64,
                "heartbeat_ms": heartbeat.as_millis() as u64, "bound_ms": bound,
                "floor_ms": floor, "kills": stats(&requeue),
                "sleepers_left": leftovers},
            "death_to_done_with_standby": {"rerun_wall_time_ms": RERUN_WALL_MS,
                "death_to_done": stats(&done),
                "death_to_rerun_start": stats(&rerun_start)},
        }))?,
    )?;
    println!("\n(JSON: {})", out.display());
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("(kept: {})", tmp.keep().display());
    }
    Ok(())
}
