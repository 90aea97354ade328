//! The commands a script line can hold, as they appear in JSON. Every struct
//! refuses unknown fields, so a typo is an error naming the field, not a silently
//! ignored line.

use std::collections::BTreeMap;

use runbox_core::{CreateSandbox, LimitsSpec, NetworkPolicy};
use serde::Deserialize;

use crate::expect::{ExpectSpec, TextCheck};

/// One parsed script line.
#[derive(Debug, Clone)]
pub enum Command {
    Import(ImportCmd),
    Images,
    Remove(RemoveCmd),
    Gc,
    Run(Box<RunCmd>),
    Expect(Box<ExpectCmd>),
    ExpectError(ExpectErrorCmd),
    Set(SetCmd),
    Repeat(RepeatCmd),
    Parallel(Box<ParallelCmd>),
    SandboxCreate(Box<CreateSandbox>),
    SandboxExec(Box<SandboxExecCmd>),
    SandboxPut(Box<SandboxPutCmd>),
    SandboxGet(SandboxGetCmd),
    SandboxSnapshot(SandboxSnapshotCmd),
    SandboxDelete(SandboxDeleteCmd),
    Sandboxes,
    SystemQuery(Box<SystemQueryCmd>),
    SystemProvision(SystemProvisionCmd),
}

/// The names `cmd` may take.
pub const COMMANDS: &[&str] = &[
    "import",
    "images",
    "remove",
    "gc",
    "run",
    "expect",
    "expect_error",
    "set",
    "repeat",
    "parallel",
    "sandbox_create",
    "sandbox_exec",
    "sandbox_put",
    "sandbox_get",
    "sandbox_snapshot",
    "sandbox_delete",
    "sandboxes",
    "system_query",
    "system_provision",
];

/// Why a line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("a command is a JSON object with a \"cmd\" field")]
    NotACommand,
    #[error("unknown command {0:?}; known: {list}", list = COMMANDS.join(", "))]
    UnknownCommand(String),
    #[error("{cmd}: {message}")]
    Field { cmd: String, message: String },
}

