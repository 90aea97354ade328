//! Running mmdebstrap: its command line from a [`DebianSpec`], its build phases
//! from the `I: ...` status lines on stderr, and a supervisor that streams its
//! stdout (the root file system as a tar) to a consumer while enforcing a time
//! limit and an output limit.
//!
//! mmdebstrap runs in its own process group, so stopping it reaches the apt,
//! dpkg and tar processes it starts. It is stopped with SIGTERM first: its
//! handler unmounts what it mounted in its chroot and removes its temporary
//! directory; SIGKILL follows after a grace period. Its exit is watched through
//! a pidfd and it is reaped only after every signal was sent, so a signal can
//! never reach a recycled process id.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{kill_process_group, pidfd_open, Pid, PidfdFlags, Signal};

use super::recipe::DebianSpec;
use super::BuildPhase;

/// The program, and the Debian package that has it.
pub(crate) const TOOL: &str = "mmdebstrap";
pub(crate) const TOOL_PACKAGE: &str = "mmdebstrap";

/// Lines of stderr kept for an error message.
const TAIL_LINES: usize = 12;
/// Longest stderr line kept (the rest of the line is dropped).
const MAX_LINE: usize = 1000;
/// How long a stopped tool gets to clean up after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

/// The mmdebstrap command that writes the root file system of `debian` as a tar
/// on stdout. /dev is left out (`--skip=output/dev`): the sandbox mounts its
/// own, and image layers hold no device nodes.
pub(crate) fn command(debian: &DebianSpec) -> Command {
    let mut c = Command::new(TOOL);
    c.arg(format!("--variant={}", debian.variant.as_str()))
        .arg("--mode=auto")
        .arg("--format=tar")
        .arg("--skip=output/dev");
    if !debian.packages.is_empty() {
        c.arg(format!("--include={}", debian.packages.join(",")));
    }
    // Validated values, but `--` keeps them positional whatever they are.
    c.arg("--").arg(&debian.suite).arg("-");
    if let Some(m) = &debian.mirror {
        c.arg(m);
    }
    // Messages of apt and dpkg in English, whatever the host's locale.
    c.env("LC_ALL", "C");
    c
}

/// The build phase an mmdebstrap status line starts, if any.
pub(crate) fn phase_of(line: &str) -> Option<BuildPhase> {
    let msg = line.strip_prefix("I: ")?;
    if msg.starts_with("running apt-get update") {
        Some(BuildPhase::Resolving)
    } else if msg.starts_with("downloading packages") {
        Some(BuildPhase::Downloading)
    } else if msg.starts_with("extracting archives")
        || msg.starts_with("installing")
        || msg.starts_with("configuring")
    {
        Some(BuildPhase::Installing)
    } else if msg.starts_with("creating tarball") {
        Some(BuildPhase::Packing)
    } else {
        None
    }
}

/// Bounds on one run of a tool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ToolLimits {
    pub time: Duration,
    pub max_output: u64,
}

/// How a tool's run ended.
#[derive(Debug)]
pub(crate) enum ToolEnd {
    Exited(ExitStatus),
    /// It ran past the time limit and was stopped.
    TimedOut,
    /// It wrote more than the output limit on stdout and was stopped.
    OutputTooLarge,
}

/// The outcome of [`run_tool`].
#[derive(Debug)]
pub(crate) struct ToolRun<T> {
    pub end: ToolEnd,
    /// The last lines it wrote on stderr.
    pub stderr_tail: Vec<String>,
    /// What the stdout consumer returned.
    pub value: T,
}

/// Stdout of the tool, cut at the output limit.
struct Capped<'a, R> {
    inner: R,
    left: u64,
    over: &'a AtomicBool,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over.store(true, Ordering::SeqCst);
            return Err(io::Error::other("the tool's output exceeds the limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Runs `cmd` with stdin at end-of-file, hands its stdout to `consume` (on this
/// thread) and every stderr line to `on_line` (on another). The tool is stopped
/// when it runs past `limits.time`, when it writes more than
/// `limits.max_output` bytes, or when `consume` fails; once it exits, whatever
/// it left running in its process group is killed. Returns the spawn error
/// (e.g. `NotFound`) if it cannot be started.
pub(crate) fn run_tool<T, E>(
    mut cmd: Command,
    limits: ToolLimits,
    on_line: &(dyn Fn(&str) + Sync),
    consume: impl FnOnce(&mut dyn Read) -> Result<T, E>,
) -> io::Result<ToolRun<Result<T, E>>> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let deadline = Instant::now() + limits.time;
    let mut child = cmd.spawn()?;
    // The child is its process group's leader: its pid is the group id.
    let pgid = Pid::from_child(&child);
    let pidfd = match pidfd_open(pgid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = kill_process_group(pgid, Signal::KILL);
            let _ = child.wait();
            return Err(e.into());
        }
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the tool's pipes are missing"));
    };
    let timed_out = AtomicBool::new(false);
    let over = AtomicBool::new(false);
    let (value, stderr_tail) = std::thread::scope(|s| {
        let lines = s.spawn(|| read_lines(stderr, on_line));
        let watchdog = s.spawn(|| {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_exit(&pidfd, Some(left)) {
                timed_out.store(true, Ordering::SeqCst);
                stop(&pidfd, pgid);
            }
            // The leader exited (and is not reaped yet, so the group id is still
            // its): end anything it left behind holding our pipes.
            let _ = kill_process_group(pgid, Signal::KILL);
        });
        let mut out = Capped {
            inner: stdout,
            left: limits.max_output,
            over: &over,
        };
        let value = consume(&mut out);
        drop(out);
        if value.is_err() || over.load(Ordering::SeqCst) {
            stop(&pidfd, pgid);
        }
        let _ = watchdog.join();
        let tail = lines.join().unwrap_or_default();
        (value, tail)
    });
    let status = child.wait()?;
    let end = if timed_out.load(Ordering::SeqCst) {
        ToolEnd::TimedOut
    } else if over.load(Ordering::SeqCst) {
        ToolEnd::OutputTooLarge
    } else {
        ToolEnd::Exited(status)
    };
    Ok(ToolRun {
        end,
        stderr_tail,
        value,
    })
}

