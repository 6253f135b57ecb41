//! Compose's port, duration, size and command-line syntaxes.

use serde_json::Value;

/// One `ports:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    /// `None`: compose publishes it on a random host port.
    pub published: Option<(u16, u16)>,
    pub target: (u16, u16),
    pub protocol: String,
    /// The entry as written, for messages.
    pub text: String,
}

impl PortMapping {
    pub fn single_target(&self) -> Option<u16> {
        (self.target.0 == self.target.1).then_some(self.target.0)
    }

    pub fn single_published(&self) -> Option<u16> {
        self.published.and_then(|(a, b)| (a == b).then_some(a))
    }
}

/// `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, a bare number, or the long syntax.
pub fn parse_port(v: &Value) -> Result<PortMapping, String> {
    match v {
        Value::Number(n) => {
            let p = n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("invalid port {n}"))?;
            Ok(PortMapping {
                host_ip: None,
                published: None,
                target: (p, p),
                protocol: "tcp".into(),
                text: n.to_string(),
            })
        }
        Value::String(s) => parse_short(s),
        Value::Object(m) => {
            let target = match m.get("target") {
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .map(|p| (p, p)),
                Some(Value::String(s)) => range(s).ok(),
                _ => None,
            }
            .ok_or("a long-syntax port needs target: PORT")?;
            let published = match m.get("published") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .map(|p| (p, p))
                        .ok_or_else(|| format!("invalid published port {n}"))?,
                ),
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(range(s)?),
                Some(other) => return Err(format!("invalid published port {other}")),
            };
            Ok(PortMapping {
                host_ip: m
                    .get("host_ip")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                published,
                target,
                protocol: m
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("tcp")
                    .to_ascii_lowercase(),
                text: serde_json::to_string(v).unwrap_or_default(),
            })
        }
        other => Err(format!("invalid port entry {other}")),
    }
}

fn parse_short(s: &str) -> Result<PortMapping, String> {
    let (body, protocol) = match s.rsplit_once('/') {
        Some((b, p)) => (b, p.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (host_ip, rest) = if let Some(after) = body.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or_else(|| format!("invalid port {s:?}: unclosed ["))?;
        (Some(ip.to_string()), rest.strip_prefix(':').unwrap_or(rest))
    } else {
        (None, body)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [t]) => (None, None, *t),
        (None, [p, t]) => (None, Some(*p), *t),
        (None, [ip, p, t]) => (Some(ip.to_string()), Some(*p), *t),
        (Some(ip), [p, t]) => (Some(ip), Some(*p), *t),
        _ => return Err(format!("invalid port {s:?}")),
    };
    Ok(PortMapping {
        host_ip: ip.filter(|i| !i.is_empty()),
        published: match published {
            Some("") | None => None,
            Some(p) => Some(range(p).map_err(|e| format!("invalid port {s:?}: {e}"))?),
        },
        target: range(target).map_err(|e| format!("invalid port {s:?}: {e}"))?,
        protocol,
        text: s.to_string(),
    })
}

fn range(s: &str) -> Result<(u16, u16), String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u16>()
            .map_err(|_| format!("{t:?} is not a port number"))
    };
    match s.split_once('-') {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => {
            let p = num(s)?;
            Ok((p, p))
        }
    }
}

/// A Go-style duration as compose writes it (`1m30s`, `500ms`, `10s`, `1.5s`), in milliseconds.
pub fn parse_duration_ms(v: &Value) -> Result<u64, String> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        // A bare number is seconds in some older files; compose itself wants a unit.
        Value::Number(n) => return Err(format!("duration {n} has no unit; write \"{n}s\"")),
        other => return Err(format!("invalid duration {other}")),
    };
    if text == "0" {
        return Ok(0);
    }
    let mut total = 0f64;
    let mut rest = text.as_str();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} has no unit"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let factor = match unit {
            "us" | "µs" => 0.001,
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(format!("invalid duration {text:?}: unknown unit {unit:?}")),
        };
        total += value * factor;
        rest = next;
    }
    Ok(total.round() as u64)
}

