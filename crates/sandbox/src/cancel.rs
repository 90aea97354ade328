//! Cancelling a job from another thread: a [`CancelToken`] shared with whoever may
//! cancel (an HTTP handler, a lease heartbeat, a signal handler), and
//! [`Cancellable`], the [`JobEvents`] that lets the backend see it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::JobEvents;

/// A flag that cancels the job it is attached to (through [`Cancellable`]). Clones
/// share the flag; once cancelled, it stays cancelled.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop. Never blocks; any thread; more than once is fine. The
    /// backend kills the job within [`crate::CANCEL_CHECK_INTERVAL`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A token over an existing flag, e.g. one a signal handler sets
/// (`signal_hook::flag::register`).
impl From<Arc<AtomicBool>> for CancelToken {
    fn from(flag: Arc<AtomicBool>) -> Self {
        CancelToken(flag)
    }
}

/// Another [`JobEvents`] plus a [`CancelToken`]: events go to `inner`, and the job
/// is cancelled when the token is (or when `inner` says so).
#[derive(Debug)]
pub struct Cancellable<E> {
    inner: E,
    token: CancelToken,
}

impl<E: JobEvents> Cancellable<E> {
    pub fn new(inner: E, token: CancelToken) -> Self {
        Cancellable { inner, token }
    }

    pub fn token(&self) -> &CancelToken {
        &self.token
    }

    pub fn into_inner(self) -> E {
        self.inner
    }
}

impl<E: JobEvents> JobEvents for Cancellable<E> {
    fn started(&mut self) {
        self.inner.started();
    }
    fn stdout(&mut self, chunk: &[u8]) {
        self.inner.stdout(chunk);
    }
    fn stderr(&mut self, chunk: &[u8]) {
        self.inner.stderr(chunk);
    }
    fn cancelled(&mut self) -> bool {
        self.token.is_cancelled() || self.inner.cancelled()
    }
    fn cancellable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoEvents;

    #[derive(Default)]
    struct Seen(Vec<String>);
    impl JobEvents for Seen {
        fn started(&mut self) {
            self.0.push("started".into());
        }
        fn stdout(&mut self, chunk: &[u8]) {
            self.0
                .push(format!("out:{}", String::from_utf8_lossy(chunk)));
        }
        fn stderr(&mut self, chunk: &[u8]) {
            self.0
                .push(format!("err:{}", String::from_utf8_lossy(chunk)));
        }
    }

    #[test]
    fn clones_share_one_flag_across_threads() {
        let token = CancelToken::new();
        let mut events = Cancellable::new(NoEvents, token.clone());
        assert!(events.cancellable());
        assert!(!events.cancelled());
        std::thread::spawn(move || token.cancel()).join().unwrap();
        assert!(events.cancelled());
        assert!(events.token().is_cancelled(), "stays cancelled");
    }

    #[test]
    fn a_token_can_wrap_a_flag_set_elsewhere() {
        let flag = Arc::new(AtomicBool::new(false));
        let token = CancelToken::from(flag.clone());
        flag.store(true, Ordering::Relaxed);
        assert!(token.is_cancelled());
    }

    #[test]
    fn events_pass_through_to_the_wrapped_events() {
        let mut seen = Seen::default();
        let mut events = Cancellable::new(&mut seen, CancelToken::new());
        events.started();
        events.stdout(b"a");
        events.stderr(b"b");
        assert!(!events.cancelled());
        assert_eq!(seen.0, ["started", "out:a", "err:b"]);
    }

    #[test]
    fn plain_events_are_never_cancelled_and_cost_no_wakeups() {
        let mut e = NoEvents;
        assert!(!e.cancelled() && !e.cancellable());
    }
}
