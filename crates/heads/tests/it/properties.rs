//! Property tests (`proptest`, bounded): a released `.pth` head and a trained `safetensors`
//! head with bytes flipped, inserted and cut load or give a typed error — never a panic.

use std::collections::HashMap;

use dinoedge_heads::st::TensorFile;
use dinoedge_heads::{DepthHead, DepthOutput, LinearHead};
use dinoedge_testkit::{fixtures, mutate};
use ndarray::{Array1, Array2};
use proptest::prelude::*;

fn edits() -> impl Strategy<Value = (Vec<(usize, u8)>, usize)> {
    (
        prop::collection::vec((any::<usize>(), 1u8..), 1..6),
        prop_oneof![Just(usize::MAX - 1), any::<usize>()],
    )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn damaged_pth_heads_load_or_fail(e in edits()) {
        let real = std::fs::read(fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.pth");
        std::fs::write(&path, mutate(&real, &e.0, (0, &[]), e.1)).unwrap();
        let _ = LinearHead::load(&path, None);
    }

    #[test]
    fn damaged_safetensors_heads_parse_or_fail(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        DepthHead::from_trained(
            Array2::from_elem((4, 16), 0.5),
            Array1::zeros(4),
            vec![11],
            DepthOutput::Bins,
            (0.1, 5.0),
            HashMap::new(),
        )
        .unwrap()
        .save(&path)
        .unwrap();
        let real = std::fs::read(&path).unwrap();
        let data = mutate(&real, &e.0, (0, &[]), e.1);
        let _ = TensorFile::parse(&data);
        std::fs::write(&path, &data).unwrap();
        let _ = LinearHead::load(&path, None);
    }
}
