//! The few facts `tls status` shows from a certificate (names, issuer, validity), read from its
//! DER with a small reader: rustls checks certificates, it does not describe them.

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// DNS names of the subjectAltName extension (the subject's CN when there is none).
    pub names: Vec<String>,
    /// The issuer's CN (or O), else the whole issuer as `OID=value` pairs.
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The serial number, in hex.
    pub serial: String,
}

struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next TLV: (tag, contents).
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let b = self.0;
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, head) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let contents = b.get(head..head.checked_add(len)?)?;
        self.0 = &b[head + len..];
        Some((tag, contents))
    }
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

pub fn parse(der: &[u8]) -> Option<CertFacts> {
    let (_, cert) = Der(der).next()?;
    let (_, tbs) = Der(cert).next()?;
    let mut tbs = Der(tbs);
    // [0] version (absent in v1), then the serial number.
    let mut serial = tbs.next()?;
    if serial.0 == 0xa0 {
        serial = tbs.next()?;
    }
    let serial: String = serial.1.iter().map(|b| format!("{b:02x}")).collect();
    let _signature_algorithm = tbs.next()?;
    let (_, issuer) = tbs.next()?;
    let (_, validity) = tbs.next()?;
    let (_, subject) = tbs.next()?;
    let _spki = tbs.next()?;
    let mut validity = Der(validity);
    let not_before = time(validity.next()?)?;
    let not_after = time(validity.next()?)?;
    let mut names = Vec::new();
    while let Some((tag, contents)) = tbs.next() {
        if tag == 0xa3 {
            names = san_dns_names(contents).unwrap_or_default();
        }
    }
    if names.is_empty() {
        names.extend(attribute(subject, OID_CN));
    }
    let issuer = attribute(issuer, OID_CN)
        .or_else(|| attribute(issuer, OID_O))
        .unwrap_or_else(|| "(unnamed issuer)".into());
    Some(CertFacts {
        names,
        issuer,
        not_before,
        not_after,
        serial,
    })
}

/// The value of the first attribute `oid` in a Name (SEQUENCE of SETs of SEQUENCE{oid, value}).
fn attribute(name: &[u8], oid: &[u8]) -> Option<String> {
    let mut rdns = Der(name);
    while let Some((_, set)) = rdns.next() {
        let mut set = Der(set);
        while let Some((_, pair)) = set.next() {
            let mut pair = Der(pair);
            let (_, id) = pair.next()?;
            let (_, value) = pair.next()?;
            if id == oid {
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    None
}

fn san_dns_names(extensions: &[u8]) -> Option<Vec<String>> {
    let (_, list) = Der(extensions).next()?;
    let mut list = Der(list);
    while let Some((_, ext)) = list.next() {
        let mut ext = Der(ext);
        let (_, id) = ext.next()?;
        if id != OID_SAN {
            continue;
        }
        let mut value = ext.next()?;
        if value.0 == 0x01 {
            value = ext.next()?; // critical flag
        }
        let (_, general_names) = Der(value.1).next()?;
        let mut general_names = Der(general_names);
        let mut names = Vec::new();
        while let Some((tag, name)) = general_names.next() {
            match tag {
                0x82 => names.push(String::from_utf8_lossy(name).into_owned()),
                0x87 if name.len() == 4 => names
                    .push(std::net::Ipv4Addr::new(name[0], name[1], name[2], name[3]).to_string()),
                _ => {}
            }
        }
        return Some(names);
    }
    None
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as Unix seconds.
fn time((tag, value): (u8, &[u8])) -> Option<i64> {
    let s = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let digits = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 => (digits(0..4)?, 4),
        _ => return None,
    };
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let h = digits(rest + 4..rest + 6)?;
    let m = digits(rest + 6..rest + 8)?;
    let sec = digits(rest + 8..rest + 10).unwrap_or(0);
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds, within what a certificate can say (1970 to the end
/// of 9999, RFC 5280's "no expiry" date).
pub fn rfc3339(secs: i64) -> String {
    const END_OF_9999: i64 = 253_402_300_799;
    let secs = secs.clamp(0, END_OF_9999) as u64;
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
