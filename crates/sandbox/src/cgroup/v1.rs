//! cgroup v1: one hierarchy per controller (memory, pids, cpu, cpuacct), possibly
//! co-mounted (`cpu,cpuacct`). A job cgroup is a directory of the same name in each.

use std::path::{Path, PathBuf};

use runbox_core::Limits;

use super::{
    cfs_quota_us, keyed_value, kill_procs, mkdir_if_missing, read_text, read_u64, rmdir_if_present,
    subdirs, write_text, CgroupError, CgroupMount, CgroupStats, Cgroups, JobCgroup, JoinBy,
    CFS_PERIOD_US,
};

/// The v1 hierarchies runbox uses, each with runbox's parent directory under it.
#[derive(Debug, Clone)]
pub struct CgroupsV1 {
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
}

impl CgroupsV1 {
    /// Builds from mountinfo entries; `parent` is the directory under each hierarchy
    /// root that holds runbox's job cgroups.
    pub(crate) fn from_mounts(mounts: &[CgroupMount], parent: &str) -> Result<Self, CgroupError> {
        let find = |c: &str| {
            mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.controllers.iter().any(|x| x == c))
                .map(|m| m.mount_point.join(parent))
                .ok_or_else(|| {
                    CgroupError::Unavailable(format!(
                        "neither cgroup v2 with memory, pids and cpu, nor a cgroup v1 `{c}` hierarchy is mounted"
                    ))
                })
        };
        let v1 = CgroupsV1 {
            memory: find("memory")?,
            pids: find("pids")?,
            cpu: find("cpu")?,
            cpuacct: find("cpuacct")?,
        };
        for dir in v1.parents() {
            mkdir_if_missing(&dir)?;
        }
        Ok(v1)
    }

    /// The distinct parent directories (cpu and cpuacct may share one).
    fn parents(&self) -> Vec<PathBuf> {
        let mut v = vec![self.memory.clone(), self.pids.clone(), self.cpu.clone()];
        if self.cpuacct != self.cpu {
            v.push(self.cpuacct.clone());
        }
        v
    }

    fn job(&self, name: &str) -> JobCgroupV1 {
        JobCgroupV1 {
            memory: self.memory.join(name),
            pids: self.pids.join(name),
            cpu: self.cpu.join(name),
            cpuacct: self.cpuacct.join(name),
        }
    }
}

impl Cgroups for CgroupsV1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn JobCgroup>, CgroupError> {
        let job = self.job(name);
        let result = (|| {
            for dir in job.dirs() {
                std::fs::create_dir(dir).map_err(|e| CgroupError::io(dir, e))?;
            }
            let mem = limits.memory_bytes.to_string();
            write_text(&job.memory.join("memory.limit_in_bytes"), &mem)?;
            // Swap accounting may be off (no memsw files); then swappiness 0 keeps the
            // job from using swap instead.
            let memsw = job.memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write_text(&memsw, &mem)?;
            } else {
                let _ = write_text(&job.memory.join("memory.swappiness"), "0");
            }
            write_text(&job.pids.join("pids.max"), &limits.pids.to_string())?;
            write_text(
                &job.cpu.join("cpu.cfs_period_us"),
                &CFS_PERIOD_US.to_string(),
            )?;
            write_text(
                &job.cpu.join("cpu.cfs_quota_us"),
                &cfs_quota_us(limits).to_string(),
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
        // Job cgroups are made memory-first and removed memory-last, so any leftover
        // has its memory directory: one listing finds them all.
        subdirs(&self.memory)
    }

    fn open(&self, name: &str) -> Box<dyn JobCgroup> {
        Box::new(self.job(name))
    }
}

/// One job's directories in each v1 hierarchy.
#[derive(Debug)]
pub struct JobCgroupV1 {
    memory: PathBuf,
    pids: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
}

impl JobCgroupV1 {
    fn dirs(&self) -> Vec<&Path> {
        let mut v = vec![
            self.memory.as_path(),
            self.pids.as_path(),
            self.cpu.as_path(),
        ];
        if self.cpuacct != self.cpu {
            v.push(&self.cpuacct);
        }
        v
    }
}

impl JobCgroup for JobCgroupV1 {
    fn join_by(&self) -> Result<JoinBy, CgroupError> {
        let mut fds = Vec::new();
        for dir in self.dirs() {
            let p = dir.join("tasks");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| CgroupError::io(&p, e))?;
            fds.push(f.into());
        }
        Ok(JoinBy::SelfMove(fds))
    }

    fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        read_u64(&self.cpuacct.join("cpuacct.usage"))
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let cpu_ns = self.cpu_usage_ns()?;
        // cpuacct.stat counts in USER_HZ ticks; use it only to split the exact total.
        let stat = read_text(&self.cpuacct.join("cpuacct.stat"))?;
        let (user, system) = (
            keyed_value(&stat, "user").unwrap_or(0),
            keyed_value(&stat, "system").unwrap_or(0),
        );
        let (cpu_user_ns, cpu_system_ns) = split_cpu(cpu_ns, user, system);
        let oom = read_text(&self.memory.join("memory.oom_control"))?;
        let pids_events = read_text(&self.pids.join("pids.events"))?;
        Ok(CgroupStats {
            cpu_ns,
            cpu_user_ns,
            cpu_system_ns,
            peak_memory_bytes: read_u64(&self.memory.join("memory.max_usage_in_bytes"))?,
            oom_kills: keyed_value(&oom, "oom_kill").unwrap_or(0),
            pids_limit_hits: keyed_value(&pids_events, "max").unwrap_or(0),
        })
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            kill_procs(&dir.join("cgroup.procs"))?;
        }
        Ok(())
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        // Memory last (see `list`).
        for dir in self.dirs().into_iter().rev() {
            if let Err(e) = rmdir_if_present(dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Splits an exact CPU total in the ratio of user to system ticks.
pub(crate) fn split_cpu(total_ns: u64, user_ticks: u64, system_ticks: u64) -> (u64, u64) {
    let ticks = user_ticks + system_ticks;
    if ticks == 0 {
        return (total_ns, 0);
    }
    let user = (u128::from(total_ns) * u128::from(user_ticks) / u128::from(ticks)) as u64;
    (user, total_ns - user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_split_keeps_the_exact_total() {
        assert_eq!(split_cpu(1000, 3, 1), (750, 250));
        assert_eq!(split_cpu(1000, 0, 0), (1000, 0));
        let (u, s) = split_cpu(999_999_999, 7, 3);
        assert_eq!(u + s, 999_999_999);
    }

    #[test]
    fn missing_controller_is_a_clear_error() {
        let mounts = vec![CgroupMount {
            mount_point: "/sys/fs/cgroup/memory".into(),
            fstype: "cgroup".into(),
            controllers: vec!["memory".into()],
        }];
        let err = CgroupsV1::from_mounts(&mounts, "runbox-test-missing").unwrap_err();
        assert!(err.to_string().contains("`pids`"), "{err}");
    }
}
