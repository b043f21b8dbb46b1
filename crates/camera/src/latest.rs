//! A bounded hand-over that keeps only the newest item, and a capture thread built on it.
//!
//! A camera does not wait for its consumer. If the consumer (the backbone, on a board
//! that runs it at 5 fps) is slower than the camera (30 fps), a queue would grow and every
//! result would be older than the last; the hand-over instead replaces the waiting item
//! with the newer one and counts what it dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

struct State<T> {
    slot: Option<T>,
    /// Items overwritten since the last receive.
    dropped_pending: u64,
    dropped_total: u64,
    sent_total: u64,
    sender_alive: bool,
    receiver_alive: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half of a newest-wins hand-over.
pub struct LatestSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half of a newest-wins hand-over.
pub struct LatestReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// An item taken from the hand-over, with how many items were overwritten before it.
#[derive(Debug)]
pub struct Received<T> {
    /// The newest item.
    pub item: T,
    /// Items that were sent but replaced before the receiver took one.
    pub dropped: u64,
}

/// Why a receive returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing arrived in time.
    Timeout,
    /// The sender is gone and nothing is waiting.
    Closed,
}

/// A hand-over holding at most one item; a send replaces an item not yet received.
pub fn latest<T>() -> (LatestSender<T>, LatestReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            slot: None,
            dropped_pending: 0,
            dropped_total: 0,
            sent_total: 0,
            sender_alive: true,
            receiver_alive: true,
        }),
        ready: Condvar::new(),
    });
    (
        LatestSender {
            shared: Arc::clone(&shared),
        },
        LatestReceiver { shared },
    )
}

impl<T> LatestSender<T> {
    /// Hand over `item`, replacing one the receiver has not taken yet. Returns the item
    /// back when the receiver is gone. Never blocks on the receiver.
    pub fn send(&self, item: T) -> std::result::Result<(), T> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(item);
        }
        if state.slot.replace(item).is_some() {
            state.dropped_pending += 1;
            state.dropped_total += 1;
        }
        state.sent_total += 1;
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Whether the receiver still exists.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().receiver_alive
    }

    /// Items overwritten so far (sent but never taken).
    pub fn dropped_total(&self) -> u64 {
        self.shared.lock().dropped_total
    }
}

impl<T> Drop for LatestSender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender_alive = false;
        self.shared.ready.notify_all();
    }
}

impl<T> LatestReceiver<T> {
    fn take(state: &mut State<T>) -> Option<Received<T>> {
        let item = state.slot.take()?;
        Some(Received {
            item,
            dropped: std::mem::take(&mut state.dropped_pending),
        })
    }

    /// Wait for the next item; `None` once the sender is gone and nothing is waiting.
    pub fn recv(&self) -> Option<Received<T>> {
        let mut state = self.shared.lock();
        loop {
            if let Some(r) = Self::take(&mut state) {
                return Some(r);
            }
            if !state.sender_alive {
                return None;
            }
            state = self
                .shared
                .ready
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wait at most `timeout` for the next item.
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Received<T>, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(r) = Self::take(&mut state) {
                return Ok(r);
            }
            if !state.sender_alive {
                return Err(RecvError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            state = self
                .shared
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The waiting item, if any, without blocking.
    pub fn try_recv(&self) -> Option<Received<T>> {
        Self::take(&mut self.shared.lock())
    }

    /// Items overwritten so far.
    pub fn dropped_total(&self) -> u64 {
        self.shared.lock().dropped_total
    }

    /// Items sent so far.
    pub fn sent_total(&self) -> u64 {
        self.shared.lock().sent_total
    }
}

impl<T> Drop for LatestReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        state.slot = None;
    }
}

/// A source read on its own thread, as fast as it delivers, with the newest frame handed
/// to the consumer. Frames that the consumer was too slow to take are counted in the next
/// frame's [`Frame::dropped_before`]. Errors are never dropped: each one reaches the consumer.
pub struct Capture {
    frames: LatestReceiver<Frame>,
    errors: mpsc::Receiver<CameraError>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    info: SourceInfo,
}

impl Capture {
    /// Start reading `source` on a thread named `capture`.
    pub fn spawn(mut source: Box<dyn FrameSource>) -> Result<Capture> {
        let info = source.info();
        let (tx, frames) = latest();
        let (err_tx, errors) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    match source.next_frame() {
                        Ok(Some(frame)) => {
                            if tx.send(frame).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            if err_tx.send(e).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| CameraError::io("starting the capture thread", e))?;
        Ok(Capture {
            frames,
            errors,
            stop,
            thread: Some(thread),
            info,
        })
    }

    /// The next event: the newest frame, or an error the source reported (errors first).
    /// `None` once the source has ended and everything was taken.
    pub fn next(&self) -> Option<Result<Frame>> {
        loop {
            if let Ok(e) = self.errors.try_recv() {
                return Some(Err(e));
            }
            match self.frames.recv_timeout(Duration::from_millis(20)) {
                Ok(Received { mut item, dropped }) => {
                    item.dropped_before += dropped;
                    return Some(Ok(item));
                }
                Err(RecvError::Timeout) => continue,
                Err(RecvError::Closed) => return self.errors.try_recv().ok().map(Err),
            }
        }
    }

    /// Frames the consumer was too slow for, so far.
    pub fn dropped_total(&self) -> u64 {
        self.frames.dropped_total()
    }

    /// Frames the source delivered, so far.
    pub fn captured_total(&self) -> u64 {
        self.frames.sent_total()
    }

    /// What the source is.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Ask the thread to stop after its current frame and wait for it (closing the source).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The thread exits at its next frame; the receiver stays alive until then.
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Do not block here: the thread may sit in a read; it exits at the next frame,
        // when it finds the receiver gone.
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let (tx, rx) = latest();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let r = rx.recv().unwrap();
        assert_eq!((r.item, r.dropped), (4, 4));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)).unwrap_err(),
            RecvError::Timeout
        );
        tx.send(9).unwrap();
        drop(tx);
        assert_eq!(rx.recv().unwrap().item, 9);
        assert!(rx.recv().is_none());
        assert_eq!(rx.dropped_total(), 4);
        assert_eq!(rx.sent_total(), 6);
    }

    #[test]
    fn send_fails_when_the_receiver_is_gone() {
        let (tx, rx) = latest::<u8>();
        drop(rx);
        assert_eq!(tx.send(1), Err(1));
        assert!(!tx.is_connected());
    }
}
