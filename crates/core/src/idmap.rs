//! The uid/gid range sandboxes run in.
//!
//! Every sandbox has its own user namespace mapping ids `0..IdMap::SIZE` inside to
//! `base..base + SIZE` on the host, so root inside is an unprivileged host id. Image
//! layers are unpacked with their owners shifted by `base`, so files keep their
//! original owners as seen from inside.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdMap {
    /// Host id of uid/gid 0 inside sandboxes.
    pub base: u32,
}

impl IdMap {
    /// Ids mapped per sandbox (inside ids 0..=65535).
    pub const SIZE: u32 = 65536;
    /// Far above any ordinary account or the usual /etc/subuid ranges.
    pub const DEFAULT_BASE: u32 = 1_000_000_000;
    /// Inside id that stands for ids outside the mapped range (`nobody`).
    pub const OVERFLOW_ID: u32 = 65534;

    /// Host id for an inside id; ids outside the range become `nobody`.
    pub fn to_host(&self, inside: u32) -> u32 {
        self.base
            + if inside < Self::SIZE {
                inside
            } else {
                Self::OVERFLOW_ID
            }
    }
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            base: Self::DEFAULT_BASE,
        }
    }
}
