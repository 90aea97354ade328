//! Remote workers, end to end with real processes: a `runbox serve --workers 0`
//! (a pure coordinator, every response checked against its OpenAPI document),
//! tokens made with `runbox workers`, and `runbox worker` processes with their
//! own data directories, claiming over HTTP and running jobs in real sandboxes.
//! The worker API is also driven by hand, to check what a worker may and may not
//! do (docs/workers.md).
//!
//! Every test runs twice: against the server's SQLite database, and against a
//! real PostgreSQL (`scripts/postgres`, through runbox-testkit).
//!
//! Leases are 2 s so that lease expiry is quick to see; nothing waits a fixed
//! time to synchronize: conditions are polled, with a bound.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{code, json, text, Runbox};
use runbox_testkit::server::{Resp, TestServer};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_runbox");

#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// A coordinator: `runbox serve --workers 0 --lease 2s` over a data directory
/// with busybox, on SQLite or PostgreSQL.
struct Coordinator {
    rb: Runbox,
    s: TestServer,
    database: Option<String>,
}

impl Coordinator {
    fn start(db: Db, hint: &str) -> Coordinator {
        Coordinator::start_with(db, hint, "2s", &[])
    }

    fn start_with(db: Db, hint: &str, lease: &str, extra: &[&str]) -> Coordinator {
        let database = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(
                runbox_testkit::postgres::TestPostgres::shared()
                    .fresh_database(&format!("workers_{hint}")),
            ),
        };
        let mut args = vec!["--workers", "0", "--lease", lease, "--rate-limit", "0"];
        if let Some(url) = &database {
            args.extend(["--database", url.as_str()]);
        }
        args.extend_from_slice(extra);
        let (rb, s) = Runbox::busybox_server(&args);
        Coordinator { rb, s, database }
    }

    /// `runbox workers ARGS` on this server's database.
    fn workers(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["workers"];
        all.extend_from_slice(args);
        if let Some(url) = &self.database {
            all.extend(["--database", url.as_str()]);
        }
        self.rb.run(&all)
    }

    /// A new worker's token, from `runbox workers create NAME --json`.
    fn token(&self, name: &str) -> String {
        let out = self.workers(&["create", name, "--json"]);
        assert_eq!(code(&out), 0, "workers create: {}", text(&out.stderr));
        let v = json(&out);
        assert_eq!(v["name"], name);
        v["token"].as_str().unwrap().to_owned()
    }

    /// A `runbox worker` with its own data directory (busybox imported),
    /// connected.
    fn worker(&self, name: &str, extra: &[&str]) -> Worker {
        let token = self.token(name);
        Worker::start(&self.s.url, &token, extra)
    }

    /// The busybox image's manifest digest in this server's store.
    fn busybox_digest(&self) -> String {
        digest(&self.rb)
    }

    /// Submits a job with `POST /api/jobs`; its id.
    fn submit(&self, req: &Value) -> String {
        let r = self.s.post_json("/api/jobs", req);
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_owned()
    }

    fn job(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/api/jobs/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Waits for a job to reach `status`.
    fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        wait_for(&format!("job {id} to be {status}"), within, || {
            let j = self.job(id);
            (j["status"] == status).then_some(j)
        })
    }

    /// A worker API call with `token`.
    fn call(&self, token: &str, path: &str, body: &Value) -> Resp {
        self.s.send(
            "POST",
            path,
            self.s
                .client()
                .post(format!("{}{path}", self.s.url))
                .bearer_auth(token)
                .json(body),
        )
    }

    /// An admin call.
    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let url = format!("{}{path}", self.s.url);
        let c = self.s.client();
        let mut req = match method {
            "GET" => c.get(url),
            "POST" => c.post(url),
            "DELETE" => c.delete(url),
            _ => unreachable!(),
        }
        .bearer_auth(&self.s.admin_token);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.s.send(method, path, req)
    }

    /// What a worker on this machine advertises.
    fn capabilities(&self) -> Value {
        json!({
            "backend": "namespace",
            "arch": std::env::consts::ARCH,
            "cpus": 1,
            "memory_bytes": 1u64 << 30,
            "images": [self.busybox_digest()],
            "labels": [],
        })
    }

    fn claim(&self, token: &str, wait_ms: u64) -> Resp {
        self.call(
            token,
            "/api/worker/claim",
            &json!({"capabilities": self.capabilities(), "wait_ms": wait_ms}),
        )
    }
}

