//! Test support: a backend on a temporary state dir, and a busybox layer built from
//! the host's static busybox (Debian `busybox-static`), owned by shifted ids the way
//! the image store unpacks layers.

#![allow(dead_code)]

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use runbox_core::{IdMap, JobSpec, Limits, LimitsPolicy};
use runbox_sandbox::{
    plan, Backend, ImageDefaults, JobPlan, NamespaceBackend, NamespaceConfig, NoEvents, RunImage,
};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub backend: NamespaceBackend,
    pub image: RunImage,
}

pub fn id_map() -> IdMap {
    IdMap::default()
}

fn chown_tree(p: &Path, map: IdMap) {
    for entry in walk(p) {
        let _ = std::os::unix::fs::lchown(&entry, Some(map.to_host(0)), Some(map.to_host(0)));
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// Writes a busybox root file system into `layer`.
pub fn busybox_layer(layer: &Path) {
    let bin = layer.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nrunner:x:1000:1000:runner:/home/runner:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        layer.join("etc/group"),
        "root:x:0:\nrunner:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    for d in ["tmp", "root", "home/runner", "usr/bin"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    std::fs::set_permissions(layer.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    chown_tree(layer, id_map());
    chown(
        layer.join("home/runner"),
        Some(id_map().to_host(1000)),
        Some(id_map().to_host(1000)),
    )
    .unwrap();
}

static HOSTILE: OnceLock<PathBuf> = OnceLock::new();

/// A static helper program with subcommands that misbehave (see tests/hostile.c).
pub fn hostile_binary() -> &'static Path {
    HOSTILE.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("runbox-hostile-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile.c");
        let st = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc");
        assert!(st.success(), "building tests/hostile.c failed");
        out
    })
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("layers");
        busybox_layer(&layers.join("bb"));
        // A second layer with the hostile helper.
        let extra = layers.join("extra");
        std::fs::create_dir_all(extra.join("usr/bin")).unwrap();
        std::fs::copy(hostile_binary(), extra.join("usr/bin/hostile")).unwrap();
        chown_tree(&extra, id_map());
        let (backend, _) =
            NamespaceBackend::new(NamespaceConfig::new(dir.path().join("state"), id_map()))
                .unwrap();
        let image = RunImage {
            layers_dir: layers,
            layers: vec!["bb".into(), "extra".into()],
            defaults: ImageDefaults {
                cmd: Some(vec!["sh".into()]),
                env: vec!["PATH=/bin:/usr/bin".into()],
                ..Default::default()
            },
        };
        Env {
            dir,
            backend,
            image,
        }
    }

    pub fn plan(&self, spec: JobSpec) -> JobPlan {
        self.plan_with(spec, self.image.clone())
    }

    pub fn plan_with(&self, spec: JobSpec, image: RunImage) -> JobPlan {
        let id = format!("{:016x}", rand_id());
        plan(
            id,
            spec,
            image,
            &Limits::default(),
            &LimitsPolicy::for_host(16 << 30, 2),
        )
        .unwrap()
    }

    pub fn run(&self, spec: JobSpec) -> runbox_core::JobResult {
        self.backend.run(&self.plan(spec), &mut NoEvents).unwrap()
    }

    pub fn sh(&self, script: &str) -> runbox_core::JobResult {
        self.run(sh(script))
    }
}

pub fn sh(script: &str) -> JobSpec {
    JobSpec {
        image: "test".into(),
        argv: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

impl Env {
    /// The image plus one more layer, filled in by `fill` (owned by root inside).
    pub fn image_with(&self, name: &str, fill: impl FnOnce(&Path)) -> RunImage {
        let layer = self.image.layers_dir.join(name);
        std::fs::create_dir_all(&layer).unwrap();
        fill(&layer);
        chown_tree(&layer, id_map());
        let mut img = self.image.clone();
        img.layers.push(name.into());
        img
    }

    /// Runs with a given image; returns the error as well.
    pub fn try_run_with(
        &self,
        spec: JobSpec,
        image: RunImage,
    ) -> Result<runbox_core::JobResult, runbox_sandbox::SandboxError> {
        self.backend
            .run(&self.plan_with(spec, image), &mut NoEvents)
    }
}

/// Host processes whose uid lies in the sandbox id range (should be none between jobs).
pub fn sandbox_processes() -> Vec<String> {
    let map = id_map();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid: Option<u32> = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok());
        if uid.is_some_and(|u| u >= map.base && u < map.base + IdMap::SIZE) {
            found.push(status.lines().next().unwrap_or("").to_string());
        }
    }
    found
}

/// Mount points of the host's mount namespace.
pub fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

/// Job cgroups this test process owns, in any v1 hierarchy or v2.
pub fn own_cgroups() -> Vec<String> {
    let prefix = format!("{}.", std::process::id());
    let mut out = Vec::new();
    for base in [
        "/sys/fs/cgroup/memory/runbox",
        "/sys/fs/cgroup/pids/runbox",
        "/sys/fs/cgroup/cpu/runbox",
        "/sys/fs/cgroup/cpuacct/runbox",
        "/sys/fs/cgroup/runbox",
    ] {
        if let Ok(rd) = std::fs::read_dir(base) {
            out.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix)),
            );
        }
    }
    out
}

/// A file in a fresh directory on the host, with known content, for "host unchanged" checks.
pub struct Sentinel {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl Sentinel {
    pub const CONTENT: &'static str = "host sentinel\n";
    pub fn new() -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sentinel");
        std::fs::write(&file, Self::CONTENT).unwrap();
        Sentinel { dir, file }
    }
    /// The directory holds only the sentinel, unchanged.
    pub fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.file).unwrap(), Self::CONTENT);
        let entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("sentinel")]);
    }
}

/// Prints the job's pid and mount namespace ids first thing, for [`assert_job_gone`].
pub const NS_IDS: &str = "readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; ";

/// After a job that began with [`NS_IDS`]: no host process is left in its pid or
/// mount namespace, and [`assert_sandbox_removed`].
pub fn assert_job_gone(env: &Env, r: &runbox_core::JobResult) {
    let ns: Vec<&str> = r.stdout.lines().take(2).collect();
    assert!(
        ns.len() == 2 && ns.iter().all(|n| n.contains(":[")),
        "job did not print its namespaces: {}",
        r.stdout
    );
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        for kind in ["pid", "mnt"] {
            if let Ok(link) = std::fs::read_link(p.path().join("ns").join(kind)) {
                assert!(
                    !ns.contains(&link.to_str().unwrap()),
                    "process {:?} is still in the job's {kind} namespace",
                    p.path()
                );
            }
        }
    }
    assert_sandbox_removed(env, &r.job_id);
}

/// The host mount table has nothing under the backend's state dir, the scratch
/// mount point is empty on the host, and the job's cgroup is gone (so no process
/// is left in it: a cgroup with processes cannot be removed).
pub fn assert_sandbox_removed(env: &Env, job_id: &str) {
    let state = env.dir.path().to_str().unwrap().to_owned();
    assert!(
        host_mounts().iter().all(|m| !m.starts_with(&state)),
        "a mount under the state dir leaked to the host"
    );
    let scratch: Vec<_> = std::fs::read_dir(env.dir.path().join("state/mnt"))
        .unwrap()
        .collect();
    assert!(
        scratch.is_empty(),
        "the scratch mount point is not empty on the host"
    );
    assert!(
        own_cgroups().iter().all(|c| !c.ends_with(job_id)),
        "the job's cgroup remains"
    );
}
