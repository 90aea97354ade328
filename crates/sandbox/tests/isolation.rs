//! SECURITY-CHECKLIST items 1-12 against real sandboxes: each test attacks one limit
//! or boundary from inside and asserts both the outcome reported and that the host
//! is unchanged.

mod common;

use std::net::TcpListener;
use std::sync::mpsc;

use common::*;
use runbox_core::{Data, InputFile, JobSpec, JobStatus, LimitKind, LimitsSpec};
use runbox_sandbox::{Backend, JobEvents, SandboxError};

fn hostile(args: &[&str]) -> JobSpec {
    let mut argv = vec!["hostile".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    JobSpec {
        image: "test".into(),
        argv: Some(argv),
        ..Default::default()
    }
}

fn with_limits(mut spec: JobSpec, limits: LimitsSpec) -> JobSpec {
    spec.limits = limits;
    spec
}

#[test]
fn fork_bomb_is_stopped_by_the_pids_limit_and_other_jobs_keep_running() {
    let env = Env::new();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let spec = with_limits(
                crate::sh(&format!("{NS_IDS} exec hostile forkbomb")),
                LimitsSpec {
                    pids: Some(16),
                    wall_time_ms: Some(2000),
                    ..Default::default()
                },
            );
            tx.send(env.run(spec)).unwrap();
        });
        // A concurrent job on the same backend completes normally meanwhile.
        let other = env.sh("echo alive");
        assert_eq!(
            (other.status, other.stdout.as_str()),
            (JobStatus::Ok, "alive\n")
        );
    });
    let r = rx.recv().unwrap();
    assert_eq!(r.status, JobStatus::PidsLimit, "{r:?}");
    assert!(r.limits_hit.contains(&LimitKind::Pids));
    let line = r.stdout.lines().nth(2).unwrap();
    let forked: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(forked < 16, "forked {forked} processes under a limit of 16");
    assert!(line.contains("EAGAIN"), "{}", r.stdout);
    assert_job_gone(&env, &r);
}

