//! `tcf-load`: a fixed-rate HTTP/1.1 load generator over keep-alive connections.
//!
//! Every request is scheduled on a fixed timetable; its latency is measured from when it was
//! *scheduled*, so a stall shows up in the numbers instead of hiding (no coordinated
//! omission). Every outcome is written as one CSV line:
//! `scheduled_ms,latency_us,status,proxy_error,connection_error`.
//! SIGTERM or SIGINT stops it early; what was measured is still written.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

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
    /// Keep-alive connections sharing the rate
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Stop after this long (SIGTERM stops it earlier)
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where to write the CSV (default: stdout)
    #[arg(long)]
    out: Option<std::path::PathBuf>,
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

async fn connect(addr: &str) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one(sender: &mut Sender, addr: &str, path: &str) -> Result<(u16, bool), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = hyper::Request::get(path)
        .header("host", addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let by_proxy = resp.headers().contains_key("x-tcf-proxy-error");
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, by_proxy))
}

async fn worker(
    args: Arc<Args>,
    index: u32,
    start: Instant,
    end: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate.max(1) as f64);
    // Spread the connections' timetables evenly over one period.
    let mut next = start + period.mul_f64(index as f64 / args.connections as f64);
    let mut sender: Option<Sender> = None;
    let mut local = Vec::new();
    while next < end {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => break,
        }
        let scheduled = next;
        next += period;
        if sender.is_none() {
            sender = connect(&args.addr).await.ok();
        }
        let outcome = match sender.as_mut() {
            Some(s) => one(s, &args.addr, &args.path).await,
            None => Err("connect failed".into()),
        };
        let latency_us = scheduled.elapsed().as_micros() as u64;
        let scheduled_ms = scheduled.duration_since(start).as_millis() as u64;
        match outcome {
            Ok((status, proxy_error)) => local.push(Sample {
                scheduled_ms,
                latency_us,
                status,
                proxy_error,
                connection_error: false,
            }),
            Err(_) => {
                sender = None;
                local.push(Sample {
                    scheduled_ms,
                    latency_us,
                    status: 0,
                    proxy_error: false,
                    connection_error: true,
                });
            }
        }
    }
    samples.lock().await.extend(local);
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let start = Instant::now();
    let end = start + args.duration;
    let samples = Arc::new(Mutex::new(Vec::new()));
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
                i,
                start,
                end,
                samples.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let mut samples = samples.lock().await.clone();
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
    eprintln!("tcf-load: {} requests", samples.len());
}
