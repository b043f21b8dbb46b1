//! Property tests (`proptest`, bounded: 64 cases each): arbitrary source URIs, and real JPEG,
//! MJPEG and Y4M bytes with bytes flipped, inserted and cut, give frames or typed errors —
//! never a panic, never an unbounded read.

use std::io::Cursor;

use dinoedge_camera::decode::jpeg_to_rgb;
use dinoedge_camera::mjpeg::MjpegSplitter;
use dinoedge_camera::y4m::Y4mSource;
use dinoedge_camera::{FrameSource, SourceSpec};
use dinoedge_testkit::{media, mutate};
use proptest::prelude::*;

/// Edits of a file: a few flipped bytes, a short insertion, a cut anywhere (a third of the cases
/// keep the whole length, so the decoders see deep damage too, not only short files).
/// Flipped bytes (position, xor), an insertion (position, bytes), a cut.
type Edits = (Vec<(usize, u8)>, (usize, Vec<u8>), usize);

fn edits() -> impl Strategy<Value = Edits> {
    (
        prop::collection::vec((any::<usize>(), 1u8..), 0..6),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..12)),
        prop_oneof![Just(usize::MAX - 1), any::<usize>()],
    )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_source_uri_parses_or_is_an_error(uri in "\\PC{0,60}") {
        let _ = SourceSpec::parse(&uri);
    }

    #[test]
    fn source_uris_with_schemes_and_options(
        scheme in prop::sample::select(vec!["synthetic://", "v4l2://", "csi://", "file://", "rtsp://", "stdin:", ""]),
        rest in "[ -~]{0,40}",
    ) {
        let _ = SourceSpec::parse(&format!("{scheme}{rest}"));
    }

    #[test]
    fn damaged_jpeg_frames_decode_or_fail(e in edits()) {
        let jpeg = std::fs::read(media("jpeg_mjpeg_frame_no_dht_mozilla963907.jpg")).unwrap();
        let data = mutate(&jpeg, &e.0, (e.1.0, &e.1.1), e.2);
        let mut out = Vec::new();
        if let Ok((w, h)) = jpeg_to_rgb(&data, &mut out) {
            prop_assert_eq!(out.len(), (w * h * 3) as usize);
        }
    }

    #[test]
    fn damaged_mjpeg_streams_split_and_decode_or_fail(e in edits()) {
        let a = std::fs::read(media("jpeg_mjpeg_frame_no_dht_mozilla963907.jpg")).unwrap();
        let b = std::fs::read(media("jpeg_progressive3.jpg")).unwrap();
        let stream = [&a[..], &b, &a].concat();
        let data = mutate(&stream, &e.0, (e.1.0, &e.1.1), e.2);
        let mut split = MjpegSplitter::new(Cursor::new(data));
        let mut out = Vec::new();
        for _ in 0..16 {
            match split.next_frame() {
                Ok(Some(frame)) => {
                    let _ = jpeg_to_rgb(frame, &mut out);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn damaged_y4m_files_read_or_fail(e in edits()) {
        let y4m = std::fs::read(media("y4m_rav1e_small_input_64x64_420jpeg.y4m")).unwrap();
        let data = mutate(&y4m, &e.0, (e.1.0, &e.1.1), e.2);
        if let Ok(mut source) = Y4mSource::from_reader(Box::new(Cursor::new(data)), "fuzz".into(), None) {
            for _ in 0..8 {
                match source.next_frame() {
                    Ok(Some(f)) => prop_assert_eq!(f.rgb.len(), (f.width * f.height * 3) as usize),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }
    }
}
