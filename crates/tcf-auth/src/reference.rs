//! `${secret:NAME}` in a service's env value: the value is resolved when an instance starts,
//! and everywhere else (config show, status, events, errors) the reference itself is shown.

pub const REDACTED: &str = "••••••";

/// The names a value refers to, in order; an unterminated or malformed reference is an error
/// (text that names no secret would otherwise reach the instance as is).
pub fn references(value: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    substitute_with(value, |name| {
        names.push(name.to_string());
        Some(String::new())
    })
    .map_err(|e| match e {
        Substitution::Malformed(m) => m,
        Substitution::Missing(n) => n,
    })?;
    Ok(names)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Substitution {
    /// No secret by that name (the name).
    Missing(String),
    /// A reference that is not `${secret:NAME}` (what is wrong).
    Malformed(String),
}

/// `value` with each reference replaced by `lookup(name)`.
pub fn substitute(
    value: &str,
    lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String, Substitution> {
    substitute_with(value, lookup)
}

fn substitute_with(
    value: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String, Substitution> {
    const OPEN: &str = "${secret:";
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(Substitution::Malformed(format!(
                "an unterminated secret reference: `{}` needs a closing `}}`",
                &rest[at..]
            )));
        };
        let name = &after[..end];
        crate::token::check_name("the secret", name).map_err(Substitution::Malformed)?;
        out.push_str(&lookup(name).ok_or_else(|| Substitution::Missing(name.to_string()))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_and_substituted() {
        let v = "postgres://app:${secret:db_pass}@db/${secret:db_name}";
        assert_eq!(references(v).unwrap(), vec!["db_pass", "db_name"]);
        assert_eq!(
            references("plain $HOME ${X}").unwrap(),
            Vec::<String>::new()
        );
        let got = substitute(v, |n| Some(n.to_uppercase())).unwrap();
        assert_eq!(got, "postgres://app:DB_PASS@db/DB_NAME");
        assert_eq!(
            substitute(v, |n| (n == "db_pass").then(|| "x".into())),
            Err(Substitution::Missing("db_name".into()))
        );
        assert!(references("${secret:open")
            .unwrap_err()
            .contains("unterminated"));
        assert!(references("${secret:}").is_err());
        assert!(references("${secret:a b}").is_err());
    }
}
