//! [`ImportLimits`]: the bounds an import enforces on untrusted input, so a hostile
//! image costs at most this much disk, memory and time.

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Bounds on what an import reads and creates. Every field has a documented
/// default ([`ImportLimits::default`]); exceeding any of them fails the import with
/// a specific error and leaves the store unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportLimits {
    /// Uncompressed bytes of one layer's tar stream (default 16 GiB). Also caps the
    /// compressed blob, which is never larger in practice.
    pub max_layer_bytes: u64,
    /// Tar entries (so inodes) in one layer (default 1,000,000).
    pub max_layer_entries: u64,
    /// Length of a path or link target in a layer (default 4096, Linux's PATH_MAX).
    pub max_path_len: usize,
    /// Layers in one image (default 120; Docker's overlay driver stops at 125).
    pub max_layers: usize,
    /// Compressed bytes of one image: its config and layers as the manifest's
    /// descriptors give them (default 64 GiB). Checked before any layer is read,
    /// so a pull never downloads more than this (plus its small manifests).
    pub max_image_bytes: u64,
    /// Size of a JSON document: index, manifest, config, docker manifest.json
    /// (default 4 MiB; real ones are a few KiB).
    pub max_document_bytes: u64,
    /// Bytes of a tarball given to import (after removing an outer gzip), default 64 GiB.
    pub max_archive_bytes: u64,
    /// Entries of a tarball given to import (default 100,000; a layout has a few
    /// files per layer).
    pub max_archive_entries: u64,
    /// Size of one tar extension header (GNU long name/link, pax record) in a
    /// layer, which the tar parser holds in memory (default 1 MiB).
    pub max_tar_header_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_layer_bytes: 16 * GIB,
            max_layer_entries: 1_000_000,
            max_path_len: 4096,
            max_layers: 120,
            max_image_bytes: 64 * GIB,
            max_document_bytes: 4 * MIB,
            max_archive_bytes: 64 * GIB,
            max_archive_entries: 100_000,
            max_tar_header_bytes: MIB,
        }
    }
}
