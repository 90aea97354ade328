//! Live sandboxes a script creates are deleted when it ends, also when it fails or
//! stops early, and when a driver used line by line is dropped: a script leaves
//! nothing behind. Runs as root against real sandboxes.

use runbox_core::ErrorCode;
use runbox_engine::{Engine, EngineConfig};
use runbox_script::Driver;
use serde_json::Value;

struct Fixture {
    dir: tempfile::TempDir,
    engine: Engine,
}

/// An engine over a fresh data directory holding `busybox`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = runbox_testkit::oci::busybox_image(dir.path());
    let engine = Engine::open(EngineConfig::new(dir.path().join("data"))).unwrap();
    engine
        .store()
        .import(
            &layout,
            &runbox_image::ImportOptions {
                name: Some("busybox".into()),
            },
            &runbox_image::NoProgress,
        )
        .unwrap();
    Fixture { dir, engine }
}

fn run(
    driver: &mut Driver<'_>,
    lines: &[&str],
    fail_fast: bool,
) -> (runbox_script::Summary, Vec<Value>) {
    let mut out = Vec::new();
    let summary = driver
        .run_script(lines.join("\n").as_bytes(), &mut out, fail_fast)
        .unwrap();
    let responses = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, responses)
}

/// Host pids of live (not zombie) processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
                && std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                    !s.lines()
                        .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')))
                })
        })
        .collect()
}

/// Polls (bounded) until no process runs `argv`; returns those still running.
fn wait_gone(argv: &[&str]) -> Vec<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = processes(argv);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_failing_script_deletes_the_sandboxes_it_left_and_their_daemons() {
    let f = fixture();
    let mut driver = Driver::new(&f.engine, f.dir.path());
    // A daemon kept running, with a command line no other test uses: the host sees it.
    let daemon = ["sleep", "7654321"];
    for (n, line) in [
        r#"{"cmd": "sandbox_create", "image": "busybox"}"#,
        r#"{"cmd": "set", "name": "a", "from": "/id"}"#,
        r#"{"cmd": "sandbox_exec", "sandbox": "${a}", "argv": ["sh", "-c", "sleep 7654321 & echo started"], "keep_running": true}"#,
        r#"{"cmd": "expect", "stdout": "started\n"}"#,
    ]
    .iter()
    .enumerate()
    {
        let r = driver.line(n + 1, line);
        assert!(r.ok, "{r:?}");
    }
    assert_eq!(processes(&daemon).len(), 1, "the kept daemon runs");
    let (summary, r) = run(
        &mut driver,
        &[
            r#"{"cmd": "sandbox_create", "image": "busybox"}"#,
            r#"{"cmd": "set", "name": "b", "from": "/id"}"#,
            r#"{"cmd": "sandbox_create", "image": "busybox"}"#,
            r#"{"cmd": "set", "name": "c", "from": "/id"}"#,
            // Deleted by the script itself: not counted again.
            r#"{"cmd": "sandbox_delete", "sandbox": "${c}"}"#,
            r#"{"cmd": "sandboxes"}"#,
            r#"{"cmd": "sandbox_exec", "sandbox": "${a}", "argv": ["false"]}"#,
            r#"{"cmd": "expect", "status": "ok"}"#,
            r#"{"cmd": "sandbox_exec", "sandbox": "${b}", "argv": ["echo", "never runs: fail-fast stopped before"]}"#,
        ],
        true,
    );
    assert_eq!(summary.failed, 1, "{r:#?}");
    assert_eq!(r.len(), 8, "stops at the failing expect: {r:#?}");
    assert!(r[..7].iter().all(|x| x["ok"] == true), "{r:#?}");
    let ids: Vec<String> = r[5]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{r:#?}");
    assert_eq!(summary.sandboxes_deleted, 2);
    assert!(
        f.engine.list_sandboxes().is_empty(),
        "{:?}",
        f.engine.list_sandboxes()
    );
    for id in &ids {
        let e = f.engine.sandbox_info(id).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    }
    assert_eq!(
        wait_gone(&daemon),
        Vec::<i32>::new(),
        "the daemon died with its sandbox"
    );
    // Nothing is deleted twice.
    assert_eq!(driver.cleanup(), 0);
}

#[test]
fn a_dropped_driver_deletes_its_sandboxes_and_no_others() {
    let f = fixture();
    let other = f
        .engine
        .create_sandbox(&runbox_core::CreateSandbox {
            image: "busybox".into(),
            ..Default::default()
        })
        .unwrap();
    {
        let mut driver = Driver::new(&f.engine, f.dir.path());
        let r = driver.line(1, r#"{"cmd": "sandbox_create", "image": "busybox"}"#);
        assert!(r.ok, "{r:?}");
        let r = driver.line(2, r#"{"cmd": "sandboxes"}"#);
        assert_eq!(r.result.unwrap().as_array().unwrap().len(), 2);
    }
    let left: Vec<String> = f
        .engine
        .list_sandboxes()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        left,
        [other.id],
        "only the sandbox the script did not create is left"
    );
}

#[test]
fn a_snapshotted_sandbox_is_not_deleted_again_and_its_image_stays() {
    let f = fixture();
    let mut driver = Driver::new(&f.engine, f.dir.path());
    let (summary, r) = run(
        &mut driver,
        &[
            r#"{"cmd": "sandbox_create", "image": "busybox"}"#,
            r#"{"cmd": "set", "name": "a", "from": "/id"}"#,
            r#"{"cmd": "sandbox_exec", "sandbox": "${a}", "argv": ["sh", "-c", "echo kept > kept.txt"]}"#,
            r#"{"cmd": "sandbox_snapshot", "sandbox": "${a}"}"#,
            r#"{"cmd": "set", "name": "img", "from": "/image"}"#,
            r#"{"cmd": "run", "image": "${img}", "argv": ["cat", "kept.txt"]}"#,
            r#"{"cmd": "expect", "stdout": "kept\n"}"#,
        ],
        false,
    );
    assert_eq!(summary.failed, 0, "{r:#?}");
    assert_eq!(summary.sandboxes_deleted, 0);
    let img = r[3]["result"]["image"].as_str().unwrap();
    assert!(img.starts_with("runbox-snapshot/"), "{img}");
    assert!(f.engine.store().resolve(img).is_ok());
}
