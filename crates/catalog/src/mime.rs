//! MIME type syntax (RFC 6838 `type/subtype`, lowercase, no parameters).

/// Checks `type/subtype`; returns why not.
pub fn check(m: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 127
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&^_.+-".contains(&b))
    };
    match m.split_once('/') {
        Some((t, s)) if ok_part(t) && ok_part(s) => Ok(()),
        _ => Err(format!(
            "{m:?} is not a MIME type like \"text/x-python\" (lowercase type/subtype)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mime_syntax() {
        for ok in [
            "text/plain",
            "text/x-python",
            "application/vnd.sqlite3",
            "image/svg+xml",
        ] {
            assert!(super::check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "text",
            "Text/Plain",
            "text/",
            "/plain",
            "text/plain; charset=utf-8",
            "a/b/c",
            "",
        ] {
            assert!(super::check(bad).is_err(), "{bad}");
        }
    }
}
