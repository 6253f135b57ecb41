//! Off loopback the dashboard needs a token: the login, the session cookie, the CSRF token on
//! every action and the roles, over real HTTP against the router. Tokens come through the
//! `TokenVerifier` trait the daemon implements; here a table stands in for the daemon's token
//! store, and a recording `DataSource` for the daemon (the browser test in tcf-platform runs
//! the real one).

use futures_util::stream::BoxStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tcf_api::monitor::{AlertTransition, AlertsList, SilenceInfo};
use tcf_api::{Event, Release, ServiceStatus, Status};
use tcf_dashboard::*;
use tcf_testkit::HttpAnswer as Answer;

struct Table;

impl TokenVerifier for Table {
    fn verify(&self, token: &str) -> Result<(String, Role), AuthError> {
        match token {
            "viewer-token" => Ok(("vera".into(), Role::Viewer)),
            "deployer-token" => Ok(("dan".into(), Role::Deployer)),
            _ => Err(AuthError::InvalidToken),
        }
    }
}

/// One service; records the rollbacks and silences asked for.
#[derive(Default)]
struct Recorder {
    actions: Mutex<Vec<String>>,
}

fn status() -> Status {
    Status {
        platform: "t".into(),
        services: vec![ServiceStatus {
            name: "api".into(),
            version: "v2".into(),
            traffic: vec![],
            listen: "127.0.0.1:1".into(),
            healthy: true,
            instances: vec![],
            metrics: None,
            config_changed: false,
            maintenance: None,
            stale_secrets: vec![],
            panic: false,
            panics: 0,
        }],
        dependencies: vec![],
        deploy_in_progress: None,
        warnings: vec![],
        api: None,
        nodes: vec![],
    }
}

impl DataSource for Recorder {
    fn status(&self) -> BoxFuture<'_, Status> {
        Box::pin(async { status() })
    }
    fn events(&self, _: Option<String>, _: u32) -> BoxFuture<'_, Result<Vec<Event>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn releases(&self, _: usize) -> BoxFuture<'_, Result<Vec<Release>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn series(&self, _: SeriesQuery) -> BoxFuture<'_, Result<Vec<Point>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn alerts(&self) -> BoxFuture<'_, Result<AlertsList, SourceError>> {
        Box::pin(async {
            Ok(AlertsList {
                alerts: vec![],
                silences: vec![],
                evaluating: true,
            })
        })
    }
    fn alert_history(&self, _: usize) -> BoxFuture<'_, Result<Vec<AlertTransition>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn silence(
        &self,
        matchers: Vec<String>,
        _: Duration,
        _: String,
        actor: String,
    ) -> BoxFuture<'_, Result<SilenceInfo, SourceError>> {
        self.actions
            .lock()
            .unwrap()
            .push(format!("silence {} by {actor}", matchers.join(" ")));
        Box::pin(async move {
            Ok(SilenceInfo {
                id: "s1".into(),
                matchers,
                starts: String::new(),
                ends: String::new(),
                author: actor,
                comment: String::new(),
            })
        })
    }
    fn unsilence(&self, _: String, _: String) -> BoxFuture<'_, Result<SilenceInfo, SourceError>> {
        Box::pin(async { Err(SourceError::NotFound("no such silence".into())) })
    }
    fn rollback_preview(&self, service: String) -> BoxFuture<'_, Result<Vec<Change>, SourceError>> {
        Box::pin(async move {
            Ok(vec![Change {
                service,
                from: "v2".into(),
                to: "v1".into(),
            }])
        })
    }
    fn rollback(
        &self,
        service: String,
        actor: String,
        _: String,
    ) -> BoxFuture<'_, Result<Vec<Change>, SourceError>> {
        self.actions
            .lock()
            .unwrap()
            .push(format!("rollback {service} by {actor}"));
        self.rollback_preview(service)
    }
    fn logs_tail(&self, _: String, _: usize) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn host(&self) -> BoxFuture<'_, HostInfo> {
        Box::pin(async { HostInfo::default() })
    }
    fn changes(&self) -> BoxStream<'static, ()> {
        Box::pin(futures_util::stream::pending())
    }
}

/// What a login hands back, read off an answer.
trait LoginAnswer {
    fn session(&self) -> String;
    fn csrf(&self) -> String;
}

impl LoginAnswer for Answer {
    /// The session cookie's value from `Set-Cookie`.
    fn session(&self) -> String {
        let c = self.header("set-cookie").expect("a Set-Cookie");
        c.split(';').next().unwrap().to_string()
    }

    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a CSRF field")
            + 19;
        self.body[at..at + 64].to_string()
    }
}

/// One exchange on a fresh connection; the blocking client runs off the runtime that serves.
async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let (addr, method, path, body) = (
        addr.to_string(),
        method.to_string(),
        path.to_string(),
        body.to_string(),
    );
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        tcf_testkit::http_exchange(&addr, &method, &path, &headers, &body).unwrap()
    })
    .await
    .unwrap()
}

async fn serve(secure: bool) -> (String, Arc<Recorder>) {
    let data = Arc::new(Recorder::default());
    let d = Dashboard::new(data.clone(), Access::Tokens(Arc::new(Table)), secure, "t").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router(d)).await.unwrap() });
    (addr, data)
}

