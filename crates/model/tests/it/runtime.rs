//! Where the backbone runs. Without the `cuda` feature, or with it on a machine without an
//! NVIDIA GPU (CI), asking for CUDA is a typed error that says why and what to do, and
//! `cuda-or-cpu` runs on the CPU with the reason in the load report. With a GPU, the CUDA
//! backbone is checked against the PyTorch reference (`DINOEDGE_REQUIRE_CUDA=1` makes a
//! missing GPU a failure, for the machines that have one).

use crate::common::*;
use dinoedge_model::{Backbone, CUDA_BUILT, CudaStatus, ModelError, Runtime, cuda_status};

fn tiny() -> std::path::PathBuf {
    model("tiny/dinov2-tiny/onnx/model.onnx")
}

fn require_cuda() -> bool {
    std::env::var_os("DINOEDGE_REQUIRE_CUDA").is_some_and(|v| !v.is_empty() && v != "0")
}

#[test]
fn asking_for_cuda_without_it_names_the_reason() {
    let mut o = options(224, 224, 1);
    o.runtime = Runtime::Cuda;
    let status = cuda_status();
    println!("CUDA here: {status:?}");
    // only a build without the feature says so
    assert_eq!(status == CudaStatus::NotBuilt, !CUDA_BUILT);
    match status {
        CudaStatus::Ready => {
            // a GPU is here: the load works (parity is checked below)
            let bb = Backbone::load(tiny(), &o).unwrap();
            assert_eq!(bb.runtime(), Runtime::Cuda);
        }
        CudaStatus::NotBuilt => {
            let err = Backbone::load(tiny(), &o).unwrap_err();
            assert!(matches!(err, ModelError::CudaNotBuilt), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("built without CUDA") && msg.contains("--features cuda"),
                "{msg}"
            );
            assert!(msg.contains("cuda-or-cpu"), "{msg}");
        }
        CudaStatus::Unavailable(why) => {
            assert!(
                !require_cuda(),
                "DINOEDGE_REQUIRE_CUDA is set but CUDA cannot run: {why}"
            );
            let err = Backbone::load(tiny(), &o).unwrap_err();
            let ModelError::CudaUnavailable { reason } = &err else {
                panic!("expected CudaUnavailable, got {err:?}");
            };
            assert_eq!(reason, &why);
            // tract-cuda's own words: which library or step is missing
            assert!(
                why.contains("CUDA driver") || why.contains("could not be dlopen'd"),
                "{why}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("no usable NVIDIA GPU here") && msg.contains("runtime `cpu`"),
                "{msg}"
            );
        }
    }
}

#[test]
fn cuda_or_cpu_falls_back_to_the_cpu_with_the_reason() {
    if cuda_status() == CudaStatus::Ready {
        return; // covered by the parity test below
    }
    let mut o = options(224, 224, 1);
    o.runtime = Runtime::CudaOrCpu;
    let mut fallback = Backbone::load(tiny(), &o).unwrap();
    assert_eq!(fallback.runtime(), Runtime::Cpu);
    let note = fallback.load_report().runtime_note.clone().unwrap();
    assert!(note.starts_with("CUDA unavailable, on the CPU: "), "{note}");
    if !CUDA_BUILT {
        assert!(note.contains("without the `cuda` feature"), "{note}");
    }
    // the same backbone as asking for the CPU: the same numbers, bit for bit
    let mut cpu = Backbone::load(tiny(), &options(224, 224, 1)).unwrap();
    assert_eq!(cpu.runtime(), Runtime::Cpu);
    assert_eq!(cpu.load_report().runtime_note, None);
    let x = input("224x224");
    let a = fallback.run(x.view()).unwrap().remove(0);
    let b = cpu.run(x.view()).unwrap().remove(0);
    assert_eq!(a.tokens.to_sequence(), b.tokens.to_sequence());
    // and both match PyTorch
    let lhs = npy("dinov2-tiny/224x224/last_hidden_state.npy");
    let d = max_abs(
        a.tokens.to_sequence().view().into_dyn(),
        batch_item(&lhs, 0).view().into_dyn(),
    );
    assert!(d <= FP32_TOL, "{d}");
}

/// On a GPU: tokens, an intermediate block and the attention of the tiny and ViT-S models
/// against PyTorch. cuBLAS may use TF32 for fp32 products, so the bound is looser than the
/// CPU's 1e-4, and the cosine of every token is checked too.
#[test]
fn cuda_matches_pytorch_where_there_is_a_gpu() {
    let why = match cuda_status() {
        CudaStatus::Ready => None,
        CudaStatus::NotBuilt => Some("built without the `cuda` feature".to_string()),
        CudaStatus::Unavailable(why) => Some(why),
    };
    if let Some(why) = why {
        assert!(!require_cuda(), "DINOEDGE_REQUIRE_CUDA is set: {why}");
        println!("skipped, CUDA cannot run here: {why}");
        return;
    }
    for (rel, reference, size, block) in [
        (
            "tiny/dinov2-tiny/onnx/model.onnx",
            "dinov2-tiny",
            "224x224",
            Some(1),
        ),
        (
            "tiny/dinov2-tiny/onnx/model.onnx",
            "dinov2-tiny",
            "308x448",
            None,
        ),
        (
            "dinov2-small/onnx/model.onnx",
            "dinov2-small",
            "224x224",
            Some(5),
        ),
        (
            "dinov2-small/onnx/model.onnx",
            "dinov2-small",
            "308x448",
            Some(11),
        ),
    ] {
        let (h, w) = size.split_once('x').unwrap();
        let mut o = options(h.parse().unwrap(), w.parse().unwrap(), 1);
        o.runtime = Runtime::Cuda;
        o.blocks = block.into_iter().collect();
        o.attention = true;
        let mut bb = Backbone::load(model(rel), &o).unwrap();
        assert_eq!(bb.runtime(), Runtime::Cuda);
        let t = std::time::Instant::now();
        let f = bb.run(input(size).view()).unwrap().remove(0);
        let first = t.elapsed();
        let t = std::time::Instant::now();
        let f2 = bb.run(input(size).view()).unwrap().remove(0);
        let second = t.elapsed();
        assert_eq!(f.tokens.to_sequence(), f2.tokens.to_sequence());
        let dir = format!("{reference}/{size}");
        let lhs = npy(&format!("{dir}/last_hidden_state.npy"));
        let want = batch_item(&lhs, 0);
        let got = f.tokens.to_sequence();
        let d = max_abs(got.view().into_dyn(), want.view().into_dyn());
        let worst = token_cosines(got.view(), want.view())
            .into_iter()
            .fold(1.0, f64::min);
        let db = block.map_or(0.0, |b| {
            let r = npy(&format!("{dir}/hidden_states_block{b:02}.npy"));
            max_abs(
                f.block(b).unwrap().tokens.to_sequence().view().into_dyn(),
                batch_item(&r, 0).view().into_dyn(),
            )
        });
        println!(
            "{rel} {size} on CUDA: tokens max abs {d:.2e}, worst cosine {worst:.7}, \
             block {block:?} {db:.2e}; first run {first:.2?}, second {second:.2?}"
        );
        assert!(d <= 2e-2 && db <= 2e-2, "{d} {db}");
        assert!(worst >= 0.9999, "{worst}");
        assert!(f.attention.is_some());
    }
}
