//! `runbox image pull` and `runbox image df` through the real binary, against a
//! real registry (docker-registry on loopback, images pushed with skopeo).

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{json, text, Runbox};
use runbox_testkit::oci::busybox_image;
use runbox_testkit::registry::TestRegistry;

#[test]
fn pulled_image_runs_and_df_counts_it() {
    let reg = TestRegistry::start();
    let rb = Runbox::new();
    let layout = busybox_image(rb.dir.path());
    let digest = reg.push(&layout, Some("latest"), "tools/busybox:1.36");
    let reference = format!("{}/tools/busybox:1.36", reg.host());

    let out = rb.run(&["image", "pull", "--plain-http", "--json", &reference]);
    assert!(out.status.success(), "pull failed: {}", text(&out.stderr));
    let report = json(&out);
    assert_eq!(report["image"]["manifest_digest"], digest.to_string());
    assert_eq!(report["image"]["names"][0], reference);
    assert_eq!(report["layers_downloaded"], 1);

    let out = rb.run(&["run", &reference, "--", "echo", "ok"]);
    assert_eq!(text(&out.stdout), "ok\n", "stderr: {}", text(&out.stderr));
    assert!(out.status.success());

    // Pulling again downloads nothing and says so.
    let out = rb.run(&["image", "pull", "--plain-http", &reference]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("up to date"),
        "{}",
        text(&out.stdout)
    );

    let out = rb.run(&["image", "df", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let du = json(&out);
    assert_eq!(du["images"], 1);
    assert_eq!(du["layers"], 1);
    assert_eq!(du["reclaimable_bytes"], 0);
    assert!(du["blobs"].as_u64().unwrap() >= 3, "{du}");
    let out = rb.run(&["image", "df"]);
    assert!(
        text(&out.stdout).contains("reclaimable"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn pull_with_password_on_stdin_and_clear_errors_without() {
    let reg = TestRegistry::start_with_htpasswd("carol", "pa55word");
    let rb = Runbox::new();
    let layout = busybox_image(rb.dir.path());
    reg.push(&layout, Some("latest"), "private/bb:1");
    let reference = format!("{}/private/bb:1", reg.host());
    let pull_with = |password: Option<&str>| {
        let mut args = vec!["image", "pull", "--plain-http", "--json"];
        if password.is_some() {
            args.extend(["--username", "carol", "--password-stdin"]);
        }
        args.push(&reference);
        let mut child = rb
            .cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // No auth file from the machine running the tests.
            .env("HOME", rb.dir.path())
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{}\n", password.unwrap_or("")).as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };

    let out = pull_with(None);
    assert_eq!(out.status.code(), Some(125));
    let err = json(&out);
    assert_eq!(err["error"]["code"], "registry_auth");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--password-stdin"),
        "{err}"
    );
    assert!(rb.images_json().is_empty() || !rb.images_json().contains("private"));

    let out = pull_with(Some("wrong"));
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(json(&out)["error"]["code"], "registry_auth");

    let out = pull_with(Some("pa55word"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&out)["image"]["names"][0], reference);
}

#[test]
fn pull_reads_credentials_from_the_auth_file() {
    let reg = TestRegistry::start_with_htpasswd("dave", "s3cret");
    let rb = Runbox::new();
    let layout = busybox_image(rb.dir.path());
    reg.push(&layout, Some("latest"), "bb:2");
    let auth_file = rb.dir.path().join("auth.json");
    // base64("dave:s3cret")
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZGF2ZTpzM2NyZXQ="}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();

    let out = rb
        .cmd(&[
            "image",
            "pull",
            "--plain-http",
            "--json",
            &format!("{}/bb:2", reg.host()),
        ])
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&out)["layers_downloaded"], 1);
}

#[test]
fn pull_of_an_unknown_tag_exits_125_with_image_not_found() {
    let reg = TestRegistry::start();
    let rb = Runbox::new();

    let out = rb.run(&[
        "image",
        "pull",
        "--plain-http",
        "--json",
        &format!("{}/nothing:here", reg.host()),
    ]);

    assert_eq!(out.status.code(), Some(125));
    assert_eq!(json(&out)["error"]["code"], "image_not_found");
    // The password never goes on the command line: --password-stdin needs --username.
    let out = rb.run(&["image", "pull", "--password-stdin", "x/y:1"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("--username"),
        "{}",
        text(&out.stderr)
    );
}
