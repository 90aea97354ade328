//! The default catalog end to end through the real binary: its images are built
//! from their recipes (mmdebstrap, Debian's mirror), every program runs on its
//! examples (`runbox catalog test`), and the program-facing CLI behaves.
//!
//! The images are built into a data directory kept between test runs
//! (`RUNBOX_TEST_CATALOG_DATA`, default /var/tmp/runbox-test-catalog): builds are
//! cached by recipe, so only the first run, or a changed recipe, pays for them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{code, json, text};

fn data_dir() -> PathBuf {
    std::env::var_os("RUNBOX_TEST_CATALOG_DATA").map_or_else(
        || PathBuf::from("/var/tmp/runbox-test-catalog"),
        PathBuf::from,
    )
}

fn runbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runbox"))
        .args(args)
        .env("RUNBOX_DATA_DIR", data_dir())
        .env_remove("RUNBOX_CATALOG")
        // dpkg's synced writes make a disk-backed scratch directory 2-3x slower.
        .env(
            "RUNBOX_BUILD_SCRATCH",
            if std::path::Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            },
        )
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Builds the default catalog once per test process.
fn built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = runbox(&["catalog", "build", "--json"]);
        assert_eq!(code(&out), 0, "catalog build failed: {}", text(&out.stderr));
        let reports = json(&out);
        // Every recipe: the programs', the systems' and the dataset generators'.
        let recipes = std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalog/images"),
        )
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .count();
        assert_eq!(reports.as_array().unwrap().len(), recipes, "every recipe");
    });
}

#[test]
fn every_default_program_runs_on_its_examples() {
    built();
    let out = runbox(&["catalog", "test", "--json"]);
    let results = json(&out);
    let failed: Vec<_> = results
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "failing programs: {failed:#?}");
    assert_eq!(results.as_array().unwrap().len(), 7);
    assert_eq!(code(&out), 0);
}

#[test]
fn a_program_runs_with_options_and_inputs_from_the_cli() {
    built();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", ANSWER); return 0; }\n",
    )
    .unwrap();
    let input = format!("main.c=@{}", src.display());
    let out = runbox(&[
        "run",
        "--program",
        "c",
        "-i",
        &input,
        "--option",
        "define=ANSWER=42",
        "--option",
        "opt=O2",
    ]);
    assert_eq!(
        (code(&out), text(&out.stdout)),
        (0, "42\n".to_string()),
        "{}",
        text(&out.stderr)
    );

    // A compile error is the program's result: gcc's message and exit code.
    std::fs::write(&src, "int main(void) { return x; }\n").unwrap();
    let out = runbox(&["run", "--program", "c", "-i", &input]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("undeclared"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_image_producing_program_returns_a_png() {
    built();
    let dir = tempfile::tempdir().unwrap();
    let out = runbox(&[
        "run",
        "--program",
        "graphviz",
        "--option",
        "layout=circo",
        "--output-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let png = std::fs::read(dir.path().join("graph.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {} bytes",
        png.len()
    );
}

#[test]
fn option_values_outside_the_form_are_refused_before_running() {
    built();
    for (opt, want) in [
        ("indent=9", "out of range 0..=7"),
        ("indent=two", "not a number"),
        ("colour=red", "unknown option \"colour\""),
    ] {
        let out = runbox(&["run", "--json", "--program", "jq", "--option", opt]);
        assert_eq!(code(&out), 125, "{opt}");
        let e = json(&out);
        assert_eq!(e["error"]["code"], "invalid_argument", "{opt}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{opt}: {e}"
        );
    }
    let out = runbox(&[
        "run",
        "--json",
        "--program",
        "sqlite",
        "--option",
        "mode=xml",
    ]);
    assert!(
        json(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not one of box, table"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn programs_are_listed_and_queried_by_mime_type() {
    let out = runbox(&["programs", "--produces", "image/png", "--json"]);
    let ids: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["graphviz"]);
    let out = runbox(&["programs", "--accepts", "text/x-python"]);
    assert!(
        text(&out.stdout).lines().any(|l| l.starts_with("python ")),
        "{}",
        text(&out.stdout)
    );
    let out = runbox(&["programs", "python", "--json"]);
    let p = json(&out);
    assert_eq!(p["options"][1]["type"], "select");
    assert_eq!(p["inputs"][0]["mime"], "text/x-python");
    let out = runbox(&["programs", "nope"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("no program \"nope\""),
        "{}",
        text(&out.stderr)
    );
    let out = runbox(&["run", "--json", "--program", "nope"]);
    assert_eq!(json(&out)["error"]["code"], "program_not_found");
}

#[test]
fn a_program_whose_image_is_not_built_says_how_to_build_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runbox"))
        .args(["run", "--json", "--program", "python"])
        .env("RUNBOX_DATA_DIR", empty.path())
        .env_remove("RUNBOX_CATALOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    let e = json(&out);
    assert_eq!(e["error"]["code"], "image_not_found");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("runbox/python:3-bookworm") && msg.contains("runbox catalog build"),
        "{msg}"
    );
}

#[test]
fn a_script_runs_programs_by_id_with_options() {
    built();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("programs.jsonl");
    std::fs::write(
        &script,
        concat!(
            r#"{"cmd": "run", "program": "jq", "options": {"compact": "true", "sort_keys": "true"}, "inputs": [{"path": "data.json", "text": "{\"b\": 1, \"a\": [2]}"}, {"path": "filter.jq", "text": "."}]}"#,
            "\n",
            r#"{"cmd": "expect", "status": "ok", "stdout": "{\"a\":[2],\"b\":1}\n"}"#,
            "\n",
            r#"{"cmd": "run", "program": "python", "inputs": [{"path": "main.py", "text": "import sys; print(sys.stdin.read().upper())"}], "stdin": "shout"}"#,
            "\n",
            r#"{"cmd": "expect", "stdout": "SHOUT\n"}"#,
            "\n",
            r#"{"cmd": "expect_error", "code": "invalid_argument", "message": {"contains": "out of range"}, "command": {"cmd": "run", "program": "jq", "options": {"indent": "99"}}}"#,
            "\n",
            r#"{"cmd": "expect_error", "code": "program_not_found", "command": {"cmd": "run", "program": "cobol"}}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = runbox(&["script", script.to_str().unwrap()]);
    let responses: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed: Vec<_> = responses.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(responses.len(), 6);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}
