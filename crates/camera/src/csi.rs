//! Raspberry Pi CSI cameras. They are driven by libcamera, which plain V4L2 capture cannot open, so
//! dinoedge runs `rpicam-vid --codec mjpeg -o -` (or the older `libcamera-vid`) and splits
//! its MJPEG output.

use std::process::ChildStdout;

use crate::child::ChildProcess;
use crate::error::{CameraError, Result};
use crate::mjpeg::MjpegSource;

/// Settings for a CSI camera.
#[derive(Debug, Clone, PartialEq)]
pub struct CsiOptions {
    /// Camera number (`--camera`), 0 for the first.
    pub camera: u32,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frames per second.
    pub fps: f64,
    /// The program to run; `None` tries `rpicam-vid`, then `libcamera-vid`.
    pub program: Option<String>,
    /// MJPEG quality (`--quality`, 1–100).
    pub quality: u32,
}

impl Default for CsiOptions {
    fn default() -> Self {
        CsiOptions {
            camera: 0,
            width: 1280,
            height: 720,
            fps: 30.0,
            program: None,
            quality: 85,
        }
    }
}

impl CsiOptions {
    /// The command-line arguments given to `rpicam-vid`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--nopreview".into(),
            "--timeout".into(),
            "0".into(),
            "--camera".into(),
            self.camera.to_string(),
            "--codec".into(),
            "mjpeg".into(),
            "--quality".into(),
            self.quality.to_string(),
            "--width".into(),
            self.width.to_string(),
            "--height".into(),
            self.height.to_string(),
            "--framerate".into(),
            self.fps.to_string(),
            "--flush".into(),
            "--output".into(),
            "-".into(),
        ]
    }
}

const HINT: &str = "CSI cameras are read through rpicam-apps (Raspberry Pi OS: \
`sudo apt install rpicam-apps`; older images ship `libcamera-vid`). Check the camera with \
`rpicam-hello --list-cameras`";

/// Open a CSI camera: frames from the child's MJPEG output. When the program exits (the
/// camera was unplugged or is busy) the source reports [`CameraError::ChildExited`] with
/// what the program printed, then ends; wrap it in [`crate::Reconnecting`] to reopen.
pub fn open_csi(options: &CsiOptions) -> Result<MjpegSource<ChildStdout>> {
    let candidates: Vec<String> = match &options.program {
        Some(p) => vec![p.clone()],
        None => vec!["rpicam-vid".into(), "libcamera-vid".into()],
    };
    let args = options.args();
    for program in &candidates {
        match ChildProcess::spawn(program, &args, HINT) {
            Ok((mut child, stdout)) => {
                let what = format!("csi://{} ({program})", options.camera);
                return Ok(
                    MjpegSource::new(stdout, what, "csi", true).on_end(move || child.finish(true))
                );
            }
            Err(CameraError::ProgramMissing { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CameraError::ProgramMissing {
        program: candidates.join("` or `"),
        hint: HINT.into(),
    })
}
