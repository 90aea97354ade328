//! runbox's image store: imports OCI images from untrusted files into a
//! content-addressed store of verified blobs and unpacked, read-only layers that
//! the sandbox mounts as overlayfs lower directories.
//!
//! The files an import reads are hostile until proven otherwise: every blob is
//! checked against its descriptor (size, sha256) before anything parses or
//! decompresses it, every layer's uncompressed digest must match the config, and
//! layers are unpacked by hand so no tar entry can reach outside the layer root
//! (see `unpack`). Bounds on everything an import reads or creates live in
//! [`ImportLimits`].
//!
//! Snapshots for warm starts: [`write_upper_tar`] turns a sandbox's writable
//! layer (an overlayfs upper directory, hostile) into a layer tar,
//! [`Store::commit_image`] makes an image of a base image's layers, layers in the
//! store and that tar, and [`tree_digest`] detects a layer changed on disk.
//!
//! ```no_run
//! use runbox_image::{ImportOptions, NoProgress, Store, StoreOptions};
//! # fn main() -> Result<(), runbox_image::ImageError> {
//! let store = Store::open("/var/lib/runbox", StoreOptions::default())?;
//! let report = store.import(
//!     std::path::Path::new("busybox.tar"),
//!     &ImportOptions { name: Some("busybox:1.36".into()) },
//!     &NoProgress,
//! )?;
//! let image = store.resolve("busybox:1.36")?;
//! assert_eq!(image.manifest_digest, report.image.manifest_digest);
//! # Ok(()) }
//! ```

mod blob;
pub mod build;
mod error;
mod fsutil;
mod import;
mod limits;
mod progress;
mod record;
pub mod registry;
mod snapshot;
mod source;
mod store;
mod unpack;
pub mod writer;

pub use build::{BuildLimits, BuildOptions, BuildPhase, BuildProgress, BuildReport, Recipe};
pub use error::{ImageError, Result, SnapshotRefusal, UnsafeEntry};
pub use import::{ImportOptions, ImportReport, PullOptions, PullReport};
pub use limits::ImportLimits;
pub use progress::{ImportProgress, NoProgress};
pub use record::{host_platform, ImageConfig, ImageRecord, LayerRef};
pub use registry::{RegistryAuth, RemoteRef};
pub use snapshot::{
    tree_digest, tree_digest_fd, write_upper_tar, CommitFile, CommitSpec, UpperTarOptions,
    UpperTarStats,
};
pub use store::{DiskUsage, GcReport, RemoveReport, Store, StoreLease, StoreOptions};
