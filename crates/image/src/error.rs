//! [`ImageError`]: everything the image store can fail with, each variant carrying
//! the input (path, digest, tar entry) it failed on, and its stable [`ErrorCode`].

use std::io;
use std::path::PathBuf;

use runbox_core::{Digest, ErrorCode, ReferenceError};

/// Why a tar entry of a layer was refused. Each reason is a way a hostile layer
/// could try to write outside its root, replace the root, or smuggle in
/// something the store never creates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeEntry {
    #[error("absolute path")]
    AbsolutePath,
    #[error("'..' path component")]
    ParentDir,
    #[error("NUL byte in the path or link target")]
    NulByte,
    #[error("path longer than {limit} bytes")]
    PathTooLong { limit: usize },
    #[error("path component longer than 255 bytes")]
    NameTooLong,
    #[error("entry would replace the layer root")]
    ReplacesRoot,
    #[error("parent path passes through a symlink")]
    ThroughSymlink,
    #[error("parent path passes through a non-directory")]
    ParentNotDirectory,
    #[error("hardlink target is an absolute path")]
    HardlinkAbsolute,
    #[error("hardlink target has a '..' component")]
    HardlinkParentDir,
    #[error("hardlink target passes through a symlink")]
    HardlinkThroughSymlink,
    #[error("hardlink target {target:?} does not exist earlier in this layer")]
    HardlinkMissing { target: String },
    #[error("hardlink target is a directory or the layer root")]
    HardlinkToDirectory,
    #[error("hardlink target is not a regular file, symlink or FIFO")]
    HardlinkToSpecial,
    #[error("whiteout names no file")]
    BadWhiteout,
    #[error("empty link target")]
    EmptyLinkTarget,
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedType(char),
    #[error("sparse files are not supported")]
    Sparse,
}

/// Why an entry of a sandbox's writable layer (an overlayfs upper directory) could
/// not be put into a snapshot layer ([`crate::write_upper_tar`]), or why a
/// layer directory's digest could not be computed ([`crate::tree_digest`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefusal {
    #[error("its {which} {id} is outside the sandbox's id range (65536 ids from {base})")]
    IdOutOfRange {
        which: &'static str,
        id: u32,
        base: u32,
    },
    #[error("it is a device node ({major}:{minor}); only 0:0 character devices (overlayfs whiteouts) can be snapshotted")]
    Device { major: u32, minor: u32 },
    #[error("it has the overlayfs attribute {name}, which a layer cannot carry on its own (a renamed directory or a metadata-only copy-up whose data stays in a lower layer); runbox mounts its overlays without redirect_dir, metacopy and index, so only a differently mounted overlay makes these")]
    OverlayXattr { name: String },
    #[error("names beginning with .wh. are OCI whiteout markers and cannot be stored in a layer")]
    ReservedName,
    #[error("its whiteout would be named .wh.NAME, longer than the 255 bytes a name may have")]
    WhiteoutNameTooLong,
    #[error("its path is longer than {limit} bytes, which a layer cannot hold")]
    PathTooLong { limit: usize },
    #[error("its extended attribute {name:?} cannot be stored in a layer: {reason}")]
    Xattr { name: String, reason: &'static str },
    #[error(
        "it changed while the snapshot was taken ({what}); stop the sandbox's processes first"
    )]
    Changed { what: &'static str },
}

