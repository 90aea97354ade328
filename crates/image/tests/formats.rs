//! The input formats import understands: OCI layout directories, OCI archives
//! (plain or gzip), docker-save tarballs, nested indexes; and naming rules.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Fixture, ID_BASE};
use runbox_image::writer::{ImageSpec, LayerCompression, LayoutWriter};
use runbox_image::{ImageConfig, ImageError};
use runbox_testkit::hostile::{self, layout_with_layers, layout_with_layers_and_spec, TarBuilder};
use runbox_testkit::oci;
use serde_json::json;

#[test]
fn busybox_layout_imports() {
    let f = Fixture::new();
    let dir = oci::busybox_image(&f.tmp.path().join("inputs"));
    let report = f.import_named(&dir, "busybox").unwrap();
    assert!(!report.already_present);
    assert_eq!(report.layers_unpacked, 1);
    let img = &report.image;
    assert_eq!(img.names, vec!["busybox:latest".to_owned()]);
    assert_eq!(img.config.cmd, Some(vec!["sh".to_owned()]));
    assert!(img.config.env[0].starts_with("PATH="));
    let (os, arch) = runbox_image::host_platform();
    assert_eq!(img.platform, format!("{os}/{arch}"));
    let root = f.store.layer_dir(&img.layers[0].diff_id);
    let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(bb.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
    let tmp = std::fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    let home = std::fs::metadata(root.join("home/runner")).unwrap();
    assert_eq!(home.uid(), ID_BASE + 1000);
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .contains("runner:x:1000:1000"));
    assert_eq!(img.size_bytes, img.layers[0].unpacked_size);
    assert!(img.size_bytes >= bb.len());
    // The marker is written and the record is listed.
    assert!(f.store.layer_complete(&img.layers[0].diff_id));
    assert_eq!(f.store.list().unwrap(), vec![img.clone()]);
}

#[test]
fn busybox_config_variant_is_stored_raw() {
    let f = Fixture::new();
    let config = ImageConfig {
        entrypoint: Some(vec!["/bin/busybox".into(), "sh".into(), "-c".into()]),
        cmd: Some(vec!["id".into()]),
        env: vec!["PATH=/bin".into(), "A=b".into()],
        working_dir: Some("/proc/self/fd/7".into()),
        user: Some("runner:runner".into()),
        labels: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
    };
    let dir = oci::busybox_image_with_config(&f.tmp.path().join("inputs"), config.clone());
    let report = f.import(&dir).unwrap();
    assert_eq!(
        report.image.config, config,
        "stored as found; the sandbox neutralizes it"
    );
    assert!(
        report.image.names.is_empty(),
        "ref.name 'latest' is only a tag: no name without opts.name"
    );
}

