//! UTC calendar arithmetic for backup ids, retention buckets and cron schedules: no time zone
//! database, so every bucket and schedule is in UTC (docs/backups.md says so).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A civil UTC date and time, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Civil {
    pub fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86400);
        let rem = secs.rem_euclid(86400);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    pub fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86400
            + self.hour as i64 * 3600
            + self.minute as i64 * 60
            + self.second as i64
    }

    /// 0 = Sunday … 6 = Saturday (cron's numbering).
    pub fn weekday(self) -> u32 {
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) as u32
    }

    /// ISO 8601 week-numbering year and week (weeks start on Monday), as restic's weekly bucket.
    pub fn iso_week(self) -> (i64, u32) {
        let days = days_from_civil(self.year, self.month, self.day);
        let iso_weekday = (days + 3).rem_euclid(7) + 1; // 1 = Monday
        let thursday = days - iso_weekday + 4;
        let (year, _, _) = civil_from_days(thursday);
        let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
        (year, week as u32)
    }

    pub fn rfc3339(self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// RFC 3339 in UTC with milliseconds (`2026-11-25T16:18:24.123Z`): sorts as text, and two
/// backups in one second still have an order.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let c = Civil::from_unix(unix_ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        unix_ms.rem_euclid(1000)
    )
}

/// Parse an RFC 3339 time into Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Parse an RFC 3339 time (as written in manifests) into Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

pub fn days_in_month(year: i64, month: u32) -> u32 {
    let next = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    (next - days_from_civil(year, month, 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_weekdays() {
        for secs in [0i64, 951_782_400, 1_764_000_000, 4_102_444_800] {
            assert_eq!(Civil::from_unix(secs).to_unix(), secs);
        }
        let c = Civil::from_unix(parse_rfc3339("2026-11-25T16:18:24Z").unwrap());
        assert_eq!((c.year, c.month, c.day, c.hour), (2026, 11, 25, 16));
        assert_eq!(c.weekday(), 3); // a Wednesday
        assert_eq!(c.rfc3339(), "2026-11-25T16:18:24Z");
        let ms = parse_rfc3339_ms("2026-11-25T16:18:24.007Z").unwrap();
        assert_eq!(rfc3339_ms(ms), "2026-11-25T16:18:24.007Z");
        // 2021-01-03 is a Sunday in ISO week 53 of 2020; 2021-01-04 starts week 1.
        let d = |s: &str| Civil::from_unix(parse_rfc3339(s).unwrap());
        assert_eq!(d("2021-01-03T00:00:00Z").iso_week(), (2020, 53));
        assert_eq!(d("2021-01-04T00:00:00Z").iso_week(), (2021, 1));
        assert_eq!(d("2024-12-30T00:00:00Z").iso_week(), (2025, 1));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
    }
}