impl Command {
    /// The command's name, for the response line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Import(_) => "import",
            Command::Images => "images",
            Command::Remove(_) => "remove",
            Command::Gc => "gc",
            Command::Run(_) => "run",
            Command::Expect(_) => "expect",
            Command::ExpectError(_) => "expect_error",
            Command::Set(_) => "set",
            Command::Repeat(_) => "repeat",
            Command::Parallel(_) => "parallel",
            Command::SandboxCreate(_) => "sandbox_create",
            Command::SandboxExec(_) => "sandbox_exec",
            Command::SandboxPut(_) => "sandbox_put",
            Command::SandboxGet(_) => "sandbox_get",
            Command::SandboxSnapshot(_) => "sandbox_snapshot",
            Command::SandboxDelete(_) => "sandbox_delete",
            Command::Sandboxes => "sandboxes",
            Command::SystemQuery(_) => "system_query",
            Command::SystemProvision(_) => "system_provision",
        }
    }

    /// Whether the command's result becomes "the last result" (what `set`'s `from`
    /// and `expect`'s `json` read). Checks and control commands keep the one before.
    pub fn records_result(&self) -> bool {
        !matches!(
            self,
            Command::Expect(_)
                | Command::ExpectError(_)
                | Command::Set(_)
                | Command::Repeat(_)
                | Command::Parallel(_)
        )
    }

    /// Parses a command from a JSON object (variables already substituted).
    pub fn from_value(v: serde_json::Value) -> Result<Command, ParseError> {
        let serde_json::Value::Object(mut map) = v else {
            return Err(ParseError::NotACommand);
        };
        let cmd = match map.remove("cmd") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => {
                return Err(ParseError::Field {
                    cmd: "?".into(),
                    message: "\"cmd\" must be a string".into(),
                })
            }
            None => return Err(ParseError::NotACommand),
        };
        let rest = serde_json::Value::Object(map);
        fn parse<T: serde::de::DeserializeOwned>(
            cmd: &str,
            v: serde_json::Value,
        ) -> Result<T, ParseError> {
            serde_json::from_value(v).map_err(|e| ParseError::Field {
                cmd: cmd.to_owned(),
                message: e.to_string(),
            })
        }
        let no_fields = |v: &serde_json::Value| -> Result<(), ParseError> {
            match v.as_object().and_then(|m| m.keys().next()) {
                Some(k) => Err(ParseError::Field {
                    cmd: cmd.clone(),
                    message: format!("unknown field `{k}`: this command takes none"),
                }),
                None => Ok(()),
            }
        };
        Ok(match cmd.as_str() {
            "import" => Command::Import(parse(&cmd, rest)?),
            "images" => {
                no_fields(&rest)?;
                Command::Images
            }
            "remove" => Command::Remove(parse(&cmd, rest)?),
            "gc" => {
                no_fields(&rest)?;
                Command::Gc
            }
            "run" => Command::Run(Box::new(parse(&cmd, rest)?)),
            "expect" => {
                // `result` picks the target, `json` checks its JSON; every other
                // field is a check on a job result.
                let serde_json::Value::Object(mut checks) = rest else {
                    unreachable!("built from a map")
                };
                let result = match checks.remove("result") {
                    None => None,
                    Some(serde_json::Value::String(s)) => Some(s),
                    Some(_) => {
                        return Err(ParseError::Field {
                            cmd,
                            message: "\"result\" must be a string".into(),
                        })
                    }
                };
                let json = match checks.remove("json") {
                    None => BTreeMap::new(),
                    Some(v) => parse::<BTreeMap<String, TextCheck>>(&cmd, v).map_err(|e| {
                        ParseError::Field {
                            cmd: cmd.clone(),
                            message: format!(
                                "\"json\" maps JSON pointers (\"/files/0/size\") to text checks: {e}"
                            ),
                        }
                    })?,
                };
                if let Some(p) = json.keys().find(|p| !p.is_empty() && !p.starts_with('/')) {
                    return Err(ParseError::Field {
                        cmd,
                        message: format!(
                            "\"json\": {p:?} is not a JSON pointer (they start with \"/\")"
                        ),
                    });
                }
                let job_checks = !checks.is_empty();
                let checks = parse(&cmd, serde_json::Value::Object(checks))?;
                Command::Expect(Box::new(ExpectCmd {
                    result,
                    json,
                    job_checks,
                    checks,
                }))
            }
            "expect_error" => Command::ExpectError(parse(&cmd, rest)?),
            "set" => {
                let s: SetCmd = parse(&cmd, rest)?;
                if s.value.is_some() == s.from.is_some() {
                    return Err(ParseError::Field {
                        cmd,
                        message: "give exactly one of \"value\" or \"from\"".into(),
                    });
                }
                Command::Set(s)
            }
            "repeat" => Command::Repeat(parse(&cmd, rest)?),
            "parallel" => Command::Parallel(Box::new(parse(&cmd, rest)?)),
            "sandbox_create" => Command::SandboxCreate(Box::new(parse(&cmd, rest)?)),
            "sandbox_exec" => Command::SandboxExec(Box::new(parse(&cmd, rest)?)),
            "sandbox_put" => Command::SandboxPut(Box::new(parse(&cmd, rest)?)),
            "sandbox_get" => Command::SandboxGet(parse(&cmd, rest)?),
            "sandbox_snapshot" => Command::SandboxSnapshot(parse(&cmd, rest)?),
            "sandbox_delete" => Command::SandboxDelete(parse(&cmd, rest)?),
            "sandboxes" => {
                no_fields(&rest)?;
                Command::Sandboxes
            }
            "system_query" => Command::SystemQuery(Box::new(parse(&cmd, rest)?)),
            "system_provision" => Command::SystemProvision(parse(&cmd, rest)?),
            other => return Err(ParseError::UnknownCommand(other.to_owned())),
        })
    }
}

