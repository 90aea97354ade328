//! Raw Linux system calls that have no safe wrapper in `rustix`, each behind a small
//! safe (or narrowly unsafe) function. This is the only crate in runbox allowed to
//! contain `unsafe`; every block carries a `// SAFETY:` comment.
//!
//! Several functions here run in a child process between `clone3` and `execve`, where
//! the parent may have had other threads: they never allocate, lock or panic.
#![allow(unsafe_code)]

pub mod exec;
pub mod fork;
pub mod net;
pub mod process;
