//! The queue's guarantees, each checked against SQLite and a real PostgreSQL
//! (Debian's, started by scripts/postgres through the testkit): exclusive
//! claims under races, leases and their expiry, results that are final once,
//! cancellation, requirements, and worker tokens.
//!
//! Lease expiry is tested by reaping "in the future" (`reap(now + lease)`),
//! never by sleeping.

use std::collections::BTreeSet;
use std::time::Duration;

use runbox_queue::{
    now_ms, Cancel, Capabilities, Finished, Heartbeat, JobState, NewJob, Outcome, Queue,
    Requirements,
};

const LEASE: Duration = Duration::from_secs(30);

/// One fresh, empty queue database per test, on each backend.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
                    super::$name(&url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let url = runbox_testkit::postgres::TestPostgres::shared()
                        .fresh_database(stringify!($name));
                    super::$name(&url).await;
                }
            )*
        }
    };
}

both!(
    jobs_are_claimed_oldest_first_by_workers_that_meet_their_requirements,
    racing_claimers_get_one_job_exactly_once,
    many_jobs_and_many_claimers_never_share_a_job,
    an_expired_lease_requeues_the_job_until_its_attempts_run_out,
    a_job_claimed_but_never_started_is_recovered,
    a_heartbeat_keeps_the_lease_and_a_lost_lease_cannot_be_renewed,
    a_result_is_final_once_and_late_or_repeated_results_change_nothing,
    cancelling_a_waiting_job_means_it_never_runs,
    cancelling_a_running_job_reaches_its_worker,
    worker_tokens_are_stored_hashed_and_can_be_revoked,
    a_waiting_claimer_wakes_when_a_job_arrives,
    a_database_of_another_schema_version_is_refused,
);

fn caps() -> Capabilities {
    Capabilities {
        backend: "namespace".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        images: vec!["sha256:aaa".into()],
        labels: vec!["fast".into()],
    }
}

fn job(id: &str) -> NewJob {
    NewJob {
        id: id.into(),
        cache_key: format!("key-{id}"),
        request: format!(r#"{{"image":"busybox","argv":["echo","{id}"]}}"#),
        requires: Requirements::default(),
        max_attempts: 2,
    }
}

async fn jobs_are_claimed_oldest_first_by_workers_that_meet_their_requirements(url: &str) {
    let q = Queue::open(url).await.unwrap();
    let gpu = NewJob {
        requires: Requirements {
            labels: vec!["gpu".into()],
            ..Default::default()
        },
        ..job("a-gpu")
    };
    let arm = NewJob {
        requires: Requirements {
            arch: Some("aarch64".into()),
            ..Default::default()
        },
        ..job("b-arm")
    };
    let img = NewJob {
        requires: Requirements {
            image: Some("sha256:bbb".into()),
            ..Default::default()
        },
        ..job("c-img")
    };
    for j in [&gpu, &arm, &img, &job("d-plain"), &job("e-plain")] {
        q.enqueue(j).await.unwrap();
    }
    // The x86 worker with label fast and image aaa can run only the plain ones,
    // oldest first; the others are passed over, not waited on.
    let first = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    assert_eq!(first.job_id, "d-plain");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.request, job("d-plain").request);
    let second = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    assert_eq!(second.job_id, "e-plain");
    assert_eq!(q.claim("w1", &caps(), LEASE).await.unwrap(), None);

    let mut gpu_caps = caps();
    gpu_caps.labels.push("gpu".into());
    gpu_caps.images.push("sha256:bbb".into());
    let got = q.claim("w2", &gpu_caps, LEASE).await.unwrap().unwrap();
    assert_eq!(got.job_id, "a-gpu");
    assert_eq!(got.requires, gpu.requires);
    assert_eq!(
        q.claim("w2", &gpu_caps, LEASE)
            .await
            .unwrap()
            .unwrap()
            .job_id,
        "c-img"
    );
    let mut arm_caps = caps();
    arm_caps.arch = "aarch64".into();
    assert_eq!(
        q.claim("w3", &arm_caps, LEASE)
            .await
            .unwrap()
            .unwrap()
            .job_id,
        "b-arm"
    );
    assert_eq!(q.queued().await.unwrap(), 0);
}

