//! Live sandboxes and systems through `runbox serve`'s HTTP API (and the
//! `runbox sandbox` client), as a client sees them: a real server process, real
//! sandboxes from a busybox image, and a small catalog whose one system is a
//! shell "database" over a generated dataset. Every response is checked against
//! the server's OpenAPI document by `TestServer`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{code, text, Runbox};
use runbox_testkit::server::{Resp, TestServer};
use serde_json::{json, Value};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_runbox");

fn server(rb: &Runbox, args: &[&str]) -> TestServer {
    let mut all = vec!["--no-build", "--no-warm"];
    all.extend_from_slice(args);
    TestServer::start(Path::new(BIN), &rb.data(), &all)
}

fn create(s: &TestServer, body: &Value) -> Resp {
    s.post_json("/api/sandboxes", body)
}

fn exec(s: &TestServer, id: &str, body: &Value) -> Resp {
    s.post_json(&format!("/api/sandboxes/{id}/exec"), body)
}

fn sh(s: &TestServer, id: &str, script: &str) -> Value {
    let r = exec(s, id, &json!({"argv": ["sh", "-c", script]}));
    assert_eq!(r.status, 200, "exec: {}", r.text());
    r.json()
}

fn delete(s: &TestServer, id: &str) -> Resp {
    let path = format!("/api/sandboxes/{id}");
    s.send(
        "DELETE",
        &path,
        s.client().delete(format!("{}{path}", s.url)),
    )
}

/// Cgroup directories (any hierarchy, v1 or v2) whose name holds `id`.
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() || ft.is_symlink() {
                continue;
            }
            let p = e.path();
            if e.file_name().to_string_lossy().contains(id) {
                out.push(p.clone());
            }
            if depth > 0 {
                walk(&p, id, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 4, &mut out);
    out
}

