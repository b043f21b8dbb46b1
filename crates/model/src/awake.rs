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
///
/// Every thread's poller is running before `f` starts, so each part of `f`'s work that a
/// thread picks up runs above its poller on that thread's stack. A poller picked up later, by
/// a thread waiting inside a part of `f` for another part, would spin on top of the part `f`
/// waits for, until `f` is done: a deadlock (seen once in 1,000 runs of the runner's memory
/// test). Called from a thread of `pool` itself, `f` runs without pollers.
pub(crate) fn install<R: Send>(pool: &ThreadPool, f: impl FnOnce() -> R + Send) -> R {
    if pool.current_thread_index().is_some() {
        return pool.install(f);
    }
    let done = Arc::new(AtomicBool::new(false));
    let polling = Arc::new(AtomicUsize::new(0));
    {
        let (done, polling) = (done.clone(), polling.clone());
        pool.spawn_broadcast(move |_| {
            polling.fetch_add(1, Ordering::AcqRel);
            while !done.load(Ordering::Acquire) {
                if rayon_core::yield_now() == Some(Yield::Idle) {
                    std::thread::yield_now();
                }
            }
        });
    }
    // (the threads were idle between runs: each takes its poller as it wakes)
    while polling.load(Ordering::Acquire) < pool.current_num_threads() {
        std::thread::yield_now();
    }
    // `f` itself is taken by one of the pollers (`yield_now` runs the pool's jobs)
    let result = pool.install(f);
    done.store(true, Ordering::Release);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work split into nested parts, as tract's operators split theirs: `depth` levels of
    /// two-way joins, each leaf a little arithmetic.
    fn nested(depth: u32, seed: u64) -> u64 {
        if depth == 0 {
            return (0..200u64).fold(seed, |h, i| h.rotate_left(5) ^ i.wrapping_mul(31));
        }
        let (a, b) = rayon_core::join(|| nested(depth - 1, seed), || nested(depth - 1, seed + 1));
        a ^ b
    }

    /// A stress test: the deadlock it guards against struck about once in 40,000 runs of this
    /// loop here (2 vCPUs) before pollers were started ahead of the work, so 50,000 runs catch
    /// it about one time in four; the runner's 1,000-frame memory test met it in CI.
    #[test]
    fn runs_with_nested_parts_never_wait_on_a_poller() {
        const RUNS: u64 = 50_000;
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let want: Vec<u64> = (0..RUNS).map(|i| nested(4, i)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got: Vec<u64> = (0..RUNS).map(|i| install(&pool, || nested(4, i))).collect();
            tx.send(got).unwrap();
        });
        // a deadlock would hang here: fail instead
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(300))
            .expect("runs with the pool kept awake did not finish: deadlocked");
        assert_eq!(got, want);
    }
}
