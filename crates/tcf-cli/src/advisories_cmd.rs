//! `prod audit --update-advisories`: download the OSV database of the ecosystems the audit
//! reads (`BASE/ECOSYSTEM/all.zip`), extract it into a new directory beside the advisory
//! directory, and swap it in with a rename, so an audit never reads half a database.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// OSV's public bucket; `--advisories-url` or `TCF_ADVISORIES_URL` point at a mirror.
pub const DEFAULT_BASE_URL: &str = "https://osv-vulnerabilities.storage.googleapis.com";

/// No byte for this long: the download is given up.
const STALL: Duration = Duration::from_secs(30);

/// Download every ecosystem into `dir` (replaced whole on success). Returns the number of
/// advisories.
pub async fn update(dir: &Path, base_url: &str) -> anyhow::Result<usize> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir
        .file_name()
        .ok_or_else(|| anyhow!("{} names no directory", dir.display()))?
        .to_string_lossy()
        .to_string();
    let staging = parent.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let result = fill(&staging, base_url).await;
    let total = match result {
        Ok(total) => total,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // The swap: the old directory out of the way, the new one in, the old one removed.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old)
            .with_context(|| format!("cannot move the old database {} aside", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&staging, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e)
            .with_context(|| format!("cannot move the new database to {}", dir.display()));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(total)
}

async fn fill(staging: &Path, base_url: &str) -> anyhow::Result<usize> {
    let base = base_url.trim_end_matches('/');
    let mut total = 0;
    for ecosystem in tcf_audit::advisories::ECOSYSTEMS {
        let url = format!("{base}/{ecosystem}/all.zip");
        let archive = staging.join(format!("{ecosystem}.zip"));
        download(&url, &archive, ecosystem).await?;
        let count = tcf_audit::advisories::extract_osv_zip(&archive, staging)?;
        std::fs::remove_file(&archive).ok();
        eprintln!("{ecosystem}: {count} advisories");
        total += count;
    }
    Ok(total)
}

fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GET `url` into `path`, printing progress to stderr.
async fn download(url: &str, path: &Path, label: &str) -> anyhow::Result<()> {
    let offline = |e: &dyn std::fmt::Display| {
        anyhow!("cannot download {url}: {e}\nhint: this machine must reach the advisory source (offline? use --advisories-url with a mirror, or copy a database directory and pass --advisories DIR)")
    };
    let uri: http::Uri = url.parse().map_err(|e| anyhow!("invalid URL {url}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("{url} is not an http(s) URL"),
    };
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("{url} has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(STALL, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| offline(&"no connection within 30 s"))?
        .map_err(|e| offline(&e))?;
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(
            http::header::USER_AGENT,
            concat!("tcf-platform/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())?;
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| offline(&format!("TLS: {e}")))?;
        fetch(TokioIo::new(tls), request, path, label).await
    } else {
        fetch(TokioIo::new(tcp), request, path, label).await
    };
    response.map_err(|e| offline(&e))
}

async fn fetch<I>(
    io: I,
    request: http::Request<Empty<Bytes>>,
    path: &Path,
    label: &str,
) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let response = tokio::time::timeout(STALL, sender.send_request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        conn.abort();
        return Err(format!("the server answered {}", response.status()));
    }
    let length: Option<u64> = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = response.into_body();
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut received: u64 = 0;
    let mut shown = 0u64;
    loop {
        let frame = match tokio::time::timeout(STALL, body.frame()).await {
            Err(_) => return Err("the download stalled for 30 s".into()),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| e.to_string())?,
        };
        if let Ok(data) = frame.into_data() {
            file.write_all(&data)
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            received += data.len() as u64;
            // A progress line per MiB (and at the end), rewritten in place.
            if received - shown >= 1 << 20 {
                shown = received;
                progress(label, received, length);
            }
        }
    }
    file.flush().await.map_err(|e| e.to_string())?;
    conn.abort();
    if let Some(expected) = length {
        if received != expected {
            return Err(format!(
                "the download ended after {received} of {expected} bytes"
            ));
        }
    }
    progress(label, received, length);
    eprintln!();
    Ok(())
}

fn progress(label: &str, received: u64, length: Option<u64>) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let text = match length {
        Some(total) if total > 0 => format!(
            "\r{label}: {:.1} of {:.1} MiB ({}%)",
            mib(received),
            mib(total),
            received * 100 / total
        ),
        _ => format!("\r{label}: {:.1} MiB", mib(received)),
    };
    let mut err = std::io::stderr();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}
