//! An in-repo load client: many keep-alive connections on threads, counting every response
//! (status, which version answered, whether the proxy made it) and every connection error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Sample {
    pub status: u16,
    pub version: String,
    pub by_proxy: bool,
}

#[derive(Debug, Default)]
pub struct Report {
    /// In the order each connection saw them, connections one after another.
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

/// A connection the load client speaks HTTP/1.1 over: TCP, or TLS over TCP.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// How the load client reaches the service: plain TCP, or TLS verified with this client
/// config for this server name.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<rustls::ClientConfig>, String),
}

impl Transport {
    fn connect(&self, addr: &str) -> std::io::Result<Box<dyn Stream>> {
        let s = TcpStream::connect(addr)?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        match self {
            Transport::Plain => Ok(Box::new(s)),
            Transport::Tls(config, name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                Ok(Box::new(rustls::StreamOwned::new(conn, s)))
            }
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Report>>,
}

impl Load {
    pub fn start(addr: &str, connections: usize) -> Load {
        Load::start_over(addr, connections, Transport::Plain)
    }

    pub fn start_over(addr: &str, connections: usize, transport: Transport) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..connections)
            .map(|_| {
                let (addr, stop, transport) = (addr.to_string(), stop.clone(), transport.clone());
                std::thread::spawn(move || worker(&addr, &stop, &transport))
            })
            .collect();
        Load { stop, workers }
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Report::default();
        for w in self.workers {
            let r = w.join().expect("load worker panicked");
            all.samples.extend(r.samples);
            all.errors.extend(r.errors);
        }
        all
    }
}

/// One request on a kept-alive connection; Ok(None) when the server closed it cleanly first.
fn exchange(conn: &mut BufReader<Box<dyn Stream>>) -> std::io::Result<(Sample, bool)> {
    conn.get_mut()
        .write_all(b"GET /load HTTP/1.1\r\nHost: load\r\n\r\n")?;
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut by_proxy, mut close) = (0usize, false, false);
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "x-tcf-proxy-error" => by_proxy = true,
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)?;
    let version = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((
        Sample {
            status,
            version,
            by_proxy,
        },
        close,
    ))
}

fn worker(addr: &str, stop: &AtomicBool, transport: &Transport) -> Report {
    let mut report = Report::default();
    let mut conn: Option<BufReader<Box<dyn Stream>>> = None;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            match transport.connect(addr) {
                Ok(s) => conn = Some(BufReader::new(s)),
                Err(e) => {
                    report.errors.push(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match exchange(c) {
            Ok((sample, close)) => {
                report.samples.push(sample);
                if close {
                    conn = None;
                }
            }
            Err(e) => {
                report.errors.push(format!("request: {e}"));
                conn = None;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    report
}
