//! `execve` with argument and environment arrays built before the fork.

use std::ffi::{CStr, CString, NulError};
use std::io;

/// Argument and environment vectors in the C layout `execve` wants, built ahead so
/// the post-fork child can exec without allocating.
#[derive(Debug)]
pub struct ExecArgs {
    // Owns the bytes the pointer arrays point into. CString keeps its bytes on the
    // heap, so moving ExecArgs (or these Vecs) never moves what the pointers target.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers only point into `_strings`, which ExecArgs owns and never
// mutates; sending the whole struct to another thread keeps them valid.
unsafe impl Send for ExecArgs {}
// SAFETY: shared access only reads the owned, immutable strings.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    /// Fails if any argument or `KEY=VALUE` entry contains a NUL byte.
    pub fn new<A: AsRef<[u8]>, E: AsRef<[u8]>>(argv: &[A], env: &[E]) -> Result<Self, NulError> {
        let mut strings = Vec::with_capacity(argv.len() + env.len());
        for a in argv {
            strings.push(CString::new(a.as_ref())?);
        }
        for e in env {
            strings.push(CString::new(e.as_ref())?);
        }
        let mut ptrs = strings.iter().map(|s| s.as_ptr());
        let mut argv_p: Vec<_> = ptrs.by_ref().take(argv.len()).collect();
        argv_p.push(std::ptr::null());
        let mut envp: Vec<_> = ptrs.collect();
        envp.push(std::ptr::null());
        Ok(ExecArgs {
            _strings: strings,
            argv: argv_p,
            envp,
        })
    }

    /// Replaces the process image with `path`. Returns only on failure, with the
    /// error. Does not allocate.
    pub fn execve(&self, path: &CStr) -> io::Error {
        // SAFETY: `path` is a valid C string; `argv` and `envp` are null-terminated
        // arrays of pointers to C strings owned by `self`, alive for the call.
        unsafe { libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nul_bytes() {
        assert!(ExecArgs::new(&["a\0b"], &[] as &[&str]).is_err());
        assert!(ExecArgs::new(&["a"], &["K=\0"]).is_err());
    }

    #[test]
    fn arrays_are_null_terminated() {
        let e = ExecArgs::new(&["sh", "-c"], &["A=1"]).unwrap();
        assert_eq!(e.argv.len(), 3);
        assert!(e.argv[2].is_null());
        assert_eq!(e.envp.len(), 2);
        assert!(e.envp[1].is_null());
    }

    #[test]
    fn execve_of_missing_file_reports_enoent() {
        let e = ExecArgs::new(&["x"], &[] as &[&str]).unwrap();
        let err = e.execve(c"/nonexistent/runbox-test");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
