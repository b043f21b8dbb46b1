//! The `dinoedge` binary the tests run: this build's, or another one (`.ci/run` points the
//! runner's and the parity tests at the arm64 package's binary, started under qemu).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `dinoedge`: the one this test binary was built with, or `$DINOEDGE_TEST_BIN` (another build,
/// another target: `.ci/run` runs `run::` and `parity::` against the arm64 package's binary),
/// started through `$DINOEDGE_TEST_RUNNER` (a program and its arguments) when that is set:
/// without binfmt_misc an aarch64 program cannot be started directly, so `qemu-aarch64 dinoedge …`.
/// `cache` is its `$DINOEDGE_CACHE_DIR`; `$DINOEDGE_MODEL` and `$DINOEDGE_INT8_SUMS` are cleared.
pub fn cmd(cache: &Path) -> Command {
    let bin = std::env::var_os("DINOEDGE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dinoedge")));
    let runner = std::env::var("DINOEDGE_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    let mut c = match runner.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(runner).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.env("DINOEDGE_CACHE_DIR", cache)
        .env_remove("DINOEDGE_MODEL")
        .env_remove("DINOEDGE_INT8_SUMS");
    c
}
