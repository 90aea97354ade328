//! `Store::pull` against a real registry (Debian's docker-registry on loopback,
//! images pushed with skopeo): tags, digests, indexes, held layers, tampering,
//! unknown images, basic and bearer-token auth, unreachable registries, limits.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::Fixture;
use runbox_core::{Digest, ErrorCode};
use runbox_image::writer::{LayerCompression, Tree};
use runbox_image::{
    host_platform, ImageError, ImportLimits, ImportProgress, NoProgress, PullOptions, PullReport,
    RegistryAuth,
};
use runbox_testkit::hostile::{layout_with_layers, snapshot_tree, TarBuilder};
use runbox_testkit::oci::busybox_image;
use runbox_testkit::registry::{multi_platform_layout, PlatformImage, TestRegistry};

fn plain() -> PullOptions {
    PullOptions {
        plain_http: true,
        ..PullOptions::default()
    }
}

fn basic(user: &str, password: &str) -> PullOptions {
    PullOptions {
        auth: RegistryAuth::Basic {
            username: user.into(),
            password: password.into(),
        },
        plain_http: true,
    }
}

fn pull(f: &Fixture, reference: &str, opts: &PullOptions) -> Result<PullReport, ImageError> {
    f.store.pull(reference, opts, &NoProgress)
}

/// Pulls expecting failure; the store and host must be unchanged.
fn pull_err(f: &Fixture, reference: &str, opts: &PullOptions) -> ImageError {
    let before = f.snapshot();
    let err = pull(f, reference, opts).expect_err("the pull should fail");
    f.assert_unchanged(&before);
    err
}

fn layer(name: &str, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + name.len()) as u8).collect();
    TarBuilder::new().file(name, &data).finish()
}

/// A layer of incompressible bytes (skopeo gzips uncompressed layers it pushes).
fn noise_layer(name: &str, size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    TarBuilder::new().file(name, &data).finish()
}

/// Counts what a pull reports through its progress callbacks.
#[derive(Default)]
struct Counting {
    started: Mutex<Vec<Option<Digest>>>,
    present: Mutex<Vec<Digest>>,
    bytes: AtomicU64,
}

impl ImportProgress for Counting {
    fn blob_started(&self, digest: Option<&Digest>, _size: Option<u64>) {
        self.started.lock().unwrap().push(digest.cloned());
    }
    fn blob_bytes(&self, _digest: Option<&Digest>, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn blob_present(&self, digest: &Digest, _size: u64) {
        self.present.lock().unwrap().push(digest.clone());
    }
}

#[test]
fn pull_by_tag_stores_the_same_image_an_import_of_the_layout_does() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let layout = busybox_image(&f.input("src"));
    let pushed = reg.push(&layout, Some("latest"), "tools/busybox:1");
    let reference = format!("{}/tools/busybox:1", reg.host());

    let report = pull(&f, &reference, &plain()).expect("pull");

    assert_eq!(report.reference, reference);
    assert_eq!(report.image.names, vec![reference.clone()]);
    assert_eq!(report.image.manifest_digest, pushed);
    assert!(!report.already_present);
    assert_eq!(report.layers_downloaded, 1);
    assert_eq!(report.layers_unpacked, 1);
    assert!(report.bytes_downloaded > report.image.layers[0].compressed_size);
    for l in &report.image.layers {
        assert!(f.store.layer_complete(&l.diff_id));
        assert!(f.store.blob_path(&l.blob_digest).is_file());
    }
    assert_eq!(f.store.resolve(&reference).unwrap(), report.image);
    // The same layout imported into another store gives the same record.
    let g = Fixture::new();
    let imported = g.import(&layout).expect("import").image;
    assert_eq!(imported.manifest_digest, report.image.manifest_digest);
    assert_eq!(imported.config_digest, report.image.config_digest);
    assert_eq!(imported.layers, report.image.layers);
    assert_eq!(imported.config, report.image.config);
    for sub in ["blobs", "layers"] {
        assert_eq!(
            snapshot_tree(&g.data.join(sub)),
            snapshot_tree(&f.data.join(sub)),
            "{sub}/ differs between the import and the pull"
        );
    }
}