#[tokio::test]
async fn without_a_token_every_page_asks_for_the_login() {
    let (addr, _) = serve(false).await;
    for path in ["/", "/services/api", "/releases", "/alerts", "/events"] {
        let a = send(&addr, "GET", path, &[], "").await;
        assert_eq!(a.status, 303, "{path}");
        assert_eq!(a.header("location").as_deref(), Some("/login"), "{path}");
    }
    assert_eq!(
        send(&addr, "GET", "/live?view=overview", &[], "")
            .await
            .status,
        401
    );
    let login = send(&addr, "GET", "/login", &[], "").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains(r#"type="password" name="token""#));
    // An action without a session does nothing.
    let a = send(&addr, "POST", "/services/api/rollback", &[], "csrf=x").await;
    assert_eq!(a.header("location").as_deref(), Some("/login"));
    let bad = send(&addr, "POST", "/login", &[], "token=nope").await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("unknown, expired or revoked"));
    assert!(bad.header("set-cookie").is_none());
}

#[tokio::test]
async fn a_viewer_sees_the_pages_and_cannot_roll_back() {
    let (addr, data) = serve(false).await;
    let login = send(&addr, "POST", "/login", &[], "token=viewer-token").await;
    assert_eq!(login.status, 303);
    let cookie_header = login.header("set-cookie").unwrap();
    assert!(cookie_header.contains("HttpOnly"), "{cookie_header}");
    assert!(cookie_header.contains("SameSite=Strict"), "{cookie_header}");
    assert!(
        !cookie_header.contains("Secure"),
        "plain HTTP: {cookie_header}"
    );
    let cookie = login.session();
    let page = send(&addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("vera (dashboard) · viewer"));
    assert!(page.body.contains("id=\"svc-api\""));
    assert!(
        !page.body.contains("Roll back"),
        "no rollback offered to a viewer"
    );
    let csrf = page.csrf();
    let denied = send(
        &addr,
        "POST",
        "/services/api/rollback",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&reason=x"),
    )
    .await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.body.contains("has the viewer role"),
        "{}",
        denied.body
    );
    let confirm = send(
        &addr,
        "GET",
        "/services/api/rollback",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(confirm.status, 403);
    let silence = send(
        &addr,
        "POST",
        "/alerts/silence",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&matchers=service%3Dapi&duration=1h"),
    )
    .await;
    assert_eq!(silence.status, 403);
    assert!(data.actions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_deployer_rolls_back_only_with_the_sessions_csrf_token_from_this_site() {
    let (addr, data) = serve(true).await;
    let login = send(&addr, "POST", "/login", &[], "token=deployer-token").await;
    assert!(
        login.header("set-cookie").unwrap().ends_with("; Secure"),
        "under TLS"
    );
    let cookie = login.session();
    let confirm = send(
        &addr,
        "GET",
        "/services/api/rollback",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(confirm.status, 200);
    assert!(
        confirm.body.contains("v2 → <strong>v1</strong>"),
        "{}",
        confirm.body
    );
    let csrf = confirm.csrf();
    // No token, a wrong one, or a post from another site: refused, nothing done.
    for (body, origin) in [
        ("reason=x".to_string(), None),
        ("csrf=0000&reason=x".to_string(), None),
        (format!("csrf={csrf}&reason=x"), Some("http://evil.example")),
    ] {
        let mut headers = vec![("Cookie", cookie.as_str())];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        let a = send(&addr, "POST", "/services/api/rollback", &headers, &body).await;
        assert!(a.status == 403 || a.status == 422, "{body}: {}", a.status);
    }
    assert!(data.actions.lock().unwrap().is_empty());
    // Another session's CSRF token does not do either.
    let other = send(&addr, "POST", "/login", &[], "token=deployer-token").await;
    let other_csrf = send(&addr, "GET", "/", &[("Cookie", &other.session())], "")
        .await
        .csrf();
    let a = send(
        &addr,
        "POST",
        "/services/api/rollback",
        &[("Cookie", &cookie)],
        &format!("csrf={other_csrf}"),
    )
    .await;
    assert_eq!(a.status, 403);
    let origin = format!("http://{addr}");
    let ok = send(
        &addr,
        "POST",
        "/services/api/rollback",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}&reason=bad+release"),
    )
    .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.header("location").as_deref(), Some("/releases"));
    assert_eq!(
        *data.actions.lock().unwrap(),
        ["rollback api by dan (dashboard)"]
    );
    // Logging out ends the session.
    let out = send(
        &addr,
        "POST",
        "/logout",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    )
    .await;
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = send(&addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(after.header("location").as_deref(), Some("/login"));
}

#[tokio::test]
async fn pages_carry_a_strict_content_security_policy() {
    let (addr, _) = serve(false).await;
    let a = send(&addr, "GET", "/login", &[], "").await;
    let csp = a.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(a.header("x-frame-options").as_deref(), Some("DENY"));
    let js = send(&addr, "GET", "/assets/app.js", &[], "").await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("EventSource"));
}
