//! runbox's shared vocabulary: job specs and results, limits, digests, image
//! references and error codes. Pure data and validation; no I/O.

pub mod data;
pub mod digest;
pub mod error;
pub mod idmap;
pub mod job;
pub mod limits;
pub mod reference;
pub mod sandbox;

pub use data::Data;
pub use digest::{Digest, DigestError};
pub use error::{ErrorBody, ErrorCode};
pub use idmap::IdMap;
pub use job::{
    signal_name, InputFile, JobResult, JobSpec, JobStatus, NetworkPolicy, OutputFile, Timings,
    Usage,
};
pub use limits::{LimitError, LimitKind, Limits, LimitsPolicy, LimitsSpec};
pub use reference::{ImageRef, ReferenceError};
pub use sandbox::{CreateSandbox, ExecSpec, SandboxInfo};

/// Generates a random job or sandbox id: 16 lowercase hex characters.
pub fn new_id(random: u64) -> String {
    format!("{random:016x}")
}
