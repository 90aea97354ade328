//! Control groups: the limits the kernel enforces on a whole job (memory, pids, CPU
//! bandwidth) and the accounting we report (CPU time, peak memory, OOM kills).
//!
//! One trait, two implementations: [`v1::CgroupsV1`] for hosts with the legacy
//! per-controller hierarchies (this workplace's machines), [`v2::CgroupsV2`] for the
//! unified hierarchy most production hosts run. [`detect`] picks one.
//!
//! Job cgroups are named `<owner pid>.<owner start time>.<job id>` under a parent
//! (default `runbox`), so a later runbox can tell whether the process that made a
//! cgroup is still alive and sweep the leftovers of one that crashed.

pub mod v1;
pub mod v2;

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

use runbox_core::Limits;

/// How a new process joins a job's cgroup without waiting.
///
/// Moving a whole process into a cgroup (`cgroup.procs`) takes a global lock whose
/// writers wait for an RCU grace period: 0.4 ms when idle, many milliseconds on a
/// busy machine. Both ways below avoid it.
#[derive(Debug)]
pub enum JoinBy {
    /// cgroup v2: `clone3(CLONE_INTO_CGROUP)` with this directory starts the process
    /// inside.
    CloneInto(std::os::fd::OwnedFd),
    /// cgroup v1: the new (single-threaded) process writes "0" to each of these open
    /// `tasks` files: a thread moving itself skips the global lock.
    SelfMove(Vec<std::os::fd::OwnedFd>),
}

impl JoinBy {
    /// The `tasks` files the process writes itself into (v1), and the directory
    /// to clone into (v2): one of the two is empty.
    pub fn parts(&self) -> (&[std::os::fd::OwnedFd], Option<std::os::fd::BorrowedFd<'_>>) {
        use std::os::fd::AsFd;
        match self {
            JoinBy::SelfMove(fds) => (fds, None),
            JoinBy::CloneInto(dir) => (&[], Some(dir.as_fd())),
        }
    }
}

/// What a job's cgroup accounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub peak_memory_bytes: u64,
    /// Processes the kernel's OOM killer ended because of the memory limit.
    pub oom_kills: u64,
    /// Forks refused because of the pids limit.
    pub pids_limit_hits: u64,
}

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        CgroupError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The host's cgroup hierarchy, as runbox uses it.
pub trait Cgroups: Send + Sync + Debug {
    /// `"v1"` or `"v2"`.
    fn version(&self) -> &'static str;
    /// Creates the cgroup of one job with its limits applied.
    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn JobCgroup>, CgroupError>;
    /// Names of the job cgroups under runbox's parent.
    fn list(&self) -> Result<Vec<String>, CgroupError>;
    /// Opens an existing job cgroup by name (to sweep it).
    fn open(&self, name: &str) -> Box<dyn JobCgroup>;
}

/// The cgroup of one job.
pub trait JobCgroup: Send + Sync + Debug {
    /// How the job's first process gets into this cgroup.
    fn join_by(&self) -> Result<JoinBy, CgroupError>;
    /// CPU time used so far, for enforcing the CPU-time limit while the job runs.
    fn cpu_usage_ns(&self) -> Result<u64, CgroupError>;
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// SIGKILLs every process in the cgroup.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Removes the (empty) cgroup.
    fn remove(&self) -> Result<(), CgroupError>;
    /// The `cgroup.procs` file of each hierarchy, in a fixed order (one on v2).
    fn procs_files(&self) -> Vec<PathBuf>;
}

/// Moves every process of `from` into `to` (an exec's processes that keep running
/// become the live sandbox's). A process may fork while we move; passes repeat
/// until `from` is empty. Returns how many moves were made.
pub fn move_procs(from: &dyn JobCgroup, to: &dyn JobCgroup) -> Result<usize, CgroupError> {
    let mut moved = 0;
    for (src, dst) in from.procs_files().iter().zip(to.procs_files()) {
        let mut settled = false;
        for _ in 0..64 {
            let text = match std::fs::read_to_string(src) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(CgroupError::io(src, e)),
            };
            let pids: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            if pids.is_empty() {
                settled = true;
                break;
            }
            for pid in pids {
                match std::fs::write(&dst, pid) {
                    Ok(()) => moved += 1,
                    // ESRCH: it ended meanwhile.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(CgroupError::io(&dst, e)),
                }
            }
        }
        if !settled && std::fs::metadata(src).is_ok() {
            return Err(CgroupError::io(
                src,
                io::Error::other("processes keep appearing while being moved"),
            ));
        }
    }
    Ok(moved)
}