/// Errors of the image store. Use [`ImageError::code`] for the stable code the CLI
/// and API report.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the image file {path}: {source}")]
    InputUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the image store at {path} is in use by a running job or another runbox command; try again later")]
    StoreBusy { path: PathBuf },
    #[error("the image store at {path} was created with id base {store}, but id base {requested} was requested; layers are owned by shifted ids, so changing the id base needs a fresh store (a new data directory)")]
    IdBaseMismatch {
        path: PathBuf,
        store: u32,
        requested: u32,
    },
    #[error("id base {0} is too large: base + 65536 must fit in a 32-bit id")]
    IdBaseOutOfRange(u32),
    #[error("the image store file {path} is damaged: {reason}")]
    StoreCorrupt { path: PathBuf, reason: String },
    #[error("no image {reference:?} in the store")]
    NotFound { reference: String },
    #[error("{reference:?} matches several images: {}; give more characters", candidates.join(", "))]
    AmbiguousReference {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("invalid image name {name:?}: {source}")]
    InvalidName {
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidNameForm { name: String, reason: &'static str },
    #[error("{path} is not an OCI image layout, OCI archive or docker-save tarball: {reason}")]
    UnrecognizedInput { path: PathBuf, reason: String },
    #[error("{what} is missing from the image source ({file})")]
    MissingFile { what: String, file: String },
    #[error("{what} ({file}) in the image source is not a regular file inside the layout (symlinks are not followed): {source}")]
    UnsafeSourcePath {
        what: String,
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} {digest}: the content's digest is {actual}")]
    DigestMismatch {
        what: String,
        digest: Digest,
        actual: Digest,
    },
    #[error("{what} {digest}: the descriptor says {expected} bytes but the content has {actual}")]
    SizeMismatch {
        what: String,
        digest: String,
        expected: u64,
        actual: String,
    },
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    DocumentTooLarge { what: String, size: u64, limit: u64 },
    #[error("{what} is not valid: {reason}")]
    InvalidDocument { what: String, reason: String },
    #[error("{what} has digest {digest:?}, but only sha256 digests are supported")]
    UnsupportedDigest { what: String, digest: String },
    #[error("layer {digest} has media type {media_type:?}, which is not a supported layer type")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("layer {digest} is a foreign / non-distributable layer ({media_type}); its content is not in the image and runbox does not download it")]
    NonDistributableLayer { digest: Digest, media_type: String },
    #[error("the image has no variant for this host's platform {wanted}; available: {}", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    NoMatchingPlatform {
        wanted: String,
        available: Vec<String>,
    },
    #[error("the image source holds several images ({}); name the one to import with a name that matches its tag", candidates.join(", "))]
    SeveralImages { candidates: Vec<String> },
    #[error("the image index nests more than {0} levels deep")]
    IndexTooDeep(usize),
    #[error("the manifest lists {layers} layers but the config lists {diff_ids} diff_ids")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("the image has {count} layers, more than the limit of {limit}")]
    TooManyLayers { count: usize, limit: usize },
    #[error("layer {layer}: the uncompressed content's digest is {actual}, but the config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer} is larger than {limit} bytes uncompressed")]
    LayerTooLarge { layer: Digest, limit: u64 },
    #[error("layer {layer} has more than {limit} entries")]
    TooManyEntries { layer: Digest, limit: u64 },
    #[error("layer {layer}: a tar extension header (long name or pax) of {size} bytes is larger than the limit of {limit}")]
    TarHeaderTooLarge {
        layer: Digest,
        size: u64,
        limit: u64,
    },
    #[error("layer {layer}: refused tar entry {entry:?}: {reason}")]
    UnsafeTarEntry {
        layer: Digest,
        entry: String,
        reason: UnsafeEntry,
    },
    #[error("layer {layer} is not a valid {format} stream (at entry {entry:?}): {source}")]
    LayerFormat {
        layer: Digest,
        format: &'static str,
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: creating {entry:?} failed: {source}")]
    LayerWrite {
        layer: Digest,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("the archive {path} is larger than {limit} bytes")]
    ArchiveTooLarge { path: PathBuf, limit: u64 },
    #[error("the archive {path} has more than {limit} entries")]
    ArchiveTooManyEntries { path: PathBuf, limit: u64 },
    #[error("the archive {path} has a tar extension header (long name or pax) of {size} bytes, more than the limit of {limit}")]
    ArchiveHeaderTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("the archive {path} is not a valid tar file: {source}")]
    ArchiveFormat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the registry {registry} has no image {reference}: {detail}")]
    RemoteNotFound {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("the registry {registry} {problem} for {reference}; {advice}")]
    RegistryAuth {
        registry: String,
        reference: String,
        problem: String,
        advice: String,
    },
    #[error("the registry {registry}: {what} failed: {detail}")]
    Registry {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("the import was cancelled because another layer failed")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cannot read the recipe {path}: {source}")]
    RecipeUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A recipe is malformed: `field` names where (`files[1].mode`), empty when
    /// the whole file is at fault.
    #[error("recipe {path}: {}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    RecipeInvalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("recipe {recipe}: {field}: cannot read {path}: {source}")]
    RecipeFileUnreadable {
        recipe: PathBuf,
        field: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tool} is not installed, and image builds need it: apt-get install {package}")]
    BuildToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}){}", stderr_tail(stderr))]
    BuildToolFailed {
        tool: &'static str,
        status: String,
        /// Its last lines on stderr.
        stderr: Vec<String>,
    },
    #[error(
        "{tool} ran longer than the build time limit of {limit_seconds} s and was stopped{}",
        stderr_tail(stderr)
    )]
    BuildTimedOut {
        tool: &'static str,
        limit_seconds: u64,
        stderr: Vec<String>,
    },
    #[error("{tool} wrote a root file system larger than the build limit of {limit} bytes and was stopped")]
    BuildOutputTooLarge { tool: &'static str, limit: u64 },
    #[error("cannot snapshot {path:?}: {reason}")]
    SnapshotEntry {
        /// Relative to the directory walked (`""` is the directory itself).
        path: String,
        reason: SnapshotRefusal,
    },
    #[error(
        "the writable layer is larger than the snapshot limit of {limit} bytes of file content"
    )]
    SnapshotTooLarge { limit: u64 },
    #[error("the writable layer has more than {limit} entries, the snapshot limit")]
    SnapshotTooManyEntries { limit: u64 },
    #[error("{what}: {reason}")]
    SnapshotArgument { what: String, reason: String },
}

