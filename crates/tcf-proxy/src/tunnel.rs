//! Upgraded connections (WebSocket and the like): the client's and the upstream's connections
//! spliced together, counted on their backend, and closed once idle.

use crate::upstream::Conn;
use crate::Backend;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts an upgraded connection on its backend from the moment its 101 is answered until the
/// tunnel closes. Taken before the request's outstanding count drops, so a drain never sees
/// the instance idle in between and stops it under a tunnel just opened.
pub(crate) struct UpgradedGuard(Arc<Backend>);

impl UpgradedGuard {
    pub(crate) fn new(backend: Arc<Backend>) -> UpgradedGuard {
        backend.upgraded.fetch_add(1, Ordering::Relaxed);
        UpgradedGuard(backend)
    }
}

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.upgraded.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Splice the client's upgraded connection (once hyper hands it over) to the upstream one, with
/// what the upstream already sent past its 101 first. Closed when either side closes, or when
/// neither sent a byte for `idle` (closed between one and two `idle` periods after the last).
pub(crate) fn tunnel<U>(client: U, mut upstream: Conn, counted: UpgradedGuard, idle: Duration)
where
    U: Future<Output = hyper::Result<hyper::upgrade::Upgraded>> + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let _counted = counted;
        let Ok(client) = client.await else {
            return;
        };
        let mut client = TokioIo::new(client);
        let early = std::mem::take(&mut upstream.buf);
        if early.is_empty() || client.write_all(&early).await.is_ok() {
            splice(&mut client, &mut upstream.stream, idle).await;
        }
    });
}

/// Copy both ways until either side ends or nothing moved for a whole `idle` period.
async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicBool::new(false);
    let mut a = Watched {
        io: a,
        moved: &moved,
    };
    let mut b = Watched {
        io: b,
        moved: &moved,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            // One timer per tunnel and period, not per read: tunnels are few and long.
            _ = tokio::time::sleep(idle) => {
                if !moved.swap(false, Ordering::Relaxed) {
                    tracing::debug!("closing an upgraded connection idle for {idle:?}");
                    return;
                }
            }
        }
    }
}

/// A stream that notes when bytes were read from it.
struct Watched<'a, T> {
    io: &'a mut T,
    moved: &'a AtomicBool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
