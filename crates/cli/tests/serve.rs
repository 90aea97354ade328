//! `runbox serve` through its HTTP API, as a client sees it: a real server
//! process on a loopback port, real sandboxes. Every response goes through
//! `TestServer`, which checks it against the server's own `/api/openapi.json`,
//! so these tests also test the API's description.
//!
//! Image jobs run in a fresh data directory with a busybox image. Catalog
//! programs run in the catalog test's data directory (`RUNBOX_TEST_CATALOG_DATA`,
//! default /var/tmp/runbox-test-catalog), built once by `runbox catalog build`.
//! The hardening tests (limits, timeouts, rate limits, queue) are in
//! `serve_hardening.rs`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{code, text, Runbox};
use runbox_testkit::server::TestServer;
use serde_json::{json, Value};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_runbox");

fn busybox_server(args: &[&str]) -> (Runbox, TestServer) {
    Runbox::busybox_server(args)
}

/// A value no earlier run of these tests used: the catalog's data directory (and
/// so its result cache) is kept between runs.
fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn catalog_data() -> PathBuf {
    std::env::var_os("RUNBOX_TEST_CATALOG_DATA").map_or_else(
        || PathBuf::from("/var/tmp/runbox-test-catalog"),
        PathBuf::from,
    )
}

fn scratch() -> &'static str {
    if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    }
}

/// A server over the catalog's data directory, its images built.
fn catalog_server() -> TestServer {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(BIN)
            .args(["catalog", "build", "--json"])
            .env("RUNBOX_DATA_DIR", catalog_data())
            .env("RUNBOX_BUILD_SCRATCH", scratch())
            .env_remove("RUNBOX_CATALOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "catalog build: {}", text(&out.stderr));
    });
    TestServer::start(
        Path::new(BIN),
        &catalog_data(),
        &["--no-build", "--no-warm"],
    )
}

fn sh(script: &str) -> Value {
    json!({"image": "busybox", "argv": ["sh", "-c", script]})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

#[test]
fn an_image_job_runs_and_its_repeat_is_answered_from_the_cache() {
    let (_rb, s) = busybox_server(&[]);
    let req = sh("echo out; echo err >&2; exit 3");

    let first = s.run(&req);
    assert_eq!(first["cached"], false);
    let key = first["key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 64, "a sha256 hex key: {key}");
    assert_eq!(first["permalink"], format!("/r/{key}"));
    let r = &first["result"];
    assert_eq!(r["status"], "exit_nonzero");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "out\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(s.metric("runbox_cache_lookups_total{result=\"miss\"}"), 1.0);

    let second = s.run(&req);
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["key"], first["key"]);
    assert_eq!(
        second["result"], first["result"],
        "the stored result, unchanged"
    );
    assert_eq!(s.metric("runbox_cache_lookups_total{result=\"hit\"}"), 1.0);
    assert_eq!(
        s.metric("runbox_jobs_total{status=\"exit_nonzero\"}"),
        1.0,
        "the hit ran nothing"
    );

    // cache: false runs again, under the same key.
    let third = s.run(&with(req, json!({"cache": false})));
    assert_eq!(third["cached"], false);
    assert_eq!(third["key"], first["key"]);
    assert_eq!(s.metric("runbox_jobs_total{status=\"exit_nonzero\"}"), 2.0);
}

