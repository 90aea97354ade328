//! `runbox worker`: runs a server's jobs on this machine. It reaches the server
//! over HTTP(S) only (the server never connects to it), claims jobs with a long
//! poll, runs them with its own engine and store, keeps their leases alive, and
//! reports the results: the worker loop of `runbox-worker`, with an
//! [`HttpCoordinator`] where the server's in-process workers have the queue
//! itself (docs/workers.md).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use runbox_core::{ErrorBody, ErrorCode, JobResult};
use runbox_engine::{Engine, EngineConfig};
use runbox_queue::{Capabilities, Claim, Finished, Heartbeat, Outcome};
use runbox_server::workers::{
    ClaimRequest, HeartbeatResponse, LeaseRequest, ResultAnswer, ResultRequest, ResultResponse,
    WorkerClaim, WorkerIdentity, WorkerOutcome,
};
use runbox_worker::{Coordinator, Unreachable, WorkerOptions};
use tokio::sync::watch;

use crate::cli::WorkerArgs;
use crate::error::CliError;
use crate::Exit;

/// What a refused token's message says to do.
const REFUSED: &str = "the token was refused (unknown or revoked): create one with \
    `runbox workers create NAME` where the server runs, and give it in RUNBOX_WORKER_TOKEN";

/// Time allowed for a call other than a claim (whose own wait is added).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for uploading a result.
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(data_dir: &Path, catalog_dir: Option<&Path>, args: WorkerArgs) -> anyhow::Result<Exit> {
    let base = server_url(&args.server)?;
    let token = args.token.trim().to_owned();
    if !token.starts_with(runbox_queue::TOKEN_PREFIX) {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            format!(
                "--token: a worker token starts with {} (create one with `runbox workers create NAME`)",
                runbox_queue::TOKEN_PREFIX
            ),
        )
        .into());
    }
    let slots = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if slots == 0 {
        return Err(CliError::new(ErrorCode::InvalidArgument, "--jobs must be at least 1").into());
    }
    if !(1_000..=runbox_server::workers::MAX_WAIT_MS).contains(&args.claim_wait) {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--claim-wait must be between 1s and 60s",
        )
        .into());
    }
    let mut cfg = EngineConfig::new(data_dir);
    cfg.catalog = Some(crate::catalog::load(data_dir, catalog_dir)?);
    cfg.netns_ready = slots + 1;
    let engine = Arc::new(Engine::open(cfg)?);
    // reqwest is built without a default TLS provider: ring, as for registries.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // The server closes a connection idle for its header timeout (10 s by
        // default); one idle for half that is not reused, so a call never
        // races the server closing its connection.
        .pool_idle_timeout(Duration::from_secs(5))
        .user_agent(concat!("runbox-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    let options = WorkerOptions {
        slots,
        claim_wait: Duration::from_millis(args.claim_wait),
        labels: args.labels.into_iter().filter(|l| !l.is_empty()).collect(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("worker")
        .build()?;
    let exit = rt.block_on(async move {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(signals(stop.clone()));
        let coord = Arc::new(HttpCoordinator {
            client,
            base: base.clone(),
            token,
            stop,
            refused: Mutex::new(None),
        });
        let mut wait_stop = stopped.clone();
        let me = tokio::select! {
            me = coord.connect() => me?,
            _ = wait_stop.wait_for(|s| *s) => return anyhow::Ok(Exit::Ok),
        };
        let labels = if options.labels.is_empty() {
            "none".to_owned()
        } else {
            options.labels.join(",")
        };
        // One line on stdout, for scripts and tests waiting for the worker.
        println!(
            "runbox worker: connected to {base} as {} ({slots} job slot(s), labels: {labels})",
            me.name
        );
        tracing::info!(worker = %me.name, id = %me.id, lease_ms = me.lease_ms, "connected");
        runbox_worker::run(engine, coord.clone(), options, stopped).await;
        if let Some(message) = coord.refused() {
            return Err(CliError::new(ErrorCode::Unauthorized, message).into());
        }
        eprintln!("runbox worker: stopped");
        Ok(Exit::Ok)
    });
    // Nothing of ours is left running (the loop waited for its jobs); tasks that
    // are (a capabilities refresh) are not waited for.
    rt.shutdown_background();
    exit
}

/// The server's base URL, checked: http or https, no trailing slash.
fn server_url(given: &str) -> anyhow::Result<String> {
    let bad = |why: &str| {
        CliError::new(
            ErrorCode::InvalidArgument,
            format!(
                "--server {given:?}: {why} (e.g. https://runbox.example or http://10.0.0.5:8080)"
            ),
        )
    };
    let url = reqwest::Url::parse(given).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the URL must start with http:// or https://").into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL must not have a query or fragment").into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// SIGTERM or SIGINT: drain (claim nothing new, finish and report the running
/// jobs, exit). A second one exits at once; the jobs' leases then expire and
/// the server gives them to another worker.
async fn signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install the signal handlers");
        return;
    };
    let mut first = true;
    loop {
        let sig = tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        };
        if !first {
            eprintln!("runbox worker: stopping at once; the jobs still running go back to the queue when their leases expire");
            std::process::exit(128 + sig);
        }
        first = false;
        eprintln!("runbox worker: draining: no new claims; finishing and reporting the running jobs (a second signal stops at once)");
        let _ = stop.send(true);
    }
}

