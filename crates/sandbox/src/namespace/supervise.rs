//! Watching a running job from the host: feeding stdin, capturing stdout and stderr
//! within their limits, enforcing the wall-clock and CPU-time limits, stopping a
//! cancelled job, and reaping the sandbox's pid 1. One thread, one `poll` loop, no
//! busy waiting: the next CPU check is scheduled at the earliest moment the job
//! could have used up its CPU time, and only a job that can be cancelled wakes up
//! every [`CANCEL_CHECK_INTERVAL`] to ask.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use runbox_core::{JobStatus, LimitKind, Limits};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{pidfd_send_signal, waitid, Signal, WaitId, WaitIdOptions};

use super::child::{ChildError, STATUS};
use crate::cgroup::{CgroupStats, JobCgroup};
use crate::{JobEvents, SandboxError, CANCEL_CHECK_INTERVAL};

/// How the sandbox's pid 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

/// Why runbox killed the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    WallTime,
    CpuTime,
    /// [`JobEvents::cancelled`] said so.
    Cancelled,
}

/// At most `cap` bytes of a stream, and how many there were in all.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    pub kept: Vec<u8>,
    pub cap: u64,
    pub total: u64,
}

impl Capture {
    fn new(cap: u64) -> Self {
        Capture {
            kept: Vec::new(),
            cap,
            total: 0,
        }
    }

    /// Counts `chunk` and keeps what fits; returns the kept part.
    fn push<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        self.total += chunk.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len() as u64) as usize;
        let take = room.min(chunk.len());
        self.kept.extend_from_slice(&chunk[..take]);
        &chunk[..take]
    }

    pub fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// The host ends of the job's pipes.
pub(crate) struct Pipes {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The child's error pipe: EOF means exec succeeded.
    pub err: OwnedFd,
    /// The sync socket: init reports the program's wait status on it.
    pub sync: OwnedFd,
}

pub(crate) struct Outcome {
    pub exit: Exit,
    pub killed: Option<KillReason>,
    pub stdout: Capture,
    pub stderr: Capture,
    /// Set when the child failed after "go" (exec or a late setup step).
    pub child_error: Option<ChildError>,
    pub exited_at: Instant,
}

const READ_CHUNK: usize = 64 * 1024;

/// What happens to the processes a program leaves behind when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leftovers {
    /// A one-shot job: `pidfd` is the sandbox's pid 1, whose end ends them all;
    /// the output pipes are read to their end.
    DieWithInit,
    /// An exec into a live sandbox: they are killed (everything in the exec's
    /// cgroup), then the pipes are read to their end.
    Kill,
    /// An exec that starts daemons: they keep running; what the pipes hold when
    /// the program ends is read, and the pipes are not waited for.
    Keep,
}

