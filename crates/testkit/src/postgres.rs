//! A real PostgreSQL server for tests: Debian's `postgresql` package, started by
//! the project's `scripts/postgres` in a temporary directory (trust auth on
//! 127.0.0.1 and a free port, durability off for speed), stopped and removed on
//! drop.
//!
//! Most tests want [`TestPostgres::shared`] and a [`TestPostgres::fresh_database`]
//! each: one cluster per test process, an isolated empty database per test.
//!
//! ```no_run
//! let pg = runbox_testkit::postgres::TestPostgres::shared();
//! let url = pg.fresh_database("claims");
//! println!("connect to {url}");
//! ```
//!
//! # Teardown
//!
//! A cluster must not outlive the test process, however that process ends.
//! `scripts/postgres start --watch-stdin` starts the cluster from a watchdog in
//! its own session (out of reach of a Ctrl-C or a kill of the test's process
//! group), which then blocks reading its stdin and stops the cluster (and removes
//! its directory) at end of file. [`TestPostgres`] keeps the write end of that
//! pipe, and nothing else holds it (the server reads `/dev/null`; Rust opens
//! pipes close-on-exec), so the end of file comes when the handle closes it or
//! when the kernel closes it because the process died: normal exit, panic,
//! `abort`, SIGKILL, Ctrl-C, even while the cluster is still starting. There is
//! no polling and no timer: the watchdog sleeps in `read` until then.
//!
//! That teardown runs after the process is gone. Where it can, teardown is
//! synchronous too: [`Drop`] runs `scripts/postgres stop` and waits for it, and
//! the process-wide [`TestPostgres::shared`] cluster (a static, never dropped) is
//! stopped the same way by an `atexit` hook when the process exits normally (the
//! test harness returns from `main` or calls `exit`). So after `cargo test` has
//! returned, no server or directory is left; the watchdog then finds nothing to
//! do.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tempfile::TempDir;

/// A running throwaway PostgreSQL cluster, stopped and removed on drop.
#[derive(Debug)]
pub struct TestPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/runbox`: the database `runbox`, as the
    /// superuser `postgres`, no password.
    pub url: String,
    port: u16,
    /// The cluster (`data`), its Unix socket and its log; `scripts/postgres stop`
    /// removes it (TempDir's own removal is then a no-op).
    dir: TempDir,
    /// The write end of the watchdog's stdin: closing it stops the cluster.
    watchdog: Option<ChildStdin>,
}

static SHARED: OnceLock<TestPostgres> = OnceLock::new();

impl TestPostgres {
    /// Starts a new cluster (about a second: initdb, start, create `runbox`).
    /// Panics with the script's message when PostgreSQL is not installed.
    pub fn start() -> TestPostgres {
        let dir = tempfile::Builder::new()
            .prefix("runbox-pg-")
            .tempdir()
            .expect("temporary directory for PostgreSQL");
        let mut child = Command::new(script())
            .arg("start")
            .arg("--watch-stdin")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", script().display()));
        let watchdog = child.stdin.take();
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .expect("reading scripts/postgres start's output");
        let status = child.wait().expect("waiting for scripts/postgres start");
        assert!(
            status.success(),
            "scripts/postgres start failed ({status}): see its message above"
        );
        let url = out.trim().to_owned();
        let port = url
            .strip_prefix("postgres://postgres@127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("scripts/postgres start printed {out:?}, not a URL"));
        TestPostgres {
            url,
            port,
            dir,
            watchdog,
        }
    }

    /// One cluster for the whole test process, started by the first caller and
    /// stopped when the process exits (see the module's documentation). Give each
    /// test its own [`fresh_database`](Self::fresh_database).
    pub fn shared() -> &'static TestPostgres {
        SHARED.get_or_init(|| {
            let pg = TestPostgres::start();
            stop_shared_at_exit();
            pg
        })
    }

    /// Creates a new empty database, named after `name_hint` (letters, digits
    /// and `_` kept, lowercased) plus a number unique in this process, and returns
    /// its URL. Safe to call from concurrent tests.
    pub fn fresh_database(&self, name_hint: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut name: String = name_hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            name.insert_str(0, "db_");
        }
        let name = format!("{name}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(script())
            .arg("createdb")
            .arg(self.dir.path())
            .arg(&name)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script().display()));
        assert!(
            out.status.success(),
            "scripts/postgres createdb {name} failed ({}): see its message above",
            out.status
        );
        String::from_utf8(out.stdout)
            .expect("scripts/postgres createdb printed UTF-8")
            .trim()
            .to_owned()
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (`data/`, the Unix socket, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server and removes its directory, waiting for both. Idempotent.
    fn stop(&self) {
        match Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("scripts/postgres stop failed ({status})"),
            Err(e) => eprintln!("running {}: {e}", script().display()),
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
        // The watchdog wakes up, finds nothing left to stop, and exits.
        drop(self.watchdog.take());
    }
}

/// `<workspace>/scripts/postgres`.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

/// Registers [`stop_shared`] with the C library's `atexit`, which runs it when
/// the process exits normally (statics are never dropped).
#[allow(unsafe_code)]
fn stop_shared_at_exit() {
    // SAFETY: `atexit` only records a function pointer; `stop_shared` is an
    // `extern "C"` function taking no arguments, valid for the whole process, and
    // it does not unwind (it catches panics).
    let rc = unsafe { libc::atexit(stop_shared) };
    if rc != 0 {
        // Still stopped by the watchdog, just after the process is gone.
        eprintln!("atexit failed: the shared PostgreSQL stops after the process exits");
    }
}

extern "C" fn stop_shared() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(pg) = SHARED.get() {
            pg.stop();
        }
    });
}