/// The worker loop's coordinator for a remote server: the worker API over HTTP.
#[derive(Debug)]
pub struct HttpCoordinator {
    client: reqwest::Client,
    base: String,
    token: String,
    /// Stops the worker loop (after a refused token).
    stop: watch::Sender<bool>,
    /// Why the server refused the token, once it has.
    refused: Mutex<Option<String>>,
}

/// Why a call did not get the answer it wanted.
#[derive(Debug)]
enum Failure {
    /// Not reached, timed out, or a server-side error: worth retrying.
    Unreachable(String),
    /// 401: the token is unknown or revoked.
    Refused,
    /// 409 `lease_lost`: the job is not this worker's (any more).
    LeaseLost,
    /// 413: the body is over the server's limit.
    TooLarge(String),
    /// Any other refusal (a bug, or a server of another version).
    Refusal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(m) | Failure::TooLarge(m) | Failure::Refusal(m) => f.write_str(m),
            Failure::Refused => f.write_str(REFUSED),
            Failure::LeaseLost => f.write_str("the lease was lost"),
        }
    }
}

/// An error with its causes (reqwest's own message hides them).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

impl HttpCoordinator {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; the body of a 2xx answer, or why there is none.
    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let resp = req
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{what}: {}", chain(&e))))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| {
            Failure::Unreachable(format!("{what}: reading the answer: {}", chain(&e)))
        })?;
        if (200..300).contains(&status) {
            return Ok((status, body.to_vec()));
        }
        let error: Option<ErrorBody> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| serde_json::from_value(v.get("error")?.clone()).ok());
        let message = match &error {
            Some(e) => format!("{what}: the server answered {status}: {}", e.message),
            None => format!(
                "{what}: the server answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        };
        Err(match status {
            401 => Failure::Refused,
            409 if error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::LeaseLost) =>
            {
                Failure::LeaseLost
            }
            413 => Failure::TooLarge(message),
            408 | 429 | 500.. => Failure::Unreachable(message),
            _ => Failure::Refusal(message),
        })
    }

    async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
        what: &str,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), Failure> {
        self.call(self.client.post(self.url(path)).json(body), what, timeout)
            .await
    }

    /// Notes a refused token: the worker stops (there is no point going on).
    fn refuse(&self) {
        let mut r = self.refused.lock().expect("refused lock");
        if r.is_none() {
            tracing::error!("{REFUSED}; stopping");
            *r = Some(REFUSED.to_owned());
        }
        let _ = self.stop.send(true);
    }

    fn refused(&self) -> Option<String> {
        self.refused.lock().expect("refused lock").clone()
    }

    /// Checks the token, retrying while the server cannot be reached.
    async fn connect(&self) -> anyhow::Result<WorkerIdentity> {
        let mut backoff = Duration::from_millis(250);
        loop {
            let req = self.client.get(self.url("/api/worker/me"));
            match self.call(req, "connecting", CALL_TIMEOUT).await {
                Ok((_, body)) => {
                    return serde_json::from_slice(&body).with_context(|| {
                        format!("{}: this does not look like a runbox server", self.base)
                    })
                }
                Err(Failure::Refused) => {
                    return Err(CliError::new(ErrorCode::Unauthorized, REFUSED).into())
                }
                Err(Failure::Unreachable(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the server");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    return Err(CliError::new(
                        ErrorCode::InvalidArgument,
                        format!("{e} (is {} a runbox server of this version?)", self.base),
                    )
                    .into())
                }
            }
        }
    }

    fn job_path(claim: &Claim, call: &str) -> String {
        format!("/api/worker/jobs/{}/{call}", claim.job_id)
    }
}

/// How a job ended, for the wire.
fn wire_outcome(outcome: &Outcome) -> WorkerOutcome {
    let internal = |message: String| ErrorBody {
        code: ErrorCode::Internal,
        message,
    };
    match outcome {
        Outcome::Done(json) => match serde_json::from_str::<JobResult>(json) {
            Ok(r) => WorkerOutcome::Done(r),
            Err(e) => WorkerOutcome::Failed(internal(format!(
                "the worker could not read back the job's result: {e}"
            ))),
        },
        Outcome::Failed(json) => WorkerOutcome::Failed(
            serde_json::from_str(json).unwrap_or_else(|_| internal(json.clone())),
        ),
        Outcome::Cancelled(json) => WorkerOutcome::Cancelled(
            json.as_deref()
                .and_then(|j| serde_json::from_str::<JobResult>(j).ok()),
        ),
    }
}