#[test]
fn memory_bomb_is_killed_in_its_own_cgroup() {
    let env = Env::new();
    let spec = with_limits(
        hostile(&["membomb"]),
        LimitsSpec {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
    );
    let r = env.run(spec);
    assert_eq!(r.status, JobStatus::MemoryLimit, "{r:?}");
    assert_eq!(r.signal_name.as_deref(), Some("SIGKILL"));
    assert!(
        r.usage.peak_memory_bytes >= 60 << 20 && r.usage.peak_memory_bytes <= 64 << 20,
        "{}",
        r.usage.peak_memory_bytes
    );
    // The worker (this process) is alive and the next job runs.
    assert_eq!(env.sh("echo ok").stdout, "ok\n");
}

#[test]
fn sleeping_forever_hits_the_wall_time_limit() {
    let env = Env::new();
    let r = env.run(with_limits(
        crate::sh("sleep 1000"),
        LimitsSpec {
            wall_time_ms: Some(300),
            ..Default::default()
        },
    ));
    assert_eq!(r.status, JobStatus::WallTimeLimit, "{r:?}");
    assert!(r.timings.run_ms >= 300.0);
    assert!(
        r.usage.cpu_time_ms < 100.0,
        "sleeping used {} ms of CPU",
        r.usage.cpu_time_ms
    );
}

#[test]
fn busy_loop_hits_the_cpu_time_limit() {
    let env = Env::new();
    let r = env.run(with_limits(
        hostile(&["busy"]),
        LimitsSpec {
            cpu_time_ms: Some(300),
            wall_time_ms: Some(10_000),
            ..Default::default()
        },
    ));
    assert_eq!(r.status, JobStatus::CpuTimeLimit, "{r:?}");
    assert!(r.usage.cpu_time_ms >= 300.0, "{}", r.usage.cpu_time_ms);
    assert!(r.timings.run_ms < 10_000.0);
}

#[test]
fn filling_the_disk_gets_enospc_inside_and_leaves_host_disk_alone() {
    let env = Env::new();
    let before = rustix::fs::statvfs(env.dir.path()).unwrap().f_bfree;
    let spec = with_limits(
        hostile(&["fill", "/tmp/big"]),
        LimitsSpec {
            tmpfs_bytes: Some(4 << 20),
            file_size_bytes: Some(1 << 30),
            ..Default::default()
        },
    );
    let r = env.run(spec);
    assert_eq!(r.status, JobStatus::Ok, "{r:?}");
    assert!(r.stdout.contains("then ENOSPC"), "{}", r.stdout);
    let wrote: u64 = r.stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(wrote <= 4 << 20);
    let after = rustix::fs::statvfs(env.dir.path()).unwrap().f_bfree;
    assert!(
        after + 256 >= before,
        "host free blocks went from {before} to {after}"
    );
}

#[test]
fn filling_inodes_gets_enospc_inside() {
    let env = Env::new();
    let r = env.run(with_limits(
        hostile(&["inodes", "/tmp"]),
        LimitsSpec {
            tmpfs_inodes: Some(300),
            ..Default::default()
        },
    ));
    assert!(r.stdout.contains("then ENOSPC"), "{r:?}");
    let created: u64 = r.stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(created < 300);
}

#[test]
fn writing_past_the_file_size_limit_fails_or_kills() {
    let env = Env::new();
    let lim = LimitsSpec {
        file_size_bytes: Some(1 << 20),
        ..Default::default()
    };
    let r = env.run(with_limits(hostile(&["fill", "/tmp/f"]), lim));
    assert!(r.stdout.contains("wrote 1048576 then EFBIG"), "{r:?}");
    let r = env.run(with_limits(hostile(&["fsize", "/tmp/f"]), lim));
    assert_eq!(r.status, JobStatus::FileSizeLimit, "{r:?}");
    assert_eq!(r.signal_name.as_deref(), Some("SIGXFSZ"));
}

#[test]
fn exhausting_file_descriptors_gets_emfile() {
    let env = Env::new();
    let r = env.run(with_limits(
        hostile(&["fdbomb"]),
        LimitsSpec {
            nofile: Some(64),
            ..Default::default()
        },
    ));
    assert_eq!(r.status, JobStatus::Ok, "{r:?}");
    assert!(r.stdout.contains("then EMFILE"), "{}", r.stdout);
    let opened: u32 = r.stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(opened <= 61, "opened {opened} with a limit of 64");
}

#[test]
fn flooding_stdout_is_cut_at_the_cap_and_counted() {
    let env = Env::new();
    let r = env.run(with_limits(
        hostile(&["flood", "5000000"]),
        LimitsSpec {
            output_bytes: Some(1000),
            ..Default::default()
        },
    ));
    assert_eq!(r.status, JobStatus::Ok, "{r:?}");
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout_truncated);
    assert_eq!(r.stdout_bytes, 5_000_000);
    assert_eq!(
        (r.stderr.as_str(), r.stderr_truncated),
        ("flood done\n", false)
    );
    assert!(r.limits_hit.contains(&LimitKind::Output));
}

#[test]
fn no_route_to_the_internet_metadata_or_host_loopback() {
    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let r = env.run(hostile(&["connect", "127.0.0.1", &port]));
    assert!(
        r.stdout.contains("ECONNREFUSED"),
        "host loopback reached? {}",
        r.stdout
    );
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection"
    );
    for ip in ["169.254.169.254", "1.1.1.1", "10.0.0.1"] {
        let r = env.run(hostile(&["connect", ip, "80"]));
        assert!(r.stdout.contains("ENETUNREACH"), "{ip}: {}", r.stdout);
    }
    // Loopback inside works: the sandbox can talk to itself.
    let r = env.run(hostile(&["loopback"]));
    assert_eq!(r.stdout, "loopback hi\n", "{r:?}");
}

/// Starts job B once job A reports it has planted its secrets.
struct OnReady(Option<mpsc::Sender<()>>);
impl JobEvents for OnReady {
    fn stdout(&mut self, chunk: &[u8]) {
        if chunk.windows(5).any(|w| w == b"ready") {
            if let Some(tx) = self.0.take() {
                tx.send(()).unwrap();
            }
        }
    }
}