#[test]
fn pull_by_digest_gives_no_name_and_resolves_by_digest() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let layout = layout_with_layers(
        &f.input("src"),
        &[layer("a.txt", 1000)],
        LayerCompression::Gzip,
    );
    let digest = reg.push(&layout.dir, None, "x:1");
    let reference = format!("{}/x@{digest}", reg.host());

    let report = pull(&f, &reference, &plain()).expect("pull by digest");

    assert!(report.image.names.is_empty());
    assert_eq!(report.image.manifest_digest, digest);
    assert_eq!(f.store.resolve(&reference).unwrap(), report.image);
    assert_eq!(f.store.resolve(&digest.to_string()).unwrap(), report.image);
    // A digest the registry does not have is an unknown image.
    let other = Digest::from_hex(&"0".repeat(64)).unwrap();
    let err = pull_err(&f, &format!("{}/x@{other}", reg.host()), &plain());
    assert_eq!(err.code(), ErrorCode::ImageNotFound, "{err}");
}

fn other_arch() -> &'static str {
    if host_platform().1 == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

fn arch_tree(arch: &str) -> Tree {
    let mut t = Tree::new();
    t.file("arch", 0o644, arch.as_bytes().to_vec());
    t
}

#[test]
fn pull_of_a_multi_platform_index_picks_the_host_platform() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let host = host_platform().1;
    let dir = f.input("multi");
    let images: Vec<PlatformImage> = [other_arch(), host, "s390x"]
        .iter()
        .map(|a| PlatformImage {
            architecture: (*a).to_owned(),
            tree: arch_tree(a),
        })
        .collect();
    let written = multi_platform_layout(&dir, "v1", &images);
    let index_digest = reg.push(&dir, Some("v1"), "multi:v1");
    assert_ne!(index_digest, written[1].manifest_digest);

    let report = pull(&f, &format!("{}/multi:v1", reg.host()), &plain()).expect("pull");

    assert_eq!(report.image.platform, format!("linux/{host}"));
    assert_eq!(report.image.manifest_digest, written[1].manifest_digest);
    assert_eq!(report.image.layers.len(), 1);
    assert_eq!(report.image.layers[0].diff_id, written[1].layers[0].diff_id);
    // Only the host's layer was downloaded.
    assert_eq!(report.layers_downloaded, 1);
    let other_layer = &written[0].layers[0].digest;
    assert!(!f.store.blob_path(other_layer).exists());
}

#[test]
fn pull_of_an_index_without_the_host_platform_lists_the_platforms_it_has() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let dir = f.input("foreign");
    let images: Vec<PlatformImage> = [other_arch(), "s390x"]
        .iter()
        .map(|a| PlatformImage {
            architecture: (*a).to_owned(),
            tree: arch_tree(a),
        })
        .collect();
    multi_platform_layout(&dir, "v1", &images);
    reg.push(&dir, Some("v1"), "foreign:v1");

    let err = pull_err(&f, &format!("{}/foreign:v1", reg.host()), &plain());

    let ImageError::NoMatchingPlatform { available, .. } = &err else {
        panic!("expected NoMatchingPlatform, got {err}");
    };
    assert_eq!(
        available,
        &vec![format!("linux/{}", other_arch()), "linux/s390x".to_owned()]
    );
    assert_eq!(err.code(), ErrorCode::ImageInvalid);
}

