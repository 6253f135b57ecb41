//! Charts drawn on the server as inline SVG: readable before any script runs, coloured by CSS
//! variables so they follow the light or dark theme.

use crate::html::esc;
use crate::source::Point;
use std::fmt::Write;

/// A release on the time axis.
pub struct Marker {
    pub at_ms: i64,
    /// deploy, rollback or revert (the CSS class).
    pub kind: &'static str,
    pub label: String,
}

/// A small line of the last values, no axes.
pub fn sparkline(points: &[Point], label: &str) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let mut out = format!(
        r#"<svg class="spark" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(label)
    );
    if let Some(path) = polyline(points, None, W, H, 1.0) {
        let _ = write!(out, r#"<polyline class="line" points="{path}"/>"#);
    }
    out.push_str("</svg>");
    out
}

/// Points scaled into a box; None when there is nothing to draw.
fn polyline(
    points: &[Point],
    range: Option<(i64, i64)>,
    w: f64,
    h: f64,
    pad: f64,
) -> Option<String> {
    let finite: Vec<&Point> = points.iter().filter(|(_, v)| v.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let (t0, t1) = range.unwrap_or((finite[0].0, finite[finite.len() - 1].0));
    let max = finite
        .iter()
        .map(|p| p.1)
        .fold(f64::MIN, f64::max)
        .max(1e-9);
    let span = (t1 - t0).max(1) as f64;
    let mut s = String::new();
    for (t, v) in finite {
        let x = (*t - t0) as f64 / span * (w - 2.0 * pad) + pad;
        let y = h - pad - (v / max) * (h - 2.0 * pad);
        let _ = write!(s, "{x:.1},{y:.1} ");
    }
    Some(s.trim_end().to_string())
}

pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "%" => format!("{v:.1}%"),
        "ms" => format!("{v:.1} ms"),
        "B" => {
            let mib = v / (1024.0 * 1024.0);
            format!("{mib:.1} MiB")
        }
        _ => {
            if v >= 100.0 {
                format!("{v:.0}{unit}")
            } else {
                format!("{v:.2}{unit}")
            }
        }
    }
}

/// A line chart with axes over [since, until], several series, and release markers.
pub fn line_chart(
    title: &str,
    unit: &str,
    series: &[(String, Vec<Point>)],
    since_ms: i64,
    until_ms: i64,
    markers: &[Marker],
) -> String {
    const W: f64 = 640.0;
    const H: f64 = 180.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 20.0;
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - BOTTOM - 8.0;
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let max = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let span = (until_ms - since_ms).max(1) as f64;
    let x_of = |t: i64| LEFT + (t - since_ms) as f64 / span * plot_w;
    let y_of = |v: f64| 8.0 + plot_h - v / max * plot_h;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<figure class="chart"><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" role="img" aria-label="{} chart">"#,
        esc(title),
        esc(title)
    );
    // Grid and y labels at 0, ½ and the top.
    for frac in [0.0, 0.5, 1.0] {
        let v = max * frac;
        let y = y_of(v);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - 8.0,
            LEFT - 4.0,
            y + 4.0,
            esc(&format_value(v, unit))
        );
    }
    for (label, anchor, t) in [("start", "start", since_ms), ("end", "end", until_ms)] {
        let _ = write!(
            out,
            r#"<text class="axis" x="{:.1}" y="{}" text-anchor="{anchor}" data-edge="{label}">{}</text>"#,
            x_of(t),
            H - 4.0,
            esc(&clock(t, until_ms - since_ms))
        );
    }
    for m in markers
        .iter()
        .filter(|m| (since_ms..=until_ms).contains(&m.at_ms))
    {
        let x = x_of(m.at_ms);
        let _ = write!(
            out,
            r#"<line class="marker {}" x1="{x:.1}" x2="{x:.1}" y1="8" y2="{:.1}"><title>{}</title></line>"#,
            m.kind,
            8.0 + plot_h,
            esc(&m.label)
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let mut path = String::new();
        for (t, v) in points.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(path, "{:.1},{:.1} ", x_of(*t), y_of(*v));
        }
        if !path.is_empty() {
            let _ = write!(
                out,
                r#"<polyline class="line s{}" points="{}"><title>{}</title></polyline>"#,
                i % 4,
                path.trim_end(),
                esc(name)
            );
        }
    }
    out.push_str("</svg>");
    if series.len() > 1 {
        out.push_str(r#"<p class="legend">"#);
        for (i, (name, _)) in series.iter().enumerate() {
            let _ = write!(out, r#"<span class="key s{}">{}</span> "#, i % 4, esc(name));
        }
        out.push_str("</p>");
    }
    if series.iter().all(|(_, p)| p.is_empty()) {
        out.push_str(r#"<p class="muted">no data in this range yet</p>"#);
    }
    out.push_str("</figure>");
    out
}

/// A time as the axis shows it: the clock for a day or less, the date beyond.
pub fn clock(ms: i64, span_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let full = humantime::format_rfc3339_seconds(t).to_string();
    if span_ms <= 86_400_000 {
        full.get(11..16).unwrap_or(&full).to_string() + " UTC"
    } else {
        full.get(5..16).unwrap_or(&full).replace('T', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_scales_into_its_box() {
        let s = sparkline(&[(0, 0.0), (50, 5.0), (100, 10.0)], "p99");
        assert!(
            s.contains(r#"points="1.0,23.0 60.0,12.0 119.0,1.0""#),
            "{s}"
        );
        assert!(!sparkline(&[], "x").contains("polyline"));
        assert!(!sparkline(&[(0, f64::NAN)], "x").contains("polyline"));
    }

    #[test]
    fn markers_outside_the_range_are_left_out_and_labels_escaped() {
        let markers = [
            Marker {
                at_ms: 500,
                kind: "deploy",
                label: "deploy <v2>".into(),
            },
            Marker {
                at_ms: 5000,
                kind: "rollback",
                label: "later".into(),
            },
        ];
        let c = line_chart(
            "req/s",
            "/s",
            &[("all".into(), vec![(0, 1.0)])],
            0,
            1000,
            &markers,
        );
        assert!(c.contains(r#"class="marker deploy""#));
        assert!(c.contains("deploy &lt;v2&gt;"));
        assert!(!c.contains("rollback"));
        let empty = line_chart("x", "", &[("a".into(), vec![])], 0, 10, &[]);
        assert!(empty.contains("no data in this range yet"));
    }

    #[test]
    fn clock_labels() {
        assert_eq!(clock(0, 3_600_000), "00:00 UTC");
        assert_eq!(clock(86_400_000 * 3, 7 * 86_400_000), "01-04 00:00");
    }
}