#[test]
fn oci_archive_imports() {
    let f = Fixture::new();
    let layout = f.input("layout");
    let img = layout_with_layers_and_spec(
        &layout,
        &[
            TarBuilder::new().file("a", b"1").finish(),
            TarBuilder::new().file("b", b"2").finish(),
        ],
        LayerCompression::Gzip,
        &ImageSpec {
            ref_name: Some("localhost:5000/team/tool:v1".into()),
            ..ImageSpec::default()
        },
    );
    let plain = hostile::oci_archive(&layout, &f.input("img.tar"), false);
    let report = f.import(&plain).unwrap();
    assert_eq!(report.image.manifest_digest, img.manifest_digest);
    assert_eq!(
        report.image.names,
        vec!["localhost:5000/team/tool:v1".to_owned()]
    );
    assert_eq!(report.layers_unpacked, 2);
    assert_eq!(
        report.bytes_read,
        img.manifest_size
            + report
                .image
                .layers
                .iter()
                .map(|l| l.compressed_size)
                .sum::<u64>()
            + std::fs::metadata(layout.join("blobs/sha256").join(img.config_digest.hex()))
                .unwrap()
                .len()
    );

    // The same image as a gzip-compressed archive is recognized and already present.
    let f2 = Fixture::new();
    let gz = hostile::oci_archive(&layout, &f2.input("img.tar.gz"), true);
    let report = f2.import(&gz).unwrap();
    assert_eq!(report.image.manifest_digest, img.manifest_digest);
    assert!(
        std::fs::read_dir(f2.data.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "decompressed archive removed"
    );
}

#[test]
fn docker_save_tarball_imports() {
    let f = Fixture::new();
    let base = TarBuilder::new()
        .dir("etc")
        .file("etc/os", b"base")
        .finish();
    let app = TarBuilder::new().file("app", b"#!/bin/sh\n").finish();
    // The base layer twice: docker stores the second as a symlink to the first.
    let layers = vec![base.clone(), app, base];
    let config = ImageConfig {
        cmd: Some(vec!["/app".into()]),
        ..ImageConfig::default()
    };
    let tarball = f.input("save.tar");
    std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    hostile::docker_save(
        &tarball,
        &layers,
        &config,
        &["example/app:1.0", "example/app:latest"],
    );
    let report = f.import(&tarball).unwrap();
    let img = &report.image;
    assert_eq!(
        img.names,
        vec![
            "example/app:1.0".to_owned(),
            "example/app:latest".to_owned()
        ]
    );
    assert_eq!(img.layers.len(), 3);
    assert_eq!(
        report.layers_unpacked, 2,
        "a repeated diff_id is unpacked once"
    );
    assert_eq!(img.layers[0].diff_id, img.layers[2].diff_id);
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(img.config.cmd, Some(vec!["/app".to_owned()]));
    let root = f.store.layer_dir(&img.layers[0].diff_id);
    assert_eq!(std::fs::read(root.join("etc/os")).unwrap(), b"base");
    // The synthesized manifest is a stored blob.
    assert!(f.store.blob_path(&img.manifest_digest).is_file());
    assert!(f.store.blob_path(&img.config_digest).is_file());
    // Resolvable by docker's image id (the config digest).
    assert_eq!(
        f.store
            .resolve(&img.config_digest.hex()[..12])
            .unwrap()
            .manifest_digest,
        img.manifest_digest
    );
    // A second import is a no-op.
    let again = f.import(&tarball).unwrap();
    assert!(again.already_present);
    assert_eq!(again.image.manifest_digest, img.manifest_digest);
}

#[test]
fn docker_save_with_oci_layout_prefers_the_index() {
    // docker 25+ writes both: an OCI layout and manifest.json with RepoTags.
    let f = Fixture::new();
    let layout = f.input("layout");
    let img = layout_with_layers(
        &layout,
        &[TarBuilder::new().file("x", b"1").finish()],
        LayerCompression::None,
    );
    let manifest = json!([{
        "Config": format!("blobs/sha256/{}", img.config_digest.hex()),
        "RepoTags": ["hello:2"],
        "Layers": [format!("blobs/sha256/{}", img.layers[0].digest.hex())],
    }]);
    std::fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let tarball = hostile::oci_archive(&layout, &f.input("save.tar"), false);
    // oci_archive packs only the layout files; add manifest.json by packing again.
    let mut b = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(std::fs::File::open(&tarball).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let p = e.path().unwrap().into_owned();
        b.append_data(&mut h, p, &mut e).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    let m = std::fs::read(layout.join("manifest.json")).unwrap();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", m.as_slice())
        .unwrap();
    std::fs::write(&tarball, b.into_inner().unwrap()).unwrap();
    let report = f.import(&tarball).unwrap();
    assert_eq!(
        report.image.manifest_digest, img.manifest_digest,
        "the OCI manifest, not a synthesized one"
    );
    assert_eq!(report.image.names, vec!["hello:2".to_owned()]);
}

#[test]
fn zstd_and_uncompressed_layers_import() {
    let f = Fixture::new();
    for c in [LayerCompression::Zstd, LayerCompression::None] {
        let dir = f.input(&format!("{c:?}"));
        let img = layout_with_layers(
            &dir,
            &[TarBuilder::new().file(&format!("{c:?}"), b"x").finish()],
            c,
        );
        let report = f.import(&dir).unwrap();
        assert_eq!(report.image.layers[0].media_type, c.media_type());
        assert_eq!(report.image.layers[0].diff_id, img.layers[0].diff_id);
        assert!(f
            .store
            .layer_dir(&img.layers[0].diff_id)
            .join(format!("{c:?}"))
            .is_file());
    }
}

#[test]
fn nested_index_selects_host_platform() {
    let f = Fixture::new();
    let dir = f.input("multi");
    let host = layout_with_layers(
        &dir,
        &[TarBuilder::new().file("host", b"1").finish()],
        LayerCompression::Gzip,
    );
    // A second, foreign manifest in the same layout.
    let w = LayoutWriter::create(&dir).unwrap();
    let foreign_config = serde_json::to_vec(
        &json!({"architecture":"s390x","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}),
    )
    .unwrap();
    let (cd, cs) = w.add_blob(&foreign_config).unwrap();
    let foreign_manifest = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd.to_string(),"size":cs},"layers":[]})).unwrap();
    let (fd, fs) = w.add_blob(&foreign_manifest).unwrap();
    let (os, arch) = runbox_image::host_platform();
    let inner = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":fd.to_string(),"size":fs,"platform":{"os":"linux","architecture":"s390x"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":host.manifest_digest.to_string(),"size":host.manifest_size,"platform":{"os":os,"architecture":arch}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":fd.to_string(),"size":fs,"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}},
        ],
    });
    let (id, is) = w.add_blob(&serde_json::to_vec(&inner).unwrap()).unwrap();
    let outer = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType":"application/vnd.oci.image.index.v1+json","digest":id.to_string(),"size":is,"annotations":{"org.opencontainers.image.ref.name":"docker.io/library/multi:3"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&outer).unwrap()).unwrap();
    let report = f.import(&dir).unwrap();
    assert_eq!(report.image.manifest_digest, host.manifest_digest);
    assert_eq!(
        report.image.names,
        vec!["docker.io/library/multi:3".to_owned()]
    );

    // Without the host's entry, the error lists what is there.
    let mut inner2 = inner.clone();
    inner2["manifests"].as_array_mut().unwrap().remove(1);
    let (id2, is2) = w.add_blob(&serde_json::to_vec(&inner2).unwrap()).unwrap();
    let outer2 = json!({"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":id2.to_string(),"size":is2}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&outer2).unwrap()).unwrap();
    let f2 = Fixture::new();
    let before = f2.snapshot();
    match f2.import(&dir).unwrap_err() {
        ImageError::NoMatchingPlatform { available, .. } => {
            assert_eq!(available, vec!["linux/s390x".to_owned()])
        }
        other => panic!("expected NoMatchingPlatform, got {other:?}"),
    }
    f2.assert_unchanged(&before);
}