#[test]
fn the_cache_key_changes_with_everything_that_decides_the_output() {
    let (_rb, s) = busybox_server(&[]);
    let base = json!({"image": "busybox", "argv": ["cat", "f"],
                      "inputs": [{"path": "f", "content": "one"}]});
    let variants = [
        base.clone(),
        with(base.clone(), json!({"argv": ["cat", "f", "f"]})),
        with(base.clone(), json!({"env": {"A": "1"}})),
        with(base.clone(), json!({"stdin": "x"})),
        with(
            base.clone(),
            json!({"inputs": [{"path": "f", "content": "two"}]}),
        ),
        with(
            base.clone(),
            json!({"inputs": [{"path": "g", "content": "one"}]}),
        ),
        with(base.clone(), json!({"limits": {"memory_bytes": 64 << 20}})),
        with(base.clone(), json!({"outputs": ["f"]})),
        with(base.clone(), json!({"user": "0"})),
        with(base.clone(), json!({"workdir": "/tmp"})),
    ];
    let mut keys = BTreeSet::new();
    for v in &variants {
        let r = s.run(v);
        assert_eq!(r["cached"], false, "{v} was a hit: its key collided");
        keys.insert(r["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(keys.len(), variants.len());
    // `cache` itself does not: it says how to answer, not what to run.
    let again = s.run(&with(base, json!({"cache": true})));
    assert_eq!(again["cached"], true);
}

#[test]
fn an_asynchronous_job_reports_its_phases_over_server_sent_events() {
    let (_rb, s) = busybox_server(&[]);
    let r = s.post_json("/api/jobs", &sh("echo async"));
    assert_eq!(r.status, 202, "{}", r.text());
    let accepted = r.json();
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(accepted["url"], format!("/api/jobs/{id}"));

    // The stream ends after the last event.
    let events = s.get(accepted["events_url"].as_str().unwrap());
    assert_eq!(events.status, 200);
    assert!(events
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let parsed = sse(&events.text());
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.last(),
        Some(&"done"),
        "events: {names:?}\n{}",
        events.text()
    );
    // The stream may begin after the job left the queue, but never goes back.
    let order = ["queued", "running", "done"];
    let ranks: Vec<usize> = names
        .iter()
        .map(|n| order.iter().position(|o| o == n).expect("known event"))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{names:?}");
    let done: Value = serde_json::from_str(&parsed.last().unwrap().1).unwrap();
    assert_eq!(done["result"]["stdout"], "async\n");

    let info = s.get(&format!("/api/jobs/{id}"));
    assert_eq!(info.status, 200);
    let info = info.json();
    assert_eq!(info["status"], "done");
    assert_eq!(info["response"]["key"], done["key"]);

    // A repeat is a cache hit: straight to done.
    let again = s.post_json("/api/jobs", &sh("echo async")).json();
    let events = s.get(again["events_url"].as_str().unwrap()).text();
    let names: Vec<String> = sse(&events).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["done"], "{events}");

    let missing = s.get("/api/jobs/ffffffffffffffff");
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );
}

/// `(event, data)` pairs of a complete SSE body.
fn sse(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut event = "message".to_owned();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() || block.contains("event:") {
            out.push((event, data.join("\n")));
        }
    }
    out
}

#[test]
fn a_permalink_restores_the_request_and_shows_the_stored_result() {
    let (_rb, s) = busybox_server(&[]);
    let req = json!({"image": "busybox", "argv": ["sh", "-c", "cat in.txt; cat"],
                     "inputs": [{"path": "in.txt", "content": {"text": "file\n"}}],
                     "stdin": {"text": "stdin\n"}});
    let run = s.run(&req);
    let key = run["key"].as_str().unwrap();

    let stored = s.get(&format!("/api/results/{key}"));
    assert_eq!(stored.status, 200);
    let stored = stored.json();
    assert_eq!(stored["key"], key);
    assert_eq!(stored["result"], run["result"]);
    assert_eq!(stored["result"]["stdout"], "file\nstdin\n");
    // The request as the editor needs it back.
    assert_eq!(stored["request"]["argv"], req["argv"]);
    assert_eq!(stored["request"]["inputs"][0]["path"], "in.txt");
    assert_eq!(
        stored["request"]["inputs"][0]["content"]["text"]
            .as_str()
            .or(stored["request"]["inputs"][0]["content"].as_str()),
        Some("file\n")
    );
    assert!(stored["created_at"].as_str().unwrap().ends_with('Z'));

    // The page for it is the playground.
    let page = s.get(&format!("/r/{key}"));
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("<div id=\"app\"") || page.text().contains("runbox"));

    // Forgetting it needs the admin token; then it is gone.
    let url = format!("{}/api/results/{key}", s.url);
    let path = format!("/api/results/{key}");
    let anon = s.send("DELETE", &path, s.client().delete(&url));
    assert_eq!((anon.status, anon.code().as_str()), (401, "unauthorized"));
    let del = s.send(
        "DELETE",
        &path,
        s.client().delete(&url).bearer_auth(&s.admin_token),
    );
    assert!(del.status == 204 || del.status == 200, "{}", del.text());
    let gone = s.get(&path);
    assert_eq!((gone.status, gone.code().as_str()), (404, "not_found"));
    assert!(gone.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains(key));
    // And the next identical request runs again.
    assert_eq!(s.run(&req)["cached"], false);
}

