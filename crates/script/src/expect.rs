//! Checks on a [`JobResult`]: what `expect` (and `parallel`'s `expect`) can say.

use runbox_core::{JobResult, OutputFile};
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Checks on text. A plain string means `equals`.
#[derive(Debug, Clone, Default)]
pub struct TextCheck {
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub not_contains: Option<String>,
    pub matches: Option<regex::Regex>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextCheckWire {
    #[serde(default)]
    equals: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    not_contains: Option<String>,
    #[serde(default)]
    matches: Option<String>,
}

impl<'de> Deserialize<'de> for TextCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Plain(String),
            Full(TextCheckWire),
        }
        let w = Wire::deserialize(d).map_err(|_| {
            de::Error::custom("expected a string or {equals, contains, not_contains, matches}")
        })?;
        Ok(match w {
            Wire::Plain(s) => TextCheck {
                equals: Some(s),
                ..Default::default()
            },
            Wire::Full(w) => TextCheck {
                equals: w.equals,
                contains: w.contains,
                not_contains: w.not_contains,
                matches: w
                    .matches
                    .map(|r| {
                        regex::Regex::new(&r)
                            .map_err(|e| de::Error::custom(format!("bad regex {r:?}: {e}")))
                    })
                    .transpose()?,
            },
        })
    }
}

impl TextCheck {
    /// Failures, one sentence each, naming `what`.
    fn check(&self, what: &str, got: &str, out: &mut Vec<String>) {
        let shown = shorten(got);
        if let Some(e) = &self.equals {
            if got != e {
                out.push(format!("{what}: expected {}, got {shown}", shorten(e)));
            }
        }
        if let Some(c) = &self.contains {
            if !got.contains(c.as_str()) {
                out.push(format!("{what}: expected to contain {c:?}, got {shown}"));
            }
        }
        if let Some(c) = &self.not_contains {
            if got.contains(c.as_str()) {
                out.push(format!(
                    "{what}: expected not to contain {c:?}, got {shown}"
                ));
            }
        }
        if let Some(r) = &self.matches {
            if !r.is_match(got) {
                out.push(format!("{what}: expected to match /{r}/, got {shown}"));
            }
        }
    }

    /// Checks and returns the failures.
    pub fn failures(&self, what: &str, got: &str) -> Vec<String> {
        let mut v = Vec::new();
        self.check(what, got, &mut v);
        v
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        format!("{s:?}")
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}... ({} bytes)", &s[..end], s.len())
    }
}

/// Numeric bounds. A plain number means exactly that.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            #[serde(default)]
            min: Option<f64>,
            #[serde(default)]
            max: Option<f64>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Exact(f64),
            Range(Range),
        }
        match Wire::deserialize(d)
            .map_err(|_| de::Error::custom("expected a number or {min, max}"))?
        {
            Wire::Exact(v) => Ok(Bound {
                min: Some(v),
                max: Some(v),
            }),
            Wire::Range(r) => Ok(Bound {
                min: r.min,
                max: r.max,
            }),
        }
    }
}

impl Bound {
    fn check(&self, what: &str, got: f64, out: &mut Vec<String>) {
        if self.min.is_some_and(|m| got < m) || self.max.is_some_and(|m| got > m) {
            let want = match (self.min, self.max) {
                (Some(a), Some(b)) if a == b => format!("{a}"),
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => unreachable!("no bound fails"),
            };
            out.push(format!("{what}: expected {want}, got {got}"));
        }
    }
}

/// Checks on a result's JSON: each JSON pointer's value (a string as it is, any
/// other value as compact JSON) against its text check.
pub fn json_failures(
    checks: &std::collections::BTreeMap<String, TextCheck>,
    v: &serde_json::Value,
) -> Vec<String> {
    let mut out = Vec::new();
    for (ptr, check) in checks {
        let what = format!("json {ptr}");
        match v.pointer(ptr) {
            None => out.push(format!("{what}: not in the result")),
            Some(serde_json::Value::String(s)) => check.check(&what, s, &mut out),
            Some(other) => check.check(&what, &other.to_string(), &mut out),
        }
    }
    out
}

/// Checks on one output file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputCheck {
    pub path: String,
    /// The file's text content.
    #[serde(default)]
    pub content: Option<TextCheck>,
    #[serde(default)]
    pub size: Option<Bound>,
    #[serde(default)]
    pub truncated: Option<bool>,
    /// Why it was not collected (a symlink, missing, ...). `null`-free: when given,
    /// the file must have failed to collect.
    #[serde(default)]
    pub error: Option<TextCheck>,
}

/// Checks on usage figures.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageCheck {
    #[serde(default)]
    pub cpu_time_ms: Option<Bound>,
    #[serde(default)]
    pub peak_memory_bytes: Option<Bound>,
}

