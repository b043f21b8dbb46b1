//! A run with the pool's other threads kept awake.
//!
//! Every operator that splits its work over the backbone's threads wakes the pool's sleeping
//! threads and waits for them: a futex wake-up each time, which under a hypervisor costs tens
//! of microseconds, and a ViT-S run has some 250 split operators, each of 0.02–0.3 ms. So for
//! the length of one run, each other thread of the pool spins instead of sleeping: it polls
//! the pool for work (`ThreadPool::yield_now`, which steals the split parts) and yields its
//! core to the OS between polls, so that other threads of the process (the runner's head and
//! sinks) still get it. When the run ends they go back to rayon's sleep.
//!
//! `DINOEDGE_SPIN=0` turns it off (to measure what it is worth).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon_core::{ThreadPool, Yield};

/// Whether runs keep the pool awake (`DINOEDGE_SPIN` unset, empty or not `0`).
pub(crate) fn enabled() -> bool {
    std::env::var_os("DINOEDGE_SPIN").is_none_or(|v| v != "0")
}

/// `f()` on a thread of `pool` while every other thread of it polls for work.
pub(crate) fn install<R: Send>(pool: &ThreadPool, f: impl FnOnce() -> R + Send) -> R {
    let done = Arc::new(AtomicBool::new(false));
    // the thread `f` runs on: a poller that finds itself there (picked up while `f` waits
    // for a part) leaves at once, or `f` would wait on itself
    let main = Arc::new(AtomicUsize::new(usize::MAX));
    {
        let (done, main) = (done.clone(), main.clone());
        pool.spawn_broadcast(move |ctx| {
            if main.load(Ordering::Acquire) == ctx.index() {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon_core::yield_now() == Some(Yield::Idle) {
                    std::thread::yield_now();
                }
            }
        });
    }
    let result = pool.install(|| {
        main.store(
            rayon_core::current_thread_index().unwrap_or(usize::MAX),
            Ordering::Release,
        );
        f()
    });
    done.store(true, Ordering::Release);
    result
}