#[test]
fn import_twice_is_noop() {
    let f = Fixture::new();
    let dir = f.input("layout");
    layout_with_layers(
        &dir,
        &[TarBuilder::new().file("x", b"1").finish()],
        LayerCompression::Gzip,
    );
    let first = f.import_named(&dir, "one:1").unwrap();
    let files = runbox_testkit::hostile::snapshot_tree(&f.data);
    let second = f.import(&dir).unwrap();
    assert!(second.already_present);
    assert_eq!(second.layers_unpacked, 0);
    assert_eq!(second.image, first.image);
    assert_eq!(files, runbox_testkit::hostile::snapshot_tree(&f.data));
    // A new name is added.
    let third = f.import_named(&dir, "two").unwrap();
    assert!(third.already_present);
    assert_eq!(
        third.image.names,
        vec!["one:1".to_owned(), "two:latest".to_owned()]
    );
    assert_eq!(f.store.list().unwrap().len(), 1);
}

#[test]
fn a_name_moves_to_the_newly_imported_image() {
    let f = Fixture::new();
    let a = f.input("a");
    let b = f.input("b");
    layout_with_layers(
        &a,
        &[TarBuilder::new().file("a", b"1").finish()],
        LayerCompression::Gzip,
    );
    layout_with_layers(
        &b,
        &[TarBuilder::new().file("b", b"2").finish()],
        LayerCompression::Gzip,
    );
    let ra = f.import_named(&a, "tool:v1").unwrap();
    let rb = f.import_named(&b, "tool:v1").unwrap();
    assert_eq!(
        f.store.resolve("tool:v1").unwrap().manifest_digest,
        rb.image.manifest_digest
    );
    let old = f
        .store
        .resolve(&ra.image.manifest_digest.to_string())
        .unwrap();
    assert!(
        old.names.is_empty(),
        "the old image is now listed by digest only"
    );
    assert!(matches!(
        f.import_named(&a, "Bad Name"),
        Err(ImageError::InvalidName { .. })
    ));
    assert!(matches!(
        f.import_named(&a, &format!("x@{}", ra.image.manifest_digest)),
        Err(ImageError::InvalidNameForm { .. })
    ));
}

#[test]
fn layers_shared_between_images_are_reused() {
    let f = Fixture::new();
    let base = TarBuilder::new().file("base", b"shared").finish();
    let a = f.input("a");
    let b = f.input("b");
    layout_with_layers(
        &a,
        &[base.clone(), TarBuilder::new().file("a", b"1").finish()],
        LayerCompression::Gzip,
    );
    layout_with_layers(
        &b,
        &[base, TarBuilder::new().file("b", b"2").finish()],
        LayerCompression::Gzip,
    );
    f.import(&a).unwrap();
    let rb = f.import(&b).unwrap();
    assert_eq!((rb.layers_unpacked, rb.layers_reused), (1, 1));
}