/// Checks on phase timings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingsCheck {
    #[serde(default)]
    pub setup_ms: Option<Bound>,
    #[serde(default)]
    pub run_ms: Option<Bound>,
    #[serde(default)]
    pub teardown_ms: Option<Bound>,
    #[serde(default)]
    pub total_ms: Option<Bound>,
}

/// Everything `expect` can check; every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    #[serde(default)]
    pub status: Option<String>,
    /// A number, or `null` for "ended by a signal".
    #[serde(default, deserialize_with = "some_option")]
    pub exit_code: Option<Option<i32>>,
    /// e.g. `"SIGKILL"`.
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub stdout: Option<TextCheck>,
    #[serde(default)]
    pub stderr: Option<TextCheck>,
    #[serde(default)]
    pub stdout_truncated: Option<bool>,
    #[serde(default)]
    pub stderr_truncated: Option<bool>,
    #[serde(default)]
    pub stdout_bytes: Option<Bound>,
    #[serde(default)]
    pub stderr_bytes: Option<Bound>,
    /// Limits that must appear in `limits_hit`.
    #[serde(default)]
    pub limits_hit: Option<Vec<String>>,
    #[serde(default)]
    pub outputs: Vec<OutputCheck>,
    #[serde(default)]
    pub usage: Option<UsageCheck>,
    #[serde(default)]
    pub timings: Option<TimingsCheck>,
}

