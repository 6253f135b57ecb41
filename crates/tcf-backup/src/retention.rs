//! Which backups to keep, with restic's `forget` semantics: backups are walked newest first;
//! `keep_last` keeps the newest N; each calendar rule (hourly, daily, weekly, monthly, yearly)
//! keeps the newest backup of each of its N newest buckets that hold a backup. Buckets are UTC.
//! On top of the policy, two rules no policy overrides: the newest verified backup and every
//! backup the caller pins (such as the pre-deploy backups of the active and previous release)
//! are never deleted.

use crate::error::BackupError;
use crate::time::Civil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_last: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_hourly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_daily: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_weekly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_monthly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_yearly: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
    }
}

/// What retention needs to know about one backup.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// Unix milliseconds (the manifest's time).
    pub time_ms: i64,
    /// The last verification of this backup passed.
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Why it is kept ("last", "daily 2026-11-25", "newest verified", "pinned"); empty when removed.
    pub reasons: Vec<String>,
}

/// Decide for every candidate, newest first. An empty policy is refused: it would delete
/// everything but the protected backups, which is never what someone meant.
pub fn apply(
    policy: &Policy,
    candidates: &[Candidate],
    pinned: &BTreeSet<String>,
) -> Result<Vec<Decision>, BackupError> {
    if policy.is_empty() {
        return Err(BackupError::Retention(
            "no keep_* rule is set, so every backup would be deleted\nhint: set [backup] retention = { keep_last = 7, keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }".into(),
        ));
    }
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    // Newest first; ties by id so the result never depends on input order.
    sorted.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then_with(|| b.id.cmp(&a.id)));
    let newest_verified = sorted.iter().find(|c| c.verified).map(|c| c.id.clone());

    type BucketFn = fn(Civil) -> String;
    let mut rules: Vec<(&str, u32, BucketFn, Option<String>)> = vec![
        (
            "hourly",
            policy.keep_hourly,
            |c| format!("{:04}-{:02}-{:02}T{:02}", c.year, c.month, c.day, c.hour),
            None,
        ),
        (
            "daily",
            policy.keep_daily,
            |c| format!("{:04}-{:02}-{:02}", c.year, c.month, c.day),
            None,
        ),
        (
            "weekly",
            policy.keep_weekly,
            |c| {
                let (y, w) = c.iso_week();
                format!("{y:04}-W{w:02}")
            },
            None,
        ),
        (
            "monthly",
            policy.keep_monthly,
            |c| format!("{:04}-{:02}", c.year, c.month),
            None,
        ),
        (
            "yearly",
            policy.keep_yearly,
            |c| format!("{:04}", c.year),
            None,
        ),
    ];
    let mut last_left = policy.keep_last;
    let mut decisions = Vec::with_capacity(sorted.len());
    for cand in sorted {
        let mut reasons = Vec::new();
        if last_left > 0 {
            last_left -= 1;
            reasons.push("last".to_string());
        }
        let civil = Civil::from_unix(cand.time_ms.div_euclid(1000));
        for (name, left, bucket, last_bucket) in rules.iter_mut() {
            if *left == 0 {
                continue;
            }
            let b = bucket(civil);
            if last_bucket.as_deref() != Some(b.as_str()) {
                *left -= 1;
                reasons.push(format!("{name} {b}"));
                *last_bucket = Some(b);
            }
        }
        if newest_verified.as_deref() == Some(cand.id.as_str()) {
            reasons.push("newest verified".into());
        }
        if pinned.contains(&cand.id) {
            reasons.push("pinned".into());
        }
        decisions.push(Decision {
            id: cand.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn candidates(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .map(|t| Candidate {
                id: t.to_string(),
                time_ms: parse_rfc3339(t).unwrap() * 1000,
                verified: false,
            })
            .collect()
    }

    fn kept(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| format!("{} [{}]", d.id, d.reasons.join(", ")))
            .collect()
    }

    /// Two backups a day (03:00 and 15:00) from 2026-09-01 to 2026-11-25.
    fn twice_daily() -> Vec<Candidate> {
        let start = parse_rfc3339("2026-09-01T03:00:00Z").unwrap();
        let end = parse_rfc3339("2026-11-25T15:00:00Z").unwrap();
        let mut out = Vec::new();
        let mut t = start;
        while t <= end {
            let c = Civil::from_unix(t);
            out.push(Candidate {
                id: c.rfc3339(),
                time_ms: t * 1000,
                verified: false,
            });
            t += 12 * 3600;
        }
        out
    }

    #[test]
    fn empty_policy_is_refused() {
        let err = apply(
            &Policy::default(),
            &candidates(&["2026-11-25T03:00:00Z"]),
            &BTreeSet::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("every backup would be deleted"), "{err}");
    }

    #[test]
    fn golden_issue_policy() {
        let policy = Policy {
            keep_last: 3,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            ..Policy::default()
        };
        let all = twice_daily();
        let decisions = apply(&policy, &all, &BTreeSet::new()).unwrap();
        assert_eq!(decisions.len(), all.len());
        let expected = vec![
            "2026-11-25T15:00:00Z [last, daily 2026-11-25, weekly 2026-W48, monthly 2026-11]",
            "2026-11-25T03:00:00Z [last]",
            "2026-11-24T15:00:00Z [last, daily 2026-11-24]",
            "2026-11-23T15:00:00Z [daily 2026-11-23]",
            "2026-11-22T15:00:00Z [daily 2026-11-22, weekly 2026-W47]",
            "2026-11-21T15:00:00Z [daily 2026-11-21]",
            "2026-11-20T15:00:00Z [daily 2026-11-20]",
            "2026-11-19T15:00:00Z [daily 2026-11-19]",
            "2026-11-15T15:00:00Z [weekly 2026-W46]",
            "2026-11-08T15:00:00Z [weekly 2026-W45]",
            "2026-10-31T15:00:00Z [monthly 2026-10]",
            "2026-09-30T15:00:00Z [monthly 2026-09]",
        ];
        assert_eq!(kept(&decisions), expected);
    }

    #[test]
    fn never_deletes_newest_verified_or_pinned() {
        let mut all = twice_daily();
        // Only an old backup was ever verified; another old one is a release's pre-deploy backup.
        let verified = "2026-09-10T03:00:00Z";
        let pinned_id = "2026-09-05T15:00:00Z";
        for c in &mut all {
            c.verified = c.id == verified || c.id == "2026-09-02T03:00:00Z";
        }
        let pinned: BTreeSet<String> = [pinned_id.to_string()].into();
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let decisions = apply(&policy, &all, &pinned).unwrap();
        assert_eq!(
            kept(&decisions),
            vec![
                "2026-11-25T15:00:00Z [last]".to_string(),
                format!("{verified} [newest verified]"),
                format!("{pinned_id} [pinned]"),
            ]
        );
        // The older verified backup is not protected: only the newest verified one is.
        assert!(
            !decisions
                .iter()
                .find(|d| d.id == "2026-09-02T03:00:00Z")
                .unwrap()
                .keep
        );
    }

    #[test]
    fn hourly_and_yearly_buckets_and_input_order() {
        let mut all = candidates(&[
            "2025-12-31T23:59:00Z",
            "2026-01-01T00:01:00Z",
            "2026-01-01T00:30:00Z",
            "2026-01-01T01:10:00Z",
            "2024-06-01T00:00:00Z",
        ]);
        all.reverse();
        let policy = Policy {
            keep_hourly: 2,
            keep_yearly: 3,
            ..Policy::default()
        };
        let decisions = apply(&policy, &all, &BTreeSet::new()).unwrap();
        assert_eq!(
            kept(&decisions),
            vec![
                "2026-01-01T01:10:00Z [hourly 2026-01-01T01, yearly 2026]",
                "2026-01-01T00:30:00Z [hourly 2026-01-01T00]",
                "2025-12-31T23:59:00Z [yearly 2025]",
                "2024-06-01T00:00:00Z [yearly 2024]",
            ]
        );
    }
}
