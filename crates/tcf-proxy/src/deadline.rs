//! Upstream timeouts without a timer per request.
//!
//! `tokio::time::timeout` inserts into and removes from the runtime's timer wheel for every
//! request, and on a current-thread runtime a new timer often wakes the driver through its
//! eventfd: about one extra `write` system call for every three requests (measured with
//! `perf stat`, see docs/performance.md). Upstream timeouts are seconds long and need no
//! millisecond precision, so a proxy worker keeps its waiting exchanges in a thread-local
//! table instead, and one ticker per worker wakes the expired ones every [`TICK`] while any
//! are waiting: a timeout fires between `timeout` and `timeout + TICK` after the request began.
//!
//! The table is per thread, so it is used only on proxy worker threads, whose current-thread
//! runtimes never move a future to another thread; elsewhere the tokio timer is used.

use crate::slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often a worker's ticker looks for expired exchanges.
pub(crate) const TICK: Duration = Duration::from_millis(50);

thread_local! {
    /// Set on proxy worker threads (current-thread runtimes).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
    static WAITING: RefCell<Waiting> = RefCell::new(Waiting::default());
}

/// The exchanges of this thread waiting for their upstream, by slot.
#[derive(Default)]
struct Waiting {
    entries: Slab<Entry>,
    ticking: bool,
}

struct Entry {
    deadline: Instant,
    waker: Waker,
    /// Set by the ticker once the deadline passed.
    expired: bool,
}

/// The future did not finish before its deadline.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// Mark this thread as a proxy worker: its futures never move to another thread.
pub(crate) fn enter_worker() {
    ON_WORKER.with(|w| w.set(true));
}

/// Run `fut` until `deadline`.
pub(crate) async fn until<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    if !ON_WORKER.with(|w| w.get()) {
        return tokio::time::timeout_at(deadline.into(), fut)
            .await
            .map_err(|_| Elapsed);
    }
    let mut fut = std::pin::pin!(fut);
    let mut slot = Slot(None);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match slot.0 {
            // Woken again: by the future's own events, or by the ticker because time is up
            // (which it marks, so no poll here reads the clock).
            Some(index) => {
                let expired = WAITING.with(|w| match w.borrow_mut().entries.get_mut(index) {
                    Some(entry) => {
                        if !entry.waker.will_wake(cx.waker()) {
                            entry.waker = cx.waker().clone();
                        }
                        entry.expired
                    }
                    None => false,
                });
                if expired {
                    return Poll::Ready(Err(Elapsed));
                }
            }
            None => slot.0 = Some(register(deadline, cx.waker().clone())),
        }
        Poll::Pending
    })
    .await
}

fn register(deadline: Instant, waker: Waker) -> usize {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        let entry = Entry {
            deadline,
            waker,
            expired: false,
        };
        let index = w.entries.insert(entry);
        if !w.ticking {
            w.ticking = true;
            tokio::spawn(tick());
        }
        index
    })
}

/// Frees its slot when the exchange ends, whichever way.
struct Slot(Option<usize>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(index) = self.0 {
            let _ = WAITING.try_with(|w| w.borrow_mut().entries.remove(index));
        }
    }
}

/// Wake the expired exchanges every [`TICK`] until none is waiting.
async fn tick() {
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let expired: Vec<Waker> = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            if w.entries.len() == 0 {
                w.ticking = false;
                return Vec::new();
            }
            w.entries
                .iter_mut()
                .filter(|e| e.deadline <= now)
                .map(|e| {
                    e.expired = true;
                    e.waker.clone()
                })
                .collect()
        });
        // Woken outside the borrow: a woken future may run and free its slot at once.
        expired.into_iter().for_each(Waker::wake);
        if !WAITING.with(|w| w.borrow().ticking) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `body` as a proxy worker does: its own thread, a current-thread runtime.
    fn on_worker<F: Future<Output = ()>>(body: impl FnOnce() -> F + Send + 'static) {
        std::thread::spawn(|| {
            enter_worker();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn on_a_worker_a_slow_future_times_out_within_a_tick_and_a_fast_one_does_not() {
        on_worker(|| async {
            let start = Instant::now();
            let slow = until(
                start + Duration::from_millis(100),
                std::future::pending::<()>(),
            );
            assert!(slow.await.is_err());
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(100), "{took:?}");
            let fast = until(
                Instant::now() + Duration::from_secs(5),
                tokio::time::sleep(Duration::from_millis(10)),
            );
            assert!(fast.await.is_ok());
            // Every slot was given back and the ticker stops once nothing waits.
            tokio::time::sleep(TICK * 3).await;
            WAITING.with(|w| {
                let w = w.borrow();
                assert_eq!(w.entries.len(), 0);
                assert!(!w.ticking);
            });
        });
    }

    #[test]
    fn many_exchanges_share_the_table_and_each_ends_on_its_own_deadline() {
        on_worker(|| async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..20u64)
                .map(|i| {
                    tokio::spawn(async move {
                        let deadline = start + Duration::from_millis(20 * i);
                        let r = until(deadline, std::future::pending::<()>()).await;
                        (r.is_err(), start.elapsed() >= Duration::from_millis(20 * i))
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), (true, true));
            }
        });
    }

    #[tokio::test]
    async fn off_a_worker_the_tokio_timer_is_used() {
        let r = until(
            Instant::now() + Duration::from_millis(20),
            std::future::pending::<()>(),
        )
        .await;
        assert!(r.is_err());
        WAITING.with(|w| assert_eq!(w.borrow().entries.slots(), 0));
    }
}
