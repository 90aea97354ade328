//! The default catalog is valid and queryable; bad manifests are refused with an
//! error naming the field; requests resolve into image jobs as documented.

use runbox_catalog::{extract_default, Catalog, CatalogError, OptionError, Program, Query};
use runbox_core::{Data, InputFile, JobSpec};

fn default_catalog() -> (tempfile::TempDir, Catalog) {
    let d = tempfile::tempdir().unwrap();
    let dir = extract_default(&d.path().join("catalog")).unwrap();
    let c = Catalog::load(dir).unwrap();
    (d, c)
}

#[test]
fn the_default_catalog_loads_with_every_required_program() {
    let (_d, c) = default_catalog();
    let ids: Vec<&str> = c.programs().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        ["c", "cpp", "graphviz", "jq", "python", "sh", "sqlite"]
    );
    for p in c.programs() {
        assert!(!c.image_name(p).is_empty(), "{} has an image", p.id);
        assert!(p.test.is_some(), "{} has a smoke test", p.id);
        for i in &p.inputs {
            assert!(
                i.example.is_some(),
                "{}: input {} has an example",
                p.id,
                i.path
            );
        }
    }
    assert_eq!(c.recipes().len(), 4);
}

#[test]
fn the_default_catalog_has_the_database_systems_over_one_dataset() {
    let (_d, c) = default_catalog();
    let ids: Vec<&str> = c.systems().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["duckdb", "postgres", "sqlite"]);
    let orders = c.dataset("orders").unwrap();
    assert_eq!(orders.mount_path(), "/datasets/orders/orders.csv");
    assert_eq!(orders.generate.output, orders.file);
    // The generator's script is compiled in and read when the catalog loads.
    let gen = orders.generator_inputs();
    assert_eq!(gen[0].path, "gen.py");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalog");
    assert_eq!(
        gen[0].content.0,
        std::fs::read(repo.join("datasets/files/gen.py")).unwrap()
    );
    let example = c.system("postgres").unwrap().example.clone().unwrap().query;
    for s in c.systems() {
        assert_eq!(s.datasets, ["orders"], "{}", s.id);
        assert_eq!(
            (s.query_mime.as_str(), s.answer_mime.as_str()),
            ("application/sql", "text/csv")
        );
        assert!(
            !c.image_name_of(&s.image).is_empty(),
            "{} has an image",
            s.id
        );
        // The same example query everywhere: the systems answer the same SQL.
        assert_eq!(s.example.as_ref().unwrap().query, example, "{}", s.id);
    }
    let recipes: Vec<String> = c.system_recipes().into_iter().map(|r| r.0).collect();
    assert_eq!(recipes, ["base", "duckdb", "postgres", "python"]);
    assert_eq!(
        c.recipe_image_name("postgres"),
        "runbox/postgres:15-bookworm"
    );
    assert!(matches!(
        c.system("nosuch"),
        Err(CatalogError::UnknownSystem(_))
    ));
    // The repository's own directory loads the same way.
    let systems = runbox_catalog::load_systems(&repo).unwrap();
    assert_eq!(systems.len(), 3);
}

#[test]
fn programs_are_found_by_what_they_take_and_produce() {
    let (_d, c) = default_catalog();
    let ids = |q: Query| c.query(&q).iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(Query {
            accepts: Some("text/x-python".into()),
            ..Default::default()
        }),
        ["python"]
    );
    assert_eq!(
        ids(Query {
            produces: Some("image/png".into()),
            ..Default::default()
        }),
        ["graphviz"]
    );
    assert_eq!(
        ids(Query {
            produces: Some("application/json".into()),
            ..Default::default()
        }),
        ["jq"]
    );
    assert_eq!(
        ids(Query {
            accepts: Some("application/json".into()),
            ..Default::default()
        }),
        ["jq"]
    );
    assert_eq!(
        ids(Query {
            category: Some("languages".into()),
            ..Default::default()
        }),
        ["c", "cpp", "python"]
    );
    assert!(ids(Query {
        accepts: Some("video/mp4".into()),
        ..Default::default()
    })
    .is_empty());
}

#[test]
fn extracting_twice_is_a_no_op_and_a_changed_file_is_restored() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("catalog");
    extract_default(&dir).unwrap();
    std::fs::write(dir.join("programs/sh.toml"), "tampered").unwrap();
    std::fs::remove_file(dir.join(".runbox-catalog")).unwrap();
    extract_default(&dir).unwrap();
    assert!(Catalog::load(&dir).is_ok(), "the default files are back");
}