/// Distinguishes a present `null` from an absent field.
fn some_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl ExpectSpec {
    /// Every check that fails on `r`, one sentence each.
    pub fn failures(&self, r: &JobResult) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.status {
            if r.status.as_str() != s {
                out.push(format!(
                    "status: expected {s:?}, got {:?}",
                    r.status.as_str()
                ));
            }
        }
        if let Some(code) = self.exit_code {
            if r.exit_code != code {
                let show = |c: Option<i32>| {
                    c.map_or("null (ended by a signal)".to_owned(), |c| c.to_string())
                };
                out.push(format!(
                    "exit_code: expected {}, got {}",
                    show(code),
                    show(r.exit_code)
                ));
            }
        }
        if let Some(sig) = &self.signal {
            if r.signal_name.as_deref() != Some(sig.as_str()) {
                out.push(format!("signal: expected {sig:?}, got {:?}", r.signal_name));
            }
        }
        if let Some(c) = &self.stdout {
            c.check("stdout", &r.stdout, &mut out);
        }
        if let Some(c) = &self.stderr {
            c.check("stderr", &r.stderr, &mut out);
        }
        for (what, want, got) in [
            (
                "stdout_truncated",
                self.stdout_truncated,
                r.stdout_truncated,
            ),
            (
                "stderr_truncated",
                self.stderr_truncated,
                r.stderr_truncated,
            ),
        ] {
            if want.is_some_and(|w| w != got) {
                out.push(format!(
                    "{what}: expected {}, got {got}",
                    want.unwrap_or_default()
                ));
            }
        }
        if let Some(b) = &self.stdout_bytes {
            b.check("stdout_bytes", r.stdout_bytes as f64, &mut out);
        }
        if let Some(b) = &self.stderr_bytes {
            b.check("stderr_bytes", r.stderr_bytes as f64, &mut out);
        }
        if let Some(want) = &self.limits_hit {
            let got: Vec<String> = r
                .limits_hit
                .iter()
                .map(|l| {
                    serde_json::to_value(l)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect();
            for w in want {
                if !got.contains(w) {
                    out.push(format!(
                        "limits_hit: expected to include {w:?}, got {got:?}"
                    ));
                }
            }
        }
        for oc in &self.outputs {
            match r.outputs.iter().find(|o| o.path == oc.path) {
                None => out.push(format!(
                    "outputs: no output {:?} in the result (was it requested?)",
                    oc.path
                )),
                Some(o) => check_output(oc, o, &mut out),
            }
        }
        if let Some(u) = &self.usage {
            if let Some(b) = &u.cpu_time_ms {
                b.check("usage.cpu_time_ms", r.usage.cpu_time_ms, &mut out);
            }
            if let Some(b) = &u.peak_memory_bytes {
                b.check(
                    "usage.peak_memory_bytes",
                    r.usage.peak_memory_bytes as f64,
                    &mut out,
                );
            }
        }
        if let Some(t) = &self.timings {
            for (what, b, got) in [
                ("timings.setup_ms", &t.setup_ms, r.timings.setup_ms),
                ("timings.run_ms", &t.run_ms, r.timings.run_ms),
                ("timings.teardown_ms", &t.teardown_ms, r.timings.teardown_ms),
                ("timings.total_ms", &t.total_ms, r.timings.total_ms),
            ] {
                if let Some(b) = b {
                    b.check(what, got, &mut out);
                }
            }
        }
        out
    }
}

fn check_output(oc: &OutputCheck, o: &OutputFile, out: &mut Vec<String>) {
    let what = format!("outputs[{:?}]", oc.path);
    if let Some(c) = &oc.error {
        match &o.error {
            Some(e) => c.check(&format!("{what}.error"), e, out),
            None => out.push(format!(
                "{what}: expected it not to be collected, but it was"
            )),
        }
        return;
    }
    if let Some(e) = &o.error {
        out.push(format!("{what}: not collected: {e}"));
        return;
    }
    if let Some(c) = &oc.content {
        let bytes = o.content.as_ref().map(|d| d.as_bytes()).unwrap_or_default();
        c.check(
            &format!("{what}.content"),
            &String::from_utf8_lossy(bytes),
            out,
        );
    }
    if let Some(b) = &oc.size {
        b.check(&format!("{what}.size"), o.size as f64, out);
    }
    if let Some(t) = oc.truncated {
        if t != o.truncated {
            out.push(format!(
                "{what}.truncated: expected {t}, got {}",
                o.truncated
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runbox_core::{Data, JobStatus, LimitKind, Limits, Timings, Usage};
    use serde_json::json;

    fn result() -> JobResult {
        JobResult {
            job_id: "j".into(),
            status: JobStatus::WallTimeLimit,
            exit_code: None,
            signal: Some(9),
            signal_name: Some("SIGKILL".into()),
            stdout: "hello world\n".into(),
            stdout_base64: None,
            stdout_bytes: 12,
            stdout_truncated: false,
            stderr: String::new(),
            stderr_base64: None,
            stderr_bytes: 0,
            stderr_truncated: false,
            outputs: vec![OutputFile {
                path: "o".into(),
                size: 2,
                truncated: false,
                content: Some(Data::from("ok")),
                saved_to: None,
                error: None,
            }],
            limits_hit: vec![LimitKind::WallTime],
            timings: Timings {
                total_ms: 50.0,
                ..Default::default()
            },
            usage: Usage {
                peak_memory_bytes: 1000,
                ..Default::default()
            },
            limits: Limits::default(),
        }
    }

    fn spec(v: serde_json::Value) -> ExpectSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn passing_checks_report_nothing() {
        let s = spec(json!({
            "status": "wall_time_limit", "exit_code": null, "signal": "SIGKILL",
            "stdout": {"contains": "world", "matches": "^hello", "not_contains": "bye"},
            "stdout_bytes": {"min": 1, "max": 12}, "limits_hit": ["wall_time"],
            "outputs": [{"path": "o", "content": "ok", "size": 2}],
            "usage": {"peak_memory_bytes": {"max": 1000}}, "timings": {"total_ms": {"max": 60}}
        }));
        assert_eq!(s.failures(&result()), Vec::<String>::new());
    }

    #[test]
    fn each_failing_check_is_one_sentence() {
        let s = spec(json!({
            "status": "ok", "exit_code": 0, "stdout": "bye", "limits_hit": ["memory"],
            "outputs": [{"path": "o", "content": {"contains": "nope"}}, {"path": "p"}],
            "usage": {"peak_memory_bytes": {"max": 10}}
        }));
        let f = s.failures(&result());
        assert_eq!(f.len(), 7, "{f:#?}");
        assert!(f[0].starts_with("status: expected \"ok\""));
        assert!(f[1].contains("expected 0, got null (ended by a signal)"));
        assert!(f.iter().any(|x| x.contains("no output \"p\"")));
        assert!(f
            .iter()
            .any(|x| x.contains("usage.peak_memory_bytes: expected at most 10, got 1000")));
    }

    #[test]
    fn json_checks_read_pointers_of_any_result() {
        let v =
            json!({"files": [{"path": "a", "size": 3, "content": {"text": "abc"}}], "warm": true});
        let checks: std::collections::BTreeMap<String, TextCheck> = serde_json::from_value(json!({
            "/files/0/content/text": "abc", "/files/0/size": "3", "/warm": {"equals": "true"},
            "/files/0/path": {"matches": "^a$"}
        }))
        .unwrap();
        assert_eq!(json_failures(&checks, &v), Vec::<String>::new());
        let checks: std::collections::BTreeMap<String, TextCheck> = serde_json::from_value(json!({
            "/files/0/size": "4", "/files/1/path": "b", "/warm": "false"
        }))
        .unwrap();
        let f = json_failures(&checks, &v);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(
            f.contains(&"json /files/1/path: not in the result".to_owned()),
            "{f:#?}"
        );
        assert!(
            f.iter()
                .any(|x| x.starts_with("json /files/0/size: expected \"4\", got \"3\"")),
            "{f:#?}"
        );
    }
}
