//! TCF-SEC-007: the secret scan of the services' directories (`--comprehensive`). Every text
//! file under each process service's program directory and the one above (within the config's
//! directory) is read line by line with the rules of the env checks: a credential's name with
//! a literal value, a URL with a password, a known token format, a PEM private key, a long
//! random-looking string. A finding names the file, the line and the rule, never the value.

use crate::checks::{config_dir, dedup, key_value, service_program};
use crate::model::{Finding, Location, Rule};
use crate::secrets;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use tcf_config::{Config, RuntimeKind};

/// Files larger than this are data, not configuration or code.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Directories that hold history, build output or vendored code, not the service's own files.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    "target",
    "node_modules",
    ".hg",
    ".svn",
    "__pycache__",
];
/// Files of digests and integrity hashes: every line looks random, none is a secret.
const SKIPPED_FILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "poetry.lock",
    "Gemfile.lock",
    "go.sum",
];
/// How deep below a service's directory the scan goes, and how many files it reads at most.
const MAX_DEPTH: usize = 8;
const MAX_FILES: usize = 20_000;
/// Names whose long random-looking values are digests or identifiers, not credentials.
const DIGEST_WORDS: &[&str] = &[
    "HASH",
    "CHECKSUM",
    "DIGEST",
    "SHA",
    "SHA1",
    "SHA256",
    "SHA512",
    "INTEGRITY",
    "ETAG",
    "COMMIT",
    "REV",
    "REVISION",
    "ID",
    "UUID",
    "NONCE",
    "SALT",
];

/// The directories of each process service's program, below the config's directory (a
/// program found on PATH, such as `sh`, is the system's and not scanned).
pub fn service_dirs(config: &Config) -> BTreeSet<PathBuf> {
    let base = config_dir(config);
    let mut dirs = BTreeSet::new();
    for service in config.services.values() {
        if service.runtime != RuntimeKind::Process {
            continue;
        }
        let Some(dir) = service_program(config, service)
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
        else {
            continue;
        };
        let above = dir.parent().map(Path::to_path_buf);
        for d in [Some(dir), above].into_iter().flatten() {
            if d.starts_with(&base) && d != base {
                dirs.insert(d);
            }
        }
    }
    // A directory inside another one is scanned with it.
    let all: Vec<PathBuf> = dirs.iter().cloned().collect();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

pub fn check(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let roots = service_dirs(config);
    if roots.is_empty() {
        return Err(format!(
            "no process service's program lies under the config's directory {} (nothing of the services' own to scan)",
            config_dir(config).display()
        ));
    }
    // TCF-SEC-004 reads the env and compose files right in these directories.
    let env_dirs: BTreeSet<PathBuf> = roots
        .iter()
        .flat_map(|r| {
            let mut v = vec![r.clone()];
            v.extend(
                std::fs::read_dir(r)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
            v
        })
        .collect();
    let mut files = Vec::new();
    for root in &roots {
        walk(root, 0, &mut files);
    }
    files.sort();
    files.dedup();
    let mut findings = Vec::new();
    for file in files.into_iter().take(MAX_FILES) {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if crate::checks::is_env_or_compose_file(name)
            && file.parent().is_some_and(|p| env_dirs.contains(p))
        {
            continue;
        }
        let Some(text) = read_text(&file) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            for (name, why) in scan_line(line) {
                let line_no = number as u32 + 1;
                findings.push(Finding::new(
                    rule,
                    Location::resource(format!("{}:{line_no} {name}", file.display()))
                        .in_file(&file, Some(line_no)),
                    format!("{name} holds a literal credential (value not shown; rule: {why})"),
                ));
            }
        }
    }
    dedup(&mut findings);
    Ok(findings)
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH || files.len() >= MAX_FILES {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Symlinks are not followed: they may lead anywhere, or round.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_ref()) {
                walk(&entry.path(), depth + 1, files);
            }
        } else if kind.is_file() && !SKIPPED_FILES.contains(&name.as_ref()) {
            files.push(entry.path());
        }
    }
}

/// The file's text, or None for a large, binary (a NUL byte) or unreadable file.
pub fn read_text(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_FILE_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).ok()?;
    if bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