#[test]
fn binary_files_travel_intact_through_multipart_and_base64() {
    let (_rb, s) = busybox_server(&[]);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let want = format!("{:x}", sha2::Sha256::digest(&bytes));
    let spec = json!({"image": "busybox",
                      "argv": ["sh", "-c", "sha256sum data.bin; cp data.bin copy.bin"],
                      "outputs": ["copy.bin"]});
    let form = reqwest::blocking::multipart::Form::new()
        .text("spec", spec.to_string())
        .part(
            "data.bin",
            reqwest::blocking::multipart::Part::bytes(bytes.clone())
                .file_name("data.bin")
                .mime_str("application/octet-stream")
                .unwrap(),
        );
    let r = s.post_multipart("/api/run", form);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let result = &body["result"];
    assert_eq!(result["status"], "ok", "{result}");
    assert!(
        result["stdout"].as_str().unwrap().starts_with(&want),
        "{result}"
    );
    let out = &result["outputs"][0];
    assert_eq!(out["path"], "copy.bin");
    assert_eq!(out["size"], bytes.len());
    let got = base64::engine::general_purpose::STANDARD
        .decode(out["content"]["base64"].as_str().expect("binary as base64"))
        .unwrap();
    assert!(got == bytes, "the output file differs from the input");

    // The same file as base64 in JSON is the same job: same key, a cache hit.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let json_req = with(
        spec,
        json!({"inputs": [{"path": "data.bin", "content": {"base64": b64}}]}),
    );
    let again = s.run(&json_req);
    assert_eq!(again["key"], body["key"]);
    assert_eq!(again["cached"], true);
}

#[test]
fn a_multipart_request_without_its_spec_part_first_is_refused() {
    let (_rb, s) = busybox_server(&[]);
    let form = reqwest::blocking::multipart::Form::new()
        .text("data.bin", "x")
        .text("spec", sh("true").to_string());
    let r = s.post_multipart("/api/run", form);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("spec"), "{}", r.text());
    assert_eq!(s.metric("runbox_jobs_queued"), 0.0);
}

#[test]
fn operations_endpoints_describe_the_server() {
    let (_rb, s) = busybox_server(&["--workers", "2"]);
    let h = s.get("/healthz");
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["workers"], 2);
    assert_eq!(h["queued"], 0);

    let run = s.run(&sh("true"));
    let key = run["key"].as_str().unwrap();

    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for line in [
        "runbox_http_requests_total{route=\"/api/run\",method=\"POST\",status=\"200\"} 1",
        "runbox_jobs_total{status=\"ok\"} 1",
        "runbox_jobs_running 0",
        "runbox_job_duration_seconds_count 1",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }

    // The OpenAPI document names every API route the router serves.
    let doc = s.get("/api/openapi.json").json();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/api/programs",
        "/api/programs/{id}",
        "/api/catalog",
        "/api/run",
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/events",
        "/api/results/{key}",
        "/api/admin/catalog/build",
        "/api/admin/gc",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains(p), "{p} missing from {paths:?}");
    }

    // A request log line carries the job's key.
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains("job done") && l.contains(key)),
        "no job log line with {key}:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("request") && l.contains("/api/run") && l.contains("status=200")),
        "no request log line:\n{log}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_job_id() {
    let rb = Runbox::new().with_busybox();
    let s = TestServer::start(
        Path::new(BIN),
        &rb.data(),
        &["--no-build", "--no-warm", "--log-format", "json"],
    );
    let accepted = s.post_json("/api/jobs", &sh("true")).json();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let done = s.get(accepted["events_url"].as_str().unwrap()).text();
    assert!(done.contains("event: done"), "{done}");
    let lines: Vec<Value> = s
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l.to_string().contains(&id)),
        "no log object names job {id}: {lines:#?}"
    );
}

