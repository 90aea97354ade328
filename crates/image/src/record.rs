//! [`ImageRecord`]: what the store knows about one imported image, as listed by
//! `runbox image ls --json` and used by the sandbox to build a rootfs.

use std::collections::BTreeMap;

use runbox_core::Digest;
use serde::{Deserialize, Serialize};

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `name:tag` names (possibly none: then the image is known by digest only).
    pub names: Vec<String>,
    /// Digest of the image manifest (for a docker-save tarball without an OCI
    /// layout: of the OCI manifest runbox synthesized for it).
    pub manifest_digest: Digest,
    /// Digest of the image config: Docker's "image id".
    pub config_digest: Digest,
    /// Layers, lowest first.
    pub layers: Vec<LayerRef>,
    /// The execution defaults from the image config, stored raw as found: the
    /// sandbox validates and neutralizes them at run time.
    pub config: ImageConfig,
    /// `os/arch[/variant]`, e.g. `linux/amd64`.
    pub platform: String,
    /// Total unpacked bytes of file content over all layers.
    pub size_bytes: u64,
    /// When the image was imported (unix seconds).
    pub imported_at: u64,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the uncompressed tar stream; names the unpacked directory
    /// `<data>/layers/<hex>`.
    pub diff_id: Digest,
    /// Digest of the (usually compressed) blob as stored in `<data>/blobs/sha256`.
    pub blob_digest: Digest,
    pub media_type: String,
    pub compressed_size: u64,
    /// Bytes of file content in the unpacked layer.
    pub unpacked_size: u64,
}

/// Execution defaults of an image (the `config` object of an OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ImageRecord {
    /// The image id as `docker images` shows it (first 12 hex of the config digest).
    pub fn short_id(&self) -> &str {
        self.config_digest.short()
    }

    /// Its first name, or its manifest digest when it has none (pulled by digest).
    pub fn display_name(&self) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| self.manifest_digest.to_string())
    }
}

/// This host's platform as OCI names it: `("linux", "amd64")`.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    };
    ("linux", arch)
}
