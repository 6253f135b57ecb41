//! Which env entries hold a credential. Only ever returns where and which rule, never the value.

/// Words that make a key a credential's: `DB_PASSWORD`, `STRIPE_SECRET`, `GITHUB_TOKEN`.
const CREDENTIAL_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PWD",
    "PASS",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "APIKEY",
    "CREDENTIAL",
    "CREDENTIALS",
    "AUTH",
];

/// Two-word names: `API_KEY`, `ACCESS_KEY`, `PRIVATE_KEY`, `SECRET_KEY`, `SIGNING_KEY`.
const KEY_QUALIFIERS: &[&str] = &[
    "API",
    "ACCESS",
    "PRIVATE",
    "SECRET",
    "SIGNING",
    "ENCRYPTION",
    "MASTER",
    "CLIENT",
];

/// A last word that makes the key about a credential rather than one: `PASSWORD_FILE` is a
/// path, `TOKEN_TTL` a duration, `PASSWORD_MIN_LENGTH` a number.
const NOT_A_VALUE: &[&str] = &[
    "FILE",
    "PATH",
    "DIR",
    "TTL",
    "LENGTH",
    "LEN",
    "EXPIRY",
    "EXPIRES",
    "TIMEOUT",
    "HEADER",
    "URL",
    "URI",
    "HOST",
    "PORT",
    "NAME",
    "USER",
    "USERNAME",
    "ENABLED",
    "REQUIRED",
    "ALGORITHM",
    "TYPE",
    "MODE",
    "COUNT",
];

/// Well-known defaults and the passwords in every breach list's first page.
const WEAK: &[&str] = &[
    "password",
    "passw0rd",
    "changeme",
    "change_me",
    "changeit",
    "admin",
    "administrator",
    "root",
    "toor",
    "secret",
    "default",
    "test",
    "testing",
    "guest",
    "letmein",
    "welcome",
    "qwerty",
    "123456",
    "1234567",
    "12345678",
    "123456789",
    "password1",
    "postgres",
    "redis",
    "mysql",
    "example",
    "demo",
];

fn words(key: &str) -> Vec<String> {
    key.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// True when `key` names a credential (by keyword).
pub fn is_credential_key(key: &str) -> bool {
    let words = words(key);
    let Some(last) = words.last() else {
        return false;
    };
    if NOT_A_VALUE.contains(&last.as_str()) {
        return false;
    }
    words.iter().enumerate().any(|(i, w)| {
        CREDENTIAL_WORDS.contains(&w.as_str())
            || (w == "KEY" && i > 0 && KEY_QUALIFIERS.contains(&words[i - 1].as_str()))
    })
}

/// A value that is not a literal secret: empty, a switch or a number, or a reference resolved
/// elsewhere (`${VAR}`, a file under /run/secrets).
pub fn is_literal_secret(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() || v.starts_with("${") || v.starts_with("/run/secrets/") {
        return false;
    }
    let lower = v.to_ascii_lowercase();
    if ["true", "false", "yes", "no", "on", "off", "none", "null"].contains(&lower.as_str()) {
        return false;
    }
    !(v.len() <= 4 && v.chars().all(|c| c.is_ascii_digit()))
}

/// Why a literal secret is weak, if it is (without repeating it).
pub fn weakness(value: &str) -> Option<&'static str> {
    let lower = value.trim().to_ascii_lowercase();
    if WEAK.contains(&lower.as_str()) {
        Some("a well-known default password")
    } else if value.chars().count() < 8 {
        Some("shorter than 8 characters")
    } else if value
        .chars()
        .all(|c| c == value.chars().next().unwrap_or(c))
    {
        Some("one character repeated")
    } else {
        None
    }
}

/// Token formats whose prefix says what they are (the prefix must be followed by at least 16
/// more characters).
const TOKEN_PREFIXES: &[(&str, &str)] = &[
    ("AKIA", "an AWS access key id"),
    ("ASIA", "an AWS temporary access key id"),
    ("ghp_", "a GitHub token"),
    ("gho_", "a GitHub token"),
    ("ghs_", "a GitHub token"),
    ("github_pat_", "a GitHub token"),
    ("glpat-", "a GitLab token"),
    ("sk_live_", "a Stripe secret key"),
    ("rk_live_", "a Stripe secret key"),
    ("xoxb-", "a Slack token"),
    ("xoxp-", "a Slack token"),
    ("sk-", "an API secret key"),
    ("tcfp_", "a TCF Platform API token"),
    ("AGE-SECRET-KEY-1", "an age identity"),
];

