//! Runs the real `runbox` binary against a fresh data directory per test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use runbox_image::ImageConfig;

pub struct Runbox {
    pub dir: tempfile::TempDir,
}

impl Runbox {
    pub fn new() -> Runbox {
        Runbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `runbox ARGS` with stdin at end-of-file.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runbox"));
        c.args(args)
            .env("RUNBOX_DATA_DIR", self.data())
            .env_remove("RUNBOX_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// A `runbox serve --no-build ARGS` over a fresh data directory holding
    /// `busybox` (the directory lives as long as the returned `Runbox`).
    pub fn busybox_server(args: &[&str]) -> (Runbox, runbox_testkit::server::TestServer) {
        let rb = Runbox::new().with_busybox();
        let mut all = vec!["--no-build", "--no-warm"];
        all.extend_from_slice(args);
        let ts = runbox_testkit::server::TestServer::start(
            Path::new(env!("CARGO_BIN_EXE_runbox")),
            &rb.data(),
            &all,
        );
        (rb, ts)
    }

    /// Imports the busybox image as `busybox` (from the host's busybox-static).
    pub fn with_busybox(self) -> Runbox {
        let layout = runbox_testkit::oci::busybox_image(self.dir.path());
        let out = self.run(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "busybox",
        ]);
        assert!(out.status.success(), "import failed: {}", text(&out.stderr));
        self
    }

    /// Imports a busybox image with `config` as `name`.
    pub fn import_with_config(&self, name: &str, config: ImageConfig) {
        let dir = self
            .dir
            .path()
            .join(format!("img-{}", name.replace([':', '/'], "_")));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = runbox_testkit::oci::busybox_image_with_config(&dir, config);
        let out = self.run(&["image", "import", layout.to_str().unwrap(), "--name", name]);
        assert!(out.status.success(), "import failed: {}", text(&out.stderr));
    }

    pub fn images_json(&self) -> String {
        std::fs::read_to_string(self.data().join("images.json")).unwrap_or_default()
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Asserts that nothing under `dir` changed, by listing it before and after `f`.
pub fn unchanged<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
    let before = listing(dir);
    let r = f();
    assert_eq!(listing(dir), before, "{} changed", dir.display());
    r
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((
                p.strip_prefix(dir).unwrap().display().to_string(),
                if meta.is_file() { meta.len() } else { 0 },
            ));
        }
    }
    out.sort();
    out
}
