//! Live sandboxes: state that persists between execs, daemons that keep running
//! (or not), per-exec limits, files in and out by the post-run rules, freezing the
//! writable layer, and cleanup. Real sandboxes, as root.

mod common;

use std::io::Read;
use std::os::fd::AsFd;

use common::{id_map, sh, Env};
use runbox_core::{JobStatus, LimitKind, Limits, LimitsSpec};
use runbox_sandbox::plan::PlannedInput;
use runbox_sandbox::{Backend, LivePlan, NoEvents, Sandbox, SandboxError};
use rustix::fs::{self as rfs, Mode, OFlags};

fn live(env: &Env, id: &str) -> Box<dyn Sandbox> {
    env.backend
        .create(&LivePlan {
            id: id.into(),
            image: env.image.clone(),
            hostname: format!("host-{id}"),
            limits: Limits::default(),
        })
        .unwrap()
}

fn exec(env: &Env, sbx: &dyn Sandbox, script: &str) -> runbox_core::JobResult {
    sbx.exec(&env.plan(sh(script)), false, &mut NoEvents)
        .unwrap()
}

/// The job cgroups runbox has under its parent in the memory hierarchy.
fn cgroups_named(part: &str) -> Vec<String> {
    let parent = std::path::Path::new("/sys/fs/cgroup/memory/runbox");
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

#[test]
fn files_persist_between_execs_and_each_exec_has_its_own_result() {
    let env = Env::new();
    let sbx = live(&env, "persist");
    let a = exec(&env, &*sbx, "echo state > /tmp/f; echo one");
    assert_eq!(a.status, JobStatus::Ok, "{a:?}");
    assert_eq!(a.stdout, "one\n");
    let b = exec(&env, &*sbx, "cat /tmp/f; hostname; exit 3");
    assert_eq!(b.stdout, "state\nhost-persist\n");
    assert_eq!(b.exit_code, Some(3));
    assert_ne!(a.job_id, b.job_id, "each exec is its own job");
    // Another sandbox of the same image does not see it.
    let other = live(&env, "persist-other");
    let c = exec(&env, &*other, "cat /tmp/f");
    assert_ne!(c.exit_code, Some(0));
}

#[test]
fn daemons_live_on_only_when_the_exec_keeps_them() {
    let env = Env::new();
    let sbx = live(&env, "daemons");
    let start = |keep: bool, name: &str| {
        let script = format!("sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/{name}.pid");
        let r = sbx
            .exec(&env.plan(sh(&script)), keep, &mut NoEvents)
            .unwrap();
        assert_eq!(r.status, JobStatus::Ok, "{r:?}");
    };
    start(true, "kept");
    start(false, "killed");
    let kept = exec(&env, &*sbx, "kill -0 $(cat /tmp/kept.pid) && echo alive");
    assert_eq!(kept.stdout, "alive\n", "{kept:?}");
    let killed = exec(
        &env,
        &*sbx,
        "kill -0 $(cat /tmp/killed.pid) 2>/dev/null || echo gone",
    );
    assert_eq!(killed.stdout, "gone\n", "{killed:?}");
    // The kept daemon is a process of the sandbox's pid namespace: its init (pid 1)
    // adopted it.
    let ppid = exec(
        &env,
        &*sbx,
        "awk '{print $4}' /proc/$(cat /tmp/kept.pid)/stat",
    );
    assert_eq!(ppid.stdout, "1\n");
}

#[test]
fn an_exec_over_its_limit_is_killed_and_the_sandbox_lives_on() {
    let env = Env::new();
    let sbx = live(&env, "limits");
    let mut spec = sh("echo before; sleep 30");
    spec.limits = LimitsSpec {
        wall_time_ms: Some(300),
        ..Default::default()
    };
    let r = sbx.exec(&env.plan(spec), false, &mut NoEvents).unwrap();
    assert_eq!(r.status, JobStatus::WallTimeLimit, "{r:?}");
    assert!(r.limits_hit.contains(&LimitKind::WallTime), "{r:?}");
    assert_eq!(r.stdout, "before\n");
    assert!(sbx.is_alive());
    let after = exec(&env, &*sbx, "echo after");
    assert_eq!(after.stdout, "after\n");
}

#[test]
fn execs_are_isolated_like_jobs() {
    let env = Env::new();
    let sbx = live(&env, "isolated");
    // In the sandbox's pid namespace, not pid 1 (init is), with no capability,
    // under seccomp, as the default unprivileged user.
    let r = exec(
        &env,
        &*sbx,
        "echo pid=$$; id -u; grep -E '^(CapEff|Seccomp|NoNewPrivs)' /proc/self/status; ls /proc | grep -c '^[0-9]'",
    );
    let out = r.stdout;
    assert!(!out.contains("pid=1\n"), "{out}");
    assert!(out.contains("\n1000\n"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let procs: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(procs <= 4, "the sandbox sees {procs} processes: {out}");
    // Even root inside cannot read init's memory or environment (init is not
    // dumpable and belongs to the host).
    let mut spec = sh("cat /proc/1/environ; echo rc=$?; cat /proc/1/cmdline | tr '\\0' ' '");
    spec.user = Some("0".into());
    let r = sbx.exec(&env.plan(spec), false, &mut NoEvents).unwrap();
    assert!(r.stdout.contains("rc=1"), "{r:?}");
    assert!(
        !r.stdout.contains("cargo") && !r.stdout.contains("live-"),
        "{r:?}"
    );
}

#[test]
fn files_go_in_and_out_without_following_planted_links() {
    let env = Env::new();
    let sbx = live(&env, "files");
    let put = |path: &str, content: &[u8]| {
        sbx.put_file(
            &PlannedInput {
                path: path.into(),
                content: content.to_vec(),
                mode: 0o644,
            },
            None,
        )
    };
    put("/work/in/data.txt", b"hello").unwrap();
    let r = exec(
        &env,
        &*sbx,
        "cat /work/in/data.txt; echo; stat -c %u /work/in/data.txt",
    );
    assert_eq!(r.stdout, "hello\n1000\n");

    let got = sbx.get_file("/work/in/data.txt", 1 << 20);
    assert_eq!(got[0].content.as_ref().unwrap().0, b"hello");
    let before = std::fs::read("/etc/hostname").unwrap_or_default();
    let r = exec(
        &env,
        &*sbx,
        "ln -s /etc/hostname /work/link; ln -s /etc /work/dir; ln /work/in/data.txt /work/hard",
    );
    assert_eq!(r.status, JobStatus::Ok, "{r:?}");
    let e = put("/work/link", b"pwned").unwrap_err();
    assert!(matches!(e, SandboxError::Input { .. }), "{e}");
    let e = put("/work/dir/hostname", b"pwned").unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = put("/work/hard", b"pwned").unwrap_err();
    assert!(e.to_string().contains("hard links"), "{e}");
    assert_eq!(std::fs::read("/etc/hostname").unwrap_or_default(), before);

    let got = sbx.get_file("/work/link", 1 << 20);
    assert!(
        got[0].content.is_none() && got[0].error.is_some(),
        "{got:?}"
    );
}

#[test]
fn freezing_ends_every_process_and_hands_over_the_writable_layer() {
    let env = Env::new();
    let sbx = live(&env, "freeze");
    let mut spec = sh("mkdir -p /srv/db && echo rows > /srv/db/data && rm /bin/ls; sleep 1000 </dev/null >/dev/null 2>&1 &");
    spec.user = Some("0".into());
    let r = sbx.exec(&env.plan(spec), true, &mut NoEvents).unwrap();
    assert_eq!(r.status, JobStatus::Ok, "{r:?}");
    assert_eq!(
        cgroups_named(".freeze").len(),
        1,
        "only the sandbox's own cgroup"
    );
    let pids = sandbox_pids("freeze");
    assert_eq!(pids.len(), 2, "init and the daemon: {pids:?}");
    let frozen = sbx.freeze().unwrap();
    assert_eq!(frozen.id_map, id_map());
    // Nothing of the sandbox runs any more, and its cgroups are gone.
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(cgroups_named(".freeze").is_empty());
    // The layer holds exactly the sandbox's changes, readable without following links.
    let fd = rfs::openat(
        frozen.dir.as_fd(),
        "srv/db/data",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let mut s = String::new();
    std::fs::File::from(fd).read_to_string(&mut s).unwrap();
    assert_eq!(s, "rows\n");
    let st = rfs::statat(frozen.dir.as_fd(), "bin/ls", rfs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert_eq!(
        rfs::FileType::from_raw_mode(st.st_mode),
        rfs::FileType::CharacterDevice,
        "a deleted file is an overlay whiteout"
    );
}

#[test]
fn dropping_a_sandbox_leaves_nothing_behind() {
    let env = Env::new();
    let pids;
    {
        let sbx = live(&env, "dropme");
        let r = sbx
            .exec(
                &env.plan(sh("sleep 1000 </dev/null >/dev/null 2>&1 &")),
                true,
                &mut NoEvents,
            )
            .unwrap();
        assert_eq!(r.status, JobStatus::Ok);
        pids = sandbox_pids("dropme");
        assert_eq!(pids.len(), 2, "init and the daemon: {pids:?}");
    }
    assert!(cgroups_named(".dropme").is_empty());
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    let mounts = common::host_mounts();
    assert!(mounts.iter().all(|m| !m.contains("runbox")), "{mounts:?}");
}

#[test]
fn concurrent_execs_in_one_sandbox() {
    let env = Env::new();
    let sbx = live(&env, "concurrent");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (env, sbx) = (&env, &*sbx);
                s.spawn(move || exec(env, sbx, &format!("echo {i} > /tmp/{i}; cat /tmp/{i}")))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap().stdout, format!("{i}\n"));
        }
    });
}

#[test]
fn a_dead_sandbox_says_so() {
    let env = Env::new();
    let sbx = live(&env, "dead");
    // Root inside cannot kill init (pid 1 of its namespace ignores signals it has
    // no handler for); the OOM killer or runbox can. Simulate with the host's kill.
    let r = exec(&env, &*sbx, "kill -9 1; echo $?");
    assert!(sbx.is_alive(), "{r:?}");
    let init = rustix::process::Pid::from_raw(find_init("dead")).unwrap();
    let pidfd = rustix::process::pidfd_open(init, rustix::process::PidfdFlags::empty()).unwrap();
    rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL).unwrap();
    // A pidfd turns readable once its process has exited.
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let ten_s = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&ten_s)).unwrap(), 1);
    assert!(!sbx.is_alive());
    let e = sbx
        .exec(&env.plan(sh("true")), false, &mut NoEvents)
        .unwrap_err();
    assert!(matches!(e, SandboxError::Ended { .. }), "{e}");
}

