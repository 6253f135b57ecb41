//! `[backup]`: where backups go, what they hold, when they run and how long they are kept.
//! The logic lives in `tcf-backup`; this is the file's shape and its checks.

use crate::{Dependency, DependencyKind, Diagnostic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub repository: Option<Spanned<String>>,
    #[serde(default)]
    pub recipients: Vec<Spanned<String>>,
    /// An age identity file, for restores and restore-verifies of encrypted backups.
    pub identity: Option<String>,
    pub schedule: Option<Spanned<String>>,
    pub retention: Option<Spanned<Retention>>,
    /// Where pg_dump, pg_dumpall and pg_restore are, if not in /usr/lib/postgresql/MAJOR/bin.
    pub pg_bin_dir: Option<String>,
    #[serde(default)]
    pub sources: BTreeMap<Spanned<String>, RawBackupSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackupSource {
    pub kind: Option<Spanned<String>>,
    pub dependency: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub databases: Option<Vec<String>>,
    pub path: Option<Spanned<String>>,
}

/// restic's keep rules; every one 0 (the default) means the rule is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
}

/// The effective `[backup]`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupConfig {
    pub repository: PathBuf,
    pub recipients: Vec<String>,
    pub identity: Option<PathBuf>,
    /// A five-field cron expression (UTC), checked by `tcf-backup` when it is used.
    pub schedule: Option<String>,
    pub retention: Option<Retention>,
    pub pg_bin_dir: Option<PathBuf>,
    pub sources: BTreeMap<String, BackupSource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSource {
    pub name: String,
    /// The `[dependencies]` entry it was resolved from, if any: services that `depends_on` it
    /// are the ones a restore affects.
    pub dependency: Option<String>,
    #[serde(flatten)]
    pub kind: BackupSourceKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackupSourceKind {
    Postgres {
        host: String,
        port: u16,
        /// Default: the current user.
        user: Option<String>,
        /// As written: plain text or `${secret:NAME}`. Never serialized.
        #[serde(skip)]
        password: Option<String>,
        /// Default: every database but templates.
        databases: Option<Vec<String>>,
    },
    Redis {
        host: String,
        port: u16,
        #[serde(skip)]
        password: Option<String>,
    },
    Directory {
        path: PathBuf,
    },
}

/// `host:port`, `[v6]:port` or `host` (then `default_port`).
fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match text.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None if !text.is_empty() => Some((text.to_string(), default_port)),
        None => None,
    }
}

/// What a `postgres://` or `redis://` URL says: user, password, host, port.
struct ParsedUrl {
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: u16,
}