/// Milliseconds in the config's duration syntax.
pub fn format_duration_ms(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Docker's byte sizes (`512m`, `1g`, `1gb`, `64M`, a number of bytes: binary units) in the
/// config's syntax (`512MiB`).
pub fn convert_size(v: &Value) -> Result<String, String> {
    let text = match v {
        Value::String(s) => s.trim().to_ascii_lowercase(),
        Value::Number(n) => return Ok(n.to_string()),
        other => return Err(format!("invalid size {other}")),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let suffix = match unit.trim() {
        "" | "b" => return Ok(format!("{}", value.round() as u64)),
        "k" | "kb" => "KiB",
        "m" | "mb" => "MiB",
        "g" | "gb" => "GiB",
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    if value.fract() == 0.0 {
        Ok(format!("{}{suffix}", value as u64))
    } else {
        // Fractions ("1.5g"): in the next smaller unit, which our sizes take as whole numbers.
        let (factor, smaller) = match suffix {
            "GiB" => (1024.0, "MiB"),
            "MiB" => (1024.0, "KiB"),
            _ => return Ok(format!("{}", (value * 1024.0).round() as u64)),
        };
        Ok(format!("{}{smaller}", (value * factor).round() as u64))
    }
}

/// A command line as compose splits a string `command:`/`entrypoint:` (shell words: quotes and
/// backslashes, no expansion).
pub fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => current.push(ch),
                        None => return Err(format!("unclosed ' in {text:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => current.push(ch),
                            Some(ch) => {
                                current.push('\\');
                                current.push(ch);
                            }
                            None => return Err(format!("unclosed \" in {text:?}")),
                        },
                        Some(ch) => current.push(ch),
                        None => return Err(format!("unclosed \" in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    current.push(ch);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports() {
        let p = parse_port(&json!("3000:8080")).unwrap();
        assert_eq!(
            (p.published, p.target, p.host_ip.as_deref()),
            (Some((3000, 3000)), (8080, 8080), None)
        );
        let p = parse_port(&json!("127.0.0.1:3001:3001/tcp")).unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        let p = parse_port(&json!("[::1]:80:8080")).unwrap();
        assert_eq!(
            (p.host_ip.as_deref(), p.published),
            (Some("::1"), Some((80, 80)))
        );
        let p = parse_port(&json!(8080)).unwrap();
        assert_eq!(p.published, None);
        let p = parse_port(&json!("5000-5002:5000-5002/udp")).unwrap();
        assert_eq!((p.single_target(), p.protocol.as_str()), (None, "udp"));
        let p = parse_port(&json!({"target": 80, "published": "8080", "host_ip": "127.0.0.1"}))
            .unwrap();
        assert_eq!(
            (p.single_published(), p.single_target()),
            (Some(8080), Some(80))
        );
        assert!(parse_port(&json!("a:b")).is_err());
        assert!(parse_port(&json!("1:2:3:4")).is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration_ms(&json!("1m30s")).unwrap(), 90_000);
        assert_eq!(parse_duration_ms(&json!("1.5s")).unwrap(), 1500);
        assert_eq!(parse_duration_ms(&json!("250ms")).unwrap(), 250);
        assert!(parse_duration_ms(&json!("10")).is_err());
        assert!(parse_duration_ms(&json!(10)).is_err());
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(120_000), "2m");
        assert_eq!(format_duration_ms(1500), "1500ms");
        assert_eq!(convert_size(&json!("512m")).unwrap(), "512MiB");
        assert_eq!(convert_size(&json!("1G")).unwrap(), "1GiB");
        assert_eq!(convert_size(&json!("1.5g")).unwrap(), "1536MiB");
        assert_eq!(convert_size(&json!(1048576)).unwrap(), "1048576");
        assert!(convert_size(&json!("12x")).is_err());
    }

    #[test]
    fn words() {
        assert_eq!(
            shell_words(r#"serve --name "a b" 'c d' e\ f"#).unwrap(),
            ["serve", "--name", "a b", "c d", "e f"]
        );
        assert_eq!(shell_words("  ").unwrap(), Vec::<String>::new());
        assert!(shell_words("'open").is_err());
    }
}
