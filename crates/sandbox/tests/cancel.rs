//! Cancelling jobs from outside (`JobEvents::cancelled`, `CancelToken`) against real
//! sandboxes: a running job stops promptly with status `cancelled` and leaves
//! nothing behind; a job cancelled before its program starts never runs it; a job
//! nobody cancels runs as before.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use runbox_core::{JobStatus, LimitsSpec};
use runbox_sandbox::{Backend, CancelToken, Cancellable, JobEvents, NoEvents};

/// Reports the first stdout chunk holding `marker`, and whether the program started.
struct Watch {
    marker: &'static [u8],
    seen: Option<mpsc::Sender<()>>,
    started: bool,
}

impl Watch {
    fn new(marker: &'static str, seen: mpsc::Sender<()>) -> Watch {
        Watch {
            marker: marker.as_bytes(),
            seen: Some(seen),
            started: false,
        }
    }
}

impl JobEvents for Watch {
    fn started(&mut self) {
        self.started = true;
    }
    fn stdout(&mut self, chunk: &[u8]) {
        if chunk.windows(self.marker.len()).any(|w| w == self.marker) {
            if let Some(tx) = self.seen.take() {
                let _ = tx.send(());
            }
        }
    }
}

#[test]
fn a_running_job_cancelled_from_another_thread_stops_promptly_and_leaves_nothing() {
    let env = Env::new();
    let token = CancelToken::new();
    let (tx, rx) = mpsc::channel();
    // A background process too: cancelling kills the whole sandbox, not just the program.
    let spec = crate::sh(&format!(
        "{NS_IDS} sleep 100 & echo started; exec sleep 100"
    ));
    let plan = env.plan(spec);
    std::thread::scope(|s| {
        let job = s.spawn(|| {
            let mut events = Cancellable::new(Watch::new("started", tx), token.clone());
            let r = env.backend.run(&plan, &mut events);
            (r, Instant::now(), events.into_inner().started)
        });
        rx.recv().expect("the job printed its start line");
        let cancelled_at = Instant::now();
        token.cancel();
        let (r, returned_at, started) = job.join().unwrap();
        let r = r.unwrap();
        let latency = returned_at - cancelled_at;
        eprintln!("cancel to result: {latency:?}");
        assert!(latency < Duration::from_secs(2), "took {latency:?} to stop");
        assert_eq!(r.status, JobStatus::Cancelled, "{r:?}");
        assert!(started);
        assert_eq!(r.signal_name.as_deref(), Some("SIGKILL"));
        assert!(r.limits_hit.is_empty(), "cancelling is not a limit: {r:?}");
        assert!(r.stdout.ends_with("started\n"), "output is kept: {r:?}");
        assert!(r.timings.run_ms < 2000.0, "{:?}", r.timings);
        assert_job_gone(&env, &r);
    });
}

#[test]
fn a_job_cancelled_before_it_starts_never_runs_its_program() {
    let env = Env::new();
    let token = CancelToken::new();
    token.cancel();
    let mut spec = crate::sh("echo ran; touch /work/ran");
    spec.outputs = vec!["ran".into()];
    let (tx, _rx) = mpsc::channel();
    let mut events = Cancellable::new(Watch::new("ran", tx), token);
    let r = env.backend.run(&env.plan(spec), &mut events).unwrap();
    assert_eq!(r.status, JobStatus::Cancelled, "{r:?}");
    assert!(!events.into_inner().started, "the program was executed");
    assert_eq!((r.stdout.as_str(), r.stdout_bytes), ("", 0));
    assert_eq!((r.exit_code, r.signal), (None, None));
    assert!(r.outputs.is_empty(), "{:?}", r.outputs);
    assert_eq!(r.timings.run_ms, 0.0);
    assert_sandbox_removed(&env, &r.job_id);
}

/// Says "cancel" from its `n`-th question on, wherever the backend is then.
struct CancelAtCheck {
    n: usize,
    asked: usize,
    started: bool,
}

impl JobEvents for CancelAtCheck {
    fn started(&mut self) {
        self.started = true;
    }
    fn cancelled(&mut self) -> bool {
        self.asked += 1;
        self.asked >= self.n
    }
    fn cancellable(&self) -> bool {
        true
    }
}

#[test]
fn a_job_cancelled_at_any_point_of_set_up_or_start_is_cancelled_cleanly() {
    let env = Env::new();
    // The first question comes before anything is made, the second once the
    // sandbox process exists and is mounting (the last ones land after the exec).
    for n in 1..=6 {
        let mut events = CancelAtCheck {
            n,
            asked: 0,
            started: false,
        };
        let spec = crate::sh("echo ran; exec sleep 100");
        let r = env.backend.run(&env.plan(spec), &mut events).unwrap();
        assert_eq!(r.status, JobStatus::Cancelled, "n={n}: {r:?}");
        assert!(r.limits_hit.is_empty(), "n={n}: {r:?}");
        if n <= 2 || !events.started {
            assert_eq!(r.stdout, "", "n={n}: the program ran: {r:?}");
        }
        if n <= 2 {
            assert!(!events.started, "n={n}");
            assert_eq!((r.exit_code, r.signal), (None, None), "n={n}");
        }
        assert!(r.stdout.is_empty() || r.stdout == "ran\n", "n={n}: {r:?}");
        assert_sandbox_removed(&env, &r.job_id);
    }
}

#[test]
fn a_cancellable_job_nobody_cancels_runs_as_before() {
    let env = Env::new();
    let token = CancelToken::new();
    // Long enough for several cancel checks while it sleeps.
    let mut spec = crate::sh("read line; sleep 0.3; echo \"got $line\"; exit 3");
    spec.stdin = Some(runbox_core::Data(b"hello\n".to_vec()));
    let r = env
        .backend
        .run(
            &env.plan(spec),
            &mut Cancellable::new(NoEvents, token.clone()),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.exit_code, r.stdout.as_str()),
        (JobStatus::ExitNonzero, Some(3), "got hello\n"),
        "{r:?}"
    );
    // Limits still apply, and say so.
    let mut spec = crate::sh("sleep 100");
    spec.limits = LimitsSpec {
        wall_time_ms: Some(300),
        ..Default::default()
    };
    let r = env
        .backend
        .run(&env.plan(spec), &mut Cancellable::new(NoEvents, token))
        .unwrap();
    assert_eq!(r.status, JobStatus::WallTimeLimit, "{r:?}");
}
