//! Sources built on other sources: real-time pacing, looping, a frame limit, and
//! reopening a camera that went away.

use std::time::{Duration, Instant, SystemTime};

use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

/// Something that opens a source (again).
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>> + Send>;

/// Delivers the frames of `inner` at `fps`, stamped when they are delivered, like a camera.
/// When the consumer falls behind by more than a frame, the schedule restarts from now
/// instead of bursting to catch up.
pub struct Paced<S> {
    inner: S,
    period: Duration,
    due: Option<Instant>,
}

impl<S: FrameSource> Paced<S> {
    /// Pace `inner` at `fps` frames per second (must be > 0).
    pub fn new(inner: S, fps: f64) -> Self {
        Paced {
            inner,
            period: Duration::from_secs_f64(1.0 / fps.max(1e-3)),
            due: None,
        }
    }
}

impl<S: FrameSource> FrameSource for Paced<S> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(mut frame) = self.inner.next_frame()? else {
            return Ok(None);
        };
        let now = Instant::now();
        let due = match self.due {
            Some(due) if due + self.period >= now => due,
            _ => now,
        };
        if due > now {
            std::thread::sleep(due - now);
        }
        self.due = Some(due + self.period);
        frame.captured = Instant::now();
        frame.wall = SystemTime::now();
        if frame.media_time.is_none() {
            frame.media_time = Some(self.period * frame.seq as u32);
        }
        Ok(Some(frame))
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            fps: Some(1.0 / self.period.as_secs_f64()),
            ..self.inner.info()
        }
    }
}

/// Plays a file source again from the start when it ends, forever (or until a pass
/// delivers no frame at all). Sequence numbers and media times keep increasing.
pub struct Looping {
    open: Opener,
    current: Box<dyn FrameSource>,
    seq: u64,
    pass_frames: u64,
    time_offset: Duration,
    last_time: Duration,
}

impl Looping {
    /// Open the source once now; `open` reopens it at each end.
    pub fn new(mut open: Opener) -> Result<Self> {
        let current = open()?;
        Ok(Looping {
            open,
            current,
            seq: 0,
            pass_frames: 0,
            time_offset: Duration::ZERO,
            last_time: Duration::ZERO,
        })
    }
}

impl FrameSource for Looping {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match self.current.next_frame()? {
                Some(mut frame) => {
                    frame.seq = self.seq;
                    self.seq += 1;
                    self.pass_frames += 1;
                    if let Some(t) = frame.media_time {
                        self.last_time = t;
                        frame.media_time = Some(t + self.time_offset);
                    }
                    return Ok(Some(frame));
                }
                None if self.pass_frames == 0 => return Ok(None),
                None => {
                    self.current = (self.open)()?;
                    self.pass_frames = 0;
                    let period = self
                        .current
                        .info()
                        .fps
                        .map_or(Duration::ZERO, |f| Duration::from_secs_f64(1.0 / f));
                    self.time_offset += self.last_time + period;
                    self.last_time = Duration::ZERO;
                }
            }
        }
    }

    fn info(&self) -> SourceInfo {
        self.current.info()
    }
}

/// Ends after `limit` frames.
pub struct Limited<S> {
    inner: S,
    left: u64,
}

impl<S: FrameSource> Limited<S> {
    /// At most `limit` frames of `inner`.
    pub fn new(inner: S, limit: u64) -> Self {
        Limited { inner, left: limit }
    }
}

impl<S: FrameSource> FrameSource for Limited<S> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.left == 0 {
            return Ok(None);
        }
        let frame = self.inner.next_frame()?;
        if frame.is_some() {
            self.left -= 1;
        }
        Ok(frame)
    }

    fn info(&self) -> SourceInfo {
        self.inner.info()
    }
}

/// Exponential backoff between reopen attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first reopen attempt.
    pub initial: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        (self.initial * factor).min(self.max)
    }
}

/// A live source that is reopened when it fails: a camera unplugged, a child process that
/// exited, a stream that dropped. Each outage is reported once, as the error that caused
/// it; then the source retries with [`Backoff`] (blocking the caller) until the camera is
/// back, and frames carry on with increasing sequence numbers.
pub struct Reconnecting {
    open: Opener,
    current: Option<Box<dyn FrameSource>>,
    backoff: Backoff,
    attempts: u32,
    seq: u64,
    info: SourceInfo,
    ended: bool,
    outages: u64,
}

impl Reconnecting {
    /// Open the source now (an error here is returned: a camera that is not there at
    /// start-up is a configuration problem, not an outage); reopen it with `open`.
    pub fn new(mut open: Opener, backoff: Backoff) -> Result<Self> {
        let current = open()?;
        let info = current.info();
        Ok(Reconnecting {
            open,
            current: Some(current),
            backoff,
            attempts: 0,
            seq: 0,
            info,
            ended: false,
            outages: 0,
        })
    }

    /// How many times the source went away so far.
    pub fn outages(&self) -> u64 {
        self.outages
    }
}

impl FrameSource for Reconnecting {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(source) = self.current.as_mut() else {
                self.attempts += 1;
                std::thread::sleep(self.backoff.delay(self.attempts));
                match (self.open)() {
                    Ok(s) => {
                        tracing::info!(
                            "{}: reopened after {} attempt(s)",
                            self.info.description,
                            self.attempts
                        );
                        self.attempts = 0;
                        self.current = Some(s);
                    }
                    Err(e) => {
                        tracing::debug!(
                            "{}: reopen attempt {} failed: {e}",
                            self.info.description,
                            self.attempts
                        );
                        if self
                            .backoff
                            .max_attempts
                            .is_some_and(|max| self.attempts >= max)
                        {
                            self.ended = true;
                            return Err(CameraError::GaveUp {
                                what: self.info.description.clone(),
                                attempts: self.attempts,
                                last: Box::new(e),
                            });
                        }
                    }
                }
                continue;
            };
            match source.next_frame() {
                Ok(Some(mut frame)) => {
                    frame.seq = self.seq;
                    self.seq += 1;
                    return Ok(Some(frame));
                }
                Ok(None) => {
                    self.ended = true;
                    return Ok(None);
                }
                Err(e) => {
                    self.outages += 1;
                    self.current = None;
                    tracing::warn!("{}: {e}; reopening", self.info.description);
                    return Err(e);
                }
            }
        }
    }

    fn info(&self) -> SourceInfo {
        self.info.clone()
    }
}
