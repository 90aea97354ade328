//! Network namespaces made ahead of time.
//!
//! A new network namespace is the costliest part of a sandbox (~0.5 ms of kernel
//! time here: every network subsystem initializes its per-namespace state), so it is
//! made off the job's path: a long-running process keeps a few ready
//! ([`NetnsPool::keep_ready`]), the CLI starts making its one as soon as it starts
//! ([`NetnsPool::make_ahead`]), while it opens the store and plans the job. Each
//! namespace is used by one sandbox only and dropped with it: nothing a job leaves
//! in one (sockets in TIME_WAIT, for example) can reach another job.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

/// The process-wide pool.
#[derive(Debug)]
pub struct NetnsPool {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<OwnedFd>,
    in_flight: usize,
    /// How many to keep ready at all times.
    target: usize,
    /// One-off requests not yet started.
    extra: usize,
    filler_running: bool,
}

/// A network namespace on its way to a job.
#[derive(Debug)]
pub enum Ticket {
    Ready(OwnedFd),
    /// The pool is making one; wait for it.
    Wait(&'static NetnsPool),
    /// Made on a thread of its own for this job.
    Thread(JoinHandle<io::Result<OwnedFd>>),
}

impl Ticket {
    /// The namespace, once made.
    pub fn wait(self) -> io::Result<OwnedFd> {
        match self {
            Ticket::Ready(fd) => Ok(fd),
            Ticket::Thread(h) => h
                .join()
                .map_err(|_| io::Error::other("network namespace thread panicked"))?,
            Ticket::Wait(pool) => {
                let mut st = pool.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(fd) = st.ready.pop() {
                        pool.kick(&mut st);
                        return Ok(fd);
                    }
                    if st.in_flight == 0 && st.extra == 0 {
                        drop(st);
                        // Never on the caller's thread: it would stay in the namespace.
                        return std::thread::spawn(make)
                            .join()
                            .map_err(|_| io::Error::other("network namespace thread panicked"))?;
                    }
                    st = pool.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

impl NetnsPool {
    pub fn global() -> &'static NetnsPool {
        static POOL: OnceLock<NetnsPool> = OnceLock::new();
        POOL.get_or_init(|| NetnsPool {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    /// Keeps `n` namespaces ready from now on, refilling after each job.
    pub fn keep_ready(&'static self, n: usize) {
        let mut st = self.lock();
        st.target = n;
        self.kick(&mut st);
    }

    /// Starts making `n` namespaces now, once (no refill).
    pub fn make_ahead(&'static self, n: usize) {
        let mut st = self.lock();
        st.extra += n;
        self.kick(&mut st);
    }

    /// A namespace for a job: a ready one, one being made, or a new one made on a
    /// thread while the caller goes on.
    pub fn take(&'static self) -> Ticket {
        let mut st = self.lock();
        if let Some(fd) = st.ready.pop() {
            self.kick(&mut st);
            return Ticket::Ready(fd);
        }
        if st.in_flight > 0 || st.extra > 0 {
            return Ticket::Wait(self);
        }
        drop(st);
        Ticket::Thread(std::thread::spawn(make))
    }

    /// Namespaces ready now (for tests and metrics).
    pub fn ready_count(&self) -> usize {
        self.lock().ready.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted(st: &State) -> bool {
        st.extra > 0 || st.ready.len() + st.in_flight < st.target
    }

    fn kick(&'static self, st: &mut State) {
        if !st.filler_running && Self::wanted(st) {
            st.filler_running = true;
            std::thread::Builder::new()
                .name("runbox-netns".into())
                .spawn(move || self.fill())
                .map(drop)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot start the network namespace maker");
                    self.lock().filler_running = false;
                });
        }
    }

    fn fill(&'static self) {
        loop {
            let mut st = self.lock();
            if !Self::wanted(&st) {
                st.filler_running = false;
                return;
            }
            if st.extra > 0 {
                st.extra -= 1;
            }
            st.in_flight += 1;
            drop(st);
            let made = make();
            let mut st = self.lock();
            st.in_flight -= 1;
            match made {
                Ok(fd) => st.ready.push(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "making a network namespace ahead failed");
                    st.filler_running = false;
                    st.extra = 0;
                    self.changed.notify_all();
                    return;
                }
            }
            self.changed.notify_all();
        }
    }
}

/// Creates a network namespace with its loopback up, on the calling thread (which
/// then stays in it: only call it on a thread of its own).
fn make() -> io::Result<OwnedFd> {
    runbox_sys::process::unshare_namespaces(runbox_sys::process::unshare_flags::NEWNET)?;
    runbox_sys::net::loopback_up()?;
    Ok(rustix::fs::open(
        "/proc/thread-self/ns/net",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}