fn digest(rb: &Runbox) -> String {
    let out = rb.run(&["image", "ls", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let images = json(&out);
    let img = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.to_string().contains("busybox"))
        .unwrap_or_else(|| panic!("no busybox in {images}"));
    img["manifest_digest"].as_str().unwrap().to_owned()
}

/// A `runbox worker` child process, logging JSON lines; SIGKILLed on drop.
struct Worker {
    rb: Runbox,
    child: Option<Child>,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Worker {
    /// Starts it and waits for its "connected" line.
    fn start(url: &str, token: &str, extra: &[&str]) -> Worker {
        let rb = Runbox::new().with_busybox();
        let log = rb.dir.path().join("worker.log");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "worker",
            "--server",
            url,
            "--jobs",
            "1",
            "--log-format",
            "json",
        ])
        .args(extra)
        .env("RUNBOX_DATA_DIR", rb.data())
        .env("RUNBOX_WORKER_TOKEN", token)
        .env("RUNBOX_LOG", "info")
        .env_remove("RUNBOX_CATALOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut w = Worker {
            rb,
            child: Some(child),
            log,
            status: None,
        };
        assert!(
            line.starts_with("runbox worker: connected to "),
            "the worker did not connect: {line:?}; log: {}",
            w.log()
        );
        w.status = None;
        w
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), sig)
            .unwrap();
    }

    /// Waits for it to exit.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let child = self.child.as_mut().unwrap();
        let status = wait_for("the worker to exit", within, || child.try_wait().unwrap());
        self.status = Some(status);
        status
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its JSON log events with this message.
    fn events(&self, message: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Jobs it claimed, in order.
    fn claimed(&self) -> Vec<String> {
        self.events("claimed a job")
            .iter()
            .map(|e| e["job_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Jobs whose results it reported, with the server's answer.
    fn reported(&self) -> Vec<(String, String)> {
        self.events("reported a result")
            .iter()
            .map(|e| {
                (
                    e["job_id"].as_str().unwrap().to_owned(),
                    e["answer"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 20 ms until it gives a value; panics after `within`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sh(script: &str) -> Value {
    json!({"image": "busybox", "argv": ["sh", "-c", script]})
}

/// A real JobResult (from `runbox run --json`) whose stdout is `stdout`.
fn job_result(stdout: &str) -> Value {
    static REAL: OnceLock<Value> = OnceLock::new();
    let mut r = REAL
        .get_or_init(|| {
            let rb = Runbox::new().with_busybox();
            let out = rb.run(&["run", "--json", "busybox", "--", "true"]);
            assert_eq!(code(&out), 0, "{}", text(&out.stderr));
            json(&out)
        })
        .clone();
    r["stdout"] = json!(stdout);
    r["stdout_bytes"] = json!(stdout.len());
    r
}

// ---- the tests, each run on SQLite and on PostgreSQL ----

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Db::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Db::Postgres) })*
        }
    };
}

on_both_databases!(
    a_job_runs_on_a_remote_worker_and_its_result_is_cached,
    racing_workers_run_every_job_exactly_once,
    wrong_and_revoked_tokens_are_refused,
    a_worker_cannot_act_on_another_workers_job,
    late_and_duplicate_results_change_nothing,
    a_killed_workers_job_is_requeued_and_finished_by_another,
    sigterm_drains_the_worker,
    the_claim_long_poll_ends_when_the_server_stops,
    a_result_over_the_body_limit_fails_the_job_with_the_reason,
    jobs_requiring_labels_go_only_to_workers_that_have_them,
);

fn jobs_requiring_labels_go_only_to_workers_that_have_them(db: Db) {
    let c = Coordinator::start(db, "labels");
    let plain = c.worker("plain", &[]);
    let gpu = c.worker("gpu", &["--labels", "gpu,fast"]);
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut req = sh(&format!("echo needs-gpu {i}"));
        req["requires"] = json!({"labels": ["gpu"]});
        ids.push(c.submit(&req));
    }
    for id in &ids {
        c.wait_status(id, "done", Duration::from_secs(30));
    }
    let mut on_gpu = gpu.claimed();
    on_gpu.sort();
    ids.sort();
    assert_eq!(on_gpu, ids, "every gpu job ran on the gpu worker");
    assert!(plain.claimed().is_empty(), "{:?}", plain.claimed());
    // A label no worker has: the job waits rather than running anywhere.
    let mut req = sh("echo never");
    req["requires"] = json!({"labels": ["tpu"]});
    let id = c.submit(&req);
    let plain_id = c.submit(&sh("echo plain"));
    c.wait_status(&plain_id, "done", Duration::from_secs(30));
    assert_eq!(c.job(&id)["status"], "queued");
    // Malformed requirements are refused naming the field.
    let bad = c.s.post_json(
        "/api/jobs",
        &json!({"image": "busybox", "argv": ["true"], "requires": {"labels": ["no spaces"]}}),
    );
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_argument"));
    assert!(bad.text().contains("requires.labels"), "{}", bad.text());
    let bad = c.s.post_json(
        "/api/jobs",
        &json!({"image": "busybox", "argv": ["true"], "requires": {"colour": "red"}}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("colour"), "{}", bad.text());
}

fn a_job_runs_on_a_remote_worker_and_its_result_is_cached(db: Db) {
    let c = Coordinator::start(db, "cached");
    let w = c.worker("w1", &["--labels", "fast,big"]);
    // The job names its image by the server's digest: the worker's import of
    // the same busybox must come out the same.
    assert_eq!(
        digest(&w.rb),
        c.busybox_digest(),
        "busybox is built deterministically"
    );

    let req = sh("echo hello from $(hostname)");
    let id = c.submit(&req);
    let j = c.wait_status(&id, "done", Duration::from_secs(20));
    let r = &j["response"];
    assert_eq!(r["cached"], false);
    assert_eq!(r["result"]["status"], "ok");
    assert!(
        r["result"]["stdout"]
            .as_str()
            .unwrap()
            .starts_with("hello from"),
        "{r}"
    );
    assert_eq!(
        r["result"]["job_id"], id,
        "the result carries the server's job id"
    );
    assert_eq!(w.claimed(), std::slice::from_ref(&id));
    assert_eq!(w.reported(), [(id.clone(), "Stored".to_owned())]);

    // The result is in the server's cache, like any other.
    let again = c.s.run(&req);
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(again["result"], r["result"]);
    assert_eq!(again["key"], r["key"]);
    let stored =
        c.s.get(&format!("/api/results/{}", r["key"].as_str().unwrap()));
    assert_eq!(stored.status, 200);
    assert_eq!(w.claimed().len(), 1, "the cached answer ran nothing");

    // POST /api/run waits for the remote worker too.
    let run = c.s.run(&sh("echo sync"));
    assert_eq!(run["cached"], false);
    assert_eq!(run["result"]["stdout"], "sync\n");

    // What it advertised, and when it was seen, for the admin.
    let list = c.admin("GET", "/api/admin/workers", None);
    assert_eq!(list.status, 200);
    let list = list.json();
    let me = &list["workers"][0];
    assert_eq!(me["name"], "w1");
    assert!(me["last_seen_ms"].as_i64().unwrap() > 0);
    assert_eq!(me["revoked_ms"], Value::Null);
    let caps = &me["capabilities"];
    assert_eq!(caps["labels"], json!(["fast", "big"]));
    assert_eq!(caps["arch"], std::env::consts::ARCH);
    assert!(
        caps["images"]
            .as_array()
            .unwrap()
            .contains(&json!(c.busybox_digest())),
        "{caps}"
    );
    let out = c.workers(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(json(&out)["workers"][0]["name"], "w1");
    let out = c.workers(&["list"]);
    assert_eq!(code(&out), 0);
    let table = text(&out.stdout);
    assert!(
        table.contains("w1") && table.contains("active") && table.contains("fast,big"),
        "{table}"
    );
}

fn racing_workers_run_every_job_exactly_once(db: Db) {
    let c = Coordinator::start(db, "racing");
    let workers: Vec<Worker> = (0..4)
        .map(|i| c.worker(&format!("racer-{i}"), &[]))
        .collect();
    let t = Instant::now();
    let ids: Vec<String> = (0..20)
        .map(|i| c.submit(&sh(&format!("echo job-{i}; sleep 0.2"))))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let j = c.wait_status(id, "done", Duration::from_secs(60));
        assert_eq!(j["response"]["result"]["stdout"], format!("job-{i}\n"));
    }
    eprintln!("20 jobs through 4 remote workers: {:?}", t.elapsed());
    // Each job claimed once and reported once, all workers together.
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    let mut reports: BTreeMap<String, usize> = BTreeMap::new();
    let mut busy = 0;
    for w in &workers {
        let mine = w.claimed();
        busy += usize::from(!mine.is_empty());
        for id in mine {
            *claims.entry(id).or_default() += 1;
        }
        for (id, answer) in w.reported() {
            assert_eq!(answer, "Stored");
            *reports.entry(id).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            claims.get(id),
            Some(&1),
            "job {id} claimed once: {claims:?}"
        );
        assert_eq!(
            reports.get(id),
            Some(&1),
            "job {id} reported once: {reports:?}"
        );
    }
    assert_eq!(claims.len(), 20, "no other job was claimed: {claims:?}");
    assert!(
        busy >= 2,
        "the jobs were shared among the workers ({busy} took some)"
    );
}

fn wrong_and_revoked_tokens_are_refused(db: Db) {
    let c = Coordinator::start(db, "tokens");
    let caps = json!({"capabilities": c.capabilities(), "wait_ms": 0});
    let anonymous = c.s.send(
        "POST",
        "/api/worker/claim",
        c.s.client()
            .post(format!("{}/api/worker/claim", c.s.url))
            .json(&caps),
    );
    assert_eq!(
        (anonymous.status, anonymous.code()),
        (401, "unauthorized".into())
    );
    let fake = format!("rbw_{}", "0".repeat(64));
    for bad in [fake.as_str(), "rbw_", c.s.admin_token.as_str(), "nonsense"] {
        let r = c.call(bad, "/api/worker/claim", &caps);
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized".into()),
            "token {bad:?}"
        );
    }

    // `runbox workers create` shows the token once, and says so.
    let out = c.workers(&["create", "plain"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(token.starts_with("rbw_") && token.len() == 68, "{token:?}");
    assert!(
        text(&out.stderr).contains("will not be shown again"),
        "{}",
        text(&out.stderr)
    );
    let dup = c.workers(&["create", "plain"]);
    assert_ne!(code(&dup), 0);
    assert!(
        text(&dup.stderr).contains("exists already"),
        "{}",
        text(&dup.stderr)
    );
    let me = c.s.send(
        "GET",
        "/api/worker/me",
        c.s.client()
            .get(format!("{}/api/worker/me", c.s.url))
            .bearer_auth(&token),
    );
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["name"], "plain");
    assert_eq!(me.json()["lease_ms"], 2000);

    // A connected worker whose token is revoked is refused at its next call,
    // and stops, saying what to do.
    let mut w = c.worker("doomed", &["--claim-wait", "1s"]);
    let out = c.workers(&["revoke", "doomed"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let status = w.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(125), "log: {}", w.log());
    assert!(w.log().contains("the token was refused"), "{}", w.log());
    let again = c.workers(&["revoke", "doomed"]);
    assert_ne!(code(&again), 0, "revoking twice is an error");

    // A worker started with a refused token stops at once, saying why.
    let out = Command::new(BIN)
        .args(["worker", "--server", &c.s.url])
        .env("RUNBOX_DATA_DIR", w.rb.data())
        .env("RUNBOX_WORKER_TOKEN", &fake)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("runbox workers create NAME"),
        "{}",
        text(&out.stderr)
    );

    // The admin endpoints: create, list, revoke.
    let r = c.s.send(
        "POST",
        "/api/admin/workers",
        c.s.client()
            .post(format!("{}/api/admin/workers", c.s.url))
            .json(&json!({"name": "x"})),
    );
    assert_eq!(r.status, 401, "admin only");
    let r = c.admin(
        "POST",
        "/api/admin/workers",
        Some(&json!({"name": "api-made"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let api_token = r.json()["token"].as_str().unwrap().to_owned();
    let r = c.admin(
        "POST",
        "/api/admin/workers",
        Some(&json!({"name": "bad name!"})),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_argument".into()));
    assert_eq!(c.claim(&api_token, 0).status, 204);
    assert_eq!(
        c.admin("DELETE", "/api/admin/workers/api-made", None)
            .status,
        204
    );
    let r = c.claim(&api_token, 0);
    assert_eq!(
        (r.status, r.code()),
        (401, "unauthorized".into()),
        "revoked"
    );
    assert_eq!(
        c.admin("DELETE", "/api/admin/workers/api-made", None)
            .status,
        404
    );
    let list = c.admin("GET", "/api/admin/workers", None).json();
    let states: BTreeMap<String, bool> = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_owned(),
                w["revoked_ms"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("plain".into(), true),
            ("doomed".into(), false),
            ("api-made".into(), false)
        ])
    );
}

fn a_worker_cannot_act_on_another_workers_job(db: Db) {
    // A lease long enough not to run out in this test.
    let c = Coordinator::start_with(db, "others", "60s", &[]);
    let (a, b) = (c.token("a"), c.token("b"));
    let (result_a, result_b) = (job_result("from a"), job_result("from b"));
    let id = c.submit(&sh("echo real"));
    let claim = c.claim(&a, 10_000);
    assert_eq!(claim.status, 200, "{}", claim.text());
    let claim = claim.json();
    assert_eq!(claim["job_id"], id);
    assert_eq!(claim["attempt"], 1);
    assert_eq!(claim["lease_ms"], 60_000);
    assert_eq!(claim["requires"]["image"], c.busybox_digest());
    assert_eq!(claim["request"]["argv"], json!(["sh", "-c", "echo real"]));
    let lease = claim["lease_id"].as_str().unwrap().to_owned();
    let path = |call: &str| format!("/api/worker/jobs/{id}/{call}");
    let done = json!({"lease_id": lease, "outcome": {"done": result_b}});

    // B, even with A's lease, can do nothing to A's job.
    for call in ["start", "heartbeat"] {
        let r = c.call(&b, &path(call), &json!({"lease_id": lease}));
        assert_eq!((r.status, r.code()), (409, "lease_lost".into()), "{call}");
    }
    let r = c.call(&b, &path("result"), &done);
    assert_eq!((r.status, r.code()), (409, "lease_lost".into()));
    // Nor can A without its lease, or on a job that does not exist.
    let r = c.call(&a, &path("start"), &json!({"lease_id": "not-the-lease"}));
    assert_eq!((r.status, r.code()), (409, "lease_lost".into()));
    let r = c.call(
        &a,
        "/api/worker/jobs/no-such-job/start",
        &json!({"lease_id": lease}),
    );
    assert_eq!((r.status, r.code()), (409, "lease_lost".into()));
    let r = c.call(&b, &path("start"), &json!({}));
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_argument".into()),
        "no lease id"
    );
    // B finds nothing to claim: the job is A's.
    assert_eq!(c.claim(&b, 0).status, 204);

    // A can.
    assert_eq!(
        c.call(&a, &path("start"), &json!({"lease_id": lease}))
            .status,
        204
    );
    assert_eq!(
        c.call(&a, &path("start"), &json!({"lease_id": lease}))
            .status,
        204,
        "a repeated start is harmless"
    );
    assert_eq!(c.job(&id)["status"], "running");
    let hb = c.call(&a, &path("heartbeat"), &json!({"lease_id": lease}));
    assert_eq!(hb.status, 200);
    assert_eq!(hb.json()["cancel"], false);
    let from_a = json!({"lease_id": lease, "outcome": {"done": result_a}});
    let r = c.call(&a, &path("result"), &from_a);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["finished"], "stored");
    // B still cannot, now that it is final.
    let r = c.call(&b, &path("result"), &done);
    assert_eq!(r.json()["finished"], "already_final");
    let j = c.job(&id);
    assert_eq!(j["status"], "done");
    assert_eq!(j["response"]["result"]["stdout"], "from a");
}

fn late_and_duplicate_results_change_nothing(db: Db) {
    let c = Coordinator::start(db, "late");
    let (a, b) = (c.token("a"), c.token("b"));
    let (result_a, result_b) = (job_result("late from a"), job_result("from b"));
    let id = c.submit(&sh("echo real"));
    let path = |call: &str| format!("/api/worker/jobs/{id}/{call}");
    let first = c.claim(&a, 10_000).json();
    let lease_a = first["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(
        c.call(&a, &path("start"), &json!({"lease_id": lease_a}))
            .status,
        204
    );

    // A goes silent: its lease runs out and B is given the job (the claim waits
    // for it to come back to the queue).
    let t = Instant::now();
    let second = c.claim(&b, 20_000);
    assert_eq!(second.status, 200, "{}", second.text());
    let second = second.json();
    eprintln!("lease expiry to re-claim: {:?} (lease 2 s)", t.elapsed());
    assert_eq!(second["job_id"], id);
    assert_eq!(second["attempt"], 2);
    let lease_b = second["lease_id"].as_str().unwrap().to_owned();
    assert_ne!(lease_a, lease_b);

    // A's late calls are refused and change nothing.
    let late = json!({"lease_id": lease_a, "outcome": {"done": result_a}});
    let r = c.call(&a, &path("heartbeat"), &json!({"lease_id": lease_a}));
    assert_eq!((r.status, r.code()), (409, "lease_lost".into()));
    let r = c.call(&a, &path("result"), &late);
    assert_eq!((r.status, r.code()), (409, "lease_lost".into()));

    assert_eq!(
        c.call(&b, &path("start"), &json!({"lease_id": lease_b}))
            .status,
        204
    );
    let from_b = json!({"lease_id": lease_b, "outcome": {"done": result_b}});
    let r = c.call(&b, &path("result"), &from_b);
    assert_eq!(r.json()["finished"], "stored");
    // A repeat (an answer lost on the way back) is acknowledged, not applied.
    let repeat =
        json!({"lease_id": lease_b, "outcome": {"failed": {"code": "internal", "message": "x"}}});
    let r = c.call(&b, &path("result"), &repeat);
    assert_eq!(
        (r.status, r.json()["finished"].clone()),
        (200, json!("duplicate"))
    );
    // A's result after the end: acknowledged as final, not applied.
    let r = c.call(&a, &path("result"), &late);
    assert_eq!(
        (r.status, r.json()["finished"].clone()),
        (200, json!("already_final"))
    );
    let r = c.call(&b, &path("heartbeat"), &json!({"lease_id": lease_b}));
    assert_eq!(
        (r.status, r.code()),
        (409, "lease_lost".into()),
        "a final job has no lease"
    );

    let j = c.job(&id);
    assert_eq!(j["status"], "done");
    assert_eq!(j["response"]["result"]["stdout"], "from b");
    let key = j["response"]["key"].as_str().unwrap();
    let stored = c.s.get(&format!("/api/results/{key}")).json();
    assert_eq!(
        stored["result"]["stdout"], "from b",
        "the cache has B's result only"
    );
    let r = c.s.post_json(&format!("/api/jobs/{id}/cancel"), &json!({}));
    assert_eq!(r.status, 409, "nothing left to cancel");
}

fn a_killed_workers_job_is_requeued_and_finished_by_another(db: Db) {
    let c = Coordinator::start(db, "killed");
    let w1 = c.worker("doomed", &[]);
    let mut req = sh("echo started; sleep 30");
    // The job the second worker runs again ends at its wall-clock limit.
    req["limits"] = json!({"wall_time_ms": 3000});
    let id = c.submit(&req);
    c.wait_status(&id, "running", Duration::from_secs(20));
    // (The API shows a claimed job as running: the worker has it in hand.)
    wait_for(
        "the first worker to log its claim",
        Duration::from_secs(10),
        || (!w1.claimed().is_empty()).then_some(()),
    );
    w1.signal(rustix::process::Signal::KILL);
    let killed = Instant::now();
    let w2 = c.worker("heir", &[]);

    let j = c.wait_status(&id, "done", Duration::from_secs(30));
    eprintln!(
        "SIGKILL to the job done by another worker: {:?} (lease 2 s, then a 3 s run)",
        killed.elapsed()
    );
    let result = &j["response"]["result"];
    assert_eq!(result["stdout"], "started\n");
    assert_eq!(result["status"], "wall_time_limit", "{result}");
    assert_eq!(w1.claimed(), std::slice::from_ref(&id));
    assert!(
        w1.reported().is_empty(),
        "the killed worker reported nothing"
    );
    assert_eq!(w2.claimed(), std::slice::from_ref(&id));
    assert_eq!(w2.reported(), [(id.clone(), "Stored".to_owned())]);
    let claim = &w2.events("claimed a job")[0];
    assert_eq!(claim["attempt"], 2, "the second attempt");
    assert!(
        c.s.log().contains("lease expired: job re-queued"),
        "the server re-queued it: {}",
        c.s.log()
    );
}

fn sigterm_drains_the_worker(db: Db) {
    let c = Coordinator::start(db, "drain");
    let mut w = c.worker("drainer", &["--claim-wait", "1s"]);
    let running = c.submit(&sh("sleep 1; echo finished"));
    c.wait_status(&running, "running", Duration::from_secs(20));
    w.signal(rustix::process::Signal::TERM);
    let waiting = c.submit(&sh("echo never here"));

    let status = w.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log: {}", w.log());
    let j = c.job(&running);
    assert_eq!(
        j["status"], "done",
        "the running job was finished and reported before the exit"
    );
    assert_eq!(j["response"]["result"]["stdout"], "finished\n");
    assert_eq!(
        w.claimed(),
        std::slice::from_ref(&running),
        "nothing new was claimed"
    );
    assert_eq!(w.reported(), [(running, "Stored".to_owned())]);
    assert_eq!(c.job(&waiting)["status"], "queued");
    assert!(w.log().contains("draining"), "{}", w.log());
}

fn the_claim_long_poll_ends_when_the_server_stops(db: Db) {
    let c = Coordinator::start(db, "shutdown");
    let token = c.token("poller");
    let r = c.call(
        &token,
        "/api/worker/claim",
        &json!({"capabilities": c.capabilities(), "wait_ms": 60_001}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_argument".into()));

    let url = format!("{}/api/worker/claim", c.s.url);
    let body = json!({"capabilities": c.capabilities(), "wait_ms": 60_000});
    let client = c.s.client().clone();
    let poll = std::thread::spawn(move || {
        let t = Instant::now();
        let r = client
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), t.elapsed())
    });
    // The claim records the worker as seen before it waits.
    wait_for("the claim to be waiting", Duration::from_secs(10), || {
        let list = c.admin("GET", "/api/admin/workers", None).json();
        (!list["workers"][0]["last_seen_ms"].is_null()).then_some(())
    });
    let t = Instant::now();
    let Coordinator { rb: _rb, s, .. } = c;
    drop(s); // SIGTERM, and waits for the server to exit
    let stopped = t.elapsed();
    let (status, waited) = poll.join().unwrap();
    assert_eq!(status, 204, "the long poll ended with no job");
    assert!(
        waited < Duration::from_secs(10),
        "the long poll ended early: {waited:?}"
    );
    assert!(
        stopped < Duration::from_secs(10),
        "the server stopped promptly: {stopped:?}"
    );
}

fn a_result_over_the_body_limit_fails_the_job_with_the_reason(db: Db) {
    let c = Coordinator::start_with(db, "toolarge", "2s", &["--body-limit", "64k"]);
    let w = c.worker("big", &[]);
    let id = c.submit(&sh("head -c 100000 /dev/zero | tr '\\0' a"));
    let j = c.wait_status(&id, "failed", Duration::from_secs(20));
    assert_eq!(j["error"]["code"], "payload_too_large", "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--body-limit"),
        "{j}"
    );
    assert_eq!(w.reported(), [(id, "Stored".to_owned())]);
}
