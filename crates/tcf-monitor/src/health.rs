//! The health score of a service and its trend.
//!
//! score = 0.3·(100−cpu%) + 0.3·(100−mem%) + 0.2·(100−p99_ms/10) + 0.2·(100−5·error%),
//! each term's input clamped so that it stays within 0..100, the sum clamped to 0..100.
//! Bands: excellent ≥ 80 > good ≥ 60 > warning ≥ 40 > critical.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    Excellent,
    Good,
    Warning,
    Critical,
}

impl Band {
    /// Every score falls in exactly one band: the lower bound is inclusive.
    pub fn of(score: f64) -> Band {
        if score >= 80.0 {
            Band::Excellent
        } else if score >= 60.0 {
            Band::Good
        } else if score >= 40.0 {
            Band::Warning
        } else {
            Band::Critical
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Excellent => "excellent",
            Band::Good => "good",
            Band::Warning => "warning",
            Band::Critical => "critical",
        }
    }
}

fn term(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 100.0)
    }
}

/// The score from CPU % and memory % (of the limit or the host), p99 in ms and 5xx %.
pub fn score(cpu_percent: f64, memory_percent: f64, p99_ms: f64, error_percent: f64) -> f64 {
    let s = 0.3 * term(100.0 - cpu_percent)
        + 0.3 * term(100.0 - memory_percent)
        + 0.2 * term(100.0 - p99_ms / 10.0)
        + 0.2 * term(100.0 - 5.0 * error_percent);
    (s * 10.0).round() / 10.0
}

/// The last hour against the same hour on previous days.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub metric: String,
    pub last_hour: f64,
    pub baseline_mean: Option<f64>,
    pub baseline_stddev: Option<f64>,
    pub baseline_days: usize,
    pub z: Option<f64>,
    pub anomaly: bool,
}

/// z-score of `current` against `history` (one value per previous day); needs two days of
/// history, and a flat history only flags a value that differs from it.
pub fn trend(metric: &str, current: f64, history: &[f64]) -> Trend {
    let n = history.len();
    let (mean, stddev, z) = if n >= 2 {
        let mean = history.iter().sum::<f64>() / n as f64;
        let var = history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let z = if sd > 1e-9 {
            (current - mean) / sd
        } else if (current - mean).abs() < 1e-9 {
            0.0
        } else {
            f64::INFINITY.copysign(current - mean)
        };
        (Some(mean), Some(sd), Some(z))
    } else {
        (None, None, None)
    };
    Trend {
        metric: metric.to_string(),
        last_hour: current,
        baseline_mean: mean,
        baseline_stddev: stddev,
        baseline_days: n,
        z: z.map(|z| {
            if z.is_finite() {
                (z * 100.0).round() / 100.0
            } else {
                z
            }
        }),
        anomaly: z.is_some_and(|z| z.abs() > 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_formula_and_clamping() {
        assert_eq!(score(0.0, 0.0, 0.0, 0.0), 100.0);
        // 0.3·80 + 0.3·50 + 0.2·(100−25) + 0.2·(100−10) = 24 + 15 + 15 + 18
        assert_eq!(score(20.0, 50.0, 250.0, 2.0), 72.0);
        assert_eq!(score(400.0, 100.0, 60_000.0, 100.0), 0.0);
        assert_eq!(score(-5.0, f64::NAN, 0.0, 0.0), 70.0);
    }

    #[test]
    fn bands_leave_no_gaps() {
        assert_eq!(Band::of(100.0), Band::Excellent);
        assert_eq!(Band::of(80.0), Band::Excellent);
        assert_eq!(Band::of(79.99), Band::Good);
        assert_eq!(Band::of(60.0), Band::Good);
        assert_eq!(Band::of(59.999), Band::Warning);
        assert_eq!(Band::of(40.0), Band::Warning);
        assert_eq!(Band::of(39.9), Band::Critical);
        assert_eq!(Band::of(0.0), Band::Critical);
    }

    #[test]
    fn trend_flags_an_hour_far_from_its_history() {
        let history = [10.0, 12.0, 11.0, 9.0, 10.0];
        assert!(!trend("requests_per_s", 11.0, &history).anomaly);
        let t = trend("requests_per_s", 30.0, &history);
        assert!(t.anomaly && t.z.unwrap() > 2.0, "{t:?}");
        assert!(trend("requests_per_s", 0.0, &history).anomaly);
        assert_eq!(
            trend("requests_per_s", 5.0, &[1.0]).z,
            None,
            "one day is no baseline"
        );
    }
}