/// Runs the job to its end. `go` is when the child was told to exec; limits count
/// from there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn supervise(
    pidfd: &OwnedFd,
    mut pipes: Pipes,
    stdin_data: &[u8],
    limits: &Limits,
    cgroup: &dyn JobCgroup,
    events: &mut dyn JobEvents,
    go: Instant,
    leftovers: Leftovers,
) -> Result<Outcome, SandboxError> {
    let set_nonblock = |fd: &OwnedFd| {
        rustix::fs::fcntl_setfl(
            fd,
            rustix::fs::fcntl_getfl(fd)? | rustix::fs::OFlags::NONBLOCK,
        )
    };
    for fd in [&pipes.stdout, &pipes.stderr, &pipes.err]
        .into_iter()
        .chain(pipes.stdin.as_ref())
    {
        set_nonblock(fd).map_err(|e| SandboxError::io("setting up the job's pipes", e))?;
    }
    if stdin_data.is_empty() {
        pipes.stdin = None;
    }
    let mut stdin_off = 0usize;
    let mut stdout = Capture::new(limits.output_bytes);
    let mut stderr = Capture::new(limits.output_bytes);
    let (mut out_open, mut err_open, mut errpipe_open) = (true, true, true);
    let mut child_error = None;
    let mut program_status: Option<i32> = None;
    let mut sync_open = true;
    let mut exit: Option<(Exit, Instant)> = None;
    let mut killed = None;
    let mut buf = vec![0u8; READ_CHUNK];

    let wall_deadline = go + Duration::from_millis(limits.wall_time_ms);
    let cpu_limit_ns = limits.cpu_time_ms.saturating_mul(1_000_000);
    let cpus = f64::from(limits.cpu_millis.max(1)) / 1000.0;
    // The job cannot use `cpu` of CPU time sooner than cpu / cpus of wall time.
    let earliest = |remaining_ns: u64| {
        Duration::from_nanos((remaining_ns as f64 / cpus) as u64).max(Duration::from_millis(1))
    };
    let mut next_cpu_check = go + earliest(cpu_limit_ns);

    while exit.is_none() || out_open || err_open || errpipe_open {
        let now = Instant::now();
        if exit.is_none() && killed.is_none() {
            if events.cancelled() {
                killed = Some(KillReason::Cancelled);
            } else if now >= wall_deadline {
                killed = Some(KillReason::WallTime);
            } else if now >= next_cpu_check {
                let used = cgroup.cpu_usage_ns().unwrap_or(0);
                if used >= cpu_limit_ns {
                    killed = Some(KillReason::CpuTime);
                } else {
                    next_cpu_check = now + earliest(cpu_limit_ns - used);
                }
            }
            if killed.is_some() {
                // Killing pid 1 makes the kernel kill every process in its namespace;
                // an exec's processes are those of its cgroup.
                let _ = pidfd_send_signal(pidfd, Signal::KILL);
                if leftovers != Leftovers::DieWithInit {
                    let _ = cgroup.kill_all();
                }
            }
        }
        let timeout = if exit.is_none() && killed.is_none() {
            let mut until = wall_deadline
                .min(next_cpu_check)
                .saturating_duration_since(now);
            if events.cancellable() {
                until = until.min(CANCEL_CHECK_INTERVAL);
            }
            Some(Timespec {
                tv_sec: until.as_secs() as i64,
                tv_nsec: i64::from(until.subsec_nanos()),
            })
        } else {
            None
        };

        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(6);
        let mut slots = [usize::MAX; 6]; // stdout, stderr, err, pid, stdin, sync
        if out_open {
            slots[0] = fds.len();
            fds.push(PollFd::new(&pipes.stdout, PollFlags::IN));
        }
        if err_open {
            slots[1] = fds.len();
            fds.push(PollFd::new(&pipes.stderr, PollFlags::IN));
        }
        if errpipe_open {
            slots[2] = fds.len();
            fds.push(PollFd::new(&pipes.err, PollFlags::IN));
        }
        if exit.is_none() {
            slots[3] = fds.len();
            fds.push(PollFd::new(pidfd, PollFlags::IN));
        }
        if let Some(w) = &pipes.stdin {
            slots[4] = fds.len();
            fds.push(PollFd::new(w, PollFlags::OUT));
        }
        if sync_open && exit.is_none() {
            slots[5] = fds.len();
            fds.push(PollFd::new(&pipes.sync, PollFlags::IN));
        }
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(SandboxError::io("waiting for the job", e)),
        }
        let ready = |i: usize| i != usize::MAX && !fds[i].revents().is_empty();
        let (r_out, r_err, r_errpipe, r_pid, r_in, r_sync) = (
            ready(slots[0]),
            ready(slots[1]),
            ready(slots[2]),
            ready(slots[3]),
            ready(slots[4]),
            ready(slots[5]),
        );
        drop(fds);

        if r_out && !out_open {
            tracing::trace!(
                us_since_go = go.elapsed().as_micros() as u64,
                "stdout closed"
            );
        }
        if r_sync || r_pid {
            // Init writes the status just before it exits, so read it before reaping.
            sync_open = read_status(&pipes.sync, &mut program_status);
        }

        if r_out {
            out_open = drain(&pipes.stdout, &mut buf, |c| events.stdout(stdout.push(c)));
        }
        if r_err {
            err_open = drain(&pipes.stderr, &mut buf, |c| events.stderr(stderr.push(c)));
        }
        if r_errpipe {
            let mut b = [0u8; ChildError::SIZE];
            match rustix::io::read(&pipes.err, &mut b) {
                Ok(0) => {
                    tracing::debug!(
                        us_since_go = go.elapsed().as_micros() as u64,
                        "program executed"
                    );
                    errpipe_open = false;
                    if child_error.is_none() {
                        events.started();
                    }
                }
                Ok(n) if n == ChildError::SIZE => child_error = ChildError::from_bytes(&b),
                Ok(_) => errpipe_open = false,
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(_) => errpipe_open = false,
            }
        }
        if r_in {
            if let Some(w) = &pipes.stdin {
                match rustix::io::write(w, &stdin_data[stdin_off..]) {
                    Ok(n) => stdin_off += n,
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    // EPIPE: the program closed its stdin; the rest is not wanted.
                    Err(_) => stdin_off = stdin_data.len(),
                }
                if stdin_off >= stdin_data.len() {
                    pipes.stdin = None;
                }
            }
        }
        if r_pid {
            match waitid(
                WaitId::PidFd(pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(_init_status)) => {
                    tracing::debug!(
                        us_since_go = go.elapsed().as_micros() as u64,
                        "sandbox init reaped"
                    );
                    // Init ends right after the program, and reports the program's own
                    // status. No report means init was killed (by us, for a limit):
                    // everything in the sandbox died of SIGKILL.
                    let e = match program_status {
                        Some(raw) => decode_wait_status(raw),
                        None => Exit::Signal(libc::SIGKILL),
                    };
                    exit = Some((e, Instant::now()));
                    // Nobody is left to read stdin.
                    pipes.stdin = None;
                    match leftovers {
                        Leftovers::DieWithInit => {}
                        Leftovers::Kill => {
                            let _ = cgroup.kill_all();
                        }
                        Leftovers::Keep => {
                            if out_open {
                                drain(&pipes.stdout, &mut buf, |c| events.stdout(stdout.push(c)));
                            }
                            if err_open {
                                drain(&pipes.stderr, &mut buf, |c| events.stderr(stderr.push(c)));
                            }
                            out_open = false;
                            err_open = false;
                        }
                    }
                }
                Ok(None) | Err(Errno::INTR) => {}
                Err(e) => return Err(SandboxError::io("reaping the job", e)),
            }
        }
    }
    let (exit, exited_at) = exit.expect("loop ends only after exit");
    Ok(Outcome {
        exit,
        killed,
        stdout,
        stderr,
        child_error,
        exited_at,
    })
}

