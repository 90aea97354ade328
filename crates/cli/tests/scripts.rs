//! The scenario suite: every `tests/scripts/*.jsonl` runs through the real
//! `runbox script`, against a fresh data directory, and every command must succeed.
//! The images the scripts import are built here and named in the environment.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use common::*;
use runbox_image::ImageConfig;

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scripts")
}

/// Images for the scripts, built once per test process: `RUNBOX_TEST_BUSYBOX` (an
/// OCI layout), `RUNBOX_TEST_HOSTILE_TAR` (a docker-save tarball with a `../`
/// entry), `RUNBOX_TEST_CORRUPT_LAYOUT` (a layer blob that fails its digest),
/// `RUNBOX_TEST_EVIL_WORKDIR` (WorkingDir under /proc/self/fd).
fn fixtures() -> &'static [(&'static str, PathBuf)] {
    static F: OnceLock<(tempfile::TempDir, Vec<(&'static str, PathBuf)>)> = OnceLock::new();
    &F.get_or_init(|| {
        use runbox_testkit::{hostile, oci};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let busybox = oci::busybox_image(d);
        let mut escape = hostile::TarBuilder::new();
        escape.file("../../escaped.txt", b"pwned");
        let tar = hostile::docker_save(
            &d.join("hostile.tar"),
            &[escape.finish()],
            &oci::default_busybox_config(),
            &["hostile:latest"],
        );
        // A layer of its own: a layer the store already holds is never read again.
        let corrupt = d.join("corrupt");
        let mut layer = hostile::TarBuilder::new();
        layer.file("data.txt", b"a layer only this image has");
        let written = hostile::layout_with_layers(
            &corrupt,
            &[layer.finish()],
            runbox_image::writer::LayerCompression::Gzip,
        );
        hostile::corrupt_blob(&corrupt, &written.layers[0].digest);
        std::fs::create_dir_all(d.join("evil")).unwrap();
        let evil = oci::busybox_image_with_config(
            &d.join("evil"),
            ImageConfig {
                working_dir: Some("/proc/self/fd/7".into()),
                ..oci::default_busybox_config()
            },
        );
        let vars = vec![
            ("RUNBOX_TEST_BUSYBOX", busybox),
            ("RUNBOX_TEST_HOSTILE_TAR", tar),
            ("RUNBOX_TEST_CORRUPT_LAYOUT", corrupt),
            ("RUNBOX_TEST_EVIL_WORKDIR", evil),
        ];
        (dir, vars)
    })
    .1
}

/// Runs `runbox script FILE` with the fixtures; returns (exit code, responses).
fn run_script(rb: &Runbox, file: &Path, extra: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let mut args = vec!["script"];
    args.extend_from_slice(extra);
    let file_s = file.to_str().unwrap();
    args.push(file_s);
    let mut cmd = rb.cmd(&args);
    for (k, v) in fixtures() {
        cmd.env(k, v);
    }
    let out = cmd.stdout(Stdio::piped()).output().unwrap();
    let lines = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("response is not JSON ({e}): {l}"))
        })
        .collect();
    (code(&out), lines, text(&out.stderr))
}