#[test]
fn a_live_sandbox_keeps_state_between_execs_and_snapshots_into_an_image() {
    let rb = Runbox::new().with_busybox();
    let s = server(&rb, &[]);

    let r = create(&s, &json!({"image": "busybox"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let info = r.json();
    let id = info["id"].as_str().unwrap().to_owned();
    assert!(info["hostname"].as_str().unwrap().starts_with("sbx-"));
    assert_eq!(info["alive"], true);

    // State written by one exec is there for the next.
    let a = sh(&s, &id, "echo 41 > /work/state; echo written");
    assert_eq!(a["stdout"], "written\n");
    let b = sh(&s, &id, "expr $(cat /work/state) + 1");
    assert_eq!(b["stdout"], "42\n");
    assert_ne!(a["job_id"], b["job_id"], "each exec has its own result");

    // A file put over HTTP, read by an exec and fetched back.
    let put = s.send(
        "PUT",
        &format!("/api/sandboxes/{id}/files/note.txt"),
        s.client()
            .put(format!("{}/api/sandboxes/{id}/files/note.txt", s.url))
            .body("hello from the host\n"),
    );
    assert_eq!(put.status, 204, "{}", put.text());
    let c = sh(&s, &id, "cat note.txt; echo made > made.txt");
    assert_eq!(c["stdout"], "hello from the host\n");
    let got = s.get(&format!("/api/sandboxes/{id}/files/made.txt"));
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["files"][0]["content"]["text"], "made\n");

    // Each exec has its own limits: this one is cut, the sandbox lives on.
    let cut = exec(
        &s,
        &id,
        &json!({"argv": ["sh", "-c", "while :; do :; done"], "limits": {"wall_time_ms": 300}}),
    );
    assert_eq!(cut.status, 200, "{}", cut.text());
    assert_eq!(cut.json()["status"], "wall_time_limit");
    assert_eq!(sh(&s, &id, "cat /work/state")["stdout"], "41\n");

    // A daemon kept running serves a later exec.
    let d = exec(
        &s,
        &id,
        &json!({"argv": ["sh", "-c", "(while :; do date +%s > /tmp/beat; sleep 0.05; done) & echo $!"], "keep_running": true}),
    );
    let pid = d.json()["stdout"].as_str().unwrap().trim().to_owned();
    let alive = sh(
        &s,
        &id,
        &format!("n=0; while [ ! -s /tmp/beat ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; kill -0 {pid} && echo daemon-alive"),
    );
    assert_eq!(alive["stdout"], "daemon-alive\n");
    let i = s.get(&format!("/api/sandboxes/{id}")).json();
    assert_eq!(i["execs"], 7);

    // A directory of the image renamed (as root inside): the snapshot must hold it
    // whole, not as an overlay redirect to a lower layer it does not carry.
    let mv = exec(
        &s,
        &id,
        &json!({"argv": ["sh", "-c", "mv /usr/bin /usr/moved && ls /usr/moved | wc -l"], "user": "0"}),
    );
    assert_eq!(mv.json()["exit_code"], 0, "{}", mv.text());
    let moved = mv.json()["stdout"].as_str().unwrap().trim().to_owned();
    assert_ne!(moved, "0");

    // Snapshot: the sandbox ends, a new one from the image has its files.
    let snap = s.post_json(&format!("/api/sandboxes/{id}/snapshot"), &json!({}));
    assert_eq!(snap.status, 201, "{}", snap.text());
    let image = snap.json()["image"].as_str().unwrap().to_owned();
    assert_eq!(image, format!("runbox-snapshot/{id}:latest"));
    assert_eq!(s.get(&format!("/api/sandboxes/{id}")).code(), "not_found");
    let r = create(&s, &json!({"snapshot": image}));
    assert_eq!(r.status, 201, "{}", r.text());
    let id2 = r.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(id2, id);
    let st = sh(
        &s,
        &id2,
        "cat /work/state made.txt; ls /usr/moved | wc -l; ls -d /usr/bin 2>&1 || true",
    );
    assert_eq!(
        st["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .take(3)
            .collect::<Vec<_>>(),
        ["41", "made", moved.as_str()],
        "{st}"
    );
    assert!(
        st["stdout"].as_str().unwrap().contains("No such file"),
        "{st}"
    );

    // Delete: gone, its processes and cgroups with it.
    assert_eq!(delete(&s, &id2).status, 204);
    assert_eq!(
        exec(&s, &id2, &json!({"argv": ["true"]})).code(),
        "not_found"
    );
    assert_eq!(delete(&s, &id2).code(), "not_found");
    assert!(cgroups_named(&id2).is_empty(), "{:?}", cgroups_named(&id2));
}

#[test]
fn bad_sandbox_requests_are_refused_with_what_to_fix() {
    let rb = Runbox::new().with_busybox();
    let s = server(
        &rb,
        &["--max-sandboxes-per-client", "2", "--max-snapshots", "1"],
    );

    let r = create(&s, &json!({"image": "busybox", "program": "x"}));
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("exactly one of image, program or snapshot"),
        "{}",
        r.text()
    );
    let r = create(&s, &json!({"image": "busybox", "colour": "red"}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("colour"), "{}", r.text());
    let r = create(&s, &json!({"image": "nope:1"}));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = create(&s, &json!({"image": "busybox", "idle_timeout_s": 999999}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("maximum"), "{}", r.text());

    let a = create(&s, &json!({"image": "busybox"})).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = exec(&s, &a, &json!({"argv": []}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("argv is empty"), "{}", r.text());
    let r = exec(
        &s,
        &a,
        &json!({"argv": ["true"], "limits": {"memory_bytes": 1}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.send(
        "PUT",
        &format!("/api/sandboxes/{a}/files/..%2Fescape"),
        s.client()
            .put(format!("{}/api/sandboxes/{a}/files/..%2Fescape", s.url))
            .body("x"),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // The per-client maximum.
    let b = create(&s, &json!({"image": "busybox"}));
    assert_eq!(b.status, 201);
    let c = create(&s, &json!({"image": "busybox"}));
    assert_eq!(c.status, 429, "{}", c.text());
    assert_eq!(c.code(), "too_many_sandboxes");

    // Listing is for admins; naming a snapshot too.
    assert_eq!(s.get("/api/sandboxes").status, 401);
    let list = s.send(
        "GET",
        "/api/sandboxes",
        s.client()
            .get(format!("{}/api/sandboxes", s.url))
            .bearer_auth(&s.admin_token),
    );
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["sandboxes"].as_array().unwrap().len(), 2);
    let r = s.post_json(
        &format!("/api/sandboxes/{a}/snapshot"),
        &json!({"name": "busybox"}),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // ...and the refused request changed nothing: the sandbox still runs.
    assert_eq!(sh(&s, &a, "echo still")["stdout"], "still\n");

    // The store holds at most --max-snapshots sandbox snapshots.
    let first = s.post_json(&format!("/api/sandboxes/{a}/snapshot"), &json!({}));
    assert_eq!(first.status, 201, "{}", first.text());
    let b = b.json()["id"].as_str().unwrap().to_owned();
    let second = s.post_json(&format!("/api/sandboxes/{b}/snapshot"), &json!({}));
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(
        second.text().contains("--max-snapshots"),
        "{}",
        second.text()
    );
    assert_eq!(sh(&s, &b, "echo alive")["stdout"], "alive\n");
}

#[test]
fn idle_sandboxes_are_reaped_leaving_nothing_behind() {
    let rb = Runbox::new().with_busybox();
    let s = server(&rb, &["--sandbox-idle-timeout", "1s"]);
    let id = create(&s, &json!({"image": "busybox"})).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = exec(
        &s,
        &id,
        &json!({"argv": ["sh", "-c", "sleep 1000 & echo $!"], "keep_running": true}),
    );
    assert_eq!(d.status, 200, "{}", d.text());
    assert!(!cgroups_named(&id).is_empty(), "the sandbox has a cgroup");
    // The reaper runs every 5 s; the sandbox goes at its next pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.get(&format!("/api/sandboxes/{id}")).status == 200 {
        assert!(Instant::now() < deadline, "not reaped: {}", s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cgroups_named(&id).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", cgroups_named(&id));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.log().contains("live sandbox expired"), "{}", s.log());
}

#[test]
fn the_sandbox_command_drives_a_server() {
    let rb = Runbox::new().with_busybox();
    let s = server(&rb, &[]);
    let cmd = |args: &[&str]| {
        let mut c = rb.cmd(&["sandbox", "--server", &s.url]);
        c.args(args);
        c.output().unwrap()
    };
    let out = cmd(&["create", "--image", "busybox"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(
        id.len(),
        s.get(&format!("/api/sandboxes/{id}")).json()["id"]
            .as_str()
            .unwrap()
            .len()
    );

    let host = rb.dir.path().join("in.txt");
    std::fs::write(&host, "from a host file\n").unwrap();
    let out = cmd(&["put", &id, host.to_str().unwrap(), "in.txt"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = cmd(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "cat in.txt; echo err >&2; exit 3",
    ]);
    assert_eq!(code(&out), 3, "the exec's exit status");
    assert_eq!(text(&out.stdout), "from a host file\n");
    assert!(text(&out.stderr).contains("err"));
    let out = cmd(&["get", &id, "in.txt"]);
    assert_eq!(text(&out.stdout), "from a host file\n");
    let out = cmd(&["ls", "--json", "--token", &s.admin_token]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["sandboxes"][0]["id"], id.as_str());
    let out = cmd(&["rm", &id]);
    assert_eq!(code(&out), 0);
    let out = cmd(&["exec", &id, "--", "true"]);
    assert_ne!(code(&out), 0);
    assert!(
        text(&out.stderr).contains("no live sandbox"),
        "{}",
        text(&out.stderr)
    );
    let out = cmd(&["exec", &id, "--json", "--", "true"]);
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let out = rb
        .cmd(&[
            "sandbox",
            "--server",
            "http://127.0.0.1:9",
            "create",
            "--image",
            "busybox",
        ])
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("cannot reach the server"),
        "{}",
        text(&out.stderr)
    );
}

/// A catalog with one system: a shell "database" over a generated dataset. Its
/// answers come from state made at provision time; `seed` is re-made per clone.
fn test_catalog(dir: &Path) -> PathBuf {
    let cat = dir.join("catalog");
    for d in ["programs", "systems", "datasets"] {
        std::fs::create_dir_all(cat.join(d)).unwrap();
    }
    let nums: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    let sha = hex(&sha2::Sha256::digest(nums.as_bytes()));
    std::fs::write(
        cat.join("datasets/nums.toml"),
        format!(
            r#"name = "nums"
description = "1 to 5000"
file = "nums.txt"
sha256 = "{sha}"
size = {size}
rows = 5000

[generate]
image = {{ reference = "busybox" }}
argv = ["sh", "-c", "seq 1 5000 > nums.txt"]
output = "nums.txt"
"#,
            size = nums.len()
        ),
    )
    .unwrap();
    std::fs::write(
        cat.join("systems/kv.toml"),
        r#"id = "kv"
name = "KV"
version = "1"
description = "a shell database"
category = "databases"
image = { reference = "busybox" }
user = "root"
state = "disk"
datasets = ["nums"]
query_mime = "text/plain"
answer_mime = "text/plain"

[scripts]
load = '''
set -e
mkdir -p /var/lib/kv
wc -l < /datasets/nums/nums.txt | tr -d ' ' > /var/lib/kv/count
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > /var/lib/kv/seed
'''
clone = 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n" > /var/lib/kv/seed'
query = '''
read -r q
case "$q" in
  count) cat /var/lib/kv/count ;;
  seed) cat /var/lib/kv/seed; echo ;;
  host) hostname ;;
  slow) sleep 60; echo late ;;
  *) echo "unknown query: $q" >&2; exit 2 ;;
esac
'''

[example]
query = "count"
"#,
    )
    .unwrap();
    cat
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn systems_answer_queries_side_by_side_and_keep_their_instances_to_themselves() {
    let rb = Runbox::new().with_busybox();
    let cat = test_catalog(rb.dir.path());
    let s = TestServer::start(
        Path::new(BIN),
        &rb.data(),
        &[
            "--no-build",
            "--no-warm",
            "--catalog",
            cat.to_str().unwrap(),
            "--pool-size",
            "1",
            "--query-timeout",
            "1s",
        ],
    );
    let list = s.get("/api/systems");
    assert_eq!(list.status, 200, "{}", list.text());
    let kv = &list.json()["systems"][0];
    assert_eq!(kv["id"], "kv");
    assert_eq!(kv["ready"], true);
    assert_eq!(kv["snapshot"], Value::Null, "nothing provisioned yet");
    assert_eq!(kv["datasets"][0]["rows"], 5000);

    // The first query provisions cold; the answer says so.
    let r = s.post_json(
        "/api/systems/query",
        &json!({"systems": ["kv"], "query": "count\n"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let a = &r.json()["answers"][0];
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["result"]["stdout"], "5000\n");
    assert_eq!(a["warm"], false);
    assert_eq!(a["provisioned"]["path"], "cold");
    let instance = a["instance"].as_str().unwrap().to_owned();

    // The next is warm, from the same instance; the system now has a snapshot.
    let r = s.post_json(
        "/api/systems/query",
        &json!({"systems": ["kv"], "query": "count\n"}),
    );
    let a = &r.json()["answers"][0];
    assert_eq!(
        (a["warm"].clone(), a["instance"].clone()),
        (json!(true), json!(instance)),
        "{}",
        s.log()
    );
    assert!(a.get("provisioned").is_none());
    let kv = s.get("/api/systems/kv").json();
    assert_eq!(kv["instances"], 1);
    assert_eq!(kv["snapshot"]["fingerprint"], kv["fingerprint"]);

    // A query the system rejects is an answer with its error, not a failure.
    let r = s.post(&["kv"], "bogus\n");
    let a = &r.json()["answers"][0];
    assert_eq!(
        (a["ok"].clone(), a["result"]["exit_code"].clone()),
        (json!(true), json!(2))
    );
    assert!(a["result"]["stderr"]
        .as_str()
        .unwrap()
        .contains("unknown query"));

    // A query past the server's --query-timeout is cut, and says so; the
    // instance answers the next one.
    let r = s.post(&["kv"], "slow\n");
    let a = &r.json()["answers"][0];
    assert_eq!(a["result"]["status"], "wall_time_limit", "{a}");
    assert_eq!(a["result"]["limits"]["wall_time_ms"], 1000);
    assert_eq!(a["instance"], instance.as_str());
    let r = s.post(&["kv"], "count\n");
    assert_eq!(r.json()["answers"][0]["result"]["stdout"], "5000\n");

    // One system by itself, the query as the raw body.
    let one = s.send(
        "POST",
        "/api/systems/kv/query",
        s.client()
            .post(format!("{}/api/systems/kv/query", s.url))
            .body("host\n"),
    );
    assert_eq!(one.status, 200, "{}", one.text());
    assert!(one.json()["result"]["stdout"]
        .as_str()
        .unwrap()
        .starts_with("kv-"));

    // Bad requests are refused before anything runs.
    for (body, status, what) in [
        (json!({"systems": [], "query": "count"}), 400, "1 to 16"),
        (
            json!({"systems": ["kv", "kv"], "query": "count"}),
            400,
            "twice",
        ),
        (json!({"systems": ["nope"], "query": "count"}), 404, "nope"),
        (json!({"systems": ["kv"], "query": "  "}), 400, "empty"),
        (
            json!({"systems": ["kv"], "query": "x".repeat(200_000)}),
            413,
            "limit",
        ),
        (
            json!({"systems": ["kv"], "query": "count", "x": 1}),
            400,
            "x",
        ),
    ] {
        let r = s.post_json("/api/systems/query", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(what), "{}", r.text());
    }

    // The pool's instance is no client's sandbox: no exec, files, snapshot or delete.
    for r in [
        exec(
            &s,
            &instance,
            &json!({"argv": ["sh", "-c", "echo 0 > /var/lib/kv/count"]}),
        ),
        s.get(&format!("/api/sandboxes/{instance}")),
        s.get(&format!("/api/sandboxes/{instance}/files/x")),
        s.post_json(&format!("/api/sandboxes/{instance}/snapshot"), &json!({})),
        delete(&s, &instance),
    ] {
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.text().contains("warm pool"), "{}", r.text());
    }
    let r = s.post(&["kv"], "count\n");
    assert_eq!(r.json()["answers"][0]["result"]["stdout"], "5000\n");

    // Provisioning is an admin request; forced, it is cold again.
    let r = s.post_json("/api/systems/kv/provision?force=true", &json!({}));
    assert_eq!(r.status, 401);
    let r = s.send(
        "POST",
        "/api/systems/kv/provision?force=true",
        s.client()
            .post(format!("{}/api/systems/kv/provision?force=true", s.url))
            .bearer_auth(&s.admin_token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "cold");

    // A sandbox a client makes from the system is its own: another clone, with
    // its own hostname and seed, and the data made at provision time.
    let mine = create(&s, &json!({"program": "kv"}));
    assert_eq!(mine.status, 201, "{}", mine.text());
    let mine = mine.json();
    let id = mine["id"].as_str().unwrap();
    assert_eq!(mine["system"], "kv");
    let seed_mine = sh(&s, id, "cat /var/lib/kv/seed")["stdout"].clone();
    let seed_pool = s.post(&["kv"], "seed\n").json()["answers"][0]["result"]["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(seed_mine.as_str().unwrap().len(), 32);
    assert_ne!(seed_mine.as_str().unwrap(), seed_pool);
    assert_eq!(sh(&s, id, "cat /var/lib/kv/count")["stdout"], "5000\n");
}

trait Query {
    fn post(&self, systems: &[&str], query: &str) -> Resp;
}

impl Query for TestServer {
    fn post(&self, systems: &[&str], query: &str) -> Resp {
        let r = self.post_json(
            "/api/systems/query",
            &json!({"systems": systems, "query": query}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r
    }
}

/// Host processes whose command line is exactly `cmdline` (NUL-separated).
fn processes_running(cmdline: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline)
        })
        .count()
}

#[test]
fn a_crashed_server_leaves_no_sandbox_running() {
    let rb = Runbox::new().with_busybox();
    let s = server(&rb, &[]);
    let id = create(&s, &json!({"image": "busybox"})).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A number no other test uses: the daemon is found by its command line.
    let marker = format!("sleep {}", 900_000 + std::process::id() % 90_000);
    let d = exec(
        &s,
        &id,
        &json!({"argv": ["sh", "-c", format!("{marker} </dev/null >/dev/null 2>&1 &")], "keep_running": true}),
    );
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(processes_running(&marker), 1, "the daemon runs");
    // SIGKILL: no clean-up code of the server's runs.
    let status = std::process::Command::new("kill")
        .args(["-9", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_running(&marker) > 0 {
        assert!(Instant::now() < deadline, "the sandbox outlived the server");
        std::thread::sleep(Duration::from_millis(50));
    }
}
