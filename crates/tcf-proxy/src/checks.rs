//! What the proxy refuses in a request head before anything goes upstream (issue 10;
//! docs/running.md, "What the proxy refuses").
//!
//! hyper's parser already refuses what it cannot frame: bad methods, targets and versions,
//! whitespace before a colon, obs-fold, NUL and bare CR, differing Content-Lengths, a
//! Transfer-Encoding that does not end in chunked, heads over the size and count limits. These
//! are the rules it leaves to a proxy, each a few comparisons on a well-formed request.

use crate::{ProxyError, RequestLimits, UnderscoreHeaders};
use http::header::{self, HeaderValue};
use http::{Method, Version};

/// Check a request head. `Some` host replaces the client's (the authority of an absolute-form
/// target); otherwise the Host the client sent goes on as it is (none for an HTTP/1.0 request
/// without one).
pub(crate) fn check_request(
    parts: &http::request::Parts,
    limits: &RequestLimits,
) -> Result<Option<HeaderValue>, ProxyError> {
    let method = &parts.method;
    // CONNECT asks a proxy for a tunnel and TRACE echoes the request, credentials included:
    // a reverse proxy serves neither (nginx answers 405 to both).
    if *method == Method::CONNECT || *method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed(method.clone()));
    }
    let uri = &parts.uri;
    let target_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if method.as_str().len() + target_len + "  HTTP/1.1".len() > limits.max_request_line {
        return Err(ProxyError::RequestLineTooLong(limits.max_request_line));
    }
    let headers = &parts.headers;
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    // RFC 9112 §3.2: more than one Host, an invalid one, or none in HTTP/1.1: 400. Two hosts
    // would let the service and a cache or an auth layer disagree about which was asked for.
    if hosts.next().is_some() {
        return Err(bad("Host given more than once"));
    }
    if host.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err(bad("invalid Host"));
    }
    if host.is_none() && parts.version == Version::HTTP_11 {
        return Err(bad("an HTTP/1.1 request needs a Host"));
    }
    let replaced_host = match uri.scheme_str() {
        None => {
            match uri.path_and_query().map(|p| p.as_str()) {
                Some(p) if p.starts_with('/') => {}
                // RFC 9112 §3.2.4: the asterisk form is for a server-wide OPTIONS only.
                Some("*") if *method == Method::OPTIONS => {}
                // The authority form (RFC 9112 §3.2.3) is for CONNECT, refused above.
                _ => return Err(bad("the request target must be an absolute path")),
            }
            None
        }
        Some(scheme) => {
            // RFC 9112 §3.2.2: with an absolute-form target, the target's authority is the host
            // asked for, and a proxy replaces Host with it.
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(bad("the request target's scheme must be http or https"));
            }
            let authority = match uri.authority() {
                Some(a) if valid_host(a.as_str().as_bytes()) => a,
                // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error ('@' is not valid).
                _ => return Err(bad("invalid authority in the request target")),
            };
            Some(
                HeaderValue::from_str(authority.as_str())
                    .map_err(|_| bad("invalid authority in the request target"))?,
            )
        }
    };
    if limits.underscores == UnderscoreHeaders::Refuse
        && headers.keys().any(|n| n.as_str().contains('_'))
    {
        return Err(bad("a header name holds an underscore"));
    }
    Ok(replaced_host)
}

/// A chunked request body's Transfer-Encoding must be exactly `chunked`: hyper decodes the
/// chunks, and any coding below them (gzip, …) would reach the service unannounced. RFC 9112
/// §6.1: chunked is applied once; a coding we do not understand gets 501.
pub(crate) fn check_transfer_encoding(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut lines = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (lines.next(), lines.next()) {
        (Some(te), None) if te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        (Some(te), None) => Err(ProxyError::NotImplemented(format!(
            "transfer coding {:?}",
            String::from_utf8_lossy(te.as_bytes())
        ))),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(bad("Transfer-Encoding given more than once")),
    }
}

fn bad(why: &str) -> ProxyError {
    ProxyError::BadRequest(why.into())
}

/// RFC 3986 §3.2.2 `host [":" port]`: reg-name characters and bracketed IP literals; never a
/// space, '/', '@' or a control character (nginx refuses those too).
fn valid_host(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(req: http::Request<()>) -> Result<Option<HeaderValue>, ProxyError> {
        check_request(&req.into_parts().0, &RequestLimits::default())
    }

    #[test]
    fn hosts_and_targets() {
        let ok = http::Request::get("/a").header("host", "example:8080");
        assert_eq!(check(ok.body(()).unwrap()).unwrap(), None);
        let absolute = http::Request::get("http://other.example/p").header("host", "a");
        assert_eq!(
            check(absolute.body(()).unwrap()).unwrap().unwrap(),
            "other.example"
        );
        for bad in [
            http::Request::get("/")
                .header("host", "a")
                .header("host", "b"),
            http::Request::get("/").header("host", "a b"),
            http::Request::get("/").header("host", "a/b"),
            http::Request::get("/").header("host", "u@a"),
            http::Request::get("/"),
            http::Request::get("http://u@other/").header("host", "a"),
            http::Request::get("ftp://other/").header("host", "a"),
            http::Request::get("*").header("host", "a"),
            http::Request::connect("a:443").header("host", "a"),
            http::Request::trace("/").header("host", "a"),
        ] {
            let req = bad.body(()).unwrap();
            let shown = format!("{} {} {:?}", req.method(), req.uri(), req.headers());
            assert!(check(req).is_err(), "{shown}");
        }
        let options = http::Request::options("*").header("host", "a");
        assert!(check(options.body(()).unwrap()).is_ok());
        let http10 = http::Request::get("/").version(Version::HTTP_10);
        assert!(check(http10.body(()).unwrap()).is_ok());
    }

    #[test]
    fn transfer_codings() {
        let te = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            check_transfer_encoding(&h)
        };
        assert!(te(&["chunked"]).is_ok());
        assert!(te(&[" Chunked "]).is_ok());
        assert!(matches!(
            te(&["gzip, chunked"]),
            Err(ProxyError::NotImplemented(_))
        ));
        assert!(te(&["chunked", "chunked"]).is_err());
        assert!(te(&["chunked, chunked"]).is_err());
    }
}