/// `{"cmd":"import","path":"images/busybox","name":"busybox"}`: path relative to the
/// script's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportCmd {
    pub path: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `{"cmd":"remove","image":"busybox"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveCmd {
    pub image: String,
}

/// Bytes given inline as text or base64, or read from a file next to the script.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub base64: Option<String>,
    /// A path relative to the script's directory.
    #[serde(default)]
    pub from: Option<String>,
}

/// stdin: a plain string, or a [`Content`] object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stdin {
    Text(String),
    Content(Content),
}

/// An input file: `{"path": "a.txt", "text": "..."}` (or `base64`, or `from`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCmd {
    pub path: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub base64: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub executable: bool,
}

/// `run`: a JobSpec whose file contents may come from files next to the script,
/// plus a name to refer to the result by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCmd {
    /// Name the result for a later `expect` (the last result is used without one).
    #[serde(default)]
    pub name: Option<String>,
    /// An image, or:
    #[serde(default)]
    pub image: String,
    /// a catalog program, with values for its options.
    #[serde(default)]
    pub program: Option<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stdin: Option<Stdin>,
    #[serde(default)]
    pub inputs: Vec<InputCmd>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub network: NetworkPolicy,
}

/// `expect`: checks on a result.
#[derive(Debug, Clone)]
pub struct ExpectCmd {
    /// Which result (by its `name`); default: the last one.
    pub result: Option<String>,
    /// Checks on the result's JSON, by JSON pointer: any command's result.
    pub json: BTreeMap<String, TextCheck>,
    /// Whether any check besides `json` was given (they need a job result).
    pub job_checks: bool,
    pub checks: ExpectSpec,
}

/// `expect_error`: runs a nested command and succeeds only if it fails (with
/// `code`, and a message matching `message`, when given).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectErrorCmd {
    pub command: serde_json::Value,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<TextCheck>,
}

/// `set`: a named value for `${name}` in later lines, given or taken from the last
/// result by JSON pointer (`"from": "/stdout"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetCmd {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    /// Strip surrounding whitespace (handy for values taken from stdout).
    #[serde(default)]
    pub trim: bool,
}

/// `repeat`: runs a command `count` times in a row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatCmd {
    pub count: u32,
    pub command: serde_json::Value,
}

/// `parallel`: runs `count` copies of a `run` at once and checks each result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelCmd {
    pub count: u32,
    pub command: serde_json::Value,
    #[serde(default)]
    pub expect: Option<ExpectSpec>,
}

/// `sandbox_exec`: one command in a live sandbox; its result is a job result, so
/// `expect` checks it. `stdin` and `inputs` take the same forms as `run`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxExecCmd {
    /// Name the result for a later `expect`.
    #[serde(default)]
    pub name: Option<String>,
    /// The sandbox's id (from `sandbox_create`: `{"cmd":"set","name":"sbx","from":"/id"}`).
    pub sandbox: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stdin: Option<Stdin>,
    #[serde(default)]
    pub inputs: Vec<InputCmd>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Leave what the command started running (daemons) for later execs.
    #[serde(default)]
    pub keep_running: bool,
}

/// `sandbox_put`: writes one file into a live sandbox; the file takes the same
/// fields as a `run` input (`text`, `base64` or `from`; `executable`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxPutCmd {
    pub sandbox: String,
    pub path: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub base64: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub executable: bool,
    /// The file's owner (default: the image's user).
    #[serde(default)]
    pub user: Option<String>,
}

impl SandboxPutCmd {
    /// The file, as a `run` input.
    pub fn input(&self) -> InputCmd {
        InputCmd {
            path: self.path.clone(),
            text: self.text.clone(),
            base64: self.base64.clone(),
            from: self.from.clone(),
            executable: self.executable,
        }
    }
}

/// `sandbox_get`: a file, or every file under a directory, from a live sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxGetCmd {
    pub sandbox: String,
    pub path: String,
}

/// `sandbox_snapshot`: freezes a sandbox's changes into an image (the sandbox ends).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSnapshotCmd {
    pub sandbox: String,
    /// The image's name (default `runbox-snapshot/<id>:latest`).
    #[serde(default)]
    pub name: Option<String>,
}

/// `sandbox_delete`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxDeleteCmd {
    pub sandbox: String,
}

/// `system_query`: one query on a warm instance of a catalog system. `query` takes
/// the same forms as `stdin` (a string, or `text`, `base64` or `from`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemQueryCmd {
    /// Name the answer for a later `expect` (which checks its `result`).
    #[serde(default)]
    pub name: Option<String>,
    pub system: String,
    pub query: Stdin,
}

