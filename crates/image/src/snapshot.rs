//! Snapshot layers, for warm starts: a sandbox's writable layer (the overlayfs
//! upper directory on its tmpfs) frozen into a content-addressed OCI layer, and
//! images made of a base image's layers plus such a layer.
//!
//! - [`write_upper_tar`] walks the upper directory and writes a deterministic
//!   layer tar: overlayfs whiteouts and opaque directories become OCI
//!   whiteouts, owners go back from the host range to container ids.
//! - [`Store::commit_image`](crate::Store::commit_image) makes an image of the
//!   base image's layers, layers already in the store (datasets) and the new
//!   tar, through the ordinary verified import (the new layer is unpacked by the
//!   safe unpacker like any other); [`Store::commit_files_image`](crate::Store::commit_files_image)
//!   makes a one-layer image of host files (datasets).
//! - [`tree_digest`] is a canonical digest of an unpacked layer directory, to
//!   record after unpacking and check before use (a corrupted snapshot).
//!
//! The upper directory was written by a hostile sandbox: it may hold symlinks
//! pointing anywhere, FIFOs, sockets, device nodes, hard links, deep trees,
//! huge files and names with any bytes, and runbox reads it as root. No crate
//! walks such a tree through descriptors without following links (the `tar`
//! crate's `append_dir_all` and `walkdir` work on paths and follow or stat by
//! path), so the walk is written here: every directory is opened below its
//! parent's descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, every file with `O_NOFOLLOW |
//! O_NONBLOCK` and checked with `fstat` after opening, symlinks only read with
//! `readlinkat`; the tar is written entry by entry with explicit `tar` headers.
//! Reading the overlay's `trusted.overlay.*` attributes needs CAP_SYS_ADMIN,
//! which runbox (root) has.

mod commit;
mod digest;
mod upper;
mod walk;

pub use commit::{CommitFile, CommitSpec};
pub use digest::{tree_digest, tree_digest_fd};
pub use upper::{write_upper_tar, UpperTarOptions, UpperTarStats};

#[cfg(test)]
mod tests;
