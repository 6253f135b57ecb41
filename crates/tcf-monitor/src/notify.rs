//! Notifications: a task per receiver (so a slow or dead one delays no other), grouping the
//! way Alertmanager does (`group_by`, `group_wait`, `group_interval`, `repeat_interval`),
//! retries with backoff, and four kinds of receiver: a generic JSON webhook (optionally signed
//! with HMAC-SHA256), a Slack-compatible incoming webhook, Alertmanager's v2 API and SMTP mail.

use crate::rules::{Alert, State};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Http(String),
    #[error("the receiver answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverKind {
    Webhook {
        url: String,
        /// Signs the body: `X-TCF-Signature: sha256=HEX(HMAC-SHA256(secret, body))`.
        hmac_secret: Option<String>,
    },
    Slack {
        url: String,
    },
    Alertmanager {
        /// Base URL; alerts go to `{url}/api/v2/alerts`.
        url: String,
    },
    Email {
        /// `host:port` of the SMTP server.
        smtp: String,
        from: String,
        to: Vec<String>,
        /// Upgrade the connection with STARTTLS before sending (and refuse to go on without).
        starttls: bool,
    },
}

impl ReceiverKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReceiverKind::Webhook { .. } => "webhook",
            ReceiverKind::Slack { .. } => "slack",
            ReceiverKind::Alertmanager { .. } => "alertmanager",
            ReceiverKind::Email { .. } => "email",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub timeout: Duration,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// Extra CAs (PEM) to trust for https and STARTTLS, besides Mozilla's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// How each receiver fared, for `prod monitor --action status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiverStatus {
    pub kind: String,
    pub last_attempt_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub failed: u64,
}

/// Where the hub reports failed deliveries (the daemon writes them as events).
pub trait DeliverySink: Send + Sync + 'static {
    fn failed(&self, receiver: &str, error: &str);
    fn delivered(&self, receiver: &str, alerts: usize, status: &str);
}

enum Msg {
    /// Every alert firing now (with whether it is silenced) and those resolved this tick.
    Update {
        firing: Vec<(Alert, bool)>,
        resolved: Vec<Alert>,
    },
}

