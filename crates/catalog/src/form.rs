//! A program's options form: fields a web page can render (select, checkbox,
//! number with a range, text with a pattern) and the argv fragments their values
//! become. Values are validated against the field before anything runs, and land
//! in argv as whole elements: nothing is ever interpreted by a shell.

use serde::Serialize;

/// One field of the form.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OptionField {
    /// The key in `--option NAME=VALUE` and in the API's `options` map.
    pub name: String,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(flatten)]
    pub kind: OptionKind,
}

/// What kind of field, with its constraints and argv fragments. `{value}` in a
/// fragment stands for the value given.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OptionKind {
    /// On: `argv` is added. Off: nothing.
    Checkbox { default: bool, argv: Vec<String> },
    /// One of `choices`; each has its own fragments.
    Select {
        default: String,
        choices: Vec<Choice>,
    },
    /// A number in `min..=max` (whole when `integer`).
    Number {
        default: f64,
        min: f64,
        max: f64,
        integer: bool,
        argv: Vec<String>,
    },
    /// Text matching `pattern` (the whole value), at most `max_length` bytes.
    Text {
        default: String,
        pattern: String,
        max_length: usize,
        argv: Vec<String>,
        #[serde(skip)]
        regex: regex::Regex,
    },
}

/// A choice of a select field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Choice {
    pub value: String,
    pub label: String,
    pub argv: Vec<String>,
}

/// A value the form does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown option {name:?}; this program's options: {known}")]
    Unknown { name: String, known: String },
    #[error("option {name}: {value:?} is not one of {allowed}")]
    NotAChoice {
        name: String,
        value: String,
        allowed: String,
    },
    #[error("option {name}: {value:?} is not on or off (use true or false)")]
    NotABool { name: String, value: String },
    #[error("option {name}: {value:?} is not a number")]
    NotANumber { name: String, value: String },
    #[error("option {name}: {value} is out of range {min}..={max}")]
    OutOfRange {
        name: String,
        value: String,
        min: String,
        max: String,
    },
    #[error("option {name}: {value} is not a whole number")]
    NotWhole { name: String, value: String },
    #[error("option {name}: {value:?} does not match the pattern {pattern:?}")]
    NoMatch {
        name: String,
        value: String,
        pattern: String,
    },
    #[error("option {name}: the value is longer than {max} bytes")]
    TooLong { name: String, max: usize },
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn fill(fragments: &[String], value: &str) -> Vec<String> {
    fragments
        .iter()
        .map(|f| f.replace("{value}", value))
        .collect()
}

