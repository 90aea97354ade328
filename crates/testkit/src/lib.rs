//! Test helpers shared by runbox's crates (not shipped): OCI images built from the
//! host's busybox ([`oci`]), and hostile tar streams, layouts and archives that
//! safe builders refuse to write ([`hostile`]), and a real OCI registry with
//! basic or token auth to push them to ([`registry`]).

pub mod hostile;
pub mod oci;
pub mod registry;
pub mod server;