#[test]
fn pulling_again_or_an_image_sharing_layers_downloads_only_missing_layers() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let base = layer("base.bin", 300_000);
    let a = layout_with_layers(
        &f.input("a"),
        std::slice::from_ref(&base),
        LayerCompression::Gzip,
    );
    let b = layout_with_layers(
        &f.input("b"),
        &[base, layer("extra.bin", 200_000)],
        LayerCompression::Gzip,
    );
    assert_eq!(a.layers[0].digest, b.layers[0].digest);
    reg.push(&a.dir, None, "app:a");
    reg.push(&b.dir, None, "app:b");
    let a_ref = format!("{}/app:a", reg.host());
    pull(&f, &a_ref, &plain()).expect("first pull");

    // The same image again: nothing but its small manifest and config.
    let again = Counting::default();
    let report = f.store.pull(&a_ref, &plain(), &again).expect("second pull");
    assert!(report.already_present);
    assert_eq!((report.layers_downloaded, report.layers_present), (0, 1));
    assert!(
        report.bytes_downloaded < 2000,
        "{}",
        report.bytes_downloaded
    );
    assert!(again.bytes.load(Ordering::Relaxed) < 2000);

    // Another image whose first layer the store holds: only the second is fetched.
    let progress = Counting::default();
    let report = f
        .store
        .pull(&format!("{}/app:b", reg.host()), &plain(), &progress)
        .expect("pull of b");
    assert_eq!(
        (
            report.layers_downloaded,
            report.layers_present,
            report.layers_unpacked
        ),
        (1, 1, 1)
    );
    assert_eq!(
        *progress.present.lock().unwrap(),
        vec![b.layers[0].digest.clone()]
    );
    let started = progress.started.lock().unwrap();
    assert!(started.contains(&Some(b.layers[1].digest.clone())));
    assert!(!started.contains(&Some(b.layers[0].digest.clone())));
    assert!(progress.bytes.load(Ordering::Relaxed) < b.layers[0].size);
}

#[test]
fn tampered_layer_in_the_registry_is_rejected_and_leaves_the_store_unchanged() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let img = layout_with_layers(
        &f.input("src"),
        &[layer("data.bin", 100_000)],
        LayerCompression::Gzip,
    );
    reg.push(&img.dir, None, "victim:1");
    let blob = &img.layers[0].digest;
    reg.tamper_blob(blob);

    let err = pull_err(&f, &format!("{}/victim:1", reg.host()), &plain());

    match &err {
        ImageError::DigestMismatch { what, digest, .. } => {
            assert_eq!(what, "layer");
            assert_eq!(digest, blob);
        }
        e => panic!("expected a digest mismatch, got {e}"),
    }
    assert_eq!(err.code(), ErrorCode::ImageInvalid);
    assert!(err.to_string().contains(&blob.to_string()), "{err}");
    assert!(!f.store.blob_path(blob).exists());
}

#[test]
fn tampered_manifest_in_the_registry_is_rejected() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let img = layout_with_layers(
        &f.input("src"),
        &[layer("m.bin", 1000)],
        LayerCompression::Gzip,
    );
    let digest = reg.push(&img.dir, None, "m:1");
    reg.tamper_blob(&digest);

    for reference in [
        format!("{}/m:1", reg.host()),
        format!("{}/m@{digest}", reg.host()),
    ] {
        let err = pull_err(&f, &reference, &plain());
        assert!(
            matches!(&err, ImageError::DigestMismatch { what, .. } if what.contains("manifest")),
            "{reference}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::ImageInvalid);
    }
}

