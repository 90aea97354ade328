//! `runbox image build` end to end: a real mmdebstrap build, `runbox run` on the
//! image, the cache, and specific errors. Needs root, mmdebstrap and a
//! reachable Debian mirror (`scripts/test` installs mmdebstrap).

mod common;

use common::{code, json, text, Runbox};

const RECIPE: &str = r##"
name = "runbox-test/jq:1"
[debian]
packages = ["jq"]
[[files]]
path = "/usr/local/bin/greet"
mode = 0o755
from = "files/greet"
[[files]]
path = "/opt/runbox-test/data.json"
text = '{"answer": 42}'
[config]
cmd = ["jq", "--version"]
env = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]
working_dir = "/work"
"##;

#[test]
fn a_built_image_runs_and_an_unchanged_recipe_is_served_from_the_cache() {
    let rb = Runbox::new();
    let dir = rb.dir.path().join("recipe");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/greet"), "#!/bin/sh\necho \"hello, $1\"\n").unwrap();
    let recipe = dir.join("jq.toml");
    std::fs::write(&recipe, RECIPE).unwrap();
    let recipe = recipe.to_str().unwrap();
    // In memory: dpkg's synced writes on a shared CI disk triple the time.
    let scratch = ["--scratch-dir", "/dev/shm"];

    let out = rb.run(&[&["image", "build", recipe, "--json"][..], &scratch[..]].concat());
    assert!(out.status.success(), "build failed: {}", text(&out.stderr));
    let report = json(&out);
    assert_eq!(report["cached"], false);
    assert_eq!(report["image"]["names"][0], "runbox-test/jq:1");
    assert_eq!(
        report["image"]["config"]["labels"]["org.runbox.recipe.digest"],
        report["recipe_digest"]
    );

    // The image's Cmd, a package's program, and the added files with their modes.
    let out = rb.run(&["run", "runbox-test/jq:1"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("jq-1."),
        "{}",
        text(&out.stdout)
    );
    let out = rb.run(&["run", "runbox-test/jq:1", "--", "greet", "runbox"]);
    assert_eq!(
        text(&out.stdout),
        "hello, runbox\n",
        "{}",
        text(&out.stderr)
    );
    let out = rb.run(&[
        "run",
        "runbox-test/jq:1",
        "--",
        "sh",
        "-c",
        "stat -c '%a %u:%g %n' /usr/local/bin/greet /opt/runbox-test/data.json && jq .answer /opt/runbox-test/data.json",
    ]);
    assert_eq!(
        text(&out.stdout),
        "755 0:0 /usr/local/bin/greet\n644 0:0 /opt/runbox-test/data.json\n42\n",
        "{}",
        text(&out.stderr)
    );

    // Unchanged: cached, nothing runs (mmdebstrap is not even on the PATH).
    let out = rb
        .cmd(&["image", "build", recipe])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("runbox-test/jq:1: cached "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn build_errors_have_specific_codes_and_messages() {
    let rb = Runbox::new();
    let bad = rb.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[[files]]\npath = \"/a/../b\"\ntext = \"\"\n",
    )
    .unwrap();
    let out = rb.run(&["image", "build", bad.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 125);
    let e = &json(&out)["error"];
    assert_eq!(e["code"], "invalid_argument");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("files[0].path") && msg.contains("'..'"),
        "{msg}"
    );

    let out = rb.run(&["image", "build", "/nonexistent/recipe.toml", "--json"]);
    assert_eq!(json(&out)["error"]["code"], "input_unreadable");

    let good = rb.dir.path().join("good.toml");
    std::fs::write(&good, "name = \"x\"\n").unwrap();
    let out = rb
        .cmd(&["image", "build", good.to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("mmdebstrap is not installed")
            && stderr.contains("apt-get install mmdebstrap"),
        "{stderr}"
    );
}