#[test]
fn the_playground_page_and_every_asset_it_uses_are_served_locally() {
    let (_rb, s) = busybox_server(&[]);
    let page = s.get("/");
    assert_eq!(page.status, 200);
    let html = page.text();
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part.split('"').next().unwrap().to_owned());
        }
    }
    assert!(
        refs.iter().any(|r| r.ends_with(".js")),
        "no script in {html}"
    );
    for r in &refs {
        if r.starts_with("data:") {
            continue; // inline (the favicon)
        }
        assert!(
            r.starts_with('/') && !r.starts_with("//"),
            "{r}: every asset must come from this server (no CDN)"
        );
        let a = s.get(r);
        assert_eq!(a.status, 200, "{r}");
        if r.ends_with(".js") {
            assert!(a.header("content-type").unwrap().contains("javascript"));
            assert!(!a.text().contains("https://cdn"), "{r} loads from a CDN");
        }
        if r.starts_with("/assets/") {
            assert!(
                a.header("cache-control").unwrap().contains("immutable"),
                "hashed assets are cached for good: {r}"
            );
        }
    }
    let missing = s.get("/assets/nope.js");
    assert_eq!(missing.status, 404);
}

#[test]
fn programs_are_listed_filtered_and_described() {
    let s = catalog_server();
    let all = s.get("/api/programs").json();
    let programs = all["programs"].as_array().unwrap();
    let ids: BTreeSet<&str> = programs.iter().map(|p| p["id"].as_str().unwrap()).collect();
    for id in ["c", "cpp", "graphviz", "jq", "python", "sh", "sqlite"] {
        assert!(ids.contains(id), "{id} missing: {ids:?}");
    }
    assert!(programs.iter().all(|p| p["ready"] == true), "{all}");

    let ids_of = |q: &str| -> Vec<String> {
        let r = s.get(&format!("/api/programs?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_of("produces=image/png"), ["graphviz"]);
    assert_eq!(ids_of("accepts=text/x-python"), ["python"]);
    assert!(ids_of("category=compilers")
        .iter()
        .all(|id| id == "c" || id == "cpp"));
    assert!(ids_of("accepts=text/x-python&produces=image/png").is_empty());

    let unknown = s.get("/api/programs?colour=red");
    assert_eq!(unknown.status, 400);
    assert!(unknown.text().contains("colour"), "{}", unknown.text());

    let c = s.get("/api/programs/c");
    assert_eq!(c.status, 200);
    let c = c.json();
    assert_eq!(c["id"], "c");
    assert!(c["image_name"].as_str().unwrap().starts_with("runbox/"));
    assert!(
        c["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["type"] == "select" && o["choices"].as_array().unwrap().len() > 1),
        "the options form: {c}"
    );
    let none = s.get("/api/programs/cobol");
    assert_eq!(
        (none.status, none.code().as_str()),
        (404, "program_not_found")
    );
}

#[test]
fn catalog_programs_run_with_options_and_render_image_outputs() {
    let s = catalog_server();
    let n = nonce();
    let py = s.run(&json!({
        "program": "python",
        "inputs": [{"path": "main.py", "content": format!("# {n}\nprint(input()[::-1])")}],
        "stdin": "abc\n",
    }));
    assert_eq!(py["result"]["stdout"], "cba\n", "{py}");
    assert_eq!(py["cached"], false);

    let c = s.run(&json!({
        "program": "c",
        "options": {"define": "ANSWER=42"},
        "inputs": [{"path": "main.c", "content": format!(
            "/* {n} */\n#include <stdio.h>\nint main(void) {{ printf(\"%d\\n\", ANSWER); return 0; }}\n")}],
    }));
    assert_eq!(c["result"]["stdout"], "42\n", "{c}");

    let bad = s.post_json(
        "/api/run",
        &json!({"program": "c", "options": {"opt": "O9"}}),
    );
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_argument"));
    assert!(bad.text().contains("opt"), "{}", bad.text());

    let dot = s.run(&json!({
        "program": "graphviz",
        "inputs": [{"path": "graph.dot", "content": format!("digraph {{ a -> b; /* {n} */ }}")}],
    }));
    let result = &dot["result"];
    assert_eq!(result["status"], "ok", "{result}");
    let png = result["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["content"]["base64"].is_string())
        .unwrap_or_else(|| panic!("no binary output: {result}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png["content"]["base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

/// The first start builds the catalog in the background: its programs answer
/// `image_not_ready` (with Retry-After) until their image is in the store, the
/// build shows in `GET /api/catalog`, then they run.
#[test]
fn the_server_builds_its_catalog_at_first_start() {
    let dir = tempfile::tempdir().unwrap();
    // A catalog of one program and its image's recipe.
    let catalog = dir.path().join("catalog");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalog");
    std::fs::create_dir_all(catalog.join("programs")).unwrap();
    std::fs::copy(
        src.join("programs/sh.toml"),
        catalog.join("programs/sh.toml"),
    )
    .unwrap();
    copy_tree(&src.join("images"), &catalog.join("images"));
    for recipe in ["python", "gcc", "graphviz"] {
        std::fs::remove_file(catalog.join(format!("images/{recipe}.toml"))).unwrap();
    }
    let catalog_arg = catalog.to_str().unwrap().to_owned();
    let s = TestServer::start(
        Path::new(BIN),
        &dir.path().join("data"),
        &["--catalog", &catalog_arg, "--scratch-dir", scratch()],
    );

    let status = s.get("/api/catalog").json();
    let images = status["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{status}");
    assert_eq!(images[0]["recipe"], "base");
    let req = json!({"program": "sh", "inputs": [{"path": "script.sh", "content": "echo built"}]});
    let early = s.post_json("/api/run", &req);
    if early.status == 409 {
        assert_eq!(early.code(), "image_not_ready");
        assert!(early.header("retry-after").is_some());
    } else {
        // Only when the build had already finished.
        assert_eq!(early.status, 200, "{}", early.text());
    }

    // Builds take seconds to minutes; poll the status the page polls.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen_building = images[0]["state"] != "ready";
    loop {
        let st = s.get("/api/catalog").json();
        let state = st["images"][0]["state"].as_str().unwrap().to_owned();
        assert_ne!(state, "failed", "{st}\nlog:\n{}", s.log());
        if state == "ready" {
            break;
        }
        seen_building = true;
        assert!(Instant::now() < deadline, "not built in 10 min: {st}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        seen_building,
        "a fresh data directory had the image already"
    );
    let done = s.run(&req);
    assert_eq!(done["result"]["stdout"], "built\n", "{done}");
    assert!(
        s.log().contains("building a catalog image"),
        "the build is logged:\n{}",
        s.log()
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The browser test (web/tests/playground.spec.mjs): Debian's chromium, driven by
/// Playwright, opens the page, runs Python with an added helper module (and
/// refuses bad file names), renders Graphviz's PNG, runs jq's two files, hits the
/// output and time limits, and opens a permalink that restores every file. Screenshots are kept in target/test-artifacts/playground.
#[test]
fn the_playground_works_in_a_real_browser() {
    browser_spec("playground.spec.mjs", "playground");
}

/// Polls `GET /api/jobs/{id}` until it has `status` (bounded).
fn until_status(s: &TestServer, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = s.get(&format!("/api/jobs/{id}")).json();
        if info["status"] == status {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never became {status}: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cancelling_stops_a_running_job_and_a_waiting_one_never_runs() {
    // A 3 s lease: heartbeats, which carry the cancellation, every second.
    let (_rb, s) = busybox_server(&["--workers", "1", "--lease", "3s"]);
    let running = s
        .post_json("/api/jobs", &sh("echo started; sleep 30; echo never"))
        .json();
    let rid = running["id"].as_str().unwrap().to_owned();
    until_status(&s, &rid, "running");
    // With the only worker busy, this one waits.
    let waiting = s.post_json("/api/jobs", &sh("echo waited")).json();
    let wid = waiting["id"].as_str().unwrap().to_owned();
    assert_eq!(
        s.get(&format!("/api/jobs/{wid}")).json()["status"],
        "queued"
    );

    let c = s.post_json(&format!("/api/jobs/{wid}/cancel"), &json!({}));
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json()["status"], "cancelled");
    let again = s.post_json(&format!("/api/jobs/{wid}/cancel"), &json!({}));
    assert_eq!((again.status, again.code().as_str()), (409, "cancelled"));

    let t = Instant::now();
    let c = s.post_json(&format!("/api/jobs/{rid}/cancel"), &json!({}));
    assert_eq!(c.status, 202, "{}", c.text());
    // The worker learns it on its next heartbeat (a third of the lease).
    let events = s.get(running["events_url"].as_str().unwrap()).text();
    let (name, data) = sse(&events).pop().unwrap();
    assert_eq!(name, "cancelled", "{events}");
    let partial: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(partial["result"]["status"], "cancelled");
    assert_eq!(partial["result"]["stdout"], "started\n");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped within a heartbeat or two: {:?}",
        t.elapsed()
    );
    // The waiting job never ran; a cancelled result is not a cache entry.
    assert_eq!(until_status(&s, &wid, "cancelled")["response"], Value::Null);
    let stored = s.get(&format!(
        "/api/results/{}",
        partial["key"].as_str().unwrap()
    ));
    assert_eq!(stored.status, 404);
    let missing = s.post_json("/api/jobs/ffffffffffffffff/cancel", &json!({}));
    assert_eq!(missing.status, 404);
}

/// SECURITY-CHECKLIST 24: a server killed mid-job loses nothing. The job is in
/// the database; after a restart its lease runs out, it is claimed again, and
/// it ends once.
#[test]
fn a_server_killed_mid_job_finishes_the_job_after_a_restart_sqlite() {
    killed_mid_job(None);
}

#[test]
fn a_server_killed_mid_job_finishes_the_job_after_a_restart_postgres() {
    let url = runbox_testkit::postgres::TestPostgres::shared().fresh_database("restart");
    killed_mid_job(Some(url));
}

fn killed_mid_job(database: Option<String>) {
    let rb = Runbox::new().with_busybox();
    let mut args = vec!["--no-build", "--no-warm", "--workers", "1", "--lease", "2s"];
    if let Some(url) = &database {
        args.extend(["--database", url.as_str()]);
    }
    let first = TestServer::start(Path::new(BIN), &rb.data(), &args);
    let accepted = first
        .post_json("/api/jobs", &sh("echo attempt; sleep 1; echo finished"))
        .json();
    let id = accepted["id"].as_str().unwrap().to_owned();
    until_status(&first, &id, "running");
    std::process::Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .unwrap();
    drop(first);

    let second = TestServer::start(Path::new(BIN), &rb.data(), &args);
    // Not known to this process's memory: answered from the queue.
    let info = until_status(&second, &id, "done");
    let result = &info["response"]["result"];
    assert_eq!(result["stdout"], "attempt\nfinished\n", "{info}");
    let log = second.log();
    assert!(
        log.contains("lease expired: job re-queued"),
        "the restart found the orphaned job: {log}"
    );
}

/// The Databases view in a real browser (web/tests/systems.spec.mjs): one GROUP BY
/// over the million-row orders dataset on sqlite, postgres and duckdb at once (the
/// first query to a system provisions it), the three answer tables the same and
/// said to agree, timings shown, a syntax error shown in each card, then warm
/// answers; a deep link and a narrow window. Screenshots are kept in
/// target/test-artifacts/systems.
#[test]
fn the_databases_view_works_in_a_real_browser() {
    browser_spec("systems.spec.mjs", "systems");
}

/// The comparison of answers the Databases view makes (web/src/answers.ts: CSV with
/// quoted fields, numbers by value, rows in order) by its unit test, in Node.
#[test]
fn the_databases_views_answer_comparison_passes_its_unit_test() {
    let web = web_dir();
    let out = Command::new("node")
        .args(["--test", "tests/answers.test.mjs"])
        .current_dir(&web)
        .stdin(Stdio::null())
        .output()
        .expect("node is missing: scripts/test installs nodejs");
    assert!(
        out.status.success(),
        "web/tests/answers.test.mjs failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// web/, with its node_modules (playwright-core, vite).
fn web_dir() -> PathBuf {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run `cd web && npm ci` (scripts/test does)"
    );
    web
}

/// Runs the browser test web/tests/`spec` (Debian's chromium, driven by Playwright)
/// against a server over the catalog; its screenshots go to target/test-artifacts/`artifacts`.
fn browser_spec(spec: &str, artifacts: &str) {
    let web = web_dir();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the browser test needs Debian's chromium (scripts/test installs it)"
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-artifacts")
        .join(artifacts);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let s = catalog_server();
    let mut child = Command::new("node")
        .arg(Path::new("tests").join(spec))
        .current_dir(&web)
        .env("RUNBOX_URL", &s.url)
        .env("RUNBOX_SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is missing: scripts/test installs nodejs");
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "browser test {spec} failed ({}):\n{}\n{}\nserver log:\n{}",
        out.status,
        lines.join("\n"),
        text(&out.stderr),
        s.log()
    );
    let pngs = std::fs::read_dir(&shots)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(pngs >= 3, "screenshots kept: {pngs} in {}", shots.display());
}