/// `system_provision`: the system's snapshot, found warm or provisioned cold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemProvisionCmd {
    pub system: String,
    /// Provision cold even when a snapshot matches.
    #[serde(default)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Command, ParseError> {
        Command::from_value(v)
    }

    #[test]
    fn parses_each_command() {
        for (v, name) in [
            (json!({"cmd": "import", "path": "x"}), "import"),
            (json!({"cmd": "images"}), "images"),
            (json!({"cmd": "remove", "image": "x"}), "remove"),
            (json!({"cmd": "gc"}), "gc"),
            (
                json!({"cmd": "run", "image": "x", "limits": {"pids": 3}}),
                "run",
            ),
            (
                json!({"cmd": "expect", "result": "r", "status": "ok"}),
                "expect",
            ),
            (
                json!({"cmd": "expect_error", "command": {"cmd": "gc"}}),
                "expect_error",
            ),
            (json!({"cmd": "set", "name": "a", "value": "b"}), "set"),
            (
                json!({"cmd": "repeat", "count": 2, "command": {"cmd": "gc"}}),
                "repeat",
            ),
            (
                json!({"cmd": "parallel", "count": 2, "command": {"cmd": "run", "image": "x"}}),
                "parallel",
            ),
            (
                json!({"cmd": "sandbox_create", "image": "x", "idle_timeout_s": 5}),
                "sandbox_create",
            ),
            (
                json!({"cmd": "sandbox_create", "snapshot": "s", "limits": {"memory_bytes": 1}}),
                "sandbox_create",
            ),
            (
                json!({"cmd": "sandbox_exec", "sandbox": "s", "argv": ["true"], "stdin": {"from": "f"},
                       "inputs": [{"path": "a", "text": "x"}], "keep_running": true, "name": "n"}),
                "sandbox_exec",
            ),
            (
                json!({"cmd": "sandbox_put", "sandbox": "s", "path": "a", "base64": "eA==", "user": "0"}),
                "sandbox_put",
            ),
            (
                json!({"cmd": "sandbox_get", "sandbox": "s", "path": "a"}),
                "sandbox_get",
            ),
            (
                json!({"cmd": "sandbox_snapshot", "sandbox": "s"}),
                "sandbox_snapshot",
            ),
            (
                json!({"cmd": "sandbox_delete", "sandbox": "s"}),
                "sandbox_delete",
            ),
            (json!({"cmd": "sandboxes"}), "sandboxes"),
            (
                json!({"cmd": "system_query", "system": "pg", "query": "select 1"}),
                "system_query",
            ),
            (
                json!({"cmd": "system_query", "system": "pg", "query": {"from": "q.sql"}}),
                "system_query",
            ),
            (
                json!({"cmd": "system_provision", "system": "pg", "force": true}),
                "system_provision",
            ),
            (
                json!({"cmd": "expect", "json": {"/files/0/size": "3"}}),
                "expect",
            ),
        ] {
            let c = parse(v).unwrap();
            assert_eq!(c.name(), name);
            assert!(COMMANDS.contains(&name), "{name} is not listed in COMMANDS");
        }
        assert_eq!(COMMANDS.len(), 19);
    }

    #[test]
    fn sandbox_and_system_commands_parse_their_fields() {
        let Command::SandboxExec(e) = parse(json!({"cmd": "sandbox_exec", "sandbox": "s1",
            "argv": ["sh", "-c", "x"], "env": {"A": "1"}, "workdir": "/w", "user": "0",
            "stdin": "in", "outputs": ["o"], "limits": {"wall_time_ms": 300}, "keep_running": true}))
        .unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(e.sandbox, "s1");
        assert_eq!(e.argv, ["sh", "-c", "x"]);
        assert_eq!(e.limits.wall_time_ms, Some(300));
        assert!(e.keep_running);
        assert!(matches!(e.stdin, Some(Stdin::Text(ref t)) if t == "in"));

        let Command::SandboxPut(p) = parse(json!({"cmd": "sandbox_put", "sandbox": "s1",
            "path": "bin/x", "text": "#!/bin/sh", "executable": true}))
        .unwrap() else {
            panic!("not a put")
        };
        let i = p.input();
        assert_eq!(
            (i.path.as_str(), i.text.as_deref(), i.executable),
            ("bin/x", Some("#!/bin/sh"), true)
        );

        let Command::SandboxCreate(c) =
            parse(json!({"cmd": "sandbox_create", "program": "pg", "idle_timeout_s": 30})).unwrap()
        else {
            panic!("not a create")
        };
        assert_eq!(c.program.as_deref(), Some("pg"));
        assert_eq!(c.idle_timeout_s, Some(30));

        let Command::SystemQuery(q) =
            parse(json!({"cmd": "system_query", "system": "pg", "query": {"base64": "eA=="}, "name": "a"}))
                .unwrap()
        else {
            panic!("not a query")
        };
        assert!(matches!(q.query, Stdin::Content(ref c) if c.base64.as_deref() == Some("eA==")));
        assert_eq!(q.name.as_deref(), Some("a"));

        let Command::SystemProvision(p) =
            parse(json!({"cmd": "system_provision", "system": "pg"})).unwrap()
        else {
            panic!("not a provision")
        };
        assert!(!p.force);

        let Command::Expect(x) =
            parse(json!({"cmd": "expect", "result": "r", "json": {"/warm": "true"}})).unwrap()
        else {
            panic!("not an expect")
        };
        assert_eq!(x.result.as_deref(), Some("r"));
        assert!(!x.job_checks && x.json.contains_key("/warm"));
        let Command::Expect(x) =
            parse(json!({"cmd": "expect", "json": {"/a": "1"}, "status": "ok"})).unwrap()
        else {
            panic!("not an expect")
        };
        assert!(x.job_checks);
    }

    #[test]
    fn sandbox_and_system_commands_refuse_unknown_and_missing_fields() {
        for (v, want) in [
            (
                json!({"cmd": "sandbox_create", "image": "x", "idle": 5}),
                "unknown field `idle`",
            ),
            (
                json!({"cmd": "sandbox_exec", "sandbox": "s", "argv": ["true"], "keep": true}),
                "unknown field `keep`",
            ),
            (
                json!({"cmd": "sandbox_exec", "argv": ["true"]}),
                "missing field `sandbox`",
            ),
            (
                json!({"cmd": "sandbox_exec", "sandbox": "s"}),
                "missing field `argv`",
            ),
            (
                json!({"cmd": "sandbox_exec", "sandbox": "s", "argv": ["true"], "limits": {"wall": 1}}),
                "unknown field `wall`",
            ),
            (
                json!({"cmd": "sandbox_put", "sandbox": "s", "path": "a", "content": "x"}),
                "unknown field `content`",
            ),
            (
                json!({"cmd": "sandbox_get", "sandbox": "s"}),
                "missing field `path`",
            ),
            (
                json!({"cmd": "sandbox_snapshot", "sandbox": "s", "tag": "x"}),
                "unknown field `tag`",
            ),
            (
                json!({"cmd": "sandbox_delete", "id": "s"}),
                "unknown field `id`",
            ),
            (
                json!({"cmd": "sandboxes", "all": true}),
                "unknown field `all`",
            ),
            (
                json!({"cmd": "system_query", "system": "pg"}),
                "missing field `query`",
            ),
            (
                json!({"cmd": "system_query", "system": "pg", "query": "q", "x": 1}),
                "unknown field `x`",
            ),
            (
                json!({"cmd": "system_provision", "system": "pg", "forced": true}),
                "unknown field `forced`",
            ),
            (
                json!({"cmd": "expect", "json": {"files": "x"}}),
                "not a JSON pointer",
            ),
            (
                json!({"cmd": "expect", "json": ["/a"]}),
                "maps JSON pointers",
            ),
        ] {
            let e = parse(v.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn only_commands_with_a_result_become_the_last_result() {
        for (v, records) in [
            (json!({"cmd": "sandboxes"}), true),
            (
                json!({"cmd": "sandbox_get", "sandbox": "s", "path": "a"}),
                true,
            ),
            (json!({"cmd": "run", "image": "x"}), true),
            (json!({"cmd": "expect", "status": "ok"}), false),
            (json!({"cmd": "set", "name": "a", "value": "b"}), false),
            (
                json!({"cmd": "expect_error", "command": {"cmd": "gc"}}),
                false,
            ),
        ] {
            assert_eq!(parse(v.clone()).unwrap().records_result(), records, "{v}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse(json!([1])).unwrap_err(), ParseError::NotACommand);
        assert_eq!(
            parse(json!({"image": "x"})).unwrap_err(),
            ParseError::NotACommand
        );
        assert_eq!(
            parse(json!({"cmd": "fly"})).unwrap_err(),
            ParseError::UnknownCommand("fly".into())
        );
        let e = parse(json!({"cmd": "run", "image": "x", "limits": {"pid": 3}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `pid`"), "{e}");
        let e = parse(json!({"cmd": "images", "all": true}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `all`"), "{e}");
        let e = parse(json!({"cmd": "set", "name": "a"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one of"), "{e}");
        let e = parse(json!({"cmd": "expect", "stdout": {"matches": "("}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad regex") && e.contains("unclosed group"),
            "{e}"
        );
        let e = parse(json!({"cmd": "expect", "sttus": "ok"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `sttus`"), "{e}");
    }
}