/// Reads init's status report if one is waiting; returns whether the socket is open.
fn read_status(sync: &OwnedFd, status: &mut Option<i32>) -> bool {
    let mut msg = [0u8; 5];
    match rustix::net::recv(sync, &mut msg, rustix::net::RecvFlags::DONTWAIT) {
        Ok((5, _)) if msg[0] == STATUS => {
            *status = Some(i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]));
            true
        }
        Ok((0, _)) => false,
        Ok(_) => true,
        Err(Errno::AGAIN | Errno::INTR) => true,
        Err(_) => false,
    }
}

/// A raw `wait` status as exit code or signal.
pub(crate) fn decode_wait_status(raw: i32) -> Exit {
    if raw & 0x7f == 0 {
        Exit::Code((raw >> 8) & 0xff)
    } else {
        Exit::Signal(raw & 0x7f)
    }
}

/// Reads what is available; returns whether the pipe is still open.
fn drain(fd: &OwnedFd, buf: &mut [u8], mut sink: impl FnMut(&[u8])) -> bool {
    // Bounded, so one flooding stream cannot starve the timers.
    for _ in 0..16 {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return false,
            Ok(n) => sink(&buf[..n]),
            Err(Errno::AGAIN) => return true,
            Err(Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The job's status and every limit it ran into.
pub(crate) fn decide(
    exit: Exit,
    killed: Option<KillReason>,
    stats: &CgroupStats,
) -> (JobStatus, Vec<LimitKind>) {
    let sig = match exit {
        Exit::Signal(s) => Some(s),
        Exit::Code(_) => None,
    };
    let mut hit = Vec::new();
    if stats.oom_kills > 0 {
        hit.push(LimitKind::Memory);
    }
    if stats.pids_limit_hits > 0 {
        hit.push(LimitKind::Pids);
    }
    if killed == Some(KillReason::CpuTime) || sig == Some(libc::SIGXCPU) {
        hit.push(LimitKind::CpuTime);
    }
    if killed == Some(KillReason::WallTime) {
        hit.push(LimitKind::WallTime);
    }
    if sig == Some(libc::SIGXFSZ) {
        hit.push(LimitKind::FileSize);
    }
    // Cancelling is no limit: it adds nothing to `hit`. A program that exited with
    // 0 before the kill landed did finish, and says so.
    let status = match exit {
        Exit::Code(0) => JobStatus::Ok,
        _ if killed == Some(KillReason::Cancelled) => JobStatus::Cancelled,
        _ if hit.contains(&LimitKind::Memory) => JobStatus::MemoryLimit,
        _ if hit.contains(&LimitKind::Pids) => JobStatus::PidsLimit,
        _ if hit.contains(&LimitKind::CpuTime) => JobStatus::CpuTimeLimit,
        _ if hit.contains(&LimitKind::WallTime) => JobStatus::WallTimeLimit,
        _ if hit.contains(&LimitKind::FileSize) => JobStatus::FileSizeLimit,
        Exit::Signal(_) => JobStatus::Signaled,
        Exit::Code(_) => JobStatus::ExitNonzero,
    };
    (status, hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(decode_wait_status(0), Exit::Code(0));
        assert_eq!(decode_wait_status(3 << 8), Exit::Code(3));
        assert_eq!(decode_wait_status(9), Exit::Signal(9));
        assert_eq!(
            decode_wait_status(0x80 | 11),
            Exit::Signal(11),
            "core dumped"
        );
    }

    #[test]
    fn capture_keeps_up_to_cap_and_counts_all() {
        let mut c = Capture::new(5);
        assert_eq!(c.push(b"abc"), b"abc");
        assert_eq!(c.push(b"defg"), b"de");
        assert_eq!(c.push(b"h"), b"");
        assert_eq!(
            (c.kept.as_slice(), c.total, c.truncated()),
            (&b"abcde"[..], 8, true)
        );
    }

    fn stats(oom: u64, pids: u64) -> CgroupStats {
        CgroupStats {
            oom_kills: oom,
            pids_limit_hits: pids,
            ..Default::default()
        }
    }

    #[test]
    fn each_limit_has_its_own_status() {
        let k = Exit::Signal(libc::SIGKILL);
        assert_eq!(decide(Exit::Code(0), None, &stats(0, 0)).0, JobStatus::Ok);
        assert_eq!(
            decide(Exit::Code(3), None, &stats(0, 0)).0,
            JobStatus::ExitNonzero
        );
        assert_eq!(decide(k, None, &stats(1, 0)).0, JobStatus::MemoryLimit);
        assert_eq!(
            decide(k, Some(KillReason::WallTime), &stats(0, 5)).0,
            JobStatus::PidsLimit
        );
        assert_eq!(
            decide(k, Some(KillReason::CpuTime), &stats(0, 0)).0,
            JobStatus::CpuTimeLimit
        );
        assert_eq!(
            decide(Exit::Signal(libc::SIGXCPU), None, &stats(0, 0)).0,
            JobStatus::CpuTimeLimit
        );
        assert_eq!(
            decide(k, Some(KillReason::WallTime), &stats(0, 0)).0,
            JobStatus::WallTimeLimit
        );
        assert_eq!(
            decide(Exit::Signal(libc::SIGXFSZ), None, &stats(0, 0)).0,
            JobStatus::FileSizeLimit
        );
        assert_eq!(
            decide(Exit::Signal(libc::SIGSEGV), None, &stats(0, 0)).0,
            JobStatus::Signaled
        );
    }

    #[test]
    fn a_cancelled_job_says_so_and_lists_only_real_limits() {
        let k = Exit::Signal(libc::SIGKILL);
        let c = Some(KillReason::Cancelled);
        assert_eq!(decide(k, c, &stats(0, 0)), (JobStatus::Cancelled, vec![]));
        assert_eq!(
            decide(Exit::Code(3), c, &stats(0, 2)),
            (JobStatus::Cancelled, vec![LimitKind::Pids])
        );
        assert_eq!(decide(Exit::Code(0), c, &stats(0, 0)).0, JobStatus::Ok);
    }

    #[test]
    fn a_limit_hit_by_a_job_that_still_succeeds_is_reported_not_fatal() {
        let (status, hit) = decide(Exit::Code(0), None, &stats(0, 2));
        assert_eq!(status, JobStatus::Ok);
        assert_eq!(hit, [LimitKind::Pids]);
    }
}
