//! cgroup v2: the unified hierarchy. runbox's parent directory delegates the memory,
//! pids and cpu controllers to its children; each job is a leaf under it.

use std::io;
use std::path::{Path, PathBuf};

use runbox_core::Limits;

use super::{
    cfs_quota_us, keyed_value, kill_procs, mkdir_if_missing, read_text, read_u64, rmdir_if_present,
    subdirs, write_text, CgroupError, CgroupStats, Cgroups, JobCgroup, JoinBy, CFS_PERIOD_US,
};

const CONTROLLERS: &str = "+memory +pids +cpu";

/// The unified hierarchy mounted at `root`, with runbox's jobs under `root/parent`.
#[derive(Debug, Clone)]
pub struct CgroupsV2 {
    parent: PathBuf,
}

impl CgroupsV2 {
    /// Creates `root/parent` if needed and enables the controllers for its children.
    /// `parent` may be nested (`a/b`); each level delegates the controllers.
    pub fn new(root: &Path, parent: &str) -> Result<Self, CgroupError> {
        let mut dir = root.to_path_buf();
        for part in Path::new(parent).components() {
            enable_controllers(&dir)?;
            dir.push(part);
            mkdir_if_missing(&dir)?;
        }
        enable_controllers(&dir)?;
        Ok(CgroupsV2 { parent: dir })
    }
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let ctl = dir.join("cgroup.subtree_control");
    let current = read_text(&ctl)?;
    if ["memory", "pids", "cpu"]
        .iter()
        .all(|c| current.split_whitespace().any(|x| x == *c))
    {
        return Ok(());
    }
    write_text(&ctl, CONTROLLERS)
}

impl Cgroups for CgroupsV2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn JobCgroup>, CgroupError> {
        let job = JobCgroupV2 {
            dir: self.parent.join(name),
        };
        std::fs::create_dir(&job.dir).map_err(|e| CgroupError::io(&job.dir, e))?;
        let result = (|| {
            write_text(
                &job.dir.join("memory.max"),
                &limits.memory_bytes.to_string(),
            )?;
            let swap = job.dir.join("memory.swap.max");
            if swap.exists() {
                write_text(&swap, "0")?;
            }
            write_text(&job.dir.join("pids.max"), &limits.pids.to_string())?;
            write_text(
                &job.dir.join("cpu.max"),
                &format!("{} {CFS_PERIOD_US}", cfs_quota_us(limits)),
            )?;
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Box::new(job)),
            Err(e) => {
                let _ = job.remove();
                Err(e)
            }
        }
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        subdirs(&self.parent)
    }

    fn open(&self, name: &str) -> Box<dyn JobCgroup> {
        Box::new(JobCgroupV2 {
            dir: self.parent.join(name),
        })
    }
}

/// One job's leaf cgroup.
#[derive(Debug)]
pub struct JobCgroupV2 {
    dir: PathBuf,
}

impl JobCgroup for JobCgroupV2 {
    fn join_by(&self) -> Result<JoinBy, CgroupError> {
        let f = std::fs::File::open(&self.dir).map_err(|e| CgroupError::io(&self.dir, e))?;
        Ok(JoinBy::CloneInto(f.into()))
    }

    fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        let stat = read_text(&self.dir.join("cpu.stat"))?;
        Ok(keyed_value(&stat, "usage_usec").unwrap_or(0) * 1000)
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let stat = read_text(&self.dir.join("cpu.stat"))?;
        let us = |k| keyed_value(&stat, k).unwrap_or(0) * 1000;
        // memory.peak exists since Linux 5.19; before it, the current usage is the
        // best figure left after the job ended.
        let peak = self.dir.join("memory.peak");
        let peak_memory_bytes = if peak.exists() {
            read_u64(&peak)?
        } else {
            read_u64(&self.dir.join("memory.current"))?
        };
        let events = read_text(&self.dir.join("memory.events"))?;
        let pids_events = read_text(&self.dir.join("pids.events"))?;
        Ok(CgroupStats {
            cpu_ns: us("usage_usec"),
            cpu_user_ns: us("user_usec"),
            cpu_system_ns: us("system_usec"),
            peak_memory_bytes,
            oom_kills: keyed_value(&events, "oom_kill").unwrap_or(0),
            pids_limit_hits: keyed_value(&pids_events, "max").unwrap_or(0),
        })
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        // cgroup.kill (Linux 5.14) kills atomically, forks included.
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            match std::fs::write(&kill, "1") {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(_) => {}
            }
        }
        kill_procs(&self.dir.join("cgroup.procs"))
    }

    fn remove(&self) -> Result<(), CgroupError> {
        rmdir_if_present(&self.dir)
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }
}

