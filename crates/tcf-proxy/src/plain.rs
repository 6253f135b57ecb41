//! The plain-HTTP listener of an HTTPS service (`http_listen`): answers ACME HTTP-01
//! challenges (RFC 8555 §8.3) and sends everything else to HTTPS, path and query kept.
//! Off the hot path: it runs on the control-plane runtime.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// The path prefix ACME servers fetch challenge answers from.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 answers: key authorization by token.
#[derive(Debug, Default)]
pub struct Challenges(RwLock<HashMap<String, String>>);

impl Challenges {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.0.write() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(token);
        }
    }

    fn get(&self, token: &str) -> Option<String> {
        self.0.read().ok()?.get(token).cloned()
    }
}

/// Serve the plain listener until `shutdown` flips to true.
pub async fn serve_plain(
    listener: TcpListener,
    https_port: u16,
    challenges: Arc<Challenges>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let challenges = challenges.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = answer(&req, https_port, &challenges);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), svc);
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                        }
                    }
                });
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// The answer to one plain request.
pub fn answer<B>(
    req: &Request<B>,
    https_port: u16,
    challenges: &Challenges,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match challenges.get(token) {
            Some(key_authorization) => text(StatusCode::OK, key_authorization),
            None => text(StatusCode::NOT_FOUND, "no such challenge\n".into()),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    let Some(host) = host.filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "a Host header is needed to redirect to HTTPS\n".into(),
        );
    };
    // The host without its port ([v6] kept whole), then ours unless it is the default.
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{name}{port}{target}");
    let Ok(location) = HeaderValue::from_str(&location) else {
        return text(StatusCode::BAD_REQUEST, "invalid Host\n".into());
    };
    // 301 for reads, as browsers expect; 308 keeps any other method and its body.
    let status = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut resp = text(status, String::new());
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_path_and_query_and_challenges_are_answered() {
        let c = Challenges::default();
        c.insert("tok", "tok.thumb");
        let get = |uri: &str, host: &str, port| {
            let req = Request::get(uri).header("host", host).body(()).unwrap();
            answer(&req, port, &c)
        };
        let r = get("/a/b?x=1&y=2", "example.com:8080", 8443);
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            r.headers()["location"],
            "https://example.com:8443/a/b?x=1&y=2"
        );
        let r = get("/", "[::1]", 443);
        assert_eq!(r.headers()["location"], "https://[::1]/");
        let r = get("/.well-known/acme-challenge/tok", "example.com", 443);
        assert_eq!(r.status(), StatusCode::OK);
        let r = get("/.well-known/acme-challenge/other", "example.com", 443);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/form").header("host", "a").body(()).unwrap();
        assert_eq!(
            answer(&post, 443, &c).status(),
            StatusCode::PERMANENT_REDIRECT
        );
    }
}