/// SIGTERM to the group, then SIGKILL if the leader has not exited after the
/// grace period. Returns once the leader has exited.
fn stop(pidfd: &OwnedFd, pgid: Pid) {
    let _ = kill_process_group(pgid, Signal::TERM);
    if !wait_exit(pidfd, Some(GRACE)) {
        let _ = kill_process_group(pgid, Signal::KILL);
        wait_exit(pidfd, None);
    }
}

/// Waits until the process exits (true) or `timeout` passes (false).
fn wait_exit(pidfd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            }
        });
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::INTR) => continue,
            // Cannot happen for a valid pidfd; the caller's wait() then blocks
            // until the exit instead.
            Err(_) => return true,
        }
    }
}

/// Reads lines until end-of-file, passing each to `on_line`; returns the last
/// [`TAIL_LINES`]. Lines are cut at [`MAX_LINE`] bytes, so a tool that never
/// writes a newline costs bounded memory.
fn read_lines(mut r: impl Read, on_line: &(dyn Fn(&str) + Sync)) -> Vec<String> {
    let mut tail = VecDeque::with_capacity(TAIL_LINES + 1);
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    let mut emit = |line: &mut Vec<u8>| {
        let s = String::from_utf8_lossy(line);
        let s = s.trim_end();
        if !s.is_empty() {
            on_line(s);
            tail.push_back(s.to_owned());
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
        }
        line.clear();
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    emit(&mut line);
    tail.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn drain(r: &mut dyn Read) -> io::Result<u64> {
        io::copy(r, &mut io::sink())
    }

    const LIMITS: ToolLimits = ToolLimits {
        time: Duration::from_secs(60),
        max_output: 1 << 20,
    };

    #[test]
    fn streams_stdout_and_keeps_the_stderr_tail() {
        let seen = std::sync::Mutex::new(Vec::new());
        let on_line = |l: &str| seen.lock().unwrap().push(l.to_owned());
        let run = run_tool(
            sh("for i in $(seq 1 20); do echo \"E: line $i\" >&2; done; printf abc; exit 3"),
            LIMITS,
            &on_line,
            drain,
        )
        .unwrap();
        assert!(matches!(run.end, ToolEnd::Exited(s) if s.code() == Some(3)));
        assert_eq!(run.value.unwrap(), 3);
        assert_eq!(run.stderr_tail.len(), TAIL_LINES);
        assert_eq!(run.stderr_tail.last().unwrap(), "E: line 20");
        assert_eq!(seen.lock().unwrap().len(), 20);
    }

    #[test]
    fn stops_a_tool_that_writes_more_than_the_output_limit() {
        let run = run_tool(
            sh("exec cat /dev/zero"),
            ToolLimits {
                max_output: 1 << 20,
                ..LIMITS
            },
            &|_| {},
            drain,
        )
        .unwrap();
        assert!(matches!(run.end, ToolEnd::OutputTooLarge), "{:?}", run.end);
        assert!(run.value.is_err());
    }

    #[test]
    fn stops_a_tool_that_runs_past_the_time_limit() {
        // `sleep` stands for a tool that hangs; nothing waits on it.
        let started = Instant::now();
        let run = run_tool(
            sh("sleep 600"),
            ToolLimits {
                time: Duration::from_millis(200),
                ..LIMITS
            },
            &|_| {},
            drain,
        )
        .unwrap();
        assert!(matches!(run.end, ToolEnd::TimedOut), "{:?}", run.end);
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn kills_what_the_tool_left_running_with_its_stdout() {
        // The tool exits at once but leaves a process holding stdout open: the
        // run ends when the tool does, not when the leftover would.
        let run = run_tool(sh("sleep 600 & echo started"), LIMITS, &|_| {}, drain).unwrap();
        assert!(
            matches!(run.end, ToolEnd::Exited(s) if s.success()),
            "{:?}",
            run.end
        );
        assert_eq!(run.value.unwrap(), 8);
    }

    #[test]
    fn a_missing_tool_is_a_not_found_spawn_error() {
        let e = run_tool(
            Command::new("/nonexistent/mmdebstrap"),
            LIMITS,
            &|_| {},
            drain,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn status_lines_map_to_build_phases() {
        assert_eq!(
            phase_of("I: running apt-get update..."),
            Some(BuildPhase::Resolving)
        );
        assert_eq!(
            phase_of("I: downloading packages with apt..."),
            Some(BuildPhase::Downloading)
        );
        assert_eq!(
            phase_of("I: extracting archives..."),
            Some(BuildPhase::Installing)
        );
        assert_eq!(
            phase_of("I: installing remaining packages inside the chroot..."),
            Some(BuildPhase::Installing)
        );
        assert_eq!(
            phase_of("I: creating tarball..."),
            Some(BuildPhase::Packing)
        );
        assert_eq!(phase_of("I: automatically chosen mode: root"), None);
        assert_eq!(phase_of("E: Unable to locate package x"), None);
    }
}