/// Bits per character of `s` (Shannon entropy over its characters).
fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = s.chars().count() as f64;
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Why a value looks like a secret whatever its key is called — a known token format, a PEM
/// private key, or a long random-looking string (as gitleaks' generic rule does) — without
/// repeating it. None for references, paths, URLs, UUIDs and digests.
pub fn secret_shaped(value: &str) -> Option<&'static str> {
    let v = value.trim();
    if v.contains("PRIVATE KEY-----") {
        return Some("a PEM private key");
    }
    if v.starts_with("${") || v.contains(char::is_whitespace) {
        return None;
    }
    for (prefix, what) in TOKEN_PREFIXES {
        if v.len() >= prefix.len() + 16
            && v.starts_with(prefix)
            && v[prefix.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            return Some(what);
        }
    }
    if v.len() < 24 || v.contains("://") || v.starts_with('/') || v.contains(':') {
        return None;
    }
    let token_chars = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/=_-.".contains(c));
    let mixed = v.chars().any(|c| c.is_ascii_digit()) && v.chars().any(|c| c.is_ascii_alphabetic());
    if !token_chars || !mixed {
        return None;
    }
    let hex = v.chars().all(|c| c.is_ascii_hexdigit());
    // Random hex tops out at 4 bits a character, base64 at 6: each has its own bar.
    let random = if hex {
        v.len() >= 32 && entropy(v) >= 3.0
    } else {
        entropy(v) >= 4.0
    };
    random.then_some("a long random-looking value (high entropy)")
}

/// `scheme://user:password@host…` with a non-empty password: the user, if any, for the
/// message (never the password).
pub fn url_with_password(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() || password.starts_with("${") {
        return None;
    }
    Some(user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_true_positives() {
        for key in [
            "DB_PASSWORD",
            "POSTGRES_PASSWORD",
            "password",
            "REDIS_PASS",
            "MYSQL_ROOT_PWD",
            "JWT_SECRET",
            "GITHUB_TOKEN",
            "API_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "STRIPE_SECRET_KEY",
            "PRIVATE_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "SMTP_AUTH",
            "client-secret",
            "OPENAI_APIKEY",
        ] {
            assert!(is_credential_key(key), "{key} should be a credential key");
        }
    }

    #[test]
    fn credential_keys_false_positives() {
        for key in [
            "DB_PASSWORD_FILE",
            "TOKEN_TTL",
            "PASSWORD_MIN_LENGTH",
            "TOKENS_SERVICE_URL",
            "KEYBOARD_LAYOUT",
            "PRIMARY_KEY_COLUMN",
            "PASSPORT_ENABLED",
            "SECRETARY_NAME",
            "DB_HOST",
            "PORT",
            "AUTH_HEADER",
            "RUST_LOG",
            "PATH",
            "DB_USER",
            "KEY",
        ] {
            assert!(
                !is_credential_key(key),
                "{key} should not be a credential key"
            );
        }
    }

    #[test]
    fn literal_values() {
        assert!(is_literal_secret("hunter2hunter2"));
        assert!(is_literal_secret("s3cr3t"));
        assert!(!is_literal_secret(""));
        assert!(!is_literal_secret("${DB_PASSWORD}"));
        assert!(!is_literal_secret("/run/secrets/db"));
        assert!(!is_literal_secret("true"));
        assert!(!is_literal_secret("0"));
    }

    #[test]
    fn weak_values() {
        assert_eq!(weakness("changeme"), Some("a well-known default password"));
        assert_eq!(weakness("Password"), Some("a well-known default password"));
        assert_eq!(weakness("abc12"), Some("shorter than 8 characters"));
        assert_eq!(weakness("aaaaaaaaaaaa"), Some("one character repeated"));
        assert_eq!(weakness("v9#Lq2!xPz7w"), None);
    }

    #[test]
    fn secret_shaped_values_true_positives() {
        for (value, why) in [
            ("AKIAIOSFODNN7EXAMPLE1234", "an AWS access key id"),
            ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "a GitHub token"),
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "a Stripe secret key"),
            (
                "tcfp_q7V2mR9xL4kP8sT1wZ6yB3nC5dF0gH2j",
                "a TCF Platform API token",
            ),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "a PEM private key"),
            (
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "a long random-looking value (high entropy)",
            ),
            (
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "a long random-looking value (high entropy)",
            ),
        ] {
            assert_eq!(secret_shaped(value), Some(why), "{value}");
        }
    }

    #[test]
    fn secret_shaped_values_false_positives() {
        for value in [
            "",
            "${secret:stripe}",
            "production",
            "550e8400-e29b-41d4-a716-446655440000",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "/var/lib/tcf-platform/state/instance-logs",
            "https://api.example.com/v1/hooks/incoming",
            "info,tcf_daemon=debug,hyper=warn",
            "tcf_gateway_production_replica",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "com.example.service.gateway.v2",
            "the quick brown fox jumps over it",
        ] {
            assert_eq!(secret_shaped(value), None, "{value}");
        }
    }

    #[test]
    fn urls_with_passwords() {
        assert_eq!(
            url_with_password("postgres://app:hunter2@db:5432/app").as_deref(),
            Some("app")
        );
        assert_eq!(
            url_with_password("redis://:s3cret@127.0.0.1:6379/0").as_deref(),
            Some("")
        );
        // False positives: no password, a placeholder, an @ in the path, not a URL.
        assert_eq!(url_with_password("postgres://app@db/app"), None);
        assert_eq!(
            url_with_password("postgres://app:${DB_PASSWORD}@db/app"),
            None
        );
        assert_eq!(url_with_password("https://example.com/users/@me:1"), None);
        assert_eq!(url_with_password("user:pass@host"), None);
        assert_eq!(url_with_password("http://127.0.0.1:8080/health"), None);
    }
}
