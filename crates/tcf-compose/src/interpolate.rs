//! Variable interpolation as compose does it: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alternative}`, `${VAR+alternative}`
//! and `$$` for a literal `$`. Defaults and alternatives may hold interpolations themselves.

use std::collections::BTreeMap;

/// The variables interpolation sees: the shell's environment over the `.env` file, as compose does.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: BTreeMap<String, String>,
}

impl Variables {
    pub fn new() -> Variables {
        Variables::default()
    }

    /// Set a variable unless it is already set (the first source given wins).
    pub fn add_missing(&mut self, name: &str, value: &str) {
        self.values
            .entry(name.to_string())
            .or_insert_with(|| value.to_string());
    }

    /// Set a variable, replacing any value it had.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What interpolating one string found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub value: String,
    /// Variables used without a default that are not set (they become empty, as in compose).
    pub unset: Vec<String>,
}

/// Interpolate `text`. Errors: a `${VAR:?message}` whose variable is missing, or bad syntax.
pub fn interpolate(text: &str, vars: &Variables) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let chars: Vec<char> = text.chars().collect();
    let end = expand(&chars, 0, vars, &mut out, false)?;
    debug_assert_eq!(end, chars.len());
    Ok(out)
}

/// Expand from `start` to the end of the text, or, `nested`, to the `}` that closes a default.
/// Returns the index after what it consumed.
fn expand(
    chars: &[char],
    start: usize,
    vars: &Variables,
    out: &mut Outcome,
    nested: bool,
) -> Result<usize, String> {
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if nested && c == '}' {
            return Ok(i);
        }
        if c != '$' {
            out.value.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.value.push('$');
                i += 2;
            }
            Some('{') => {
                i = braced(chars, i + 2, vars, out)?;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let name_end = name_end(chars, i + 1);
                let name: String = chars[i + 1..name_end].iter().collect();
                match vars.get(&name) {
                    Some(v) => out.value.push_str(v),
                    None => out.unset.push(name),
                }
                i = name_end;
            }
            // A lone `$` (end of text, or before anything that cannot start a name) stays.
            _ => {
                out.value.push('$');
                i += 1;
            }
        }
    }
    if nested {
        return Err("an unclosed ${ (missing })".to_string());
    }
    Ok(i)
}

fn name_end(chars: &[char], from: usize) -> usize {
    let mut j = from;
    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
        j += 1;
    }
    j
}

/// `${...}` starting after the `{`; returns the index after the closing `}`.
fn braced(
    chars: &[char],
    from: usize,
    vars: &Variables,
    out: &mut Outcome,
) -> Result<usize, String> {
    let end = name_end(chars, from);
    let name: String = chars[from..end].iter().collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "invalid interpolation at \"${{{}\": a variable name must start with a letter or _",
            chars[from..chars.len().min(from + 12)]
                .iter()
                .collect::<String>()
        ));
    }
    let value = vars.get(&name);
    let rest = &chars[end..];
    // The operator: "", ":-", "-", ":?", "?", ":+", "+".
    let (op, op_len) = match rest {
        ['}', ..] => {
            match value {
                Some(v) => out.value.push_str(v),
                None => out.unset.push(name),
            }
            return Ok(end + 1);
        }
        [':', o @ ('-' | '?' | '+'), ..] => ((true, *o), 2),
        [o @ ('-' | '?' | '+'), ..] => ((false, *o), 1),
        _ => {
            return Err(format!(
                "invalid interpolation in ${{{name}...}}: expected }}, :-, -, :?, ?, :+ or +"
            ))
        }
    };
    // The word after the operator, itself interpolated (only used when needed, but parsed always).
    let mut word = Outcome::default();
    let close = expand(chars, end + op_len, vars, &mut word, true)?;
    let (colon, kind) = op;
    // With a colon, an empty value counts as unset.
    let set = match value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    match kind {
        '-' => {
            if set {
                out.value.push_str(value.unwrap_or_default());
            } else {
                out.value.push_str(&word.value);
                out.unset.extend(word.unset);
            }
        }
        '?' => {
            if set {
                out.value.push_str(value.unwrap_or_default());
            } else {
                let message = if word.value.is_empty() {
                    format!("required variable {name} is missing a value")
                } else {
                    format!(
                        "required variable {name} is missing a value: {}",
                        word.value
                    )
                };
                return Err(message);
            }
        }
        _ => {
            if set {
                out.value.push_str(&word.value);
                out.unset.extend(word.unset);
            }
        }
    }
    Ok(close + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        let mut v = Variables::new();
        v.add_missing("TAG", "v2");
        v.add_missing("EMPTY", "");
        v.add_missing("HOST", "db");
        v
    }

    fn ok(text: &str) -> String {
        interpolate(text, &vars()).unwrap().value
    }

    #[test]
    fn every_form() {
        assert_eq!(ok("img:${TAG}"), "img:v2");
        assert_eq!(ok("img:$TAG-x"), "img:v2-x");
        assert_eq!(ok("${MISSING:-d}"), "d");
        assert_eq!(ok("${EMPTY:-d}"), "d");
        assert_eq!(ok("${EMPTY-d}"), "");
        assert_eq!(ok("${MISSING-d}"), "d");
        assert_eq!(ok("${TAG:+alt}"), "alt");
        assert_eq!(ok("${EMPTY:+alt}"), "");
        assert_eq!(ok("${EMPTY+alt}"), "alt");
        assert_eq!(ok("${TAG:?need it}"), "v2");
        assert_eq!(ok("cost: $$5 and $"), "cost: $5 and $");
        assert_eq!(
            ok("${MISSING:-postgres://${HOST}:5432}"),
            "postgres://db:5432"
        );
        assert_eq!(ok("${MISSING:-}"), "");
    }

    #[test]
    fn required_and_unset() {
        let e = interpolate("${MISSING:?set MISSING in .env}", &vars()).unwrap_err();
        assert_eq!(
            e,
            "required variable MISSING is missing a value: set MISSING in .env"
        );
        assert!(interpolate("${EMPTY:?}", &vars()).is_err());
        assert_eq!(ok("${EMPTY?}"), "");
        let o = interpolate("a${MISSING}b$OTHER", &vars()).unwrap();
        assert_eq!(o.value, "ab");
        assert_eq!(o.unset, ["MISSING", "OTHER"]);
        assert!(interpolate("${TAG", &vars()).is_err());
        assert!(interpolate("${1X}", &vars()).is_err());
        assert!(interpolate("${TAG!x}", &vars()).is_err());
    }
}