fn words_upper(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The name an assignment gives the literal that starts at `before`'s end: `let api_key = `,
/// `"password": `, `token := `, `SECRET=`. None when the literal is not assigned.
fn assigned_name(before: &str) -> Option<&str> {
    let t = before.trim_end();
    let t = [":=", "=>", "=", ":"]
        .iter()
        .find_map(|op| t.strip_suffix(op))?
        .trim_end();
    // `a == "x"` and `a != "x"` compare, they do not assign.
    if t.ends_with(['=', '!', '<', '>']) {
        return None;
    }
    let t = t.trim_end_matches(['"', '\'']);
    let start = t
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
        .map_or(0, |i| i + 1);
    let name = &t[start..];
    (!name.is_empty()).then_some(name)
}

/// Quoted literals in `line`: (text before the opening quote, the content).
fn literals(line: &str) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    let mut rest_at = 0;
    while let Some(open) = line[rest_at..].find(['"', '\'', '`']).map(|i| i + rest_at) {
        let quote = &line[open..open + 1];
        let Some(len) = line[open + 1..].find(quote) else {
            break;
        };
        found.push((&line[..open], &line[open + 1..open + 1 + len]));
        rest_at = open + 1 + len + 1;
    }
    found
}

/// Why a named value is a credential, if it is.
fn judge(name: &str, value: &str) -> Option<&'static str> {
    if secrets::is_credential_key(name) && secrets::is_literal_secret(value) {
        // Short placeholders in code (`password = "x"`) are TCF-SEC-003's business in the
        // config; in a file of code they are too often test values.
        if value.chars().count() >= 6 && !value.contains(char::is_whitespace) {
            return Some("credential keyword in the name");
        }
    }
    if secrets::url_with_password(value).is_some() {
        return Some("URL with a password");
    }
    let why = secrets::secret_shaped(value)?;
    let digest_name = words_upper(name)
        .iter()
        .any(|w| DIGEST_WORDS.contains(&w.as_str()));
    if why.contains("high entropy") && digest_name {
        return None;
    }
    Some(why)
}

/// The credentials on one line: (what names it, which rule), never the value.
pub fn scan_line(line: &str) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    if line.contains("-----BEGIN") && line.contains("PRIVATE KEY-----") {
        found.push(("PEM block".to_string(), "a PEM private key"));
        return found;
    }
    let quoted = literals(line);
    if quoted.is_empty() {
        if let Some((key, value)) = key_value(line) {
            if let Some(why) = judge(key, value) {
                found.push((key.to_string(), why));
            }
        }
        return found;
    }
    for (before, value) in quoted {
        let name = assigned_name(before).unwrap_or("");
        // An unnamed literal counts only by its shape (a token format, a URL's password).
        let why = if name.is_empty() {
            secrets::url_with_password(value)
                .map(|_| "URL with a password")
                .or_else(|| secrets::secret_shaped(value).filter(|w| !w.contains("high entropy")))
        } else {
            judge(name, value)
        };
        if let Some(why) = why {
            let name = if name.is_empty() { "a string" } else { name };
            found.push((name.to_string(), why));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        scan_line(line).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn true_positives_in_code_and_config() {
        assert_eq!(
            names(r#"let db_password = "pw-9f8e7d6c";"#),
            ["db_password"]
        );
        assert_eq!(
            names(r#"  "apiKey": "ghp_abcdefghijklmnopqrstuvwx1234","#),
            ["apiKey"]
        );
        assert_eq!(names(r#"token := "tcfp_0123456789abcdefghij""#), ["token"]);
        assert_eq!(names("SECRET_KEY=Zx81kq0Pa9-longish"), ["SECRET_KEY"]);
        assert_eq!(
            names(r#"connect("postgres://app:s3cret-pw@db/app")"#),
            ["a string"]
        );
        assert_eq!(names("-----BEGIN RSA PRIVATE KEY-----"), ["PEM block"]);
        assert_eq!(
            names(r#"client_secret: 'aZ3kP9qL2mN8xV5tR7wY1cB4dF6gH0jS'"#),
            ["client_secret"]
        );
    }

    #[test]
    fn false_positives_stay_quiet() {
        for line in [
            r#"let password = read_password()?;"#,
            r#"if password == "hunter2x" {"#,
            r#"password = "${DB_PASSWORD}""#,
            r#"password_file = "/run/secrets/db""#,
            r#"checksum = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855""#,
            r#"commit_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855""#,
            r#"println!("enter the password: ");"#,
            r#"url = "https://example.com/docs""#,
            "RUST_LOG=info",
            "// set PASSWORD in the environment",
            r#"let token = "";"#,
        ] {
            assert!(scan_line(line).is_empty(), "{line}: {:?}", scan_line(line));
        }
    }

    #[test]
    fn names_of_assignments() {
        assert_eq!(assigned_name("let api_key = "), Some("api_key"));
        assert_eq!(assigned_name(r#"  "password": "#), Some("password"));
        assert_eq!(assigned_name("self.token ="), Some("self.token"));
        assert_eq!(assigned_name("if a == "), None);
        assert_eq!(assigned_name("call("), None);
    }
}
