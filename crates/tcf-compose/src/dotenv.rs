//! `.env` and `env_file` files as compose reads them: `KEY=VALUE` lines, `#` comments, optional
//! `export `, single quotes (literal), double quotes (escapes, interpolation), unquoted values
//! (interpolated, trailing ` # comment` removed).

use crate::interpolate::{interpolate, Variables};

/// The entries of one file in order. `lookup` resolves `${VAR}` inside values: earlier entries of
/// the same file first, then `outer`.
pub fn parse(text: &str, outer: &Variables) -> Result<Vec<(String, String)>, String> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, raw_line)) = lines.next() {
        let line_no = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, rest)) = line.split_once('=') else {
            // A bare name: compose takes it from the environment; nothing to record here.
            if valid_key(line) {
                continue;
            }
            return Err(format!(
                "line {line_no}: expected KEY=VALUE, found {line:?}"
            ));
        };
        let key = key.trim();
        if !valid_key(key) {
            return Err(format!("line {line_no}: invalid variable name {key:?}"));
        }
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            let mut text = body.to_string();
            // A single-quoted value may span lines.
            while !text.contains('\'') {
                match lines.next() {
                    Some((_, next)) => {
                        text.push('\n');
                        text.push_str(next);
                    }
                    None => return Err(format!("line {line_no}: unclosed ' quote")),
                }
            }
            text[..text.find('\'').unwrap_or(text.len())].to_string()
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut text = body.to_string();
            while closing_double_quote(&text).is_none() {
                match lines.next() {
                    Some((_, next)) => {
                        text.push('\n');
                        text.push_str(next);
                    }
                    None => return Err(format!("line {line_no}: unclosed \" quote")),
                }
            }
            let inner = &text[..closing_double_quote(&text).unwrap_or(text.len())];
            let unescaped = unescape(inner);
            expand(&unescaped, &entries, outer).map_err(|e| format!("line {line_no}: {e}"))?
        } else {
            let value = match rest.find(" #") {
                Some(at) => &rest[..at],
                None => rest,
            }
            .trim_end();
            expand(value, &entries, outer).map_err(|e| format!("line {line_no}: {e}"))?
        };
        entries.retain(|(k, _)| k != key);
        entries.push((key.to_string(), value));
    }
    Ok(entries)
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

fn closing_double_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn expand(value: &str, earlier: &[(String, String)], outer: &Variables) -> Result<String, String> {
    // The file's own earlier entries win over the outer variables for its own values.
    let mut all = outer.clone();
    for (k, v) in earlier {
        all.set(k, v);
    }
    Ok(interpolate(value, &all)?.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let text = "# comment\n\nexport A=1\nB = two words # note\nC='lit $A'\nD=\"x\\n${A}\"\nE=${A}-$B\nF=\nG=\"multi\nline\"\nBARE\n";
        let got = parse(text, &Variables::new()).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "lit $A"),
            ("D", "x\n1"),
            ("E", "1-two words"),
            ("F", ""),
            ("G", "multi\nline"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        assert!(parse("1A=x", &Variables::new()).is_err());
        assert!(parse("A='open", &Variables::new()).is_err());
        assert!(parse("not a line", &Variables::new()).is_err());
    }
}
