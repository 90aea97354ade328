//! The commands a script line can hold, as they appear in JSON. Every struct
//! refuses unknown fields, so a typo is an error naming the field, not a silently
//! ignored line.

use std::collections::BTreeMap;

use runbox_core::{LimitsSpec, NetworkPolicy};
use serde::Deserialize;

use crate::expect::ExpectSpec;

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
        }
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
                // `result` picks the target; every other field is a check.
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
                let checks = parse(&cmd, serde_json::Value::Object(checks))?;
                Command::Expect(Box::new(ExpectCmd { result, checks }))
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
    /// Which result (by its `run` name); default: the last one.
    pub result: Option<String>,
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
    pub message: Option<crate::expect::TextCheck>,
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
        ] {
            assert_eq!(parse(v).unwrap().name(), name);
        }
        assert_eq!(COMMANDS.len(), 10);
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