#[test]
fn concurrent_jobs_cannot_see_each_others_files_env_or_processes() {
    let env = Env::new();
    std::env::set_var("RUNBOX_TEST_HOST_SECRET", "hunter2");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut spec = crate::sh("echo secret > /tmp/a-file; echo ready; exec sleep 30");
            spec.env.insert("A_SECRET".into(), "s3cret".into());
            spec.limits.wall_time_ms = Some(3000);
            env.backend
                .run(&env.plan(spec), &mut OnReady(Some(tx)))
                .unwrap()
        });
        rx.recv().unwrap();
        let b = env.sh("ls /tmp; echo ---; ps -o pid,comm; echo ---; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; env");
        assert_eq!(b.status, JobStatus::Ok, "{b:?}");
        assert!(!b.stdout.contains("a-file"), "{}", b.stdout);
        assert!(
            !b.stdout.contains("sleep"),
            "job A's process is visible: {}",
            b.stdout
        );
        assert!(
            !b.stdout.contains("s3cret") && !b.stdout.contains("hunter2"),
            "{}",
            b.stdout
        );
        let ps: Vec<&str> = b
            .stdout
            .split("---")
            .nth(1)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            ps.len(),
            4,
            "only init, the shell and ps itself (plus the header): {ps:?}"
        );
        assert!(
            ps[1].trim_start().starts_with("1 ") && ps[1].contains("init"),
            "pid 1 is the sandbox's init: {ps:?}"
        );
        assert_eq!(a.join().unwrap().status, JobStatus::WallTimeLimit);
    });
    std::env::remove_var("RUNBOX_TEST_HOST_SECRET");
}

#[test]
fn environment_holds_only_what_the_image_and_request_set() {
    let env = Env::new();
    std::env::set_var("RUNBOX_TEST_LEAK", "x");
    let r = env.sh("env | sort");
    let keys: Vec<&str> = r
        .stdout
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["HOME", "HOSTNAME", "PATH", "PWD", "SHLVL"],
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("HOME=/home/runner"));
    std::env::remove_var("RUNBOX_TEST_LEAK");
}

#[test]
fn no_controlling_terminal_and_no_tiocsti() {
    let env = Env::new();
    let r = env.run(hostile(&["tty"]));
    for fd in 0..3 {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("fd{fd} ")))
            .unwrap();
        assert!(line.contains("isatty=0"), "{line}");
        assert!(line.contains("tiocsti=EPERM"), "{line}");
    }
    assert!(
        r.stdout.contains("open_dev_tty ENOENT") || r.stdout.contains("open_dev_tty ENXIO"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("sid=2 pgid=2"),
        "not its own session leader: {}",
        r.stdout
    );
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} missing"))
        .split_once(':')
        .unwrap()
        .1
        .trim()
}

#[test]
fn proc_self_status_shows_seccomp_no_new_privs_and_no_capabilities() {
    let env = Env::new();
    for user in [None, Some("0")] {
        let mut spec = crate::sh("cat /proc/self/status; id");
        spec.user = user.map(str::to_owned);
        let r = env.run(spec);
        let s = &r.stdout;
        assert_eq!(status_field(s, "Seccomp:"), "2", "{s}");
        assert_eq!(status_field(s, "NoNewPrivs:"), "1");
        for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(
                status_field(s, cap),
                "0000000000000000",
                "{cap} for user {user:?}"
            );
        }
        let want = if user.is_some() {
            "uid=0(root)"
        } else {
            "uid=1000(runner)"
        };
        assert!(s.contains(want), "{s}");
    }
}

#[test]
fn every_namespace_differs_from_the_host() {
    let env = Env::new();
    let kinds = ["pid", "mnt", "net", "ipc", "uts", "user", "cgroup"];
    let script = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}"))
        .collect::<Vec<_>>()
        .join(";");
    let r = env.sh(&script);
    let inside: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(inside.len(), kinds.len(), "{r:?}");
    for (k, ns) in kinds.iter().zip(inside) {
        let host = std::fs::read_link(format!("/proc/self/ns/{k}")).unwrap();
        assert_ne!(
            ns,
            host.to_str().unwrap(),
            "{k} namespace is shared with the host"
        );
    }
    // And the uid map makes root inside an unprivileged id outside.
    let r = env.sh("cat /proc/self/uid_map");
    let cols: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(cols, ["0", &id_map().base.to_string(), "65536"]);
}

