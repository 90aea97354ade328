//! `${name}` and `${env:NAME}` in script strings.

use std::collections::HashMap;

use serde_json::Value;

/// Replaces `${name}` (set by `set`) and `${env:NAME}` (the environment) in every
/// string of `v`, keys included. `$${` stands for a literal `${`. An unknown name
/// is an error naming it.
pub fn interpolate(v: Value, vars: &HashMap<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(expand(&s, vars)?),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| interpolate(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| Ok((expand(&k, vars)?, interpolate(x, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other,
    })
}

fn expand(s: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {s:?}"))?;
            let name = &tail[..end];
            let value = match name.strip_prefix("env:") {
                Some(var) => std::env::var(var).map_err(|_| format!("environment variable {var} is not set (used as ${{{name}}})"))?,
                None => vars.get(name).cloned().ok_or_else(|| {
                    format!("unknown variable ${{{name}}}: set it first with {{\"cmd\":\"set\",\"name\":\"{name}\",\"value\":...}}")
                })?,
            };
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_names_env_and_escapes() {
        let vars = HashMap::from([("img".to_string(), "busybox".to_string())]);
        std::env::set_var("RUNBOX_SCRIPT_TEST_VAR", "from-env");
        let v = interpolate(
            json!({"image": "${img}", "argv": ["echo", "${env:RUNBOX_SCRIPT_TEST_VAR}", "$${img}", "$5"], "n": 3}),
            &vars,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"image": "busybox", "argv": ["echo", "from-env", "${img}", "$5"], "n": 3})
        );
    }

    #[test]
    fn unknown_and_unclosed_names_are_errors() {
        let vars = HashMap::new();
        assert!(interpolate(json!("${nope}"), &vars)
            .unwrap_err()
            .contains("unknown variable ${nope}"));
        assert!(interpolate(json!("${open"), &vars)
            .unwrap_err()
            .contains("unclosed"));
        assert!(interpolate(json!("${env:RUNBOX_SURELY_UNSET_123}"), &vars)
            .unwrap_err()
            .contains("not set"));
    }
}
