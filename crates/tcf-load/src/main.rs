//! `tcf-load`: a fixed-rate HTTP/1.1 load generator, over keep-alive connections or a new
//! connection per request, plain or over TLS.
//!
//! Every request is scheduled on a fixed timetable, so two servers given the same rate get the
//! same load whichever is faster (a closed-loop tool such as wrk pushes the faster one's
//! bottleneck onto its own CPU). A request that waits for the one before it on its connection
//! is measured from when it was *scheduled*, so a stall shows up in the numbers instead of
//! hiding (no coordinated omission); one that only woke late (the timer's millisecond
//! granularity, the load generator's own CPU) is measured from when it was sent. A new
//! connection's request is measured with its connect and TLS handshake. Every outcome is
//! written as one CSV line:
//! `scheduled_ms,latency_us,status,proxy_error,connection_error`.
//! SIGTERM or SIGINT stops it early; what was measured is still written.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    version,
    about = "Fixed-rate HTTP load with every response recorded (CSV)"
)]
struct Args {
    /// Target address, host:port
    #[arg(long)]
    addr: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, in total
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Keep-alive connections sharing the rate (with --new-connection: clients, each opening
    /// one connection per request)
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Open a new connection for every request (and close it after the response)
    #[arg(long)]
    new_connection: bool,
    /// Speak TLS, trusting the certificates in this PEM file (the server's own self-signed
    /// certificate will do); the server name is the host of --addr
    #[arg(long, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// Stop after this long (SIGTERM stops it earlier)
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where to write the CSV (default: stdout)
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// What one connection's timetable produced.
#[derive(Default)]
struct Worked {
    samples: Vec<Sample>,
    /// The first failure's reason and when its request was due (ms from the start).
    first_error: Option<(u64, String)>,
}

#[derive(Clone, Copy)]
struct Sample {
    scheduled_ms: u64,
    latency_us: u64,
    status: u16,
    proxy_error: bool,
    connection_error: bool,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// TLS to the target: the client config and the name its certificate must carry.
struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    fn new(ca: &std::path::Path, addr: &str) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a server name: {e}"))?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

async fn connect(addr: &str, tls: Option<&Tls>) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => handshake(stream).await,
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await
                .map_err(|e| e.to_string())?;
            handshake(stream).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Why a request has no answer.
enum Failure {
    /// The kept connection was closed before this request went out (the server said
    /// `Connection: close` or dropped it while idle): any HTTP client sends it again on a new one.
    Unsent(String),
    Failed(String),
}

/// One request, on the kept connection if there is one and it is still open, else on a new one.
async fn request(
    sender: &mut Option<Sender>,
    args: &Args,
    tls: Option<&Tls>,
) -> Result<(u16, bool), String> {
    let mut unsent = String::new();
    for _ in 0..2 {
        let open = match sender.take() {
            Some(open) => open,
            None => connect(&args.addr, tls).await?,
        };
        let sent = sender.insert(open);
        match one(sent, &args.addr, &args.path, args.new_connection).await {
            Ok(answer) => return Ok(answer),
            Err(Failure::Unsent(e)) => {
                *sender = None;
                unsent = e;
            }
            Err(Failure::Failed(e)) => return Err(e),
        }
    }
    Err(format!(
        "the server closed two connections in a row before the request went out: {unsent}"
    ))
}

async fn one(
    sender: &mut Sender,
    addr: &str,
    path: &str,
    close: bool,
) -> Result<(u16, bool), Failure> {
    // A failure before the request is on the wire can be retried; after it, it cannot.
    sender
        .ready()
        .await
        .map_err(|e| Failure::Unsent(e.to_string()))?;
    let failed = |e: &dyn std::fmt::Display| Failure::Failed(e.to_string());
    let mut req = hyper::Request::get(path).header("host", addr);
    if close {
        req = req.header("connection", "close");
    }
    let req = req.body(Empty::new()).map_err(|e| failed(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
    let status = resp.status().as_u16();
    let by_proxy = resp.headers().contains_key("x-tcf-proxy-error");
    resp.into_body().collect().await.map_err(|e| failed(&e))?;
    Ok((status, by_proxy))
}

async fn worker(
    args: Arc<Args>,
    tls: Option<Arc<Tls>>,
    index: u32,
    start: Instant,
    end: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Worked {
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate.max(1) as f64);
    // Spread the connections' timetables evenly over one period.
    let mut next = start + period.mul_f64(index as f64 / args.connections as f64);
    let mut sender: Option<Sender> = None;
    let mut worked = Worked::default();
    let mut previous_done = start;
    while next < end {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => break,
        }
        let scheduled = next;
        next += period;
        // Late because the request before it was still running: the server's delay, counted
        // from the schedule. Late only because this task woke late: ours, not counted.
        let measured_from = if previous_done > scheduled {
            scheduled
        } else {
            Instant::now()
        };
        let outcome = request(&mut sender, &args, tls.as_deref()).await;
        if args.new_connection {
            sender = None;
        }
        previous_done = Instant::now();
        let latency_us = previous_done.duration_since(measured_from).as_micros() as u64;
        let scheduled_ms = scheduled.duration_since(start).as_millis() as u64;
        match outcome {
            Ok((status, proxy_error)) => worked.samples.push(Sample {
                scheduled_ms,
                latency_us,
                status,
                proxy_error,
                connection_error: false,
            }),
            Err(e) => {
                // The first failure's reason, for the summary line (the CSV has no room for it).
                worked.first_error.get_or_insert((scheduled_ms, e));
                sender = None;
                worked.samples.push(Sample {
                    scheduled_ms,
                    latency_us,
                    status: 0,
                    proxy_error: false,
                    connection_error: true,
                });
            }
        }
    }
    worked
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let tls = match &args.ca {
        None => None,
        Some(ca) => match Tls::new(ca, &args.addr) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                eprintln!("tcf-load: {e}");
                std::process::exit(2);
            }
        },
    };
    let start = Instant::now();
    let end = start + args.duration;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut t), Ok(mut i)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            let _ = stop_tx.send(true);
        }
    });
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            tokio::spawn(worker(
                args.clone(),
                tls.clone(),
                i,
                start,
                end,
                stop_rx.clone(),
            ))
        })
        .collect();
    let mut samples = Vec::new();
    let mut first_error: Option<(u64, String)> = None;
    for t in tasks {
        let (worked_samples, error) = match t.await {
            Ok(worked) => (worked.samples, worked.first_error),
            Err(e) => (
                Vec::new(),
                Some((0, format!("a connection's task failed: {e}"))),
            ),
        };
        samples.extend(worked_samples);
        if let Some(e) = error {
            if first_error.as_ref().is_none_or(|f| e.0 < f.0) {
                first_error = Some(e);
            }
        }
    }
    samples.sort_by_key(|s| s.scheduled_ms);
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("tcf-load: cannot write {}: {e}", p.display());
                std::process::exit(1);
            }
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let _ = writeln!(
        out,
        "scheduled_ms,latency_us,status,proxy_error,connection_error"
    );
    for s in &samples {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            s.scheduled_ms, s.latency_us, s.status, s.proxy_error as u8, s.connection_error as u8
        );
    }
    let _ = out.flush();
    let failed = samples.iter().filter(|s| s.connection_error).count();
    match first_error {
        Some((_, e)) => eprintln!(
            "tcf-load: {} requests, {failed} failed to connect or to get an answer (the first: {e})",
            samples.len()
        ),
        None => eprintln!("tcf-load: {} requests", samples.len()),
    }
}
