//! Where the backbone runs: tract's CPU runtime, or its CUDA runtime (the `cuda` feature, for
//! NVIDIA Jetson boards and x86 machines with an NVIDIA GPU).
//!
//! The CUDA build needs no CUDA toolkit: `tract-cuda` loads the driver, cuBLAS, cuDNN and NVRTC
//! with `dlopen` when a backbone asks for them, so a `cuda` binary builds anywhere and, on a
//! machine without a GPU, says why CUDA cannot run ([`cuda_status`]) instead of failing to start.

use std::fmt;
use std::str::FromStr;

/// Which of tract's runtimes runs the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Runtime {
    /// tract's CPU kernels (NEON on ARM, AVX2/AVX-512 on x86), on `threads` cores.
    #[default]
    Cpu,
    /// tract's CUDA runtime; loading fails with [`crate::ModelError::CudaUnavailable`] when no
    /// usable NVIDIA GPU is there, or [`crate::ModelError::CudaNotBuilt`] without the `cuda`
    /// feature.
    Cuda,
    /// CUDA when a usable GPU is there, else the CPU (with a warning and the reason in
    /// [`crate::LoadReport::runtime_note`]).
    CudaOrCpu,
}

impl Runtime {
    /// Every value, in the order `--help` lists them.
    pub const ALL: [Runtime; 3] = [Runtime::Cpu, Runtime::Cuda, Runtime::CudaOrCpu];

    /// The name on the command line and in profiles: `cpu`, `cuda`, `cuda-or-cpu`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Cpu => "cpu",
            Runtime::Cuda => "cuda",
            Runtime::CudaOrCpu => "cuda-or-cpu",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A runtime name that is none of `cpu`, `cuda`, `cuda-or-cpu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown runtime {0:?}: cpu, cuda or cuda-or-cpu")]
pub struct ParseRuntimeError(pub String);

impl FromStr for Runtime {
    type Err = ParseRuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| ParseRuntimeError(s.to_string()))
    }
}

/// Whether this build has the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Why the CUDA runtime cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaStatus {
    /// A driver, cudart, NVRTC, cuBLAS and cuDNN were found and the driver initialised a device.
    Ready,
    /// This binary was built without the `cuda` feature.
    NotBuilt,
    /// Built with CUDA, but no usable GPU: tract-cuda's reason (no driver library, `cuInit`
    /// failed, a driver older than the build's CUDA version, a missing library).
    Unavailable(String),
}

/// Probe the CUDA runtime: load the driver, initialise it, check its version against the one
/// this build targets and look for the libraries tract-cuda loads. Cheap after the first call.
pub fn cuda_status() -> CudaStatus {
    #[cfg(feature = "cuda")]
    {
        match tract_cuda::utils::ensure_cuda_runtime_dependencies("tract's CUDA runtime") {
            Ok(()) => CudaStatus::Ready,
            Err(e) => CudaStatus::Unavailable(format!("{e:#}")),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        CudaStatus::NotBuilt
    }
}

/// Build tract's CUDA plan for a decluttered model: tract-cuda moves the operators it has
/// kernels for onto the GPU (the others stay on the CPU, with the copies in between) and
/// optimises the rest.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_plan(
    model: tract_core::internal::TypedModel,
    options: &tract_core::internal::RunOptions,
) -> tract_core::internal::TractResult<std::sync::Arc<tract_core::internal::TypedSimplePlan>> {
    use tract_core::internal::*;
    // Named so the crate (and its runtime, registered through `inventory`) is linked in.
    let _ = tract_cuda::CudaTransform;
    let runtime = tract_core::runtime::runtime_for_name("cuda")?
        .context("tract's CUDA runtime is not registered in this build")?;
    let runnable = runtime.prepare_with_options(model, options)?;
    runnable
        .typed_plan()
        .cloned()
        .context("tract's CUDA runtime did not give a plan")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Runtime::ALL {
            assert_eq!(r.name().parse::<Runtime>(), Ok(r));
            assert_eq!(r.to_string(), r.name());
        }
        let e = "gpu".parse::<Runtime>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown runtime \"gpu\": cpu, cuda or cuda-or-cpu"
        );
    }

    #[test]
    fn status_matches_the_build() {
        let status = cuda_status();
        assert_eq!(status == CudaStatus::NotBuilt, !CUDA_BUILT);
        if let CudaStatus::Unavailable(why) = status {
            assert!(!why.is_empty());
        }
    }
}