fn parse_url(url: &str, schemes: &[&str], default_port: u16) -> Option<ParsedUrl> {
    let (scheme, rest) = url.split_once("://")?;
    if !schemes.contains(&scheme) {
        return None;
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((n, p)) => (Some(n.to_string()), Some(p.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = split_host_port(hostport, default_port)?;
    Some(ParsedUrl {
        user: user.filter(|u| !u.is_empty()),
        password,
        host,
        port,
    })
}

/// A cron expression's shape: five fields of digits, names, `*`, `,`, `-` and `/`.
fn cron_shape_ok(expr: &str) -> bool {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/'))
        })
}

pub(crate) fn resolve_backup(
    raw: &RawBackup,
    base_dir: &Path,
    dependencies: &BTreeMap<String, Dependency>,
    errors: &mut Vec<Diagnostic>,
) -> Option<BackupConfig> {
    let Some(repository) = &raw.repository else {
        errors.push(
            Diagnostic::new("[backup] has no repository", None)
                .hint("add repository = \"/var/backups/tcf\" (a directory on local disk or a mounted filesystem)"),
        );
        return None;
    };
    if repository.get_ref().trim().is_empty() {
        errors.push(Diagnostic::new(
            "[backup] repository is empty",
            Some(repository.span()),
        ));
    }
    for r in &raw.recipients {
        if !r.get_ref().starts_with("age1") {
            errors.push(
                Diagnostic::new(
                    format!("{:?} is not an age recipient", r.get_ref()),
                    Some(r.span()),
                )
                .hint(
                    "recipients look like age1…; `age-keygen -y KEYFILE` prints the one for a key",
                ),
            );
        }
    }
    if let Some(s) = &raw.schedule {
        if !cron_shape_ok(s.get_ref()) {
            errors.push(
                Diagnostic::new(format!("schedule {:?} is not a cron expression", s.get_ref()), Some(s.span()))
                    .hint("five fields, minute hour day-of-month month day-of-week (UTC): \"0 3 * * *\" is 03:00 every day"),
            );
        }
    }
    if let Some(r) = &raw.retention {
        if r.get_ref() == &Retention::default() {
            errors.push(
                Diagnostic::new("retention keeps nothing: every backup would be deleted", Some(r.span()))
                    .hint("for example retention = { keep_last = 7, keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }"),
            );
        }
    }
    let mut sources = BTreeMap::new();
    for (key, src) in &raw.sources {
        let name = key.get_ref().clone();
        let kind_text = src.kind.as_ref().map(|k| k.get_ref().as_str());
        let dependency = match &src.dependency {
            Some(d) => match dependencies.get(d.get_ref()) {
                Some(dep) => Some((d, dep)),
                None => {
                    errors.push(
                        Diagnostic::new(format!("backup source {name:?} names the unknown dependency {:?}", d.get_ref()), Some(d.span()))
                            .hint("use the name of a [dependencies.NAME] entry, or url = \"postgres://user@host:port/\""),
                    );
                    continue;
                }
            },
            None => None,
        };
        let need_address = |expected: DependencyKind,
                            scheme: &[&str],
                            default_port: u16,
                            errors: &mut Vec<Diagnostic>|
         -> Option<ParsedUrl> {
            if let Some((d, dep)) = &dependency {
                if dep.kind != expected {
                    errors.push(Diagnostic::new(
                        format!(
                            "backup source {name:?} is {} but the dependency {:?} is {:?}",
                            kind_text.unwrap_or(""),
                            d.get_ref(),
                            dep.kind
                        ),
                        Some(d.span()),
                    ));
                    return None;
                }
                let address = dep.address.clone().unwrap_or_default();
                let Some((host, port)) = split_host_port(&address, default_port) else {
                    errors.push(Diagnostic::new(
                        format!("the dependency {:?} has no usable address", d.get_ref()),
                        Some(d.span()),
                    ));
                    return None;
                };
                return Some(ParsedUrl {
                    user: None,
                    password: None,
                    host,
                    port,
                });
            }
            match &src.url {
                Some(u) => parse_url(u.get_ref(), scheme, default_port).or_else(|| {
                    errors.push(
                        Diagnostic::new(
                            format!("{:?} is not a {} URL", u.get_ref(), scheme[0]),
                            Some(u.span()),
                        )
                        .hint(format!(
                            "for example {}://user@127.0.0.1:{default_port}/",
                            scheme[0]
                        )),
                    );
                    None
                }),
                None => {
                    errors.push(
                        Diagnostic::new(
                            format!("backup source {name:?} has neither dependency nor url"),
                            Some(key.span()),
                        )
                        .hint("add dependency = \"NAME\" (a [dependencies] entry) or url = \"…\""),
                    );
                    None
                }
            }
        };
        let kind = match kind_text {
            Some("postgres") => {
                let Some(u) = need_address(
                    DependencyKind::Postgres,
                    &["postgres", "postgresql"],
                    5432,
                    errors,
                ) else {
                    continue;
                };
                BackupSourceKind::Postgres {
                    host: u.host,
                    port: u.port,
                    user: src.user.clone().or(u.user),
                    password: src.password.clone().or(u.password),
                    databases: src.databases.clone(),
                }
            }
            Some("redis") => {
                let Some(u) = need_address(DependencyKind::Redis, &["redis"], 6379, errors) else {
                    continue;
                };
                BackupSourceKind::Redis {
                    host: u.host,
                    port: u.port,
                    password: src.password.clone().or(u.password),
                }
            }
            Some("directory") => match &src.path {
                Some(p) => BackupSourceKind::Directory {
                    path: base_dir.join(p.get_ref()),
                },
                None => {
                    errors.push(
                        Diagnostic::new(
                            format!("backup source {name:?} of kind directory has no path"),
                            Some(key.span()),
                        )
                        .hint("add path = \"/srv/uploads\""),
                    );
                    continue;
                }
            },
            Some(other) => {
                errors.push(
                    Diagnostic::new(
                        format!("unknown backup source kind {other:?}"),
                        src.kind.as_ref().map(|k| k.span()),
                    )
                    .hint("use postgres, redis or directory"),
                );
                continue;
            }
            None => {
                errors.push(
                    Diagnostic::new(
                        format!("backup source {name:?} has no kind"),
                        Some(key.span()),
                    )
                    .hint("add kind = \"postgres\" (or redis, directory)"),
                );
                continue;
            }
        };
        sources.insert(
            name.clone(),
            BackupSource {
                name,
                dependency: dependency.map(|(d, _)| d.get_ref().clone()),
                kind,
            },
        );
    }
    Some(BackupConfig {
        repository: base_dir.join(repository.get_ref()),
        recipients: raw.recipients.iter().map(|r| r.get_ref().clone()).collect(),
        identity: raw.identity.as_ref().map(|i| base_dir.join(i)),
        schedule: raw.schedule.as_ref().map(|s| s.get_ref().clone()),
        retention: raw.retention.as_ref().map(|r| r.get_ref().clone()),
        pg_bin_dir: raw.pg_bin_dir.as_ref().map(|p| base_dir.join(p)),
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_SHAPE: &str = r#"
[platform]
name = "tcf"

[dependencies.postgres]
kind = "postgres"
address = "127.0.0.1:5432"

[dependencies.redis]
kind = "redis"
address = "127.0.0.1:6379"

[backup]
repository = "/var/backups/tcf"
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
schedule = "0 3 * * *"
retention = { keep_last = 7, keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }

[backup.sources.main]
kind = "postgres"
dependency = "postgres"
user = "tcf"
password = "${secret:pg_password}"
databases = ["tcf_gateway"]

[backup.sources.cache]
kind = "redis"
dependency = "redis"

[backup.sources.uploads]
kind = "directory"
path = "/srv/uploads"

[backup.sources.other]
kind = "postgres"
url = "postgres://me@10.0.0.5:5433/"
"#;

    #[test]
    fn the_issue_shape_resolves() {
        let cfg =
            crate::resolve(Path::new("/etc/tcf/tcf-platform.toml"), ISSUE_SHAPE, None).unwrap();
        let b = cfg.backup.unwrap();
        assert_eq!(b.repository, PathBuf::from("/var/backups/tcf"));
        assert_eq!(b.schedule.as_deref(), Some("0 3 * * *"));
        assert_eq!(b.retention.unwrap().keep_weekly, 4);
        match &b.sources["main"].kind {
            BackupSourceKind::Postgres {
                host,
                port,
                user,
                password,
                databases,
            } => {
                assert_eq!(
                    (host.as_str(), *port, user.as_deref()),
                    ("127.0.0.1", 5432, Some("tcf"))
                );
                assert_eq!(password.as_deref(), Some("${secret:pg_password}"));
                assert_eq!(databases.as_deref(), Some(&["tcf_gateway".to_string()][..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.sources["main"].dependency.as_deref(), Some("postgres"));
        assert!(matches!(
            &b.sources["cache"].kind,
            BackupSourceKind::Redis { port: 6379, .. }
        ));
        assert!(
            matches!(&b.sources["other"].kind, BackupSourceKind::Postgres { port: 5433, user: Some(u), .. } if u == "me")
        );
        // The password never reaches `config show`.
        let shown = serde_json::to_string(&b.sources["main"]).unwrap();
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn mistakes_are_pointed_at() {
        let messages = |text: &str| -> Vec<String> {
            crate::resolve(Path::new("/x/t.toml"), text, None)
                .unwrap_err()
                .into_iter()
                .map(|d| d.message)
                .collect()
        };
        let bad = ISSUE_SHAPE
            .replace("dependency = \"redis\"", "dependency = \"postgres\"")
            .replace(
                "keep_last = 7, keep_daily = 7, keep_weekly = 4, keep_monthly = 6",
                "",
            )
            .replace("kind = \"directory\"", "kind = \"volume\"")
            .replace("schedule = \"0 3 * * *\"", "schedule = \"daily\"");
        let m = messages(&bad);
        assert!(
            m.iter()
                .any(|e| e
                    .contains("\"cache\" is redis but the dependency \"postgres\" is Postgres")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|e| e.contains("retention keeps nothing")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|e| e.contains("unknown backup source kind \"volume\"")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|e| e.contains("not a cron expression")),
            "{m:?}"
        );
        let m = messages(&ISSUE_SHAPE.replace("dependency = \"postgres\"", "dependency = \"pg\""));
        assert!(
            m.iter().any(|e| e.contains("unknown dependency \"pg\"")),
            "{m:?}"
        );
    }

    #[test]
    fn urls_and_addresses() {
        let u = parse_url("postgres://tcf:pw@db.local:5433/x", &["postgres"], 5432).unwrap();
        assert_eq!(
            (
                u.user.as_deref(),
                u.password.as_deref(),
                u.host.as_str(),
                u.port
            ),
            (Some("tcf"), Some("pw"), "db.local", 5433)
        );
        let u = parse_url("redis://127.0.0.1", &["redis"], 6379).unwrap();
        assert_eq!((u.host.as_str(), u.port, u.user), ("127.0.0.1", 6379, None));
        assert!(parse_url("http://x", &["redis"], 6379).is_none());
        assert_eq!(split_host_port("[::1]:5", 1), Some(("::1".into(), 5)));
        assert!(
            cron_shape_ok("0 3 * * *")
                && !cron_shape_ok("0 3 * *")
                && !cron_shape_ok("0 3 * * ; rm")
        );
    }
}