fn scenario(name: &str) {
    let rb = Runbox::new();
    let (code, responses, stderr) = run_script(&rb, &scripts_dir().join(name), &[]);
    let failed: Vec<_> = responses.iter().filter(|r| r["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "{name}: failed commands: {failed:#?}\nstderr: {stderr}"
    );
    assert_eq!(code, 0, "{name}: {stderr}");
    // One response per command line: count the non-blank, non-comment lines.
    let commands = std::fs::read_to_string(scripts_dir().join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .count();
    assert_eq!(
        responses.len(),
        commands,
        "{name}: one response per command"
    );
}

macro_rules! scenarios {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(#[test] fn $test() { scenario($file); })*
        const LISTED: &[&str] = &[$($file),*];
    };
}

scenarios! {
    hello => "hello.jsonl",
    stdin => "stdin.jsonl",
    files_in_and_out => "files-in-out.jsonl",
    env_workdir_user => "env.jsonl",
    limit_wall_time => "limit-wall-time.jsonl",
    limit_cpu_time => "limit-cpu-time.jsonl",
    limit_memory => "limit-memory.jsonl",
    limit_pids => "limit-pids.jsonl",
    limit_file_size => "limit-file-size.jsonl",
    limit_nofile => "limit-nofile.jsonl",
    limit_tmpfs => "limit-tmpfs.jsonl",
    limit_output => "limit-output.jsonl",
    limit_output_files => "limit-output-files.jsonl",
    limit_input => "limit-input.jsonl",
    parallel_repeat_and_set => "parallel.jsonl",
    error_behaviour => "errors.jsonl",
    live_sandbox => "sandbox.jsonl",
    live_sandbox_errors => "sandbox-errors.jsonl",
    system_commands => "system.jsonl",
}

#[test]
fn every_script_in_the_suite_is_run_by_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(scripts_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .filter(|n| n.ends_with(".jsonl"))
                .map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = LISTED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "add new scripts to the scenarios! list");
}

/// A script with failures: each bad line gets its own error naming the line, the
/// rest still runs, and the exit status is 1. With --fail-fast it stops.
#[test]
fn malformed_and_failing_lines_are_reported_and_the_script_goes_on() {
    let rb = Runbox::new();
    let script = rb.dir.path().join("bad.jsonl");
    std::fs::write(
        &script,
        [
            r#"{"cmd": "import", "path": "${env:RUNBOX_TEST_BUSYBOX}", "name": "busybox"}"#,
            "",
            "# comment lines and blank lines get no response",
            r#"{"cmd": "run", "image": "busybox", "argv": ["echo", "hi"]"#,
            r#"{"cmd": "teleport"}"#,
            r#"{"cmd": "run", "image": "busybox", "argv": "echo hi"}"#,
            r#"{"cmd": "run", "argv": ["true"]}"#,
            r#"{"cmd": "expect", "stdout": "x"}"#,
            r#"{"cmd": "run", "image": "busybox", "argv": ["echo", "${undefined}"]}"#,
            r#"{"cmd": "run", "image": "busybox", "argv": ["echo", "still runs"]}"#,
            r#"{"cmd": "expect", "stdout": "wrong\n", "exit_code": 3}"#,
            r#"[1, 2, 3]"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (code, r, _) = run_script(&rb, &script, &[]);
    assert_eq!(code, 1);
    let lines: Vec<u64> = r.iter().map(|x| x["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    let err = |i: usize| {
        (
            r[i]["error"]["code"].as_str().unwrap().to_owned(),
            r[i]["error"]["message"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(r[0]["ok"], true);
    assert!(
        err(1).1.contains("not valid JSON") && err(1).0 == "script_invalid",
        "{:?}",
        err(1)
    );
    assert!(
        err(2).1.contains("unknown command \"teleport\""),
        "{:?}",
        err(2)
    );
    assert!(
        err(3).1.contains("invalid type") && err(3).1.contains("sequence"),
        "{:?}",
        err(3)
    );
    assert!(
        err(4).1.contains("give an image or a program to run"),
        "{:?}",
        err(4)
    );
    assert!(err(5).1.contains("no result to check yet"), "{:?}", err(5));
    assert!(
        err(6).1.contains("unknown variable ${undefined}"),
        "{:?}",
        err(6)
    );
    assert_eq!(r[7]["ok"], true, "the script goes on after failures");
    assert_eq!(err(8).0, "expectation_failed");
    assert!(
        err(8)
            .1
            .contains("stdout: expected \"wrong\\n\", got \"still runs\\n\"")
            && err(8).1.contains("exit_code: expected 3, got 0"),
        "{:?}",
        err(8)
    );
    assert!(
        err(9).1.contains("a command is a JSON object"),
        "{:?}",
        err(9)
    );
    for resp in &r {
        assert!(resp["elapsed_ms"].as_f64().is_some());
    }

    let (code, r, _) = run_script(&rb, &script, &["--fail-fast"]);
    assert_eq!(code, 1);
    assert_eq!(r.len(), 2, "stops at the first failure: {r:?}");
}

#[test]
fn scripts_can_come_from_stdin() {
    let rb = Runbox::new();
    let mut cmd = rb.cmd(&["script", "-"]);
    for (k, v) in fixtures() {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"cmd\":\"import\",\"path\":\"${env:RUNBOX_TEST_BUSYBOX}\",\"name\":\"busybox\"}\n{\"cmd\":\"run\",\"image\":\"busybox\",\"argv\":[\"echo\",\"from stdin\"]}\n{\"cmd\":\"expect\",\"stdout\":\"from stdin\\n\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout).lines().count(), 3);
}

#[test]
fn a_missing_script_file_is_a_runbox_error() {
    let rb = Runbox::new();
    let out = rb.run(&["script", "/nonexistent/script.jsonl"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("cannot read script"),
        "{}",
        text(&out.stderr)
    );
}
