//! The seccomp filter every sandboxed process runs under.
//!
//! A deny list in the spirit of Docker's default profile, tightened for untrusted
//! code: calls that reach kernel-global state or large attack surfaces (keyrings,
//! namespaces, mounts, BPF, perf, io_uring, userfaultfd, module loading, ptrace,
//! terminal injection, host vsock) fail with EPERM. Most would fail anyway without
//! capabilities; the filter makes that hold even if a capability check has a bug.
//!
//! The BPF comes from libseccomp (the library runc and Docker use), which also
//! refuses other architectures' and x32 system calls (here with ENOSYS), and lays
//! the rules out compactly: installing a filter costs kernel time in proportion to
//! its length (measured here: ~2.8 µs per instruction), and libseccomp's program for
//! these rules is about a quarter of the length of a linear chain. `clone3` fails
//! with ENOSYS, not EPERM, so libc falls back to `clone`, whose flags a filter can
//! inspect. The program is built once per process and installed by each sandbox.

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

/// Errors building the filter (a bug or a missing libseccomp, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter: {0}")]
pub struct SeccompError(String);

/// System calls refused unconditionally.
const DENIED: &[&str] = &[
    "add_key",
    "request_key",
    "keyctl",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "lookup_dcookie",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "quotactl",
    "vhangup",
    "move_pages",
    "migrate_pages",
    // x86 only; libseccomp skips names the architecture lacks.
    "iopl",
    "ioperm",
    "modify_ldt",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
];

/// Namespace flags that `clone` may not carry.
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Personality bits refused: they switch off protections of the program's own
/// memory (ASLR, non-executable data, a mappable page zero, the modern mmap
/// layout). One rule per bit: libseccomp allows one comparison per argument in a
/// rule, so "not one of the allowed values" (Docker's allow-list form) cannot be
/// said in a deny list. The query value 0xffffffff has every bit set and is
/// refused too.
const PERSONALITY_BITS: &[u64] = &[
    0x0040000, // ADDR_NO_RANDOMIZE
    0x0100000, // MMAP_PAGE_ZERO
    0x0200000, // ADDR_COMPAT_LAYOUT
    0x0400000, // READ_IMPLIES_EXEC
];

/// Terminal ioctls that inject input or reach the console (compared on the low 32
/// bits, which is all the kernel reads of the command).
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// Address families refused by `socket`: host vsock (not namespaced) and the kernel
/// crypto API (a history of bugs).
const AF_VSOCK: u64 = 40;
const AF_ALG: u64 = 38;

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

/// Builds the sandbox filter as a BPF program, ready for `SECCOMP_SET_MODE_FILTER`.
pub fn sandbox_filter() -> Result<Vec<libc::sock_filter>, SeccompError> {
    let eperm = ScmpAction::Errno(libc::EPERM);
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(err)?;
    ctx.set_act_badarch(ScmpAction::Errno(libc::ENOSYS))
        .map_err(err)?;
    for name in DENIED {
        match ScmpSyscall::from_name(name) {
            Ok(nr) => {
                ctx.add_rule(eperm, nr).map_err(err)?;
            }
            Err(_) => tracing::debug!(syscall = name, "not on this architecture"),
        }
    }
    let sys = |n: &str| ScmpSyscall::from_name(n).map_err(err);
    ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), sys("clone3")?)
        .map_err(err)?;
    for &flag in CLONE_NS_FLAGS {
        let c = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(flag), flag);
        ctx.add_rule_conditional(eperm, sys("clone")?, &[c])
            .map_err(err)?;
    }
    for &bit in PERSONALITY_BITS {
        let c = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(bit), bit);
        ctx.add_rule_conditional(eperm, sys("personality")?, &[c])
            .map_err(err)?;
    }
    for cmd in [TIOCSTI, TIOCLINUX] {
        let c = ScmpArgCompare::new(1, ScmpCompareOp::MaskedEqual(0xffff_ffff), cmd);
        ctx.add_rule_conditional(eperm, sys("ioctl")?, &[c])
            .map_err(err)?;
    }
    for family in [AF_VSOCK, AF_ALG] {
        let c = ScmpArgCompare::new(0, ScmpCompareOp::Equal, family);
        ctx.add_rule_conditional(eperm, sys("socket")?, &[c])
            .map_err(err)?;
    }

    // libseccomp 2.5 exports to a descriptor only.
    let mem =
        rustix::fs::memfd_create("runbox-seccomp", rustix::fs::MemfdFlags::CLOEXEC).map_err(err)?;
    ctx.export_bpf(&mem).map_err(err)?;
    let mut file = std::fs::File::from(mem);
    use std::io::{Read, Seek};
    file.rewind().map_err(err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 || bytes.len() / size > 4096 {
        return Err(SeccompError(format!(
            "libseccomp exported {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_compact_and_deterministic() {
        let a = sandbox_filter().unwrap();
        let b = sandbox_filter().unwrap();
        assert!(
            a.len() < 200,
            "{} instructions: install cost grows with length",
            a.len()
        );
        assert_eq!(a.len(), b.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| (x.code, x.jt, x.jf, x.k) == (y.code, y.jt, y.jf, y.k)));
    }
}