const GOOD: &str = r#"
id = "tool"
name = "Tool"
category = "misc"
version = "1"
description = "A test tool."
image = { reference = "busybox" }
argv = ["tool", "{options}", "in.txt"]

[[inputs]]
path = "in.txt"
mime = "text/plain"
example = "hi"

[[options]]
name = "level"
type = "number"
min = 1
max = 9
default = 5
argv = ["-l", "{value}"]

[[options]]
name = "mode"
type = "select"
choices = [{ value = "a", argv = ["--a"] }, { value = "b", argv = ["--b"] }]

[[outputs]]
path = "out/result.txt"
mime = "text/plain"
"#;

fn with(extra: &str) -> String {
    format!("{GOOD}\n{extra}")
}

#[test]
fn a_good_manifest_parses() {
    let p = Program::from_toml(GOOD).unwrap();
    assert_eq!(p.options.len(), 2);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["options"][0]["type"], "number");
    assert_eq!(json["options"][1]["choices"][1]["value"], "b");
}

#[test]
fn bad_manifests_are_refused_naming_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (with("network = \"host\""), "unknown field `network`"),
        (with("mounts = [\"/etc\"]"), "unknown field `mounts`"),
        (with("privileged = true"), "unknown field `privileged`"),
        (GOOD.replace("id = \"tool\"", "id = \"Tool!\""), "id:"),
        (
            GOOD.replace(
                "image = { reference = \"busybox\" }",
                "image = { reference = \"busybox\", recipe = \"x\" }",
            ),
            "image:",
        ),
        (
            GOOD.replace(
                "image = { reference = \"busybox\" }",
                "image = { reference = \"../etc\" }",
            ),
            "image.reference",
        ),
        (
            GOOD.replace(
                "[\"tool\", \"{options}\", \"in.txt\"]",
                "[\"tool\", \"in.txt\"]",
            ),
            "argv: the program has options",
        ),
        (
            GOOD.replace("path = \"in.txt\"", "path = \"../../etc/passwd\""),
            "inputs[0].path",
        ),
        (
            GOOD.replace("path = \"out/result.txt\"", "path = \"/etc/shadow\""),
            "outputs[0].path",
        ),
        (
            GOOD.replace(
                "mime = \"text/plain\"\nexample",
                "mime = \"Text Plain\"\nexample",
            ),
            "inputs[0].mime",
        ),
        (GOOD.replace("max = 9", "max = 0"), "options[0].min"),
        (
            GOOD.replace("default = 5", "default = 50"),
            "options[0].default",
        ),
        (
            GOOD.replace("type = \"number\"", "type = \"slider\""),
            "options[0].type",
        ),
        (
            GOOD.replace("type = \"select\"", "type = \"select\"\npattern = \"x\""),
            "options[1].pattern: only text options have \"pattern\"",
        ),
        (
            GOOD.replace("type = \"select\"", "type = \"select\"\nargv = [\"-x\"]"),
            "options[1].argv: only checkbox, number, text options have \"argv\"",
        ),
        (
            GOOD.replace("type = \"number\"", "type = \"number\"\nmax_length = 3"),
            "options[0].max_length",
        ),
        (
            with("[[options]]\nname = \"level\"\ntype = \"checkbox\"\nargv = []"),
            "options[2].name",
        ),
        (
            with("[[options]]\nname = \"t\"\ntype = \"text\"\npattern = \"(\"\nargv = []"),
            "options[2].pattern: not a valid regex",
        ),
        (with("[limits]\nmemory = 5"), "unknown field `memory`"),
        (with("[test]\noutputs = [\"nope.txt\"]"), "test.outputs"),
        (
            with("[stdin]\naccepted = false\nexample = \"x\""),
            "stdin.example",
        ),
    ];
    for (text, want) in cases {
        let err = Program::from_toml(&text).expect_err(want).to_string();
        assert!(err.contains(want), "expected {want:?} in {err:?}");
    }
}

fn tool_catalog(extra: &str) -> (tempfile::TempDir, Catalog) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("programs")).unwrap();
    std::fs::write(d.path().join("programs/tool.toml"), with(extra)).unwrap();
    let c = Catalog::load(d.path()).unwrap();
    (d, c)
}