#[test]
fn unknown_tag_or_repository_is_image_not_found() {
    let reg = TestRegistry::start();
    let f = Fixture::new();
    let img = layout_with_layers(&f.input("src"), &[layer("t", 10)], LayerCompression::Gzip);
    reg.push(&img.dir, None, "known:1");

    for reference in ["known:nope", "unknown:1"] {
        let err = pull_err(&f, &format!("{}/{reference}", reg.host()), &plain());
        assert!(
            matches!(err, ImageError::RemoteNotFound { .. }),
            "{reference}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::ImageNotFound);
        assert!(err.to_string().contains(reference), "{err}");
    }
}

#[test]
fn basic_auth_pull_works_with_the_credentials_and_fails_clearly_without() {
    let reg = TestRegistry::start_with_htpasswd("alice", "wonderland");
    let f = Fixture::new();
    let img = layout_with_layers(&f.input("src"), &[layer("p", 5000)], LayerCompression::Gzip);
    reg.push(&img.dir, None, "private:1");
    let reference = format!("{}/private:1", reg.host());

    let err = pull_err(&f, &reference, &plain());
    assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::RegistryAuth);
    let msg = err.to_string();
    assert!(
        msg.contains("requires credentials")
            && msg.contains("--username")
            && msg.contains(&reg.host()),
        "{msg}"
    );

    let err = pull_err(&f, &reference, &basic("alice", "wrong"));
    assert_eq!(err.code(), ErrorCode::RegistryAuth, "{err}");
    assert!(err.to_string().contains("refused the credentials"), "{err}");

    let report =
        pull(&f, &reference, &basic("alice", "wonderland")).expect("pull with credentials");
    assert_eq!(report.image.manifest_digest, img.manifest_digest);
    assert_eq!(report.layers_downloaded, 1);
}

#[test]
fn bearer_token_auth_pull_gets_a_token_from_the_token_service() {
    let reg = TestRegistry::start_with_token_auth("bob", "builder");
    let f = Fixture::new();
    let img = layout_with_layers(&f.input("src"), &[layer("t", 5000)], LayerCompression::Gzip);
    reg.push(&img.dir, None, "team/secret:2");
    let reference = format!("{}/team/secret:2", reg.host());
    let tokens = reg.token_server().unwrap();

    let err = pull_err(&f, &reference, &plain());
    assert_eq!(err.code(), ErrorCode::RegistryAuth, "{err}");
    assert!(err.to_string().contains("--password-stdin"), "{err}");

    let err = pull_err(&f, &reference, &basic("bob", "wrong"));
    assert_eq!(err.code(), ErrorCode::RegistryAuth, "{err}");
    assert!(err.to_string().contains("token service"), "{err}");

    let before = tokens.tokens_issued();
    let report = pull(&f, &reference, &basic("bob", "builder")).expect("pull with a token");
    assert!(tokens.tokens_issued() > before);
    assert_eq!(report.image.manifest_digest, img.manifest_digest);
    assert_eq!(report.image.names, vec![reference]);
}

#[test]
fn unreachable_registry_is_an_io_error_naming_it() {
    let f = Fixture::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");

    let err = pull_err(&f, &format!("{host}/x:1"), &plain());

    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::Io);
    let msg = err.to_string();
    assert!(
        msg.contains(&host) && msg.to_lowercase().contains("connect"),
        "{msg}"
    );
}

#[test]
fn credentials_are_not_sent_over_plain_http_to_other_hosts() {
    let f = Fixture::new();
    let err = pull_err(&f, "registry.example/x:1", &basic("u", "p"));
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[test]
fn image_larger_than_the_limit_is_refused_before_its_layers_are_downloaded() {
    let reg = TestRegistry::start();
    let f = Fixture::with_limits(ImportLimits {
        max_image_bytes: 50_000,
        ..ImportLimits::default()
    });
    let img = layout_with_layers(
        &f.input("src"),
        &[noise_layer("big.bin", 400_000)],
        LayerCompression::Gzip,
    );
    reg.push(&img.dir, None, "big:1");
    let progress = Counting::default();
    let before = f.snapshot();

    let err = f
        .store
        .pull(&format!("{}/big:1", reg.host()), &plain(), &progress)
        .expect_err("too large");

    f.assert_unchanged(&before);
    assert!(matches!(err, ImageError::DocumentTooLarge { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::ImageInvalid);
    assert!(progress.bytes.load(Ordering::Relaxed) < 10_000);
}
