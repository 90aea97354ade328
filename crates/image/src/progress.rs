//! [`ImportProgress`]: callbacks an import or a pull makes so a front end can
//! draw progress.

use runbox_core::Digest;

/// Receives progress events from [`crate::Store::import`] and
/// [`crate::Store::pull`] (where reading from the source is downloading). Every
/// method has a no-op default, so an implementation overrides only what it
/// shows. Methods may be called from several threads at once (layers are
/// fetched and unpacked in parallel).
pub trait ImportProgress: Sync {
    /// Copying and verifying a blob from the source started. `size` is the
    /// descriptor's size when the source has descriptors (not for docker-save layers).
    fn blob_started(&self, _digest: Option<&Digest>, _size: Option<u64>) {}
    /// `n` more bytes were read from the source.
    fn bytes(&self, _n: u64) {}
    /// `n` more bytes of the blob with this digest (`None`: a docker-save file
    /// named by path) were read from the source. Calls [`Self::bytes`] unless
    /// overridden.
    fn blob_bytes(&self, _digest: Option<&Digest>, n: u64) {
        self.bytes(n)
    }
    /// A layer blob the store already holds is used as is: nothing is read
    /// from the source (for a pull: not downloaded).
    fn blob_present(&self, _digest: &Digest, _size: u64) {}
    /// A blob was verified and staged.
    fn blob_finished(&self, _digest: &Digest, _size: u64) {}
    /// Unpacking the layer with this diff_id started.
    fn layer_unpack_started(&self, _diff_id: &Digest) {}
    /// A layer finished unpacking: `bytes` of file content, `entries` tar entries.
    fn layer_unpack_finished(&self, _diff_id: &Digest, _bytes: u64, _entries: u64) {}
    /// A layer already unpacked in the store is reused.
    fn layer_reused(&self, _diff_id: &Digest) {}
}

/// An [`ImportProgress`] that ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ImportProgress for NoProgress {}