/// Picks the hierarchy to use: v2 when the unified hierarchy has the memory, pids
/// and cpu controllers, else v1 when each has a legacy hierarchy.
pub fn detect(parent: &str) -> Result<Box<dyn Cgroups>, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::io(Path::new("/proc/self/mountinfo"), e))?;
    let mounts = parse_mountinfo(&mountinfo);
    if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") {
        let controllers =
            std::fs::read_to_string(m.mount_point.join("cgroup.controllers")).unwrap_or_default();
        let have: Vec<&str> = controllers.split_whitespace().collect();
        if ["memory", "pids", "cpu"].iter().all(|c| have.contains(c)) {
            return Ok(Box::new(v2::CgroupsV2::new(&m.mount_point, parent)?));
        }
    }
    let v1 = v1::CgroupsV1::from_mounts(&mounts, parent)?;
    Ok(Box::new(v1))
}

/// A cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// For v1: the controllers bound to this hierarchy (from the super options).
    pub controllers: Vec<String>,
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), Some(_source), Some(opts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let controllers = if fstype == "cgroup" {
            opts.split(',')
                .filter(|o| ["memory", "pids", "cpu", "cpuacct", "freezer"].contains(o))
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            fstype: fstype.to_owned(),
            controllers,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `key value` lines (cpu.stat, memory.events, pids.events, cpuacct.stat) and
/// returns the value of `key`.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let s = read_text(path)?;
    s.trim().parse().map_err(|_| {
        CgroupError::io(
            path,
            io::Error::new(io::ErrorKind::InvalidData, format!("not a number: {s:?}")),
        )
    })
}

/// Reads a small kernel file (cgroupfs, procfs): one open, reads into a 4 KiB
/// buffer (these files report no size, so sizing one first would be a wasted call).
pub(crate) fn read_text(path: &Path) -> Result<String, CgroupError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| CgroupError::io(path, e))?;
    let mut buf = Vec::with_capacity(4096);
    f.read_to_end(&mut buf)
        .map_err(|e| CgroupError::io(path, e))?;
    String::from_utf8(buf)
        .map_err(|e| CgroupError::io(path, io::Error::new(io::ErrorKind::InvalidData, e)))
}

pub(crate) fn write_text(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| CgroupError::io(path, e))
}

/// Names of the subdirectories of `dir` (none if it does not exist).
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CgroupError::io(dir, e)),
    };
    Ok(rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect())
}

pub(crate) fn mkdir_if_missing(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::io(path, e)),
    }
}

pub(crate) fn rmdir_if_present(path: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::io(path, e)),
    }
}

/// SIGKILLs the pids listed in a `cgroup.procs` file until it is empty.
pub(crate) fn kill_procs(procs: &Path) -> Result<(), CgroupError> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::process::{pidfd_open, pidfd_send_signal, PidfdFlags, Signal};
    // A process may fork between our read and our kill; a few passes settle it, and
    // killing a pid namespace's init (always listed) takes the rest with it. Each
    // pass waits (bounded) until the processes it killed have exited: a process
    // takes a moment to die, more so on a busy machine.
    for _ in 0..64 {
        let text = match std::fs::read_to_string(procs) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CgroupError::io(procs, e)),
        };
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return Ok(());
        }
        let mut pidfds = Vec::with_capacity(pids.len());
        for pid in pids {
            let Some(pid) = rustix::process::Pid::from_raw(pid) else {
                continue;
            };
            // Through a pidfd, so a pid reused meanwhile is never signalled.
            if let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) {
                let _ = pidfd_send_signal(&fd, Signal::KILL);
                pidfds.push(fd);
            }
        }
        for fd in &pidfds {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            let ts = Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            let _ = poll(&mut fds, Some(&ts));
        }
    }
    Err(CgroupError::io(
        procs,
        io::Error::other("processes keep appearing after SIGKILL"),
    ))
}

/// `limits.cpu_millis` as a CFS quota for a 100 ms period, in microseconds.
pub(crate) fn cfs_quota_us(limits: &Limits) -> u64 {
    u64::from(limits.cpu_millis) * 100
}

pub(crate) const CFS_PERIOD_US: u64 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
38 35 0:33 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
39 35 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
40 35 0:35 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
41 35 0:36 / /sys/fs/cgroup/net\\040cls rw shared:17 - cgroup cgroup rw,net_cls
";

    #[test]
    fn parses_hybrid_mountinfo() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[2].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[4].mount_point, Path::new("/sys/fs/cgroup/net cls"));
        assert!(m[4].controllers.is_empty());
    }

    #[test]
    fn keyed_values() {
        let t = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(keyed_value(t, "user_usec"), Some(1000));
        assert_eq!(keyed_value(t, "usage"), None);
        assert_eq!(keyed_value("max 3\n", "max"), Some(3));
    }
}
