//! Helper programs (ffmpeg, rpicam-vid) run as child processes whose stdout carries frames.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{CameraError, Result};

const STDERR_LINES: usize = 12;

/// A running helper program. Killed when dropped.
pub(crate) struct ChildProcess {
    child: std::process::Child,
    program: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl ChildProcess {
    /// Start `program args…` with stdout piped. A program that is not installed gives
    /// [`CameraError::ProgramMissing`] with `hint`.
    pub(crate) fn spawn(
        program: &str,
        args: &[String],
        hint: &str,
    ) -> Result<(ChildProcess, ChildStdout)> {
        tracing::debug!("starting {program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => CameraError::ProgramMissing {
                    program: program.to_owned(),
                    hint: hint.to_owned(),
                },
                _ => CameraError::io(format!("starting `{program}`"), e),
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&tail);
        let name = program.to_owned();
        let stderr_thread = std::thread::Builder::new()
            .name(format!("{program}-stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    tracing::debug!("{name}: {line}");
                    let mut tail = sink.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == STDERR_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
            .map_err(|e| CameraError::io("starting a thread", e))?;
        Ok((
            ChildProcess {
                child,
                program: program.to_owned(),
                stderr_tail: tail,
                stderr_thread: Some(stderr_thread),
            },
            stdout,
        ))
    }

    /// Wait for the program to exit (its stdout has ended). `Ok` when it exited with
    /// status 0, else [`CameraError::ChildExited`] with the end of its stderr. With
    /// `always_error`, a clean exit is an error too (a camera is not supposed to stop).
    pub(crate) fn finish(&mut self, always_error: bool) -> Result<()> {
        let status = self
            .child
            .wait()
            .map_err(|e| CameraError::io(format!("waiting for `{}`", self.program), e))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        if status.success() && !always_error {
            return Ok(());
        }
        let stderr = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        Err(CameraError::ChildExited {
            program: self.program.clone(),
            status: status.to_string(),
            stderr,
        })
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