/// A tool's last stderr lines, indented below the message.
fn stderr_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!(":\n    {}", lines.join("\n    "))
}

/// Result alias for the image store.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

impl ImageError {
    /// The stable code the CLI (`--json`), script driver and HTTP API report.
    pub fn code(&self) -> ErrorCode {
        use ImageError::*;
        match self {
            Io { .. } => ErrorCode::Io,
            InputUnreadable { .. } => ErrorCode::InputUnreadable,
            StoreBusy { .. } => ErrorCode::StoreBusy,
            IdBaseMismatch { .. }
            | IdBaseOutOfRange(_)
            | AmbiguousReference { .. }
            | InvalidName { .. }
            | InvalidNameForm { .. } => ErrorCode::InvalidArgument,
            NotFound { .. } | RemoteNotFound { .. } => ErrorCode::ImageNotFound,
            RegistryAuth { .. } => ErrorCode::RegistryAuth,
            // The network or the registry's server failed, not the image.
            Registry { .. } => ErrorCode::Io,
            StoreCorrupt { .. } | Cancelled | Internal(_) => ErrorCode::Internal,
            UnrecognizedInput { .. }
            | MissingFile { .. }
            | UnsafeSourcePath { .. }
            | DigestMismatch { .. }
            | SizeMismatch { .. }
            | DocumentTooLarge { .. }
            | InvalidDocument { .. }
            | UnsupportedDigest { .. }
            | UnsupportedMediaType { .. }
            | NonDistributableLayer { .. }
            | NoMatchingPlatform { .. }
            | SeveralImages { .. }
            | IndexTooDeep(_)
            | LayerCountMismatch { .. }
            | TooManyLayers { .. }
            | DiffIdMismatch { .. }
            | LayerTooLarge { .. }
            | TooManyEntries { .. }
            | TarHeaderTooLarge { .. }
            | UnsafeTarEntry { .. }
            | LayerFormat { .. }
            | ArchiveTooLarge { .. }
            | ArchiveTooManyEntries { .. }
            | ArchiveHeaderTooLarge { .. }
            | ArchiveFormat { .. } => ErrorCode::ImageInvalid,
            // Writing into our own staging directory failed: a host problem
            // (disk full, ...), unless the layer was refused, which has its own variant.
            LayerWrite { .. } => ErrorCode::Io,
            RecipeUnreadable { .. } | RecipeFileUnreadable { .. } => ErrorCode::InputUnreadable,
            RecipeInvalid { .. } => ErrorCode::InvalidArgument,
            BuildToolMissing { .. }
            | BuildToolFailed { .. }
            | BuildTimedOut { .. }
            | BuildOutputTooLarge { .. } => ErrorCode::BuildFailed,
            // What a sandbox left in its writable layer cannot become a layer.
            SnapshotEntry { .. } | SnapshotTooLarge { .. } | SnapshotTooManyEntries { .. } => {
                ErrorCode::ImageInvalid
            }
            SnapshotArgument { .. } => ErrorCode::InvalidArgument,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