/// The host pid of a live sandbox's init.
fn find_init(id: &str) -> i32 {
    sandbox_pids(id)[0]
}

/// The host pids in a live sandbox's own cgroup (init first: the lowest).
fn sandbox_pids(id: &str) -> Vec<i32> {
    let name = cgroups_named(&format!(".{id}"))
        .into_iter()
        .find(|n| n.ends_with(&format!(".{id}")))
        .unwrap();
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory/runbox/{name}/cgroup.procs"))
            .unwrap();
    let mut pids: Vec<i32> = procs.lines().map(|l| l.trim().parse().unwrap()).collect();
    pids.sort();
    pids
}

/// A sandbox made by a thread that then ends (a server's request thread) lives
/// on for the threads that exec into it later: the kernel's parent-death signal
/// follows the creating thread, so the init must not rely on it.
#[test]
fn a_sandbox_outlives_the_thread_that_created_it() {
    let env = Env::new();
    let sbx = std::thread::scope(|s| s.spawn(|| live(&env, "orphaned")).join().unwrap());
    let r = std::thread::scope(|s| {
        s.spawn(|| exec(&env, &*sbx, "echo still here"))
            .join()
            .unwrap()
    });
    assert_eq!(r.stdout, "still here\n", "{r:?}");
    assert!(sbx.is_alive());
    let pids = sandbox_pids("orphaned");
    drop(sbx);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