fn request(options: &[(&str, &str)]) -> JobSpec {
    JobSpec {
        program: Some("tool".into()),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_request_resolves_into_an_image_job() {
    let (_d, c) = tool_catalog("[limits]\nwall_time_ms = 1234");
    let r = c
        .resolve(request(&[("level", "7"), ("mode", "b")]))
        .unwrap();
    assert_eq!(r.spec.image, "busybox");
    assert_eq!(r.spec.argv.unwrap(), ["tool", "-l", "7", "--b", "in.txt"]);
    assert_eq!(
        r.spec.entrypoint,
        Some(vec![]),
        "the image's entrypoint does not wrap the program"
    );
    assert_eq!(
        r.spec.inputs[0].content.0, b"hi",
        "the example is used when no input is given"
    );
    assert_eq!(r.spec.outputs, ["out/result.txt"]);
    assert_eq!(r.defaults.wall_time_ms, Some(1234));
    let defaults = c.resolve(request(&[])).unwrap();
    assert_eq!(
        defaults.spec.argv.unwrap(),
        ["tool", "-l", "5", "--a", "in.txt"]
    );
}

#[test]
fn given_inputs_replace_the_examples() {
    let (_d, c) = tool_catalog("");
    let mut req = request(&[]);
    req.inputs = vec![InputFile {
        path: "in.txt".into(),
        content: Data::from("mine"),
        executable: false,
    }];
    assert_eq!(c.resolve(req).unwrap().spec.inputs[0].content.0, b"mine");
}

#[test]
fn option_values_are_validated_never_passed_through() {
    let (_d, c) = tool_catalog("");
    let err = |opts: &[(&str, &str)]| c.resolve(request(opts)).unwrap_err();
    assert!(matches!(
        err(&[("level", "10")]),
        CatalogError::Option(OptionError::OutOfRange { .. })
    ));
    assert!(matches!(
        err(&[("level", "3; rm -rf /")]),
        CatalogError::Option(OptionError::NotANumber { .. })
    ));
    assert!(matches!(
        err(&[("mode", "c")]),
        CatalogError::Option(OptionError::NotAChoice { .. })
    ));
    let e = err(&[("colour", "red")]);
    assert!(
        e.to_string()
            .contains("unknown option \"colour\"; this program's options: level, mode"),
        "{e}"
    );
}

#[test]
fn a_program_request_cannot_carry_its_own_command_image_or_user() {
    let (_d, c) = tool_catalog("");
    for mutate in [
        (|r: &mut JobSpec| r.argv = Some(vec!["sh".into()])) as fn(&mut JobSpec),
        |r| r.image = "other".into(),
        |r| r.entrypoint = Some(vec!["sh".into()]),
        |r| r.user = Some("0".into()),
        |r| r.workdir = Some("/".into()),
        |r| r.stdin = Some(Data::from("x")),
    ] {
        let mut r = request(&[]);
        mutate(&mut r);
        assert!(matches!(c.resolve(r), Err(CatalogError::Request(_))));
    }
    assert!(matches!(
        c.resolve(JobSpec {
            program: Some("nope".into()),
            ..Default::default()
        }),
        Err(CatalogError::UnknownProgram(_))
    ));
}

#[test]
fn an_empty_stdin_to_a_program_that_reads_none_is_no_stdin() {
    let (_d, c) = tool_catalog("");
    let mut r = request(&[]);
    r.stdin = Some(Data::from(""));
    assert_eq!(c.resolve(r).unwrap().spec.stdin, None);
    let mut r = request(&[]);
    r.stdin = Some(Data::from("data"));
    let e = c.resolve(r).unwrap_err();
    assert!(
        e.to_string()
            .contains("does not read stdin, but 4 bytes were given"),
        "{e}"
    );
}

#[test]
fn a_required_input_without_example_must_be_given() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("programs")).unwrap();
    std::fs::write(
        d.path().join("programs/tool.toml"),
        GOOD.replace("example = \"hi\"\n", ""),
    )
    .unwrap();
    let c = Catalog::load(d.path()).unwrap();
    let e = c.resolve(request(&[])).unwrap_err();
    assert!(
        e.to_string().contains("needs the input file \"in.txt\""),
        "{e}"
    );
}

#[test]
fn a_missing_recipe_or_duplicate_id_is_a_load_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("programs")).unwrap();
    std::fs::write(
        d.path().join("programs/a.toml"),
        GOOD.replace(
            "image = { reference = \"busybox\" }",
            "image = { recipe = \"nope\" }",
        ),
    )
    .unwrap();
    assert!(matches!(
        Catalog::load(d.path()),
        Err(CatalogError::MissingRecipe { .. })
    ));
    std::fs::write(d.path().join("programs/a.toml"), GOOD).unwrap();
    std::fs::write(d.path().join("programs/b.toml"), GOOD).unwrap();
    assert!(matches!(
        Catalog::load(d.path()),
        Err(CatalogError::Duplicate { .. })
    ));
}