impl Coordinator for HttpCoordinator {
    async fn claim(
        &self,
        caps: &Capabilities,
        wait: Duration,
    ) -> Result<Option<Claim>, Unreachable> {
        let body = ClaimRequest {
            capabilities: caps.clone().into(),
            wait_ms: wait.as_millis() as u64,
        };
        let (status, body) = match self
            .post("/api/worker/claim", &body, "claiming", wait + CALL_TIMEOUT)
            .await
        {
            Ok(x) => x,
            Err(Failure::Refused) => {
                self.refuse();
                return Err(Unreachable(REFUSED.into()));
            }
            Err(e) => return Err(Unreachable(e.to_string())),
        };
        if status == 204 {
            return Ok(None);
        }
        let c: WorkerClaim = serde_json::from_slice(&body)
            .map_err(|e| Unreachable(format!("claiming: an unreadable answer: {e}")))?;
        tracing::info!(job_id = %c.job_id, attempt = c.attempt, "claimed a job");
        Ok(Some(Claim {
            // The lease's end on this machine's clock (the worker loop times its
            // heartbeats from it; the server's clock may differ).
            lease_expires_ms: runbox_queue::now_ms() + c.lease_ms as i64,
            request: c.request.to_string(),
            job_id: c.job_id,
            lease_id: c.lease_id,
            attempt: c.attempt,
            cache_key: c.cache_key,
            requires: c.requires.into(),
        }))
    }

    async fn start(&self, claim: &Claim) -> Result<bool, Unreachable> {
        let body = LeaseRequest {
            lease_id: claim.lease_id.clone(),
        };
        match self
            .post(
                &Self::job_path(claim, "start"),
                &body,
                "starting a job",
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(Failure::LeaseLost) => Ok(false),
            Err(Failure::Refused) => {
                self.refuse();
                Ok(false)
            }
            Err(e) => Err(Unreachable(e.to_string())),
        }
    }

    async fn heartbeat(&self, claim: &Claim) -> Result<Heartbeat, Unreachable> {
        let body = LeaseRequest {
            lease_id: claim.lease_id.clone(),
        };
        match self
            .post(
                &Self::job_path(claim, "heartbeat"),
                &body,
                "renewing a lease",
                CALL_TIMEOUT,
            )
            .await
        {
            Ok((_, body)) => {
                let h: HeartbeatResponse = serde_json::from_slice(&body).map_err(|e| {
                    Unreachable(format!("renewing a lease: an unreadable answer: {e}"))
                })?;
                Ok(Heartbeat::Renewed {
                    lease_expires_ms: runbox_queue::now_ms() + h.lease_ms as i64,
                    cancel: h.cancel,
                })
            }
            Err(Failure::LeaseLost) => Ok(Heartbeat::LeaseLost),
            // The job is stopped: its result could not be reported anyway.
            Err(Failure::Refused) => {
                self.refuse();
                Ok(Heartbeat::LeaseLost)
            }
            Err(e) => Err(Unreachable(e.to_string())),
        }
    }

    async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<Finished, Unreachable> {
        let mut body = ResultRequest {
            lease_id: claim.lease_id.clone(),
            outcome: wire_outcome(&outcome),
        };
        let path = Self::job_path(claim, "result");
        let answer = loop {
            match self
                .post(&path, &body, "reporting a result", RESULT_TIMEOUT)
                .await
            {
                Ok((_, bytes)) => {
                    let r: ResultResponse = serde_json::from_slice(&bytes).map_err(|e| {
                        Unreachable(format!("reporting a result: an unreadable answer: {e}"))
                    })?;
                    break r.finished;
                }
                Err(Failure::LeaseLost) => {
                    tracing::info!(job_id = %claim.job_id, "result not stored: the lease was lost (the job went to another worker)");
                    return Ok(Finished::LeaseLost);
                }
                Err(Failure::Refused) => {
                    self.refuse();
                    tracing::error!(job_id = %claim.job_id, "result dropped: the token was refused");
                    return Ok(Finished::LeaseLost);
                }
                // Too big for the server: the job fails with the reason instead
                // of being retried (and run again) until its attempts run out.
                Err(Failure::TooLarge(m)) if !matches!(body.outcome, WorkerOutcome::Failed(_)) => {
                    tracing::warn!(job_id = %claim.job_id, error = %m, "the result is over the server's body limit: reporting the job failed");
                    body.outcome = WorkerOutcome::Failed(ErrorBody {
                        code: ErrorCode::PayloadTooLarge,
                        message: format!(
                            "the job's result is larger than the server accepts ({m}); \
                             lower its output limits or raise the server's --body-limit"
                        ),
                    });
                }
                Err(e) => return Err(Unreachable(e.to_string())),
            }
        };
        let status = match &body.outcome {
            WorkerOutcome::Done(r) => r.status.as_str(),
            WorkerOutcome::Failed(_) => "failed",
            WorkerOutcome::Cancelled(_) => "cancelled",
        };
        tracing::info!(job_id = %claim.job_id, status, answer = ?answer, "reported a result");
        Ok(match answer {
            ResultAnswer::Stored => Finished::Stored,
            ResultAnswer::Duplicate => Finished::Duplicate,
            ResultAnswer::AlreadyFinal => Finished::AlreadyFinal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            server_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            server_url("https://runbox.example/prefix/").unwrap(),
            "https://runbox.example/prefix"
        );
        assert!(server_url("ftp://x").is_err());
        assert!(server_url("runbox.example").is_err());
        assert!(server_url("http://x/?a=b").is_err());
    }
}