#[test]
fn forbidden_syscalls_are_refused_not_failing_open() {
    let env = Env::new();
    let r = env.run(hostile(&["syscalls"]));
    let results: std::collections::HashMap<&str, &str> =
        r.stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    for call in [
        "unshare_user",
        "unshare_net",
        "keyctl",
        "io_uring_setup",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "ptrace",
        "mount",
        "setns",
        "personality",
        "clone_newuser",
        "socket_vsock",
        "tiocsti",
    ] {
        assert_eq!(
            results.get(call).copied(),
            Some("EPERM"),
            "{call}: {}",
            r.stdout
        );
    }
    assert_eq!(
        results["clone3"], "ENOSYS",
        "clone3 must look absent so libc falls back to clone"
    );
    assert_eq!(
        results["x32_getpid"], "ENOSYS",
        "x32 system calls must not bypass the filter"
    );
    assert_eq!(results["getpid"], "OK");
    // The refusals come from the filter: outside a sandbox the same calls succeed.
    let host = std::process::Command::new(hostile_binary())
        .arg("syscalls")
        .output()
        .unwrap();
    let host = String::from_utf8(host.stdout).unwrap();
    for call in ["unshare_user", "keyctl"] {
        assert!(
            host.contains(&format!("{call} OK")),
            "{call} fails on the host too:\n{host}"
        );
    }
}

