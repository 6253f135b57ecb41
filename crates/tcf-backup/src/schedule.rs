//! Five-field cron expressions (`minute hour day-of-month month day-of-week`), evaluated in UTC.
//! Supports `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists, month and weekday
//! names (`jan`, `mon`), `7` for Sunday, and the usual rule that when both day fields are
//! restricted a day matching either runs.

use crate::error::BackupError;
use crate::time::{days_in_month, Civil};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expression: String,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    dom_restricted: bool,
    dow_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(expression: &str) -> Result<Schedule, BackupError> {
        let err = |problem: String| BackupError::Schedule {
            expression: expression.to_string(),
            problem,
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let minutes =
            parse_field(fields[0], 0, 59, &[]).map_err(|p| err(format!("minute: {p}")))?;
        let hours = parse_field(fields[1], 0, 23, &[]).map_err(|p| err(format!("hour: {p}")))?;
        let days_of_month =
            parse_field(fields[2], 1, 31, &[]).map_err(|p| err(format!("day of month: {p}")))?;
        let months =
            parse_field(fields[3], 1, 12, &MONTHS).map_err(|p| err(format!("month: {p}")))?;
        let mut days_of_week = parse_field(fields[4], 0, 7, &WEEKDAYS)
            .map_err(|p| err(format!("day of week: {p}")))?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & !(1 << 7);
        }
        Ok(Schedule {
            expression: expression.to_string(),
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_restricted: !fields[2].starts_with('*'),
            dow_restricted: !fields[4].starts_with('*'),
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    fn day_matches(&self, c: Civil) -> bool {
        let dom = self.days_of_month & (1 << c.day) != 0;
        let dow = self.days_of_week & (1 << c.weekday()) != 0;
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` (Unix seconds) at which the schedule fires, or
    /// `None` if it never does within 5 years (such as `0 0 31 2 *`).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = Civil::from_unix(after - after.rem_euclid(60) + 60);
        let mut day = Civil {
            hour: 0,
            minute: 0,
            second: 0,
            ..start
        };
        for _ in 0..(366 * 5) {
            if self.months & (1 << day.month) != 0 && self.day_matches(day) {
                for hour in 0..24u32 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60u32 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let t = Civil {
                            hour,
                            minute,
                            ..day
                        }
                        .to_unix();
                        if t >= start.to_unix() {
                            return Some(t);
                        }
                    }
                }
            }
            // Next day.
            day = if day.day < days_in_month(day.year, day.month) {
                Civil {
                    day: day.day + 1,
                    ..day
                }
            } else if day.month < 12 {
                Civil {
                    month: day.month + 1,
                    day: 1,
                    ..day
                }
            } else {
                Civil {
                    year: day.year + 1,
                    month: 1,
                    day: 1,
                    ..day
                }
            };
        }
        None
    }
}

fn parse_value(text: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + offset);
    }
    text.parse::<u32>()
        .map_err(|_| format!("{text:?} is not a number"))
}

fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("bad step {s:?}"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (parse_value(a, names, min)?, parse_value(b, names, min)?)
        } else {
            let v = parse_value(range, names, min)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{range:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn next(expr: &str, after: &str) -> String {
        let s = Schedule::parse(expr).unwrap();
        Civil::from_unix(s.next_after(parse_rfc3339(after).unwrap()).unwrap()).rfc3339()
    }

    #[test]
    fn next_times() {
        assert_eq!(
            next("0 3 * * *", "2026-11-25T16:18:24Z"),
            "2026-11-26T03:00:00Z"
        );
        assert_eq!(
            next("0 3 * * *", "2026-11-25T02:59:59Z"),
            "2026-11-25T03:00:00Z"
        );
        // Strictly after: the current minute is not repeated.
        assert_eq!(
            next("0 3 * * *", "2026-11-25T03:00:00Z"),
            "2026-11-26T03:00:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-25T16:18:24Z"),
            "2026-11-25T16:30:00Z"
        );
        assert_eq!(
            next("30 2 * * sun", "2026-11-25T00:00:00Z"),
            "2026-11-29T02:30:00Z"
        );
        assert_eq!(
            next("0 0 1 jan *", "2026-11-25T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(
            next("0 0 1 * 1", "2026-11-25T00:00:00Z"),
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            next("0 12 * * 7", "2026-11-25T00:00:00Z"),
            "2026-11-29T12:00:00Z"
        );
        assert_eq!(Schedule::parse("0 0 31 2 *").unwrap().next_after(0), None);
    }

    #[test]
    fn refuses_what_cron_refuses() {
        for bad in [
            "",
            "0 3 * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = Schedule::parse("61 3 * * *").unwrap_err().to_string();
        assert!(e.contains("minute"), "{e}");
    }
}
