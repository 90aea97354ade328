//! The seccomp filter every sandboxed process runs under.
//!
//! A deny list in the spirit of Docker's default profile, tightened for untrusted
//! code: calls that reach kernel-global state or large attack surfaces (keyrings,
//! namespaces, mounts, BPF, perf, io_uring, userfaultfd, module loading, ptrace,
//! terminal injection) fail with EPERM. Most would fail anyway without capabilities;
//! the filter makes that hold even if a capability check has a bug.
//!
//! The BPF comes from `seccompiler` (Firecracker's compiler). Two guards it does not
//! emit are prepended by hand: x32 system calls (numbers with bit 30 set) would match
//! none of the rules and slip past a deny list, and `clone3` must fail with ENOSYS,
//! not EPERM, so libc falls back to `clone`, whose flags a filter can inspect.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

/// Errors building the filter (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter: {0}")]
pub struct SeccompError(String);

/// System calls refused unconditionally.
const DENIED: &[i64] = &[
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_mount_setattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_perf_event_open,
    libc::SYS_bpf,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_quotactl,
    libc::SYS_vhangup,
    libc::SYS_move_pages,
    libc::SYS_migrate_pages,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
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

/// Personalities allowed: Linux, its 32-bit-address variants, and the query value.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x0020000, 0x0020008, 0xffff_ffff];

/// Terminal ioctls that inject input or reach the console.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// Address families refused by `socket`: host vsock (not namespaced) and the kernel
/// crypto API (a history of bugs).
const AF_VSOCK: u64 = 40;
const AF_ALG: u64 = 38;

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond, SeccompError> {
    Cond::new(arg, len, op, value).map_err(|e| SeccompError(e.to_string()))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(|e| SeccompError(e.to_string()))
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
}

/// Builds the sandbox filter. Deterministic: the same program for every job, so the
/// caller builds it once.
pub fn sandbox_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED {
        rules.insert(nr, vec![]);
    }
    rules.insert(
        libc::SYS_clone,
        CLONE_NS_FLAGS
            .iter()
            .map(|&f| rule(vec![cond(0, Len::Qword, Op::MaskedEq(f), f)?]))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(
        libc::SYS_personality,
        vec![rule(
            PERSONALITIES
                .iter()
                .map(|&p| cond(0, Len::Dword, Op::Ne, p))
                .collect::<Result<_, _>>()?,
        )?],
    );
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCLINUX)?])?,
        ],
    );
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![cond(0, Len::Dword, Op::Eq, AF_VSOCK)?])?,
            rule(vec![cond(0, Len::Dword, Op::Eq, AF_ALG)?])?,
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch(),
    )
    .map_err(|e| SeccompError(e.to_string()))?;
    let mut prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))?;
    insert_guards(&mut prog)?;
    Ok(prog)
}

// Classic BPF opcodes (linux/bpf_common.h).
// BPF_LD | BPF_W | BPF_ABS (the first two are 0).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_DATA_NR: u32 = 0;

/// Inserts, right after seccompiler's 3-instruction architecture check:
///
/// ```text
/// 3: ld  [nr]
/// 4: jge #0x40000000   jt 6  jf 5    ; x32 ABI numbers
/// 5: jeq #clone3       jt 6  jf 7
/// 6: ret ERRNO(ENOSYS)
/// 7: (seccompiler's rules, which load nr themselves)
/// ```
///
/// The arch check's only jump lands on index 3, which now starts the guard, and every
/// later jump is relative within seccompiler's part, so no offset changes.
fn insert_guards(prog: &mut BpfProgram) -> Result<(), SeccompError> {
    let arch_check_len = 3;
    if prog.len() < arch_check_len || prog[0].code != BPF_LD_W_ABS || prog[1].code != BPF_JMP_JEQ_K
    {
        return Err(SeccompError("unexpected seccompiler prologue".into()));
    }
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let guard = [
        ins(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        ins(BPF_JMP_JGE_K, 1, 0, 0x4000_0000),
        ins(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        ins(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    prog.splice(arch_check_len..arch_check_len, guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_builds_with_guards_after_the_arch_check() {
        let prog = sandbox_filter().unwrap();
        assert!(prog.len() < 4096);
        assert_eq!(prog[3].code, BPF_LD_W_ABS);
        assert_eq!(prog[5].k, libc::SYS_clone3 as u32);
        assert_eq!(prog[6].k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    }

    #[test]
    fn filter_is_deterministic() {
        let a = sandbox_filter().unwrap();
        let b = sandbox_filter().unwrap();
        assert_eq!(a.len(), b.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| (x.code, x.jt, x.jf, x.k) == (y.code, y.jt, y.jf, y.k)));
    }
}