#[test]
fn inputs_never_follow_links_planted_in_the_image() {
    let env = Env::new();
    let sentinel = Sentinel::new();
    let target = sentinel.file.to_str().unwrap().to_owned();
    let img = env.image_with("planted", |l| {
        std::fs::create_dir_all(l.join("work")).unwrap();
        std::os::unix::fs::symlink(&target, l.join("work/abs-link")).unwrap();
        std::os::unix::fs::symlink("/etc", l.join("work/etc-dir")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../..", l.join("work/up")).unwrap();
    });
    let input = |path: &str| {
        let mut s = crate::sh("cat /etc/passwd | head -1");
        s.inputs = vec![InputFile {
            path: path.into(),
            content: Data::from("PLANTED\n"),
            executable: false,
        }];
        s
    };
    // A symlink as the file itself is refused.
    let e = env
        .try_run_with(input("abs-link"), img.clone())
        .unwrap_err();
    assert!(
        matches!(&e, SandboxError::Input { reason, .. } if reason.contains("symbolic link")),
        "{e}"
    );
    // A symlinked directory resolves inside the sandbox's root, never the host's.
    let r = env
        .try_run_with(input("etc-dir/passwd"), img.clone())
        .unwrap();
    assert_eq!(r.stdout, "PLANTED\n", "{r:?}");
    let r = env
        .try_run_with(
            input(&format!("up{}", sentinel.dir.path().join("new").display())),
            img,
        )
        .unwrap();
    assert_eq!(r.status, JobStatus::Ok);
    sentinel.assert_untouched();
    assert!(std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .starts_with("root:"));
}

#[test]
fn outputs_never_follow_links_planted_by_the_program() {
    let env = Env::new();
    let sentinel = Sentinel::new();
    let mut spec = crate::sh(&format!(
        "ln -s {s} abs; ln -s /etc/passwd rel; ln /etc/group hard; mkfifo fifo; mkdir -p d/e; echo ok > d/e/real; ln -s {s} d/link; ln -s / dirlink; echo fine > plain",
        s = sentinel.file.display()
    ));
    spec.user = Some("0".into()); // root inside may link any file
    spec.outputs = [
        "abs",
        "rel",
        "hard",
        "fifo",
        "d",
        "dirlink/etc/passwd",
        "plain",
        "missing",
    ]
    .map(String::from)
    .to_vec();
    let r = env.run(spec);
    let by: std::collections::HashMap<&str, &runbox_core::OutputFile> =
        r.outputs.iter().map(|o| (o.path.as_str(), o)).collect();
    for refused in ["abs", "rel", "dirlink/etc/passwd", "d/link"] {
        let o = by[refused];
        assert!(
            o.content.is_none() && o.error.as_deref().unwrap().contains("symbolic link"),
            "{refused}: {o:?}"
        );
    }
    assert!(
        by["hard"].error.as_deref().unwrap().contains("hard links"),
        "{:?}",
        by["hard"]
    );
    assert!(by["fifo"]
        .error
        .as_deref()
        .unwrap()
        .contains("not a regular file"));
    assert!(by["missing"]
        .error
        .as_deref()
        .unwrap()
        .contains("does not exist"));
    assert_eq!(by["plain"].content.as_ref().unwrap().0, b"fine\n");
    assert_eq!(by["d/e/real"].content.as_ref().unwrap().0, b"ok\n");
    sentinel.assert_untouched();
}

#[test]
fn output_files_are_capped_in_total() {
    let env = Env::new();
    let mut spec = crate::sh("head -c 3000 /dev/zero > a; head -c 3000 /dev/zero > b");
    spec.outputs = vec!["a".into(), "b".into()];
    spec.limits.output_files_bytes = Some(4000);
    let r = env.run(spec);
    assert_eq!(
        (
            r.outputs[0].size,
            r.outputs[0].truncated,
            r.outputs[0].content.as_ref().unwrap().len()
        ),
        (3000, false, 3000)
    );
    assert_eq!(
        (
            r.outputs[1].size,
            r.outputs[1].truncated,
            r.outputs[1].content.as_ref().unwrap().len()
        ),
        (3000, true, 1000)
    );
    assert!(r.limits_hit.contains(&LimitKind::OutputFiles));
}

#[test]
fn nothing_of_a_finished_job_remains_on_the_host() {
    let env = Env::new();
    let r = env.sh(&format!("{NS_IDS} sleep 100 & sleep 100 & echo spawned"));
    assert!(r.stdout.ends_with("spawned\n"));
    assert_job_gone(&env, &r);
}

#[test]
fn the_sandbox_init_shows_nothing_of_runbox_and_cannot_be_signalled() {
    let env = Env::new();
    std::env::set_var("RUNBOX_TEST_INIT_SECRET", "in-runbox-env");
    let mut spec = crate::sh("tr '\\0' ' ' < /proc/1/cmdline; echo \"[end]\"; cat /proc/1/environ; echo \"environ=$?\"; ls /proc/1/fd; echo \"fd=$?\"; kill -9 1; echo \"kill=$?\"; cat /proc/1/comm");
    spec.user = Some("0".into());
    let r = env.run(spec);
    assert!(
        r.stdout.starts_with("[end]\n") || r.stdout.trim_start().starts_with("[end]"),
        "init's cmdline is visible: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("environ=1") && r.stdout.contains("fd=1") && r.stdout.contains("kill=1"),
        "{r:?}"
    );
    assert!(r.stdout.ends_with("init\n"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("in-runbox-env") && !r.stdout.contains("isolation"),
        "{}",
        r.stdout
    );
    std::env::remove_var("RUNBOX_TEST_INIT_SECRET");
}

#[test]
fn sigpipe_has_its_default_action_in_the_program() {
    let env = Env::new();
    // `yes` dies of SIGPIPE once `head` exits; with SIGPIPE ignored it would spin on EPIPE.
    let r = env.sh("yes | head -n 2; echo \"${PIPESTATUS:-done}\"");
    assert_eq!(r.status, JobStatus::Ok);
    assert!(r.stdout.starts_with("y\ny\n"), "{r:?}");
    let r = env.run(JobSpec {
        image: "test".into(),
        argv: Some(vec!["cat".into(), "/proc/self/status".into()]),
        ..Default::default()
    });
    let line = r.stdout.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    assert_eq!(
        line, "SigIgn:\t0000000000000000",
        "the program inherits ignored signals"
    );
    let line = r.stdout.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    assert_eq!(
        line, "SigBlk:\t0000000000000000",
        "the program inherits blocked signals"
    );
}
