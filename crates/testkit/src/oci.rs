//! Real, runnable OCI images for tests, made from the host's static busybox
//! (Debian `busybox-static`).

use std::path::{Path, PathBuf};
use std::process::Command;

use runbox_image::writer::{ImageSpec, LayerCompression, LayoutWriter, Tree, WrittenImage};
use runbox_image::ImageConfig;

/// Where the static busybox lives on the host.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// The config `busybox_image` uses: `Cmd ["sh"]` and a standard PATH.
pub fn default_busybox_config() -> ImageConfig {
    ImageConfig {
        cmd: Some(vec!["sh".into()]),
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..ImageConfig::default()
    }
}

/// A busybox root filesystem: `/bin/busybox`, a symlink per applet (at the path
/// `busybox --list-full` gives), `/tmp` (1777), `/etc/passwd` and `/etc/group`
/// with root, nobody and `runner` (uid/gid 1000, home `/home/runner`), and empty
/// `/proc`, `/dev`, `/sys` mount points.
pub fn busybox_tree() -> Tree {
    let out = Command::new(HOST_BUSYBOX)
        .arg("--list-full")
        .output()
        .expect("running /bin/busybox --list-full (install busybox-static)");
    assert!(out.status.success(), "busybox --list-full failed");
    let mut t = Tree::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "home",
    ] {
        t.dir(d, 0o755);
    }
    t.dir("root", 0o700)
        .dir("tmp", 0o1777)
        .dir("home/runner", 0o755)
        .owner("home/runner", 1000, 1000);
    t.host_file("bin/busybox", 0o755, Path::new(HOST_BUSYBOX));
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        if let Some((dir, _)) = applet.rsplit_once('/') {
            if !t.entries().any(|(p, _)| p == dir) {
                t.dir(dir, 0o755);
            }
        }
        t.symlink(applet, "/bin/busybox");
    }
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
          runner:x:1000:1000:runner:/home/runner:/bin/sh\n"
            .to_vec(),
    );
    t.file(
        "etc/group",
        0o644,
        b"root:x:0:\nnobody:x:65534:\nrunner:x:1000:\n".to_vec(),
    );
    t
}

/// Writes an OCI layout of the busybox image into `dir/busybox` and returns its path.
pub fn busybox_image(dir: &Path) -> PathBuf {
    busybox_image_with_config(dir, default_busybox_config())
}

/// Like [`busybox_image`] with a config of the caller's choosing (User,
/// WorkingDir, Entrypoint, ...), for testing config handling.
pub fn busybox_image_with_config(dir: &Path, config: ImageConfig) -> PathBuf {
    write_busybox(&dir.join("busybox"), config).dir
}

/// Writes the busybox layout at exactly `layout` and returns what was written.
pub fn write_busybox(layout: &Path, config: ImageConfig) -> WrittenImage {
    let mut w = LayoutWriter::create(layout).expect("creating layout");
    w.add_layer_tree(&busybox_tree(), LayerCompression::Gzip)
        .expect("writing busybox layer");
    w.finish(&ImageSpec {
        config,
        ref_name: Some("latest".into()),
        ..ImageSpec::default()
    })
    .expect("finishing layout")
}

/// Writes a synthetic layout for throughput measurements: `mb` MB in `files`
/// files over `layers` gzip layers, each file half pseudo-random, half
/// compressible.
pub fn synthetic_layout(layout: &Path, mb: u64, files: u64, layers: u64) -> WrittenImage {
    let per_file = (mb * 1_000_000 / files) as usize;
    let mut w = LayoutWriter::create(layout).expect("layout");
    let mut state = 0x9e3779b97f4a7c15u64;
    for l in 0..layers {
        let mut tree = Tree::new();
        let n = files / layers;
        for i in 0..n {
            let dir = format!("l{l}/d{}", i / 100);
            tree.dir(&format!("l{l}"), 0o755).dir(&dir, 0o755);
            let mut buf = vec![0u8; per_file];
            for chunk in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let b = state.to_le_bytes();
                chunk.copy_from_slice(&b[..chunk.len()]);
            }
            let half = buf.len() / 2;
            buf[..half].fill(b'a');
            tree.file(&format!("{dir}/f{i}"), 0o644, buf);
        }
        w.add_layer_tree(&tree, LayerCompression::Gzip)
            .expect("layer");
    }
    w.finish(&ImageSpec::default()).expect("finish")
}