impl OptionField {
    /// The argv fragments for `value` (the default when `None`), or why the value is
    /// refused.
    pub fn fragments(&self, value: Option<&str>) -> Result<Vec<String>, OptionError> {
        let name = || self.name.clone();
        match &self.kind {
            OptionKind::Checkbox { default, argv } => {
                let on = match value.map(str::trim) {
                    None => *default,
                    Some("true" | "1" | "yes" | "on") => true,
                    Some("false" | "0" | "no" | "off" | "") => false,
                    Some(v) => {
                        return Err(OptionError::NotABool {
                            name: name(),
                            value: v.to_owned(),
                        })
                    }
                };
                Ok(if on { argv.clone() } else { Vec::new() })
            }
            OptionKind::Select { default, choices } => {
                let v = value.unwrap_or(default);
                let c = choices.iter().find(|c| c.value == v).ok_or_else(|| {
                    OptionError::NotAChoice {
                        name: name(),
                        value: v.to_owned(),
                        allowed: choices
                            .iter()
                            .map(|c| c.value.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
                Ok(fill(&c.argv, &c.value))
            }
            OptionKind::Number {
                default,
                min,
                max,
                integer,
                argv,
            } => {
                let n = match value {
                    None => *default,
                    Some(v) => {
                        let n: f64 = v.trim().parse().map_err(|_| OptionError::NotANumber {
                            name: name(),
                            value: v.to_owned(),
                        })?;
                        if !n.is_finite() {
                            return Err(OptionError::NotANumber {
                                name: name(),
                                value: v.to_owned(),
                            });
                        }
                        n
                    }
                };
                if *integer && n.fract() != 0.0 {
                    return Err(OptionError::NotWhole {
                        name: name(),
                        value: fmt_num(n),
                    });
                }
                if n < *min || n > *max {
                    return Err(OptionError::OutOfRange {
                        name: name(),
                        value: fmt_num(n),
                        min: fmt_num(*min),
                        max: fmt_num(*max),
                    });
                }
                Ok(fill(argv, &fmt_num(n)))
            }
            OptionKind::Text {
                default,
                pattern,
                max_length,
                argv,
                regex,
            } => {
                let v = value.unwrap_or(default);
                // An empty text field is an option left out.
                if v.is_empty() {
                    return Ok(Vec::new());
                }
                if v.len() > *max_length {
                    return Err(OptionError::TooLong {
                        name: name(),
                        max: *max_length,
                    });
                }
                if !regex.is_match(v) {
                    return Err(OptionError::NoMatch {
                        name: name(),
                        value: v.to_owned(),
                        pattern: pattern.clone(),
                    });
                }
                Ok(fill(argv, v))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(kind: OptionKind) -> OptionField {
        OptionField {
            name: "f".into(),
            label: "F".into(),
            help: None,
            kind,
        }
    }

    #[test]
    fn checkbox() {
        let f = field(OptionKind::Checkbox {
            default: false,
            argv: vec!["-u".into()],
        });
        assert_eq!(f.fragments(None).unwrap(), Vec::<String>::new());
        assert_eq!(f.fragments(Some("true")).unwrap(), ["-u"]);
        assert!(matches!(
            f.fragments(Some("maybe")),
            Err(OptionError::NotABool { .. })
        ));
    }

    #[test]
    fn select_refuses_unknown_choices() {
        let f = field(OptionKind::Select {
            default: "a".into(),
            choices: vec![
                Choice {
                    value: "a".into(),
                    label: "A".into(),
                    argv: vec![],
                },
                Choice {
                    value: "b".into(),
                    label: "B".into(),
                    argv: vec!["--mode={value}".into()],
                },
            ],
        });
        assert_eq!(f.fragments(Some("b")).unwrap(), ["--mode=b"]);
        let e = f.fragments(Some("c; rm -rf /")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option f: \"c; rm -rf /\" is not one of a, b"
        );
    }

    #[test]
    fn number_range_and_wholeness() {
        let f = field(OptionKind::Number {
            default: 2.0,
            min: 0.0,
            max: 7.0,
            integer: true,
            argv: vec!["--indent".into(), "{value}".into()],
        });
        assert_eq!(f.fragments(None).unwrap(), ["--indent", "2"]);
        assert_eq!(f.fragments(Some("7")).unwrap(), ["--indent", "7"]);
        assert!(matches!(
            f.fragments(Some("8")),
            Err(OptionError::OutOfRange { .. })
        ));
        assert!(matches!(
            f.fragments(Some("1.5")),
            Err(OptionError::NotWhole { .. })
        ));
        assert!(matches!(
            f.fragments(Some("NaN")),
            Err(OptionError::NotANumber { .. })
        ));
        assert!(matches!(
            f.fragments(Some("1e400")),
            Err(OptionError::NotANumber { .. })
        ));
    }

    #[test]
    fn text_must_match_the_whole_pattern() {
        let f = field(OptionKind::Text {
            default: "X".into(),
            pattern: "[A-Z_]+".into(),
            max_length: 12,
            argv: vec!["-D{value}".into()],
            regex: regex::Regex::new("^(?:[A-Z_]+)$").unwrap(),
        });
        assert_eq!(f.fragments(Some("DEBUG")).unwrap(), ["-DDEBUG"]);
        assert!(matches!(
            f.fragments(Some("DEBUG; ls")),
            Err(OptionError::NoMatch { .. })
        ));
        assert!(matches!(
            f.fragments(Some("ABCDEFGHIJKLM")),
            Err(OptionError::TooLong { .. })
        ));
        assert_eq!(
            f.fragments(Some("")).unwrap(),
            Vec::<String>::new(),
            "empty text leaves the option out"
        );
    }
}
