//! The checks and the head a well-formed request goes upstream with allocate nothing: counted
//! by an allocator that tallies this thread's allocations (the test binary's only allocator).

use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Const-initialised, no destructor: usable from inside the allocator at any time.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(|n| n.get());
    f();
    ALLOCATIONS.with(|n| n.get()) - before
}

#[test]
fn a_well_formed_request_is_checked_and_written_upstream_without_allocating() {
    let ip = HeaderValue::from_static("10.0.0.9");
    for (req, framing) in [
        (
            Request::get("/api/items?page=2")
                .header("host", "shop.example:8080")
                .header("accept", "application/json")
                .header("user-agent", "wrk")
                .body(())
                .unwrap(),
            RequestFraming::Empty,
        ),
        (
            Request::post("/upload")
                .header("host", "shop.example")
                .header("content-length", "1234")
                .header("x-forwarded-for", "1.2.3.4")
                .body(())
                .unwrap(),
            RequestFraming::Length(1234),
        ),
    ] {
        let (parts, _) = req.into_parts();
        let limits = RequestLimits::default();
        // The connection's head buffer, as it is once it has carried a request.
        let mut out = bytes::BytesMut::with_capacity(4096);
        let n = allocations_in(|| {
            let replaced = checks::check_request(&parts, &limits).unwrap();
            let host = replaced.as_ref().or(parts.headers.get(header::HOST));
            request_head(
                &mut out,
                &parts,
                host,
                &ip,
                None,
                framing,
                UnderscoreHeaders::Forward,
                false,
            );
        });
        assert_eq!(n, 0, "{} {}: {:?}", parts.method, parts.uri, out);
        assert!(out.starts_with(format!("{} ", parts.method).as_bytes()));
    }
}
