//! The statement language of `twopc run`: `put KEY VALUE`, `get KEY`,
//! `delete KEY`, one per line or argument.
//!
//! Every statement is parsed before the transaction begins, so a typo never
//! leaves a half-run transaction holding locks. A put's value is the rest of
//! the line after the key, so it may contain spaces.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Put { key: String, value: String },
    Get { key: String },
    Delete { key: String },
}

/// Parses all statements, skipping blank lines and `#` comments. `what`
/// names the source in errors (e.g. "line" or "statement"), numbered from 1.
pub fn parse_all<'a>(lines: impl IntoIterator<Item = &'a str>, what: &str) -> Result<Vec<Statement>, String> {
    let mut out = Vec::new();
    for (n, line) in (1..).zip(lines) {
        match parse(line) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(e) => return Err(format!("{what} {n} ({:?}): {e}", line.trim())),
        }
    }
    Ok(out)
}

/// One statement; `None` for a blank line or a comment.
pub fn parse(line: &str) -> Result<Option<Statement>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (verb, rest) = split_word(line);
    let (key, rest) = split_word(rest);
    if key.is_empty() {
        return Err(format!("`{verb}` needs a key"));
    }
    let key = key.to_string();
    let stmt = match verb.to_ascii_lowercase().as_str() {
        "put" if rest.is_empty() => return Err("`put` needs a key and a value".into()),
        "put" => Statement::Put { key, value: rest.to_string() },
        "get" | "delete" if !rest.is_empty() => {
            return Err(format!("`{verb}` takes only a key, got extra {rest:?}"));
        }
        "get" => Statement::Get { key },
        "delete" => Statement::Delete { key },
        _ => return Err(format!("unknown statement `{verb}`: use put, get or delete")),
    };
    Ok(Some(stmt))
}

/// The first whitespace-separated word and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((w, rest)) => (w, rest.trim()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Statement {
        Statement::Put { key: k.into(), value: v.into() }
    }

    #[test]
    fn good_statements() {
        assert_eq!(parse("put a 1"), Ok(Some(put("a", "1"))));
        assert_eq!(parse("  PUT  a  hello world "), Ok(Some(put("a", "hello world"))));
        assert_eq!(parse("get b"), Ok(Some(Statement::Get { key: "b".into() })));
        assert_eq!(parse("delete c"), Ok(Some(Statement::Delete { key: "c".into() })));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(parse("# comment"), Ok(None));
    }

    #[test]
    fn bad_statements() {
        assert!(parse("put a").unwrap_err().contains("needs a key and a value"));
        assert!(parse("get").unwrap_err().contains("needs a key"));
        assert!(parse("get a b").unwrap_err().contains("only a key"));
        assert!(parse("delete a b").unwrap_err().contains("only a key"));
        assert!(parse("set a 1").unwrap_err().contains("unknown statement `set`"));
    }

    #[test]
    fn errors_name_the_line() {
        let input = "# transfer\nput a 1\n\nputt b 2\n";
        let err = parse_all(input.lines(), "line").unwrap_err();
        assert_eq!(err, "line 4 (\"putt b 2\"): unknown statement `putt`: use put, get or delete");
        let ok = parse_all(input.lines().take(3), "line").unwrap();
        assert_eq!(ok, vec![put("a", "1")]);
    }
}
