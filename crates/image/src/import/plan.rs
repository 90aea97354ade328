//! What the source says the image is: index and manifest selection (platform,
//! nested indexes), config checks, docker-save `manifest.json`, image names, and
//! the same for a manifest or index fetched from a registry by tag or digest.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use runbox_core::{Digest, ImageRef};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{Ctx, LayerDone, LayerPlan, Plan};
use crate::blob::{copy_verified, read_staged, Expect, StagedBlob};
use crate::error::{ImageError, Result};
use crate::record::{host_platform, ImageConfig};
use crate::registry::RemoteRef;
use crate::source::{normalize_member, Links};
use crate::unpack::check_layer_media_type;

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_INDEX_DEPTH: usize = 4;

/// Whether a `ref.name` annotation is just a tag (as skopeo's `oci:dir:tag` writes)
/// rather than a full reference.
fn is_plain_tag(s: &str) -> bool {
    !s.contains('/') && !s.contains(':') && ImageRef::parse(&format!("x:{s}")).is_ok()
}

/// The names an imported image gets.
fn choose_names(
    wanted: Option<&ImageRef>,
    ref_name: Option<&str>,
    full_names: &[String],
) -> Vec<String> {
    if let Some(w) = wanted {
        let name = w.name.as_deref().unwrap_or_default();
        let tag = match (&w.tag, ref_name) {
            (Some(t), _) => t.clone(),
            (None, Some(r)) if is_plain_tag(r) => r.to_owned(),
            (None, _) => "latest".to_owned(),
        };
        return vec![format!("{name}:{tag}")];
    }
    let mut out = Vec::new();
    let push = |out: &mut Vec<String>, s: &str| match ImageRef::parse(s) {
        Ok(r) if r.digest.is_none() => {
            if let Some(n) = r.name_with_tag() {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        _ => tracing::warn!(name = s, "ignoring an invalid image name in the source"),
    };
    for n in full_names {
        push(&mut out, n);
    }
    if out.is_empty() {
        if let Some(r) = ref_name.filter(|r| !is_plain_tag(r)) {
            push(&mut out, r);
        }
    }
    out
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidDocument {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn to_digest(d: &oci_spec::image::Digest, what: &str) -> Result<Digest> {
    d.to_string()
        .parse()
        .map_err(|_| ImageError::UnsupportedDigest {
            what: what.to_owned(),
            digest: d.to_string(),
        })
}

fn host_platform_string() -> String {
    let (os, arch) = host_platform();
    format!("{os}/{arch}")
}

fn platform_string(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
        _ => format!("{os}/{arch}"),
    }
}

fn platform_matches(os: &str, arch: &str, variant: Option<&str>) -> bool {
    let (host_os, host_arch) = host_platform();
    os == host_os
        && arch == host_arch
        && (host_arch != "arm64" || matches!(variant, None | Some("") | Some("v8")))
}

impl Ctx<'_> {
    fn fetch_document(&self, desc: &Descriptor, what: &str) -> Result<(StagedBlob, Vec<u8>)> {
        let digest = to_digest(desc.digest(), what)?;
        let max = self.store.limits.max_document_bytes;
        if desc.size() > max {
            return Err(ImageError::DocumentTooLarge {
                what: format!("{what} {digest}"),
                size: desc.size(),
                limit: max,
            });
        }
        let blob = copy_verified(
            self.source,
            &self.source.blob_name(&digest, desc.media_type().as_ref()),
            Links::Refuse,
            Expect {
                what,
                digest: Some(&digest),
                size: Some(desc.size()),
                max,
            },
            &self.staging.blobs(),
            self.progress,
            &self.cancel,
        )?;
        let bytes = read_staged(&blob)?;
        Ok((blob, bytes))
    }
}

/// Picks the image for this host from an index, descending nested indexes.
fn select_manifest(
    ctx: &Ctx<'_>,
    index: &ImageIndex,
    depth: usize,
    inherited_ref: Option<String>,
) -> Result<(Descriptor, Option<String>)> {
    if depth > MAX_INDEX_DEPTH {
        return Err(ImageError::IndexTooDeep(MAX_INDEX_DEPTH));
    }
    let mut available = Vec::new();
    let mut candidates: Vec<(&Descriptor, Option<String>)> = Vec::new();
    for d in index.manifests() {
        let mt = d.media_type().to_string();
        let ann = d.annotations().as_ref();
        if ann
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some_and(|t| t == "attestation-manifest")
        {
            continue;
        }
        if ![
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .contains(&mt.as_str())
        {
            continue;
        }
        if let Some(p) = d.platform() {
            let (os, arch) = (p.os().to_string(), p.architecture().to_string());
            let variant = p.variant().as_deref();
            if os == "unknown" {
                continue;
            }
            available.push(platform_string(&os, &arch, variant));
            if !platform_matches(&os, &arch, variant) {
                continue;
            }
        }
        let ref_name = ann
            .and_then(|a| {
                a.get(ANNOTATION_CONTAINERD_NAME)
                    .or_else(|| a.get(ANNOTATION_REF_NAME))
            })
            .cloned()
            .or_else(|| inherited_ref.clone());
        candidates.push((d, ref_name));
    }
    if candidates.len() > 1 {
        // Several images: the wanted name's tag (or full name) picks one.
        if let Some(w) = &ctx.wanted {
            let full = w.name_with_tag();
            let picked: Vec<_> = candidates
                .iter()
                .filter(|(_, r)| match r {
                    Some(r) => {
                        Some(r.clone()) == full
                            || w.tag.as_deref() == Some(r.as_str())
                            || ImageRef::parse(r).ok().and_then(|x| x.name_with_tag()) == full
                    }
                    None => false,
                })
                .cloned()
                .collect();
            if picked.len() == 1 {
                candidates = picked;
            }
        }
    }
    if candidates.len() > 1 {
        // All for this platform and nothing distinguishes them by name: if they
        // came from platform entries, the first is as good as any.
        let all_platform = candidates.iter().all(|(d, _)| d.platform().is_some());
        if !all_platform {
            return Err(ImageError::SeveralImages {
                candidates: candidates
                    .iter()
                    .map(|(d, r)| match r {
                        Some(r) => format!("{r} ({})", d.digest()),
                        None => d.digest().to_string(),
                    })
                    .collect(),
            });
        }
        candidates.truncate(1);
    }
    let Some((desc, ref_name)) = candidates.into_iter().next() else {
        return Err(ImageError::NoMatchingPlatform {
            wanted: host_platform_string(),
            available,
        });
    };
    let mt = desc.media_type().to_string();
    if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST {
        let (_, bytes) = ctx.fetch_document(desc, "image index")?;
        let nested: ImageIndex = parse_json(&bytes, &format!("image index {}", desc.digest()))?;
        return select_manifest(ctx, &nested, depth + 1, ref_name);
    }
    Ok((desc.clone(), ref_name))
}

pub(super) fn plan_oci(ctx: &Ctx<'_>) -> Result<Plan> {
    let limits = &ctx.store.limits;
    let layout = ctx
        .source
        .read_document("oci-layout", "oci-layout", limits.max_document_bytes);
    match layout {
        Ok(b) => {
            let v: serde_json::Value = parse_json(&b, "oci-layout")?;
            if v.get("imageLayoutVersion")
                .and_then(|v| v.as_str())
                .is_none()
            {
                return Err(ImageError::InvalidDocument {
                    what: "oci-layout".into(),
                    reason: "no imageLayoutVersion".into(),
                });
            }
        }
        Err(ImageError::MissingFile { .. }) => {
            return Err(ImageError::UnrecognizedInput {
                path: ctx.source.path().to_owned(),
                reason: "it has index.json but no oci-layout file".into(),
            })
        }
        Err(e) => return Err(e),
    }
    let index_bytes =
        ctx.source
            .read_document("index.json", "index.json", limits.max_document_bytes)?;
    let index: ImageIndex = parse_json(&index_bytes, "index.json")?;
    let (desc, ref_name) = select_manifest(ctx, &index, 0, None)?;
    let (manifest_blob, manifest_bytes) = ctx.fetch_document(&desc, "manifest")?;
    let mut plan = plan_manifest(ctx, manifest_blob, &manifest_bytes)?;
    // docker save (25+) writes both a layout and manifest.json; its RepoTags name
    // the image when the index annotations do not.
    let mut full_names = Vec::new();
    if let Some(r) = ref_name.as_deref().filter(|r| !is_plain_tag(r)) {
        full_names.push(r.to_owned());
    }
    if full_names.is_empty() && ctx.wanted.is_none() {
        if let Ok(Some(bytes)) = ctx.source.read_optional_document(
            "manifest.json",
            "manifest.json",
            limits.max_document_bytes,
        ) {
            if let Ok(entries) = serde_json::from_slice::<Vec<DockerManifest>>(&bytes) {
                for e in entries {
                    if e.config.ends_with(plan.config.digest.hex()) {
                        full_names.extend(e.repo_tags.unwrap_or_default());
                    }
                }
            }
        }
    }
    plan.names = choose_names(ctx.wanted.as_ref(), ref_name.as_deref(), &full_names);
    Ok(plan)
}

/// The plan an image manifest (verified and staged) gives: its config, fetched
/// and checked, and its layers. Names are left to the caller.
fn plan_manifest(ctx: &Ctx<'_>, manifest_blob: StagedBlob, manifest_bytes: &[u8]) -> Result<Plan> {
    let limits = &ctx.store.limits;
    let manifest: ImageManifest = parse_json(
        manifest_bytes,
        &format!("manifest {}", manifest_blob.digest),
    )?;
    // The descriptors bound every blob read below; refuse too much before reading.
    let total = manifest
        .layers()
        .iter()
        .fold(manifest.config().size(), |sum, d| {
            sum.saturating_add(d.size())
        });
    if total > limits.max_image_bytes {
        return Err(ImageError::DocumentTooLarge {
            what: format!(
                "the image of manifest {} (config and layers)",
                manifest_blob.digest
            ),
            size: total,
            limit: limits.max_image_bytes,
        });
    }
    let (config_blob, config_bytes) = ctx.fetch_document(manifest.config(), "config")?;
    let config_doc: ImageConfiguration =
        parse_json(&config_bytes, &format!("config {}", config_blob.digest))?;
    let diff_ids = check_config(&config_doc, manifest.layers().len(), limits.max_layers)?;
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = to_digest(d.digest(), "layer")?;
        let media_type = d.media_type().to_string();
        check_layer_media_type(&media_type, &digest)?;
        if d.size() > limits.max_layer_bytes {
            return Err(ImageError::DocumentTooLarge {
                what: format!("layer {digest}"),
                size: d.size(),
                limit: limits.max_layer_bytes,
            });
        }
        layers.push(LayerPlan {
            file: ctx.source.blob_name(&digest, &media_type),
            links: Links::Refuse,
            digest: Some(digest),
            size: Some(d.size()),
            media_type: Some(media_type),
            diff_id,
        });
    }
    Ok(Plan {
        manifest: Some(manifest_blob),
        config: config_blob,
        platform: config_platform(&config_doc),
        config_doc,
        layers,
        names: Vec::new(),
    })
}

/// The `mediaType` of a manifest or index, and whether it lists manifests.
#[derive(Debug, Deserialize)]
struct ManifestProbe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Plans a pull of `remote` from the registry `ctx.source` is: the manifest
/// (or index, from which the host's platform is chosen as for a layout) the
/// tag or digest names, then its config and layers. The image is named
/// `remote.image_name()`.
pub(super) fn plan_registry(ctx: &Ctx<'_>, remote: &RemoteRef) -> Result<Plan> {
    let registry = ctx
        .source
        .as_registry()
        .ok_or_else(|| ImageError::Internal("a pull's source is not a registry".into()))?;
    let body = registry.fetch_manifest(None, "manifest")?;
    let digest = Digest::from_sha256_bytes(&Sha256::digest(&body).into());
    if let Some(wanted) = &remote.digest {
        if *wanted != digest {
            return Err(ImageError::DigestMismatch {
                what: "manifest".into(),
                digest: wanted.clone(),
                actual: digest,
            });
        }
    }
    let probe: ManifestProbe = parse_json(&body, &format!("manifest {digest}"))?;
    let is_index = match probe.media_type.as_deref() {
        Some(MT_OCI_INDEX | MT_DOCKER_LIST) => true,
        Some(_) => false,
        None => probe.manifests.is_some(),
    };
    let (manifest_blob, manifest_bytes) = if is_index {
        let index: ImageIndex = parse_json(&body, &format!("image index {digest}"))?;
        let (desc, _) = select_manifest(ctx, &index, 0, None)?;
        ctx.fetch_document(&desc, "manifest")?
    } else {
        let path = ctx.staging.blobs().join(digest.hex());
        std::fs::write(&path, &body).map_err(|e| ImageError::io("writing", &path, e))?;
        let blob = StagedBlob {
            digest,
            size: body.len() as u64,
            path,
        };
        ctx.progress.blob_finished(&blob.digest, blob.size);
        (blob, body)
    };
    let mut plan = plan_manifest(ctx, manifest_blob, &manifest_bytes)?;
    plan.names = remote.image_name().into_iter().collect();
    Ok(plan)
}

/// Checks what the config must say and returns its diff_ids.
fn check_config(
    config: &ImageConfiguration,
    layers: usize,
    max_layers: usize,
) -> Result<Vec<Digest>> {
    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    if !platform_matches(&os, &arch, config.variant().as_deref()) {
        return Err(ImageError::NoMatchingPlatform {
            wanted: host_platform_string(),
            available: vec![config_platform(config)],
        });
    }
    if config.rootfs().typ() != "layers" {
        return Err(ImageError::InvalidDocument {
            what: "config".into(),
            reason: format!("rootfs.type is {:?}, not \"layers\"", config.rootfs().typ()),
        });
    }
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(ImageError::LayerCountMismatch {
            layers,
            diff_ids: ids.len(),
        });
    }
    if layers > max_layers {
        return Err(ImageError::TooManyLayers {
            count: layers,
            limit: max_layers,
        });
    }
    ids.iter()
        .map(|s| {
            s.parse::<Digest>()
                .map_err(|_| ImageError::UnsupportedDigest {
                    what: "diff_id".into(),
                    digest: s.clone(),
                })
        })
        .collect()
}

fn config_platform(config: &ImageConfiguration) -> String {
    platform_string(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    )
}

pub(super) fn image_config(doc: &ImageConfiguration) -> ImageConfig {
    let Some(c) = doc.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone(),
        user: c.user().clone(),
        labels: c
            .labels()
            .clone()
            .map(|l| l.into_iter().collect::<BTreeMap<_, _>>())
            .unwrap_or_default(),
    }
}