async fn racing_claimers_get_one_job_exactly_once(url: &str) {
    // Separate Queue instances (separate pools), as separate servers would be.
    let mut queues = Vec::new();
    for _ in 0..8 {
        queues.push(Queue::open(url).await.unwrap());
    }
    for round in 0..5 {
        let id = format!("job-{round}");
        queues[0].enqueue(&job(&id)).await.unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(queues.len() * 2));
        let mut tasks = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            for k in 0..2 {
                let q = q.clone();
                let b = barrier.clone();
                tasks.push(tokio::spawn(async move {
                    b.wait().await;
                    q.claim(&format!("w{i}-{k}"), &caps(), LEASE).await.unwrap()
                }));
            }
        }
        let mut claims = Vec::new();
        for t in tasks {
            if let Some(c) = t.await.unwrap() {
                claims.push(c);
            }
        }
        assert_eq!(claims.len(), 1, "round {round}: {claims:?}");
        let row = queues[0].get(&id).await.unwrap().unwrap();
        assert_eq!(row.state, JobState::Claimed);
        assert_eq!(row.attempts, 1);
        assert_eq!(row.lease_id.as_deref(), Some(claims[0].lease_id.as_str()));
    }
}

async fn many_jobs_and_many_claimers_never_share_a_job(url: &str) {
    let q = Queue::open(url).await.unwrap();
    let ids: BTreeSet<String> = (0..120).map(|i| format!("j{i:03}")).collect();
    for id in &ids {
        q.enqueue(&job(id)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..6 {
        let q = Queue::open(url).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(c) = q.claim(&format!("w{w}"), &caps(), LEASE).await.unwrap() {
                mine.push(c.job_id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "a job was claimed twice");
    assert_eq!(unique, ids, "every job claimed");
}

async fn an_expired_lease_requeues_the_job_until_its_attempts_run_out(url: &str) {
    let q = Queue::open(url).await.unwrap();
    q.enqueue(&job("x")).await.unwrap();
    let first = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    assert!(q.start("x", "w1", &first.lease_id).await.unwrap());

    // Within the lease nothing happens.
    let reaped = q.reap(now_ms()).await.unwrap();
    assert!(reaped.requeued.is_empty() && reaped.failed.is_empty());

    // After it, the job is back, with its attempt counted.
    let later = first.lease_expires_ms + 1;
    assert_eq!(q.reap(later).await.unwrap().requeued, ["x"]);
    let row = q.get("x").await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Queued);
    assert_eq!((row.worker_id, row.lease_id), (None, None));

    let second = q.claim("w2", &caps(), LEASE).await.unwrap().unwrap();
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    // The last attempt lost too: failed, with the reason.
    let reaped = q.reap(second.lease_expires_ms + 1).await.unwrap();
    assert_eq!(reaped.failed, ["x"]);
    assert!(reaped.requeued.is_empty());
    let row = q.get("x").await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Failed);
    let error: serde_json::Value = serde_json::from_str(row.error.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], "worker_lost");
    assert!(error["message"].as_str().unwrap().contains("lease"));
    assert!(row.finished_ms.is_some());
    assert_eq!(q.claim("w3", &caps(), LEASE).await.unwrap(), None);
}

async fn a_job_claimed_but_never_started_is_recovered(url: &str) {
    let q = Queue::open(url).await.unwrap();
    q.enqueue(&job("y")).await.unwrap();
    let c = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    // The worker dies here: no start, no heartbeat.
    assert_eq!(
        q.reap(c.lease_expires_ms + 1).await.unwrap().requeued,
        ["y"]
    );
    let again = q.claim("w2", &caps(), LEASE).await.unwrap().unwrap();
    assert_eq!(again.job_id, "y");
    // The dead worker's lease cannot start it any more.
    assert!(!q.start("y", "w1", &c.lease_id).await.unwrap());
    assert!(q.start("y", "w2", &again.lease_id).await.unwrap());
}

async fn a_heartbeat_keeps_the_lease_and_a_lost_lease_cannot_be_renewed(url: &str) {
    let q = Queue::open(url).await.unwrap();
    q.enqueue(&job("h")).await.unwrap();
    let c = q
        .claim("w1", &caps(), Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let Heartbeat::Renewed {
        lease_expires_ms,
        cancel,
    } = q.heartbeat("h", "w1", &c.lease_id, LEASE).await.unwrap()
    else {
        panic!("not renewed")
    };
    assert!(!cancel);
    assert!(lease_expires_ms >= c.lease_expires_ms + 20_000);
    // Reaping at the old expiry leaves it alone.
    assert!(q
        .reap(c.lease_expires_ms + 1)
        .await
        .unwrap()
        .requeued
        .is_empty());
    // Someone else's id or lease: refused.
    assert_eq!(
        q.heartbeat("h", "w2", &c.lease_id, LEASE).await.unwrap(),
        Heartbeat::LeaseLost
    );
    assert_eq!(
        q.heartbeat("h", "w1", "not-the-lease", LEASE)
            .await
            .unwrap(),
        Heartbeat::LeaseLost
    );
    // Expired and re-queued: the old lease is dead for good.
    q.reap(lease_expires_ms + 1).await.unwrap();
    assert_eq!(
        q.heartbeat("h", "w1", &c.lease_id, LEASE).await.unwrap(),
        Heartbeat::LeaseLost
    );
}

async fn a_result_is_final_once_and_late_or_repeated_results_change_nothing(url: &str) {
    let q = Queue::open(url).await.unwrap();
    q.enqueue(&job("r")).await.unwrap();
    let lost = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    q.reap(lost.lease_expires_ms + 1).await.unwrap();
    let held = q.claim("w2", &caps(), LEASE).await.unwrap().unwrap();

    // The first worker comes back late: its result is refused while w2 holds it.
    let late = Outcome::Done(r#"{"from":"w1"}"#.into());
    assert_eq!(
        q.finish("r", "w1", &lost.lease_id, &late).await.unwrap(),
        Finished::LeaseLost
    );
    // w2 reports; a repeat of the same report is a no-op.
    let good = Outcome::Done(r#"{"from":"w2"}"#.into());
    assert_eq!(
        q.finish("r", "w2", &held.lease_id, &good).await.unwrap(),
        Finished::Stored
    );
    assert_eq!(
        q.finish("r", "w2", &held.lease_id, &good).await.unwrap(),
        Finished::Duplicate
    );
    // A different outcome under the same lease does not overwrite either.
    assert_eq!(
        q.finish("r", "w2", &held.lease_id, &Outcome::Failed("{}".into()))
            .await
            .unwrap(),
        Finished::Duplicate
    );
    // Nor does the late worker, now that it is final.
    assert_eq!(
        q.finish("r", "w1", &lost.lease_id, &late).await.unwrap(),
        Finished::AlreadyFinal
    );
    let row = q.get("r").await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Done);
    assert_eq!(row.result.as_deref(), Some(r#"{"from":"w2"}"#));
    assert_eq!(
        q.finish("nope", "w2", &held.lease_id, &good).await.unwrap(),
        Finished::NotFound
    );
    // A final job is never reaped back.
    let r = q.reap(now_ms() + 3_600_000).await.unwrap();
    assert!(r.requeued.is_empty() && r.failed.is_empty());
}

async fn cancelling_a_waiting_job_means_it_never_runs(url: &str) {
    let q = Queue::open(url).await.unwrap();
    q.enqueue(&job("c")).await.unwrap();
    assert_eq!(q.cancel("c").await.unwrap(), Cancel::Cancelled);
    assert_eq!(q.claim("w1", &caps(), LEASE).await.unwrap(), None);
    let row = q.get("c").await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Cancelled);
    assert_eq!(q.cancel("c").await.unwrap(), Cancel::AlreadyFinal);
    assert_eq!(q.cancel("missing").await.unwrap(), Cancel::NotFound);
}

async fn cancelling_a_running_job_reaches_its_worker(url: &str) {
    let q = Queue::open(url).await.unwrap();
    q.enqueue(&job("k")).await.unwrap();
    let c = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    q.start("k", "w1", &c.lease_id).await.unwrap();
    assert_eq!(q.cancel("k").await.unwrap(), Cancel::Requested);
    match q.heartbeat("k", "w1", &c.lease_id, LEASE).await.unwrap() {
        Heartbeat::Renewed { cancel, .. } => assert!(cancel, "the worker is told"),
        other => panic!("{other:?}"),
    }
    let partial = Outcome::Cancelled(Some(r#"{"status":"cancelled"}"#.into()));
    assert_eq!(
        q.finish("k", "w1", &c.lease_id, &partial).await.unwrap(),
        Finished::Stored
    );
    assert_eq!(
        q.get("k").await.unwrap().unwrap().state,
        JobState::Cancelled
    );

    // A cancelled job whose worker vanished is cancelled, not retried.
    q.enqueue(&job("k2")).await.unwrap();
    let c2 = q.claim("w1", &caps(), LEASE).await.unwrap().unwrap();
    q.cancel("k2").await.unwrap();
    let reaped = q.reap(c2.lease_expires_ms + 1).await.unwrap();
    assert_eq!(reaped.cancelled, ["k2"]);
    assert!(reaped.requeued.is_empty());
}

async fn worker_tokens_are_stored_hashed_and_can_be_revoked(url: &str) {
    let q = Queue::open(url).await.unwrap();
    let (w, token) = q.create_worker("bench-01").await.unwrap();
    assert!(token.starts_with(runbox_queue::TOKEN_PREFIX));
    assert!(token.len() >= 64, "256 random bits: {token}");
    assert_eq!(q.authenticate(&token).await.unwrap().unwrap().id, w.id);
    // Only the hash is stored: no column of the table holds the token.
    let rows = sqlx::query("SELECT id, name, token_hash FROM workers")
        .fetch_all(q.pool())
        .await
        .unwrap();
    for r in &rows {
        use sqlx::Row;
        for col in ["id", "name", "token_hash"] {
            let v: String = r.try_get(col).unwrap();
            assert!(!v.contains(&token[4..20]), "the token is stored in {col}");
        }
    }
    // Wrong, truncated, or foreign-format tokens are refused.
    for bad in [
        "rbw_0000",
        &token[..token.len() - 1],
        "Bearer x",
        "",
        &token[4..],
    ] {
        assert_eq!(q.authenticate(bad).await.unwrap(), None, "{bad:?}");
    }
    let dup = q.create_worker("bench-01").await.unwrap_err();
    assert!(dup.to_string().contains("exists already"), "{dup}");
    let bad = q.create_worker("no spaces/slashes").await.unwrap_err();
    assert!(bad.to_string().contains("letters, digits"), "{bad}");

    assert!(q.revoke_worker("bench-01").await.unwrap());
    assert_eq!(q.authenticate(&token).await.unwrap(), None);
    assert!(
        !q.revoke_worker("bench-01").await.unwrap(),
        "already revoked"
    );
    let listed = q.workers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_ms.is_some());
}

async fn a_waiting_claimer_wakes_when_a_job_arrives(url: &str) {
    let q = Queue::open(url).await.unwrap();
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            // A long poll that would last 60 s (and look again every 30 s) if
            // nothing woke it.
            let c = q
                .claim_wait(
                    "w1",
                    &caps(),
                    LEASE,
                    Duration::from_secs(60),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            (c, t.elapsed())
        })
    };
    // Let the waiter register: it looks first (finding nothing), then waits.
    // The enqueue is safe either way: the wake-up is registered before looking.
    tokio::task::yield_now().await;
    q.enqueue(&job("w")).await.unwrap();
    let (claim, took) = waiter.await.unwrap();
    assert_eq!(claim.unwrap().job_id, "w");
    assert!(
        took < Duration::from_secs(10),
        "woken, not polled: {took:?}"
    );
}

async fn a_database_of_another_schema_version_is_refused(url: &str) {
    let q = Queue::open(url).await.unwrap();
    sqlx::query("UPDATE runbox_queue_meta SET value = '999' WHERE name = 'schema_version'")
        .execute(q.pool())
        .await
        .unwrap();
    let err = Queue::open(url).await.unwrap_err();
    assert!(err.to_string().contains("schema version 999"), "{err}");
}