/// The receivers' tasks and their status.
pub struct Hub {
    senders: Vec<mpsc::UnboundedSender<Msg>>,
    status: Arc<Mutex<BTreeMap<String, ReceiverStatus>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hub {
    /// Start one task per receiver (on the current tokio runtime).
    pub fn start(receivers: Vec<Receiver>, platform: &str, sink: Arc<dyn DeliverySink>) -> Hub {
        let status = Arc::new(Mutex::new(BTreeMap::new()));
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for r in receivers {
            let (tx, rx) = mpsc::unbounded_channel();
            status.lock().unwrap_or_else(|p| p.into_inner()).insert(
                r.name.clone(),
                ReceiverStatus {
                    kind: r.kind.as_str().into(),
                    ..Default::default()
                },
            );
            senders.push(tx);
            tasks.push(tokio::spawn(run_receiver(
                r,
                platform.to_string(),
                rx,
                status.clone(),
                sink.clone(),
            )));
        }
        Hub {
            senders,
            status,
            tasks,
        }
    }

    /// Hand the current alerts to every receiver; never waits for one.
    pub fn update(&self, firing: Vec<(Alert, bool)>, resolved: Vec<Alert>) {
        for s in &self.senders {
            let _ = s.send(Msg::Update {
                firing: firing.clone(),
                resolved: resolved.clone(),
            });
        }
    }

    pub fn status(&self) -> BTreeMap<String, ReceiverStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn alert_key(a: &Alert) -> String {
    format!("{}\u{0}{}", a.rule, a.target)
}

struct Group {
    labels: BTreeMap<String, String>,
    /// Firing alerts, and resolved ones not yet notified.
    alerts: BTreeMap<String, Alert>,
    created: Instant,
    last_flush: Option<Instant>,
    /// Firing alerts in the last notification: only their resolution is worth sending.
    notified_firing: BTreeSet<String>,
    dirty: bool,
}

async fn run_receiver(
    r: Receiver,
    platform: String,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    status: Arc<Mutex<BTreeMap<String, ReceiverStatus>>>,
    sink: Arc<dyn DeliverySink>,
) {
    let client = Transport {
        http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>(),
        tls: crate::tls::client_config(r.ca_file.as_deref()),
    };
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(Msg::Update { firing, resolved }) = msg else { return };
                apply(&r, &mut groups, firing, resolved);
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let keys: Vec<String> = groups.keys().cloned().collect();
        for k in keys {
            let Some(g) = groups.get_mut(&k) else {
                continue;
            };
            let any_firing = g.alerts.values().any(|a| a.state == State::Firing);
            let due = match g.last_flush {
                None => now.duration_since(g.created) >= r.group_wait,
                Some(at) if g.dirty => now.duration_since(at) >= r.group_interval,
                Some(at) => any_firing && now.duration_since(at) >= r.repeat_interval,
            };
            if !due || g.alerts.is_empty() {
                if g.alerts.is_empty() && g.last_flush.is_some() {
                    groups.remove(&k);
                }
                continue;
            }
            let alerts: Vec<Alert> = g.alerts.values().cloned().collect();
            let group_labels = g.labels.clone();
            deliver_with_retries(
                &r,
                &client,
                &platform,
                &k,
                &group_labels,
                &alerts,
                &status,
                &*sink,
            )
            .await;
            let Some(g) = groups.get_mut(&k) else {
                continue;
            };
            g.last_flush = Some(Instant::now());
            g.dirty = false;
            g.notified_firing = alerts
                .iter()
                .filter(|a| a.state == State::Firing)
                .map(alert_key)
                .collect();
            // Resolutions are sent once; a newer firing of the same alert stays.
            for a in alerts.iter().filter(|a| a.state == State::Resolved) {
                let key = alert_key(a);
                if g.alerts
                    .get(&key)
                    .is_some_and(|x| x.state == State::Resolved)
                {
                    g.alerts.remove(&key);
                }
            }
            if g.alerts.is_empty() {
                groups.remove(&k);
            }
        }
    }
}

fn group_of(r: &Receiver, a: &Alert) -> (String, BTreeMap<String, String>) {
    let labels: BTreeMap<String, String> = r
        .group_by
        .iter()
        .filter_map(|l| a.labels.get(l).map(|v| (l.clone(), v.clone())))
        .collect();
    let key = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    (format!("{{{key}}}"), labels)
}

fn apply(
    r: &Receiver,
    groups: &mut BTreeMap<String, Group>,
    firing: Vec<(Alert, bool)>,
    resolved: Vec<Alert>,
) {
    let firing_keys: BTreeSet<String> = firing.iter().map(|(a, _)| alert_key(a)).collect();
    for (a, silenced) in firing {
        let (gk, labels) = group_of(r, &a);
        let key = alert_key(&a);
        if silenced {
            // A silenced alert is not notified, nor is its resolution.
            if let Some(g) = groups.get_mut(&gk) {
                g.alerts.remove(&key);
                g.notified_firing.remove(&key);
            }
            continue;
        }
        let g = groups.entry(gk).or_insert_with(|| Group {
            labels,
            alerts: BTreeMap::new(),
            created: Instant::now(),
            last_flush: None,
            notified_firing: BTreeSet::new(),
            dirty: false,
        });
        if !g.notified_firing.contains(&key)
            && !g.alerts.get(&key).is_some_and(|x| x.state == State::Firing)
        {
            g.dirty = true;
        }
        g.alerts.insert(key, a);
    }
    for a in resolved {
        let key = alert_key(&a);
        if firing_keys.contains(&key) {
            continue;
        }
        let (gk, _) = group_of(r, &a);
        let Some(g) = groups.get_mut(&gk) else {
            continue;
        };
        if g.notified_firing.contains(&key) {
            g.alerts.insert(key, a);
            g.dirty = true;
        } else {
            // Never notified as firing (still in group_wait): nothing to resolve.
            g.alerts.remove(&key);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn deliver_with_retries(
    r: &Receiver,
    client: &Transport,
    platform: &str,
    group_key: &str,
    group_labels: &BTreeMap<String, String>,
    alerts: &[Alert],
    status: &Mutex<BTreeMap<String, ReceiverStatus>>,
    sink: &dyn DeliverySink,
) {
    let overall = if alerts.iter().any(|a| a.state == State::Firing) {
        "firing"
    } else {
        "resolved"
    };
    let mut backoff = Duration::from_secs(1);
    for attempt in 0..=r.retries {
        let now = crate::now_ms();
        let result = tokio::time::timeout(
            r.timeout,
            deliver(
                r,
                client,
                platform,
                group_key,
                group_labels,
                alerts,
                overall,
            ),
        )
        .await
        .unwrap_or(Err(DeliveryError::Timeout(r.timeout)));
        let failure = {
            let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
            let entry = st.entry(r.name.clone()).or_default();
            entry.last_attempt_ms = Some(now);
            match result {
                Ok(()) => {
                    entry.last_success_ms = Some(now);
                    entry.last_error = None;
                    entry.delivered += 1;
                    None
                }
                Err(e) => {
                    entry.last_error = Some(e.to_string());
                    if attempt == r.retries {
                        entry.failed += 1;
                    }
                    Some(e)
                }
            }
        };
        match failure {
            None => {
                sink.delivered(&r.name, alerts.len(), overall);
                return;
            }
            Some(e) => {
                if attempt == r.retries {
                    sink.failed(
                        &r.name,
                        &format!(
                            "{} notification of {} alert(s) not delivered after {} attempt(s): {e}",
                            r.kind.as_str(),
                            alerts.len(),
                            attempt + 1
                        ),
                    );
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// How a receiver's task reaches its receiver: pooled plain HTTP, and TLS when it needs it.
struct Transport {
    http: HttpClient,
    /// The TLS setup, or why it failed (a bad ca_file): reported on each delivery that needs it.
    tls: Result<std::sync::Arc<rustls::ClientConfig>, String>,
}

impl Transport {
    fn tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, DeliveryError> {
        self.tls.clone().map_err(DeliveryError::Http)
    }
}

fn alert_json(a: &Alert, repeat: Duration) -> serde_json::Value {
    let ends = match a.resolved_at_ms {
        Some(t) => crate::rfc3339(t),
        // Alertmanager resolves a firing alert it stops hearing about after endsAt: a few
        // re-send periods ahead, as Prometheus does.
        None => crate::rfc3339(crate::now_ms() + 4 * repeat.as_millis() as i64),
    };
    json!({
        "status": if a.state == State::Resolved { "resolved" } else { "firing" },
        "labels": a.labels,
        "annotations": { "summary": a.summary, "value": a.value.to_string() },
        "startsAt": crate::rfc3339(a.fired_at_ms.unwrap_or(a.active_since_ms)),
        "endsAt": ends,
    })
}

/// The labels every alert of the group shares.
fn common_labels(alerts: &[Alert]) -> BTreeMap<String, String> {
    let mut common = alerts.first().map(|a| a.labels.clone()).unwrap_or_default();
    for a in alerts.iter().skip(1) {
        common.retain(|k, v| a.labels.get(k) == Some(v));
    }
    common
}

fn text_summary(platform: &str, status: &str, alerts: &[Alert]) -> (String, String) {
    let firing = alerts.iter().filter(|a| a.state == State::Firing).count();
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
    let subject = format!(
        "[{}{}] {platform}: {}",
        status.to_uppercase(),
        if status == "firing" {
            format!(":{firing}")
        } else {
            String::new()
        },
        names.into_iter().collect::<Vec<_>>().join(", ")
    );
    let mut body = String::new();
    for a in alerts {
        body.push_str(&format!(
            "- [{}] {} ({}, {}): {}\n",
            a.state.as_str(),
            a.rule,
            a.target,
            a.severity.as_str(),
            a.summary
        ));
    }
    (subject, body)
}

async fn deliver(
    r: &Receiver,
    client: &Transport,
    platform: &str,
    group_key: &str,
    group_labels: &BTreeMap<String, String>,
    alerts: &[Alert],
    status: &str,
) -> Result<(), DeliveryError> {
    match &r.kind {
        ReceiverKind::Webhook { url, hmac_secret } => {
            let body = json!({
                "version": "4",
                "receiver": r.name,
                "platform": platform,
                "status": status,
                "groupKey": group_key,
                "groupLabels": group_labels,
                "commonLabels": common_labels(alerts),
                "alerts": alerts.iter().map(|a| alert_json(a, r.repeat_interval)).collect::<Vec<_>>(),
            });
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let mut headers = Vec::new();
            if let Some(secret) = hmac_secret {
                headers.push((
                    "x-tcf-signature",
                    format!("sha256={}", sign(secret, &bytes)),
                ));
            }
            post(client, url, bytes, &headers).await
        }
        ReceiverKind::Slack { url } => {
            let (subject, body) = text_summary(platform, status, alerts);
            let bytes = serde_json::to_vec(&json!({ "text": format!("*{subject}*\n{body}") }))
                .unwrap_or_default();
            post(client, url, bytes, &[]).await
        }
        ReceiverKind::Alertmanager { url } => {
            let list: Vec<serde_json::Value> = alerts
                .iter()
                .map(|a| {
                    let mut v = alert_json(a, r.repeat_interval);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("status");
                        o.insert("generatorURL".into(), json!(""));
                    }
                    v
                })
                .collect();
            let bytes = serde_json::to_vec(&list).unwrap_or_default();
            let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            post(client, &endpoint, bytes, &[]).await
        }
        ReceiverKind::Email {
            smtp,
            from,
            to,
            starttls,
        } => {
            let (subject, body) = text_summary(platform, status, alerts);
            let tls = if *starttls { Some(client.tls()?) } else { None };
            send_mail(smtp, from, to, tls, &subject, &body).await
        }
    }
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn post(
    client: &Transport,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> Result<(), DeliveryError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| DeliveryError::Http(format!("bad URL {url}: {e}")))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default().to_string();
    let mut req = hyper::Request::post(if https {
        // HTTP/1.1 on our own connection wants the origin form.
        uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
    } else {
        url.to_string()
    })
    .header("content-type", "application/json")
    .header(
        "user-agent",
        concat!("tcf-platform/", env!("CARGO_PKG_VERSION")),
    );
    if https {
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        req = req.header("host", authority);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| DeliveryError::Http(format!("bad request to {url}: {e}")))?;
    let resp = if https {
        // One connection per notification: they are rare, and it keeps no idle TLS sessions.
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((
            host.trim_start_matches('[').trim_end_matches(']'),
            port,
        ))
        .await
        .map_err(|e| DeliveryError::Http(format!("{url}: cannot connect: {e}")))?;
        let tls = crate::tls::connect(client.tls()?, &host, tcp)
            .await
            .map_err(|e| DeliveryError::Http(format!("{url}: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| DeliveryError::Http(format!("{url}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| DeliveryError::Http(format!("{url}: {e}")))?
            .map(|b| b.boxed())
    } else {
        client
            .http
            .request(req)
            .await
            .map_err(|e| DeliveryError::Http(format!("{url}: {e}")))?
            .map(|b| b.boxed())
    };
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(DeliveryError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        });
    }
    Ok(())
}

/// A minimal SMTP client (RFC 5321, RFC 3207): EHLO, optional STARTTLS, MAIL, RCPT, DATA,
/// QUIT. It is all alert mail needs, and keeps a mail library out of the binary.
pub async fn send_mail(
    addr: &str,
    from: &str,
    to: &[String],
    starttls: Option<std::sync::Arc<rustls::ClientConfig>>,
    subject: &str,
    body: &str,
) -> Result<(), DeliveryError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| DeliveryError::Smtp(format!("{addr}: connect: {e}")))?;
    let mut conn = BufReader::new(stream);
    reply(&mut conn, 220).await?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    command(&mut conn, &format!("EHLO {host}"), 250).await?;
    match starttls {
        None => mail_transaction(&mut conn, &host, from, to, subject, body).await,
        Some(config) => {
            command(&mut conn, "STARTTLS", 220).await?;
            // Nothing may follow the 220 in plain text (RFC 3207), so the buffer is empty.
            let server = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let tls = crate::tls::connect(config, server, conn.into_inner())
                .await
                .map_err(DeliveryError::Smtp)?;
            let mut conn = BufReader::new(tls);
            command(&mut conn, &format!("EHLO {host}"), 250).await?;
            mail_transaction(&mut conn, &host, from, to, subject, body).await
        }
    }
}

/// Read one (possibly multi-line) reply and check its code.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    expect: u16,
) -> Result<(), DeliveryError> {
    loop {
        let mut line = String::new();
        let n = conn
            .read_line(&mut line)
            .await
            .map_err(|e| DeliveryError::Smtp(format!("reading a reply: {e}")))?;
        if n == 0 {
            return Err(DeliveryError::Smtp(
                "the server closed the connection".into(),
            ));
        }
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        // "250-" continues a multi-line reply; "250 " ends it.
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        if code != expect {
            return Err(DeliveryError::Smtp(format!(
                "expected {expect}, got {}",
                line.trim_end()
            )));
        }
        return Ok(());
    }
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    line: &str,
    expect: u16,
) -> Result<(), DeliveryError> {
    conn.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| DeliveryError::Smtp(format!("sending {line:?}: {e}")))?;
    reply(conn, expect).await
}

async fn mail_transaction<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    host: &str,
    from: &str,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(), DeliveryError> {
    command(conn, &format!("MAIL FROM:<{from}>"), 250).await?;
    for rcpt in to {
        command(conn, &format!("RCPT TO:<{rcpt}>"), 250).await?;
    }
    command(conn, "DATA", 354).await?;
    let now = crate::now_ms();
    let date = httpdate(now);
    let mut msg = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{now}.{}@{host}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        to.join(", "),
        subject.replace(['\r', '\n'], " "),
        std::process::id(),
    );
    for line in body.lines() {
        // Dot-stuffing: a line starting with "." gets another.
        if line.starts_with('.') {
            msg.push('.');
        }
        msg.push_str(line);
        msg.push_str("\r\n");
    }
    msg.push_str(".\r\n");
    conn.get_mut()
        .write_all(msg.as_bytes())
        .await
        .map_err(|e| DeliveryError::Smtp(format!("sending the message: {e}")))?;
    reply(conn, 250).await?;
    let _ = command(conn, "QUIT", 221).await;
    Ok(())
}

/// RFC 5322 date in UTC.
fn httpdate(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Severity;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    fn alert(state: State) -> Alert {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".into(), "high_5xx_ratio".into());
        labels.insert("service".into(), "gateway".into());
        labels.insert("severity".into(), "warning".into());
        Alert {
            rule: "high_5xx_ratio".into(),
            target: "gateway".into(),
            state,
            severity: Severity::Warning,
            value: 0.2,
            summary: "gateway: 20.0% of requests answered 5xx".into(),
            labels,
            active_since_ms: 1000,
            fired_at_ms: Some(2000),
            resolved_at_ms: (state == State::Resolved).then_some(3000),
            last_true_ms: 2000,
        }
    }

    #[derive(Default)]
    struct Counts {
        ok: AtomicUsize,
        failed: AtomicUsize,
    }
    impl DeliverySink for Counts {
        fn failed(&self, _: &str, _: &str) {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        fn delivered(&self, _: &str, _: usize, _: &str) {
            self.ok.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A loopback HTTP server that records each request body and answers `status`.
    async fn receiver(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                tokio::time::sleep(delay).await;
                                s.lock().unwrap().push((head.to_string(), body.to_string()));
                                let resp = format!(
                                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                );
                                let _ = sock.write_all(resp.as_bytes()).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/hook"), seen)
    }

    fn webhook(name: &str, url: &str) -> Receiver {
        Receiver {
            name: name.into(),
            kind: ReceiverKind::Webhook {
                url: url.into(),
                hmac_secret: Some("s3cret".into()),
            },
            group_by: vec!["alertname".into()],
            group_wait: Duration::from_millis(100),
            group_interval: Duration::from_millis(300),
            repeat_interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            retries: 2,
            ca_file: None,
        }
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn one_notification_per_group_then_one_resolution_and_a_dead_receiver_blocks_nobody() {
        let (good_url, good) = receiver(200, Duration::ZERO).await;
        // A receiver that answers only after a long time, and one that refuses connections.
        let (slow_url, _slow) = receiver(200, Duration::from_secs(60)).await;
        let dead_url = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/hook", l.local_addr().unwrap())
        };
        let counts = Arc::new(Counts::default());
        let mut slow = webhook("slow", &slow_url);
        slow.timeout = Duration::from_secs(30);
        let mut dead = webhook("dead", &dead_url);
        dead.retries = 1;
        let hub = Hub::start(
            vec![slow, dead, webhook("good", &good_url)],
            "example",
            counts.clone(),
        );
        let mut second = alert(State::Firing);
        second.target = "tokens".into();
        second.labels.insert("service".into(), "tokens".into());
        // The same firing alerts, evaluation after evaluation: one notification for the group.
        for _ in 0..5 {
            hub.update(
                vec![(alert(State::Firing), false), (second.clone(), false)],
                vec![],
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for("the firing notification", || {
            good.lock().unwrap().len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(good.lock().unwrap().len(), 1, "no second notification");
        let (head, body) = good.lock().unwrap()[0].clone();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "firing");
        assert_eq!(v["alerts"].as_array().unwrap().len(), 2);
        assert_eq!(v["groupLabels"]["alertname"], "high_5xx_ratio");
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "x-tcf-signature: sha256={}",
                sign("s3cret", body.as_bytes())
            )),
            "{head}"
        );
        hub.update(vec![(second.clone(), false)], vec![alert(State::Resolved)]);
        wait_for("the resolution", || good.lock().unwrap().len() == 2).await;
        let v: serde_json::Value = serde_json::from_str(&good.lock().unwrap()[1].1).unwrap();
        let statuses: Vec<&str> = v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, vec!["resolved", "firing"]);
        hub.update(vec![(second.clone(), false)], vec![]);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(good.lock().unwrap().len(), 2, "a resolution is sent once");
        wait_for("the dead receiver's failure", || {
            counts.failed.load(Ordering::SeqCst) == 1
        })
        .await;
        let st = hub.status();
        assert!(st["dead"].last_error.is_some());
        wait_for("both deliveries recorded", || {
            hub.status()["good"].delivered == 2
        })
        .await;
        assert_eq!(st["slow"].delivered, 0, "still waiting on the slow one");
    }

    #[tokio::test]
    async fn silenced_alerts_and_their_resolutions_are_not_sent() {
        let (url, seen) = receiver(200, Duration::ZERO).await;
        let hub = Hub::start(vec![webhook("w", &url)], "p", Arc::new(Counts::default()));
        hub.update(vec![(alert(State::Firing), true)], vec![]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        hub.update(vec![], vec![alert(State::Resolved)]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn slack_gets_text_and_alertmanager_gets_its_v2_list() {
        let (slack_url, slack_seen) = receiver(200, Duration::ZERO).await;
        let (am_url, am_seen) = receiver(200, Duration::ZERO).await;
        let mut slack = webhook("chat", &slack_url);
        slack.kind = ReceiverKind::Slack { url: slack_url };
        let mut am = webhook("am", &am_url);
        am.kind = ReceiverKind::Alertmanager {
            url: am_url.trim_end_matches("/hook").to_string(),
        };
        am.group_wait = Duration::ZERO;
        am.repeat_interval = Duration::from_millis(500);
        let hub = Hub::start(vec![slack, am], "tcf", Arc::new(Counts::default()));
        hub.update(vec![(alert(State::Firing), false)], vec![]);
        wait_for("slack", || slack_seen.lock().unwrap().len() == 1).await;
        let v: serde_json::Value = serde_json::from_str(&slack_seen.lock().unwrap()[0].1).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("*[FIRING:1] tcf: high_5xx_ratio*"),
            "{text}"
        );
        assert!(
            text.contains("gateway: 20.0% of requests answered 5xx"),
            "{text}"
        );
        // Alertmanager: POST /api/v2/alerts, firing alerts re-sent, then endsAt on resolve.
        wait_for("two Alertmanager posts", || {
            am_seen.lock().unwrap().len() >= 2
        })
        .await;
        let (head, body) = am_seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("POST /api/v2/alerts "), "{head}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list[0]["labels"]["alertname"], "high_5xx_ratio");
        assert!(list[0].get("status").is_none());
        hub.update(vec![], vec![alert(State::Resolved)]);
        let ends = crate::rfc3339(3000);
        wait_for("the resolution with endsAt", || {
            am_seen.lock().unwrap().iter().any(|(_, b)| {
                serde_json::from_str::<serde_json::Value>(b).unwrap()[0]["endsAt"] == ends.as_str()
            })
        })
        .await;
    }

    #[tokio::test]
    async fn https_webhooks_verify_the_server() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = tcf_testkit::openssl_ca_and_cert(dir.path());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    // A client that does not trust us fails the handshake: nothing to record.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = tls.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                s.lock().unwrap().push(text.clone());
                                let _ = tls
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                    .await;
                                let _ = tls.shutdown().await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        let url = format!("https://127.0.0.1:{port}/hook?x=1");
        let mut trusting = webhook("trusting", &url);
        trusting.ca_file = Some(ca);
        let mut untrusting = webhook("untrusting", &url);
        untrusting.retries = 0;
        let counts = Arc::new(Counts::default());
        let hub = Hub::start(vec![trusting, untrusting], "p", counts.clone());
        hub.update(vec![(alert(State::Firing), false)], vec![]);
        wait_for("the https delivery", || seen.lock().unwrap().len() == 1).await;
        let request = seen.lock().unwrap()[0].clone();
        assert!(
            request.starts_with("POST /hook?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}")),
            "{request}"
        );
        wait_for("the untrusted server refused", || {
            counts.failed.load(Ordering::SeqCst) == 1
        })
        .await;
        let st = hub.status();
        assert!(
            st["untrusting"]
                .last_error
                .as_deref()
                .unwrap()
                .contains("certificate"),
            "{st:?}"
        );
        // The server has the request before the client has read the answer: wait for both.
        wait_for("the trusting receiver's delivery recorded", || {
            hub.status()["trusting"].delivered == 1
        })
        .await;
    }

    #[test]
    fn dates_for_mail() {
        assert_eq!(httpdate(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            httpdate(1_764_079_200_000),
            "Tue, 25 Nov 2025 14:00:00 +0000"
        );
    }
}