/// One image in a docker-save `manifest.json`.
#[derive(Debug, Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The digest a docker-save file name carries: `<hex>.json` or `blobs/sha256/<hex>`.
fn digest_in_name(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let base = base.strip_suffix(".json").unwrap_or(base);
    Digest::from_hex(base).ok()
}

pub(super) fn plan_docker(ctx: &Ctx<'_>) -> Result<Plan> {
    let limits = &ctx.store.limits;
    let bytes =
        ctx.source
            .read_document("manifest.json", "manifest.json", limits.max_document_bytes)?;
    let mut entries: Vec<DockerManifest> = parse_json(&bytes, "manifest.json")?;
    if entries.len() > 1 {
        if let Some(full) = ctx.wanted.as_ref().and_then(|w| w.name_with_tag()) {
            entries.retain(|e| {
                e.repo_tags.iter().flatten().any(|t| {
                    ImageRef::parse(t)
                        .ok()
                        .and_then(|r| r.name_with_tag())
                        .as_ref()
                        == Some(&full)
                })
            });
        }
    }
    let entry = match entries.len() {
        0 => {
            return Err(ImageError::InvalidDocument {
                what: "manifest.json".into(),
                reason: "it lists no image".into(),
            })
        }
        1 => entries.remove(0),
        _ => {
            return Err(ImageError::SeveralImages {
                candidates: entries
                    .iter()
                    .map(|e| {
                        e.repo_tags
                            .as_ref()
                            .and_then(|t| t.first().cloned())
                            .unwrap_or_else(|| e.config.clone())
                    })
                    .collect(),
            })
        }
    };
    let bad_name = |n: &str| ImageError::InvalidDocument {
        what: "manifest.json".into(),
        reason: format!("invalid file name {n:?}"),
    };
    let config_file =
        normalize_member(entry.config.as_bytes()).ok_or_else(|| bad_name(&entry.config))?;
    let config_digest = digest_in_name(&config_file);
    let config = copy_verified(
        ctx.source,
        &config_file,
        Links::Beneath,
        Expect {
            what: "config",
            digest: config_digest.as_ref(),
            size: None,
            max: limits.max_document_bytes,
        },
        &ctx.staging.blobs(),
        ctx.progress,
        &ctx.cancel,
    )?;
    let config_doc: ImageConfiguration =
        parse_json(&read_staged(&config)?, &format!("config {}", config.digest))?;
    let diff_ids = check_config(&config_doc, entry.layers.len(), limits.max_layers)?;
    let mut layers = Vec::new();
    for (file, diff_id) in entry.layers.iter().zip(diff_ids) {
        let file = normalize_member(file.as_bytes()).ok_or_else(|| bad_name(file))?;
        layers.push(LayerPlan {
            digest: digest_in_name(&file),
            file,
            links: Links::Beneath,
            size: None,
            media_type: None,
            diff_id,
        });
    }
    let names = choose_names(
        ctx.wanted.as_ref(),
        None,
        entry.repo_tags.as_deref().unwrap_or_default(),
    );
    Ok(Plan {
        manifest: None,
        platform: config_platform(&config_doc),
        config,
        config_doc,
        layers,
        names,
    })
}

