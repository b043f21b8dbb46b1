//! Frame sources for dinoedge: one [`FrameSource`] interface over USB/V4L2 cameras
//! (V4L2 ioctls, feature `v4l2`, on by default), Raspberry Pi CSI cameras (through `rpicam-vid`),
//! image files, folders and globs, MJPEG streams, Y4M video, any video or network stream
//! through `ffmpeg`, MJPEG on stdin and a moving test pattern — chosen by a URI a user can
//! type (see [`source`]).
//!
//! ```no_run
//! use dinoedge_camera::{open, FrameSource};
//! let mut source = open("synthetic://?width=320&height=240&frames=10")?;
//! while let Some(frame) = source.next_frame()? {
//!     println!("frame {} {}x{} dropped before: {}", frame.seq, frame.width, frame.height, frame.dropped_before);
//! }
//! # Ok::<(), dinoedge_camera::CameraError>(())
//! ```
//!
//! Live sources are wrapped in [`Reconnecting`] (a vanished camera is reported once and
//! reopened with backoff), and [`Capture`] reads a source on its own thread with a
//! newest-frame hand-over ([`latest`]), so a slow consumer gets fresh frames.
//!
//! Depends on no other dinoedge crate: frames are plain RGB buffers, so a source can feed
//! anything (the runner, `dinoedge capture`).

#![warn(missing_docs)]

mod child;
pub mod csi;
pub mod decode;
mod error;
pub mod ffmpeg;
mod frame;
pub mod images;
pub mod intrinsics;
pub mod latest;
pub mod mcap;
pub mod mjpeg;
pub mod source;
pub mod synthetic;
pub mod v4l2;
pub mod wrap;
pub mod y4m;

pub use error::{CameraError, Result};
pub use frame::{Frame, FrameSource, SourceInfo};
pub use intrinsics::{Intrinsics, Pinhole};
pub use latest::{Capture, LatestReceiver, LatestSender, Received, latest};
pub use source::{Pace, SourceKind, SourceSpec, open};
pub use v4l2::{CameraDescription, CameraMode, V4L2_BUILT, list_cameras};
pub use wrap::{Backoff, Limited, Looping, Paced, Reconnecting};
