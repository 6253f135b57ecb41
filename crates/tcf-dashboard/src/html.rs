//! HTML pieces: escaping and the page frame.

use crate::auth::Viewer;
use std::fmt::Write;

/// Text made safe for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encoding for a path segment or query value.
pub fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The hidden field every action form carries.
pub fn csrf_field(v: &Viewer) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&v.csrf)
    )
}

pub const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/releases", "Releases"),
    ("/alerts", "Alerts"),
    ("/events", "Events"),
];

/// A whole page: `view` tells the script which live stream to follow ("" for none).
pub fn page(
    title: &str,
    platform: &str,
    current: &str,
    view: &str,
    viewer: Option<&Viewer>,
    logout: bool,
    body: &str,
) -> String {
    let mut nav = String::new();
    for (href, label) in NAV {
        let cur = if *href == current {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<a href="{href}"{cur}>{label}</a>"#);
    }
    let who = match viewer {
        Some(v) => {
            let mut s = format!(
                r#"<span class="who">{} · {}</span>"#,
                esc(&v.actor),
                v.role.as_str()
            );
            if logout {
                let _ = write!(
                    s,
                    r#"<form method="post" action="/logout" class="inline">{}<button type="submit">Log out</button></form>"#,
                    csrf_field(v)
                );
            }
            s
        }
        None => String::new(),
    };
    format!(
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · {platform}</title><link rel="stylesheet" href="/assets/style.css"><script src="/assets/app.js" defer></script></head><body data-view="{view}"><a class="skip" href="#main">Skip to content</a><header><strong class="brand">{platform}</strong><nav aria-label="Pages">{nav}</nav><span id="live-state" class="live" aria-live="polite" title="live updates">○ static</span>{who}</header><main id="main" tabindex="-1"><h1>{title}</h1>{body}</main></body></html>"##,
        title = esc(title),
        platform = esc(platform),
        view = esc(view),
    )
}

/// A region the live stream replaces by id.
pub fn region(id: &str, label: &str, inner: &str) -> String {
    format!(
        r#"<section id="{id}" data-live aria-label="{}">{inner}</section>"#,
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_part("a b/c"), "a%20b%2Fc");
    }
}
