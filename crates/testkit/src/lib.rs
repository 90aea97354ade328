//! Test helpers shared by runbox's crates (not shipped): OCI images built from the
//! host's busybox ([`oci`]); hostile tar streams, layouts and archives that safe
//! builders refuse to write ([`hostile`]); a real OCI registry with basic or token
//! auth to push them to ([`registry`]); a throwaway PostgreSQL server with a fresh
//! database per test ([`postgres`]).

pub mod hostile;
pub mod oci;
pub mod postgres;
pub mod registry;
pub mod server;