/// For a docker-save without an OCI layout: the OCI manifest of what was
/// imported, stored as a blob so the image has a manifest digest like any other.
pub(super) fn synthesize_manifest(
    ctx: &Ctx<'_>,
    config: &StagedBlob,
    done: &[LayerDone],
) -> Result<StagedBlob> {
    let layers: Vec<serde_json::Value> = done
        .iter()
        .map(|d| serde_json::json!({ "mediaType": d.media_type, "digest": d.blob_digest.to_string(), "size": d.blob_size }))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": { "mediaType": MT_OCI_CONFIG, "digest": config.digest.to_string(), "size": config.size },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Internal(e.to_string()))?;
    let digest = Digest::from_sha256_bytes(&Sha256::digest(&bytes).into());
    let path = ctx.staging.blobs().join(digest.hex());
    std::fs::write(&path, &bytes).map_err(|e| ImageError::io("writing", &path, e))?;
    Ok(StagedBlob {
        digest,
        size: bytes.len() as u64,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::parse_wanted_name;

    fn wanted(s: &str) -> ImageRef {
        parse_wanted_name(s).unwrap()
    }

    #[test]
    fn names_from_option_annotation_and_repo_tags() {
        // The caller's name wins; a tag-only annotation supplies its tag.
        assert_eq!(
            choose_names(Some(&wanted("bb")), Some("1.36"), &[]),
            vec!["bb:1.36"]
        );
        assert_eq!(
            choose_names(Some(&wanted("bb:x")), Some("1.36"), &[]),
            vec!["bb:x"]
        );
        assert_eq!(
            choose_names(Some(&wanted("bb")), Some("reg.io/a/b:2"), &[]),
            vec!["bb:latest"]
        );
        // A full reference annotation names the image; a bare tag does not.
        assert_eq!(
            choose_names(None, Some("reg.io/a/b:2"), &[]),
            vec!["reg.io/a/b:2"]
        );
        assert!(choose_names(None, Some("latest"), &[]).is_empty());
        // docker RepoTags, normalized, invalid ones skipped.
        let tags = vec![
            "busybox".to_owned(),
            "Bad Tag".to_owned(),
            "x/y:1".to_owned(),
        ];
        assert_eq!(
            choose_names(None, None, &tags),
            vec!["busybox:latest", "x/y:1"]
        );
    }

    #[test]
    fn docker_file_names_carry_digests() {
        let hex = "a".repeat(64);
        assert_eq!(digest_in_name(&format!("{hex}.json")).unwrap().hex(), hex);
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_in_name("abc/layer.tar").is_none());
    }
}
