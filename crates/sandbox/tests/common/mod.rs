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