#[cfg(test)]
mod tests {
    //! These run against a directory tree shaped like cgroupfs (this workplace's
    //! machines run cgroup v1, so a real v2 hierarchy is not available here). They
    //! check what the v2 code writes and how it reads the kernel's files.
    use super::*;

    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        root
    }

    #[test]
    fn new_delegates_controllers_at_each_level() {
        let root = fake_root();
        // mkdir on a plain fs makes no control files; pre-create the nested ones.
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::write(root.path().join("a/cgroup.subtree_control"), "").unwrap();
        std::fs::write(root.path().join("a/b/cgroup.subtree_control"), "").unwrap();
        let cg = CgroupsV2::new(root.path(), "a/b").unwrap();
        assert_eq!(cg.parent, root.path().join("a/b"));
        for d in ["", "a", "a/b"] {
            let s = std::fs::read_to_string(root.path().join(d).join("cgroup.subtree_control"))
                .unwrap();
            assert_eq!(s, CONTROLLERS, "level {d:?}");
        }
    }

    #[test]
    fn create_writes_limits_in_v2_syntax() {
        let root = fake_root();
        std::fs::create_dir(root.path().join("runbox")).unwrap();
        std::fs::write(
            root.path().join("runbox/cgroup.subtree_control"),
            "memory pids cpu",
        )
        .unwrap();
        let cg = CgroupsV2::new(root.path(), "runbox").unwrap();
        let limits = Limits {
            memory_bytes: 64 << 20,
            pids: 7,
            cpu_millis: 1500,
            ..Limits::default()
        };
        let job_dir = root.path().join("runbox/job1");
        // On a plain fs mkdir creates no control files, so create() writes them itself
        // and skips memory.swap.max, which exists only when swap accounting does.
        let job = cg.create("job1", &limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(job_dir.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(job_dir.join("pids.max")).unwrap(),
            "7"
        );
        assert_eq!(
            std::fs::read_to_string(job_dir.join("cpu.max")).unwrap(),
            "150000 100000"
        );
        assert!(!job_dir.join("memory.swap.max").exists());
        assert_eq!(cg.list().unwrap(), vec!["job1".to_string()]);
        // cgroupfs removes control files with their directory; a plain fs does not.
        for f in std::fs::read_dir(&job_dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        job.remove().unwrap();
        assert!(!job_dir.exists());
    }

    #[test]
    fn stats_parse_kernel_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 0\n",
        )
        .unwrap();
        std::fs::write(p.join("memory.peak"), "1048576\n").unwrap();
        std::fs::write(
            p.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(p.join("pids.events"), "max 12\n").unwrap();
        let job = JobCgroupV2 { dir: p.to_owned() };
        let s = job.stats().unwrap();
        assert_eq!(
            s,
            CgroupStats {
                cpu_ns: 2_500_000,
                cpu_user_ns: 2_000_000,
                cpu_system_ns: 500_000,
                peak_memory_bytes: 1 << 20,
                oom_kills: 1,
                pids_limit_hits: 12,
            }
        );
        assert_eq!(job.cpu_usage_ns().unwrap(), 2_500_000);
    }

    #[test]
    fn stats_fall_back_to_memory_current_before_5_19() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("cpu.stat"), "usage_usec 1\n").unwrap();
        std::fs::write(p.join("memory.current"), "4096\n").unwrap();
        std::fs::write(p.join("memory.events"), "oom_kill 0\n").unwrap();
        std::fs::write(p.join("pids.events"), "max 0\n").unwrap();
        let s = JobCgroupV2 { dir: p.to_owned() }.stats().unwrap();
        assert_eq!(s.peak_memory_bytes, 4096);
    }
}
