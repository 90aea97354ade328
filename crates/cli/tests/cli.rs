//! `runbox` end to end: the real binary, real images, real sandboxes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::*;
use runbox_image::ImageConfig;

#[test]
fn import_list_and_remove_an_image() {
    let rb = Runbox::new();
    let layout = runbox_testkit::oci::busybox_image(rb.dir.path());
    let out = rb.run(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "bb:1",
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report = json(&out);
    assert_eq!(report["already_present"], false);
    let digest = report["image"]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let again = rb.run(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "bb:1",
    ]);
    assert!(
        text(&again.stdout).contains("already present"),
        "{}",
        text(&again.stdout)
    );

    let ls = rb.run(&["image", "ls"]);
    let table = text(&ls.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("bb:1"))
        .expect("row for bb:1");
    assert!(
        row.contains(&report["image"]["config_digest"].as_str().unwrap()[7..19]),
        "{row}"
    );
    assert!(row.contains("MiB") && row.contains("linux/amd64"), "{row}");
    let ls: serde_json::Value = json(&rb.run(&["image", "ls", "--json"]));
    assert_eq!(ls[0]["manifest_digest"], digest.as_str());
    assert_eq!(ls[0]["layers"].as_array().unwrap().len(), 1);

    let rm = rb.run(&["image", "rm", "bb:1"]);
    assert_eq!(code(&rm), 0, "{}", text(&rm.stderr));
    assert!(text(&rm.stdout).contains("deleted"), "{}", text(&rm.stdout));
    assert_eq!(
        json(&rb.run(&["image", "ls", "--json"])),
        serde_json::json!([])
    );
    let layers: Vec<_> = std::fs::read_dir(rb.data().join("layers"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "layers left after rm: {layers:?}");
}

#[test]
fn imports_docker_save_and_oci_archive_tarballs() {
    let rb = Runbox::new();
    let layout = runbox_testkit::oci::busybox_image(rb.dir.path());
    let archive =
        runbox_testkit::hostile::oci_archive(&layout, &rb.dir.path().join("bb.oci.tar.gz"), true);
    let out = rb.run(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "from-archive",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = rb.run(&["run", "from-archive", "--", "echo", "archive ok"]);
    assert_eq!(text(&out.stdout), "archive ok\n", "{}", text(&out.stderr));
}

#[test]
fn run_mirrors_output_and_exit_code() {
    let rb = Runbox::new().with_busybox();
    let out = rb.run(&[
        "run",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(code(&out), 42);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
}

#[test]
fn run_json_prints_one_job_result() {
    let rb = Runbox::new().with_busybox();
    let out = rb.run(&[
        "run",
        "--json",
        "busybox",
        "--",
        "sh",
        "-c",
        "printf hi; exit 3",
    ]);
    assert_eq!(code(&out), 3);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "one JSON object on one line"
    );
    let r = json(&out);
    assert_eq!(r["status"], "exit_nonzero");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "hi");
    assert_eq!(r["stdout_bytes"], 2);
    assert_eq!(r["stdout_truncated"], false);
    for phase in ["setup_ms", "run_ms", "teardown_ms", "total_ms"] {
        assert!(r["timings"][phase].as_f64().unwrap() > 0.0, "{phase}");
    }
    assert!(r["usage"]["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["limits"]["memory_bytes"], 512 << 20);
}

#[test]
fn stdin_env_workdir_and_user_are_passed() {
    let rb = Runbox::new().with_busybox();
    let mut child = rb
        .cmd(&[
            "run",
            "-e",
            "GREETING=hi",
            "-w",
            "/srv/app",
            "-u",
            "0",
            "busybox",
            "--",
            "sh",
            "-c",
            "read x; echo \"$GREETING $x $(pwd) $(id -u)\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"there\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "hi there /srv/app 0\n");
}

#[test]
fn input_files_and_output_files_travel_both_ways() {
    let rb = Runbox::new().with_busybox();
    let host_in = rb.dir.path().join("data.txt");
    std::fs::write(&host_in, "from host\n").unwrap();
    let outdir = rb.dir.path().join("out");
    let in_arg = format!("in/data.txt=@{}", host_in.display());
    let out = rb.run(&[
        "run",
        "-i",
        &in_arg,
        "-i",
        "run.sh:x=#!/bin/sh\ntr a-z A-Z < in/data.txt > result.txt; mkdir -p d; echo x > d/y",
        "-o",
        "result.txt",
        "-o",
        "d",
        "--output-dir",
        outdir.to_str().unwrap(),
        "busybox",
        "--",
        "./run.sh",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(outdir.join("result.txt")).unwrap(),
        "FROM HOST\n"
    );
    assert_eq!(std::fs::read_to_string(outdir.join("d/y")).unwrap(), "x\n");
}

#[test]
fn limits_are_reported_and_exit_code_shows_the_kill() {
    let rb = Runbox::new().with_busybox();
    let out = rb.run(&[
        "run",
        "--wall-time",
        "300ms",
        "busybox",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(code(&out), 137);
    assert!(
        text(&out.stderr).contains("wall time limit of 300 ms reached"),
        "{}",
        text(&out.stderr)
    );
    let out = rb.run(&[
        "run",
        "--json",
        "--pids",
        "8",
        "--wall-time",
        "2s",
        "busybox",
        "--",
        "sh",
        "-c",
        "f(){ f|f& }; f; sleep 10",
    ]);
    assert_eq!(json(&out)["status"], "pids_limit", "{}", text(&out.stdout));
    let out = rb.run(&[
        "run",
        "--output-limit",
        "5",
        "busybox",
        "--",
        "echo",
        "0123456789",
    ]);
    assert_eq!(text(&out.stdout), "01234");
    assert!(
        text(&out.stderr).contains("stdout truncated"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn image_config_is_honoured_and_hostile_values_refused() {
    let rb = Runbox::new();
    let base = runbox_testkit::oci::default_busybox_config();
    rb.import_with_config(
        "tool",
        ImageConfig {
            entrypoint: Some(vec!["/bin/echo".into(), "entry".into()]),
            cmd: Some(vec!["default-arg".into()]),
            working_dir: Some("/opt/tool".into()),
            user: Some("runner".into()),
            env: vec!["PATH=/bin".into(), "TOOL=1".into()],
            ..base.clone()
        },
    );
    assert_eq!(
        text(&rb.run(&["run", "tool"]).stdout),
        "entry default-arg\n"
    );
    assert_eq!(
        text(&rb.run(&["run", "tool", "--", "mine"]).stdout),
        "entry mine\n"
    );
    let out = rb.run(&[
        "run",
        "--entrypoint",
        "sh",
        "tool",
        "--",
        "-c",
        "echo $TOOL $(pwd) $(id -un)",
    ]);
    assert_eq!(
        text(&out.stdout),
        "1 /opt/tool runner\n",
        "{}",
        text(&out.stderr)
    );

    rb.import_with_config(
        "evil",
        ImageConfig {
            working_dir: Some("/proc/self/fd/7".into()),
            ..base.clone()
        },
    );
    let out = rb.run(&["run", "evil", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("WorkingDir") && text(&out.stderr).contains("--workdir"),
        "{}",
        text(&out.stderr)
    );
    let out = rb.run(&["run", "--workdir", "/tmp", "evil", "--", "pwd"]);
    assert_eq!(text(&out.stdout), "/tmp\n", "an override neutralizes it");

    rb.import_with_config(
        "evil-user",
        ImageConfig {
            user: Some("0:99999999".into()),
            ..base
        },
    );
    let out = rb.run(&["run", "--json", "evil-user", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert_eq!(json(&out)["error"]["code"], "image_invalid");
}

#[test]
fn bad_input_gets_a_specific_error_its_own_exit_code_and_changes_nothing() {
    let rb = Runbox::new().with_busybox();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["run", "nosuch"], 125, "image_not_found"),
        (
            &["run", "--memory", "lots", "busybox"],
            125,
            "invalid_argument",
        ),
        (
            &["run", "--memory", "9999t", "busybox", "--", "true"],
            125,
            "invalid_limit",
        ),
        (
            &["run", "--pids", "0", "busybox", "--", "true"],
            125,
            "invalid_limit",
        ),
        (
            &["run", "-i", "x=@/nonexistent/file", "busybox", "--", "true"],
            125,
            "input_unreadable",
        ),
        (
            &["run", "-i", "../escape=x", "busybox", "--", "true"],
            125,
            "invalid_path",
        ),
        (
            &["run", "-o", "/proc/self/environ", "busybox", "--", "true"],
            125,
            "invalid_path",
        ),
        (&["run", "-e", "A=B=C", "busybox", "--", "true"], 0, ""),
        (
            &["run", "busybox", "--", "no-such-command"],
            127,
            "command_not_found",
        ),
        (
            &["run", "-i", "f=data", "busybox", "--", "./f"],
            126,
            "command_not_executable",
        ),
        (
            &["image", "import", "/nonexistent"],
            125,
            "input_unreadable",
        ),
        (&["image", "rm", "nosuch"], 125, "image_not_found"),
    ];
    // --output without --output-dir is an error unless --json carries the files.
    let out = rb.run(&["run", "-o", "x", "busybox", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("--output-dir"),
        "{}",
        text(&out.stderr)
    );
    for (args, want_code, want_error) in cases {
        let images = rb.images_json();
        let mut with_json = args.to_vec();
        with_json.insert(if args[0] == "image" { 2 } else { 1 }, "--json");
        let out = unchanged(&rb.data().join("layers"), || rb.run(&with_json));
        assert_eq!(code(&out), *want_code, "{args:?}: {}", text(&out.stderr));
        if !want_error.is_empty() {
            assert_eq!(json(&out)["error"]["code"], *want_error, "{args:?}");
            // Without --json the same error is a sentence on stderr.
            let plain = rb.run(args);
            assert!(
                text(&plain.stderr).contains("error"),
                "{args:?}: {}",
                text(&plain.stderr)
            );
        }
        assert_eq!(rb.images_json(), images, "{args:?} changed the image list");
    }
}

#[test]
fn hostile_image_tarballs_are_rejected_and_leave_the_store_unchanged() {
    use runbox_testkit::hostile::{docker_save, TarBuilder};
    let rb = Runbox::new().with_busybox();
    let mut escape = TarBuilder::new();
    escape.file("../../escape.txt", b"pwned");
    let evil = docker_save(
        &rb.dir.path().join("evil.tar"),
        &[escape.finish()],
        &runbox_testkit::oci::default_busybox_config(),
        &["evil:latest"],
    );
    let before = rb.images_json();
    let out = unchanged(&rb.data(), || {
        rb.run(&["image", "import", "--json", evil.to_str().unwrap()])
    });
    assert_eq!(code(&out), 125);
    assert_eq!(json(&out)["error"]["code"], "image_invalid");
    assert!(
        json(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains(".."),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(rb.images_json(), before);
    assert!(!rb.dir.path().join("escape.txt").exists() && !rb.data().join("escape.txt").exists());
}

#[test]
fn a_crashed_runbox_leaves_nothing_a_later_start_does_not_clean() {
    let rb = Runbox::new().with_busybox();
    let mut child = rb
        .cmd(&[
            "run",
            "--wall-time",
            "60s",
            "busybox",
            "--",
            "sh",
            "-c",
            "readlink /proc/self/ns/pid; echo started; exec sleep 60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pidns = lines.next().unwrap().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    let runbox_pid = child.id();
    let cgroup_prefix = format!("{runbox_pid}.");
    let sandbox_procs = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/ns/pid"))
                    .is_ok_and(|l| l.to_str() == Some(pidns.as_str()))
            })
            // A zombie has ended; reaping it is its new parent's (the host init's) job.
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
            })
            .collect()
    };
    let procs = sandbox_procs();
    assert!(!procs.is_empty(), "the sandbox should be running");
    // Watch the sandbox's processes through pidfds, then kill runbox outright.
    let pidfds: Vec<_> = procs
        .iter()
        .filter_map(|&p| {
            rustix::process::pidfd_open(
                rustix::process::Pid::from_raw(p).unwrap(),
                rustix::process::PidfdFlags::empty(),
            )
            .ok()
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    for fd in &pidfds {
        let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let n = rustix::event::poll(
            &mut pfd,
            Some(&rustix::event::Timespec {
                tv_sec: 10,
                tv_nsec: 0,
            }),
        )
        .unwrap();
        assert_eq!(
            n, 1,
            "a sandbox process outlived the runbox that started it"
        );
    }
    assert!(sandbox_procs().is_empty());
    // Its cgroup is the one thing left; the next runbox start sweeps it. Several
    // starting at once all find it, one removes it, and none may fail for that.
    let starts: Vec<_> = (0..4)
        .map(|_| {
            rb.cmd(&["run", "busybox", "--", "true"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for s in starts {
        let out = s.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    for ctrl in ["memory", "pids", "cpu", "cpuacct"] {
        if let Ok(rd) = std::fs::read_dir(format!("/sys/fs/cgroup/{ctrl}/runbox")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !n.starts_with(&cgroup_prefix),
                    "leftover cgroup {ctrl}/runbox/{n}"
                );
            }
        }
    }
}

/// Job cgroups of the runbox process `pid`, in any v1 hierarchy or v2.
fn cgroups_of(pid: u32) -> Vec<String> {
    let prefix = format!("{pid}.");
    ["memory/", "pids/", "cpu/", "cpuacct/", ""]
        .iter()
        .filter_map(|c| std::fs::read_dir(format!("/sys/fs/cgroup/{c}runbox")).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Live (not zombie) processes in the pid namespace `ns` (a `pid:[...]` link).
fn processes_in_pidns(ns: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l.to_str() == Some(ns))
        })
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Waits until the program of the job `runbox` runs (a process named `comm` whose
/// parent, the sandbox's init, is runbox's child) and returns its pid namespace.
/// For `--json` runs, which show no output until the end.
fn wait_for_program(runbox: u32, comm: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() == comm)
                    && parent_of(p).and_then(parent_of) == Some(runbox as i32)
            });
        if let Some(ns) = found.and_then(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok()) {
            return ns.to_string_lossy().into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job's {comm} never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn signal(child: &std::process::Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn ctrl_c_cancels_the_job_prints_its_result_and_leaves_nothing() {
    let rb = Runbox::new().with_busybox();
    let child = rb
        .cmd(&["run", "--json", "busybox", "--", "sleep", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let runbox_pid = child.id();
    let pidns = wait_for_program(runbox_pid, "sleep");
    let sent = std::time::Instant::now();
    signal(&child, rustix::process::Signal::INT);
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    eprintln!("SIGINT to exit: {took:?}");
    assert_eq!(
        code(&out),
        130,
        "like a shell's Ctrl+C: {}",
        text(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["limits_hit"], serde_json::json!([]), "{r}");
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    assert!(
        processes_in_pidns(&pidns).is_empty(),
        "a sandbox process outlived the run"
    );
    assert!(
        cgroups_of(runbox_pid).is_empty(),
        "{:?}",
        cgroups_of(runbox_pid)
    );
}

#[test]
fn sigterm_cancels_the_job_keeps_its_output_and_exits_143() {
    let rb = Runbox::new().with_busybox();
    let mut child = rb
        .cmd(&[
            "run",
            "busybox",
            "--",
            "sh",
            "-c",
            "readlink /proc/self/ns/pid; echo started; exec sleep 100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let runbox_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pidns = lines.next().unwrap().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    signal(&child, rustix::process::Signal::TERM);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 143, "{}", text(&out.stderr));
    assert!(rest.is_empty(), "{rest:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("SIGTERM") && err.contains("cancelled"),
        "{err}"
    );
    assert!(
        processes_in_pidns(&pidns).is_empty(),
        "a sandbox process outlived the run"
    );
    assert!(
        cgroups_of(runbox_pid).is_empty(),
        "{:?}",
        cgroups_of(runbox_pid)
    );
}

#[test]
fn help_documents_limits_and_exit_codes() {
    let rb = Runbox::new();
    let out = rb.run(&["run", "--help"]);
    assert_eq!(code(&out), 0);
    let help = text(&out.stdout);
    for needle in [
        "--wall-time",
        "--memory",
        "--pids",
        "--output-limit",
        "--json",
        "Limits",
        "[default: 512m]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
    assert!(
        text(&rb.run(&["--help"]).stdout).contains("125"),
        "exit codes documented"
    );
}
