//! The access checks that measure the store against the [audit] policy: secrets nobody uses
//! or nobody rotated, more admin tokens than allowed, bursts of refused authentications.

use crate::checks::{FailedAuth, LiveView, StoredSecret};
use crate::model::{CheckResult, Finding, Location, Rule};
use std::collections::{BTreeMap, BTreeSet};
use tcf_config::{BackupSourceKind, Config};

const DAY_MS: i64 = 86_400_000;

/// Secret name → what refers to it (`service api`, `backup source db`).
pub fn secret_users(config: &Config) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |value: &str, who: String| {
        // A malformed reference refers to nothing (config validate reports it).
        let names: BTreeSet<String> = tcf_auth::reference::references(value)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for name in names {
            users.entry(name).or_default().push(who.clone());
        }
    };
    for service in config.services.values() {
        for value in service.env.values() {
            add(value, format!("service {}", service.name));
        }
    }
    if let Some(backup) = &config.backup {
        for source in backup.sources.values() {
            if let BackupSourceKind::Postgres {
                password: Some(p), ..
            }
            | BackupSourceKind::Redis {
                password: Some(p), ..
            } = &source.kind
            {
                add(p, format!("backup source {}", source.name));
            }
        }
    }
    for list in users.values_mut() {
        list.dedup();
    }
    users
}

fn secret_location(secret: &StoredSecret) -> Location {
    Location::resource(format!("secret {}", secret.name))
        .with_uri(format!("secret://{}", secret.name))
}

pub fn unused_secrets(
    rule: &'static Rule,
    config: &Config,
    secrets: &Result<Vec<StoredSecret>, String>,
) -> Result<Vec<Finding>, String> {
    let secrets = secrets.as_ref().map_err(Clone::clone)?;
    let users = secret_users(config);
    Ok(secrets
        .iter()
        .filter(|s| !users.contains_key(&s.name))
        .map(|s| {
            Finding::new(
                rule,
                secret_location(s),
                format!(
                    "the secret {} (set by {}) is referred to by no service's env and no backup source",
                    s.name, s.updated_by
                ),
            )
        })
        .collect())
}

pub fn stale_secrets(
    rule: &'static Rule,
    config: &Config,
    secrets: &Result<Vec<StoredSecret>, String>,
) -> Result<Vec<Finding>, String> {
    let secrets = secrets.as_ref().map_err(Clone::clone)?;
    let now = tcf_backup::time::now_unix_ms();
    let max_days = (config.audit.secret_max_age.as_millis() as i64 / DAY_MS).max(0);
    let max_ms = config.audit.secret_max_age.as_millis() as i64;
    let users = secret_users(config);
    Ok(secrets
        .iter()
        .filter(|s| now - s.updated_ms > max_ms)
        .map(|s| {
            let days = (now - s.updated_ms) / DAY_MS;
            let used = users
                .get(&s.name)
                .map(|u| format!("; used by {}", u.join(", ")))
                .unwrap_or_default();
            Finding::new(
                rule,
                secret_location(s),
                format!(
                    "the secret {} was last set {days} days ago (by {}), more than [audit] secret_max_age ({max_days} days){used}",
                    s.name, s.updated_by
                ),
            )
        })
        .collect())
}

pub fn too_many_admins(rule: &'static Rule, config: &Config, live: &LiveView) -> CheckResult {
    let tokens = match &live.tokens {
        Ok(t) => t,
        Err(why) => return CheckResult::not_run(rule, why.clone()),
    };
    let now = tcf_backup::time::now_unix_ms();
    let admins: Vec<&str> = tokens
        .iter()
        .filter(|t| t.role == "admin" && !t.revoked && t.expires_ms.is_none_or(|e| e > now))
        .map(|t| t.name.as_str())
        .collect();
    let max = config.audit.max_admins as usize;
    let findings = if admins.len() > max {
        vec![Finding::new(
            rule,
            Location::resource("admin tokens"),
            format!(
                "{} live admin tokens ({}), more than [audit] max_admins = {max}",
                admins.len(),
                admins.join(", ")
            ),
        )]
    } else {
        Vec::new()
    };
    CheckResult::ran(rule, findings)
}

/// For each address, the most refusals within any `window_ms` of the last day and when that
/// run ended: addresses whose most reaches `burst`.
pub fn bursts(
    failures: &[FailedAuth],
    now_ms: i64,
    window_ms: i64,
    burst: usize,
) -> BTreeMap<String, (usize, i64)> {
    let mut by_address: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for f in failures.iter().filter(|f| now_ms - f.at_ms <= DAY_MS) {
        by_address.entry(&f.address).or_default().push(f.at_ms);
    }
    let mut found = BTreeMap::new();
    for (address, mut times) in by_address {
        times.sort_unstable();
        let (mut most, mut at, mut start) = (0, 0, 0);
        for end in 0..times.len() {
            while times[end] - times[start] > window_ms {
                start += 1;
            }
            if end + 1 - start > most {
                most = end + 1 - start;
                at = times[end];
            }
        }
        if most >= burst {
            found.insert(address.to_string(), (most, at));
        }
    }
    found
}

pub fn failed_auth_bursts(rule: &'static Rule, config: &Config, live: &LiveView) -> CheckResult {
    let failures = match &live.failed_auths {
        Ok(f) => f,
        Err(why) => return CheckResult::not_run(rule, why.clone()),
    };
    let window = config.audit.failed_auth_window;
    let found = bursts(
        failures,
        tcf_backup::time::now_unix_ms(),
        window.as_millis() as i64,
        config.audit.failed_auth_burst as usize,
    );
    let findings = found
        .into_iter()
        .map(|(address, (count, at))| {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64);
            Finding::new(
                rule,
                Location::resource(format!("address {address}")).with_uri(format!("ip://{address}")),
                format!(
                    "{count} failed authentications from {address} within {} (the last at {}); a burst is {} ([audit] failed_auth_burst)",
                    humantime::format_duration(window),
                    humantime::format_rfc3339_seconds(when),
                    config.audit.failed_auth_burst
                ),
            )
        })
        .collect();
    CheckResult::ran(rule, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: &str, at_ms: i64) -> FailedAuth {
        FailedAuth {
            at_ms,
            address: address.into(),
        }
    }

    #[test]
    fn a_burst_is_enough_failures_from_one_address_within_the_window() {
        let now = 10 * DAY_MS;
        let minute = 60_000;
        let mut failures = Vec::new();
        // 10 from one address within 9 minutes: a burst.
        for i in 0..10 {
            failures.push(at("203.0.113.9", now - 3_600_000 + i * minute));
        }
        // 10 from another, spread over 100 minutes: never 10 within 10 minutes.
        for i in 0..10 {
            failures.push(at("198.51.100.7", now - 7_200_000 + i * 10 * minute + i));
        }
        // 12 from a third, but two days ago: not the last day.
        for i in 0..12 {
            failures.push(at("192.0.2.1", now - 2 * DAY_MS + i));
        }
        let found = bursts(&failures, now, 10 * minute, 10);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["203.0.113.9"]);
        assert_eq!(found["203.0.113.9"], (10, now - 3_600_000 + 9 * minute));
        // One fewer than the burst: nothing.
        assert!(bursts(&failures[1..10], now, 10 * minute, 10).is_empty());
        assert_eq!(
            FailedAuth::address_of_actor("remote 10.1.2.3"),
            Some("10.1.2.3")
        );
        assert_eq!(FailedAuth::address_of_actor("unix alice"), None);
    }
}
