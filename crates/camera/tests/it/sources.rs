//! Every source that can run on a machine without cameras, on real media files
//! (`../shared/media`) and on files the tests make.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dinoedge_camera::decode::jpeg_to_rgb;
use dinoedge_camera::ffmpeg::{FfmpegOptions, FfmpegSource, ffmpeg_available};
use dinoedge_camera::synthetic::read_frame_number;
use dinoedge_camera::{
    Backoff, CameraError, Capture, Frame, FrameSource, Reconnecting, SourceInfo, SourceSpec, open,
};
use dinoedge_testkit::media;

/// All frames until the end; errors are collected, not fatal.
fn drain(source: &mut dyn FrameSource) -> (Vec<Frame>, Vec<CameraError>) {
    let (mut frames, mut errors) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        match source.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, errors),
            Err(e) => errors.push(e),
        }
    }
    panic!("source did not end");
}

fn uri(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[test]
fn single_images_real_files() {
    // EXIF orientation 5: stored 403x302, upright 302x403.
    let (f, e) = drain(&mut *open(&uri(&media("photo_paris_exif_orientation_5.jpg"))).unwrap());
    assert!(e.is_empty());
    assert_eq!((f.len(), f[0].width, f[0].height), (1, 302, 403));
    let (f, _) = drain(&mut *open(&uri(&media("jpeg_progressive3.jpg"))).unwrap());
    assert_eq!((f[0].width, f[0].height), (650, 470));
    let (f, _) = drain(&mut *open(&uri(&media("jpeg_cmyk_mozilla_1.jpg"))).unwrap());
    assert_eq!(
        (f[0].width, f[0].height, f[0].rgb.len()),
        (32, 32, 32 * 32 * 3)
    );
    let (f, _) = drain(&mut *open(&uri(&media("photo_kodim03_grayscale.png"))).unwrap());
    assert_eq!((f[0].width, f[0].height), (768, 512));
    assert!(f[0].rgb.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    // a still image looped and limited acts as a camera
    let looped = format!("{}?loop&frames=4", uri(&media("jpeg_progressive3.jpg")));
    let (f, _) = drain(&mut *open(&looped).unwrap());
    assert_eq!(
        f.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
}

#[test]
fn bmp_webp_and_tiff_images_read_as_the_png() {
    // a real photo written losslessly in each format by the `image` crate's encoders
    let photo = image::open(media("photo_kodim03_grayscale.png"))
        .unwrap()
        .to_rgb8();
    let dir = tempfile::tempdir().unwrap();
    for ext in ["bmp", "webp", "tiff", "tif"] {
        let path = dir.path().join(format!("photo.{ext}"));
        photo.save(&path).unwrap();
        let (f, e) = drain(&mut *open(&uri(&path)).unwrap());
        assert!(e.is_empty(), "{ext}: {e:?}");
        assert_eq!((f[0].width, f[0].height), photo.dimensions(), "{ext}");
        assert!(f[0].rgb == photo.as_raw()[..], "{ext}: not the same pixels");
    }
}

/// CRC-32 (ISO-HDLC, PNG's) of `data`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn an_image_that_declares_too_many_pixels_is_refused_before_decoding() {
    // a real PNG whose IHDR is rewritten to 100000x100000 (CRC recomputed)
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    write_png(&path, 7);
    let mut png = std::fs::read(&path).unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&path, &png).unwrap();
    let (f, e) = drain(&mut *open(&uri(&path)).unwrap());
    assert!(f.is_empty());
    let text = e.first().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("100000x100000"), "{e:?}");
}

fn write_png(path: &Path, value: u8) {
    image::RgbImage::from_pixel(16, 8, image::Rgb([value, 0, 0]))
        .save(path)
        .unwrap();
}

#[test]
fn directories_and_globs_in_natural_order() {
    let dir = tempfile::tempdir().unwrap();
    for (name, v) in [("f10.png", 10), ("f2.png", 2), ("f1.png", 1), ("F3.PNG", 3)] {
        write_png(&dir.path().join(name), v);
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(dir.path().join("sub.png")).unwrap();
    let (f, e) = drain(&mut *open(&uri(dir.path())).unwrap());
    assert!(e.is_empty());
    let order: Vec<u8> = f.iter().map(|f| f.rgb[0]).collect();
    // natural order, case-insensitive extensions; directories and other files skipped
    assert_eq!(order, vec![1, 2, 3, 10]);

    let pattern = format!("{}/f*.png", dir.path().display());
    let (f, _) = drain(&mut *open(&pattern).unwrap());
    assert_eq!(
        f.iter().map(|f| f.rgb[0]).collect::<Vec<_>>(),
        vec![1, 2, 10]
    );

    // a corrupt file is reported and skipped; the others are still delivered
    std::fs::write(dir.path().join("f5.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    let (f, e) = drain(&mut *open(&uri(dir.path())).unwrap());
    assert_eq!(f.len(), 4);
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().contains("f5.png"), "{}", e[0]);

    let empty = tempfile::tempdir().unwrap();
    let err = open(&uri(empty.path()))
        .err()
        .expect("an empty folder is an error");
    assert!(matches!(err, CameraError::NoImages { .. }), "{err}");
    let err = open(&format!("{}/*.jpg", empty.path().display()))
        .err()
        .unwrap();
    assert!(matches!(err, CameraError::NoImages { .. }), "{err}");
}

#[test]
fn mjpeg_stream_with_garbage_cut_frames_and_a_truncated_end() {
    let frame = std::fs::read(media("jpeg_mjpeg_frame_no_dht_mozilla963907.jpg")).unwrap();
    // The webcam frame has no Huffman tables; it must still decode.
    let mut direct = Vec::new();
    assert_eq!(jpeg_to_rgb(&frame, &mut direct).unwrap(), (960, 720));

    let mut stream = b"--myboundary\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    stream.extend(&frame); // 1: whole
    stream.extend(b"\r\n\x00\xff\x00garbage\xff");
    stream.extend(&frame[..frame.len() / 2]); // cut in the middle of the entropy data
    stream.extend(&frame); // 2: whole, after one cut frame
    stream.extend(&frame); // 3: whole
    stream.extend(&frame[..frame.len() - 10]); // the file ends inside a frame
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mjpeg");
    std::fs::write(&path, &stream).unwrap();

    let mut source = open(&uri(&path)).unwrap();
    let (frames, errors) = drain(&mut *source);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        frames.iter().map(|f| f.dropped_before).collect::<Vec<_>>(),
        vec![0, 1, 0]
    );
    assert!(
        frames.iter().all(|f| f.rgb == direct),
        "every whole frame decodes identically"
    );
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(errors[0], CameraError::Truncated { .. }),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].to_string().contains("3 whole frames"),
        "{}",
        errors[0]
    );
    // ended stays ended
    assert!(source.next_frame().unwrap().is_none());

    // a file with no JPEG in it is an error, not zero frames
    std::fs::write(&path, b"just text, no frames").unwrap();
    let (f, e) = drain(&mut *open(&uri(&path)).unwrap());
    assert!(f.is_empty());
    assert!(matches!(e[..], [CameraError::Decode { .. }]), "{e:?}");
}

/// BT.601 limited-range reference for one pixel.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let (y, u, v) = (
        1.164 * (y as f32 - 16.0),
        u as f32 - 128.0,
        v as f32 - 128.0,
    );
    [y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u].map(|c| c.clamp(0.0, 255.0))
}

#[test]
fn y4m_frames_and_truncated_files() {
    let path = media("y4m_rav1e_small_input_64x64_420jpeg.y4m");
    let bytes = std::fs::read(&path).unwrap();
    let mut source = open(&uri(&path)).unwrap();
    let info = source.info();
    assert_eq!((info.size, info.fps), (Some((64, 64)), Some(25.0)));
    let (frames, errors) = drain(&mut *source);
    assert!(errors.is_empty());
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[4].media_time, Some(Duration::from_millis(160)));

    // pixel check against the BT.601 equations, on the frame's own planes
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let data = &bytes[header_end + b"FRAME\n".len()..];
    let (y, u, v) = (&data[..4096], &data[4096..4096 + 1024], &data[5120..6144]);
    let mut worst = 0f32;
    for (py, px) in [(0usize, 0usize), (10, 33), (40, 7), (63, 63), (31, 48)] {
        let want = yuv_to_rgb(
            y[py * 64 + px],
            u[(py / 2) * 32 + px / 2],
            v[(py / 2) * 32 + px / 2],
        );
        let got = &frames[0].rgb[(py * 64 + px) * 3..][..3];
        for c in 0..3 {
            worst = worst.max((got[c] as f32 - want[c]).abs());
        }
    }
    // chroma is interpolated between samples, so allow a little more than rounding
    assert!(worst <= 12.0, "worst channel difference {worst}");

    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.y4m");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let (frames, errors) = drain(&mut *open(&uri(&cut)).unwrap());
    assert_eq!(frames.len(), 4);
    assert!(
        matches!(errors[..], [CameraError::Truncated { .. }]),
        "{errors:?}"
    );
    std::fs::write(&cut, &bytes[..20]).unwrap();
    let err = open(&uri(&cut)).err().expect("a cut header is an error");
    assert!(
        matches!(
            err,
            CameraError::Truncated { .. } | CameraError::Decode { .. }
        ),
        "{err}"
    );
    std::fs::write(&cut, b"GIF89a not a y4m\n").unwrap();
    assert!(matches!(
        open(&uri(&cut)).err().unwrap(),
        CameraError::Decode { .. }
    ));
}

/// A Y4M file (frames of `frame_len` samples) with every sample widened to `bits` (two bytes,
/// little-endian), and its colour space renamed `to`: the same picture at another depth.
fn widened_y4m(bytes: &[u8], frame_len: usize, from: &str, to: &str, bits: u32) -> Vec<u8> {
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let header = String::from_utf8(bytes[..header_end].to_vec()).unwrap();
    assert!(header.contains(from), "{header}");
    let mut out = header.replace(from, to).into_bytes();
    for frame in bytes[header_end..].chunks(6 + frame_len) {
        assert!(frame.starts_with(b"FRAME\n") && frame.len() == 6 + frame_len);
        out.extend_from_slice(b"FRAME\n");
        for v in &frame[6..] {
            out.extend_from_slice(&((*v as u16) << (bits - 8)).to_le_bytes());
        }
    }
    out
}

#[test]
fn y4m_of_10_and_12_bits_reads_as_the_8_bit_picture() {
    let path = media("y4m_rav1e_small_input_64x64_420jpeg.y4m");
    let bytes = std::fs::read(&path).unwrap();
    let (eight, errors) = drain(&mut *open(&uri(&path)).unwrap());
    assert!(errors.is_empty());
    let dir = tempfile::tempdir().unwrap();
    for (to, bits) in [("C420p10", 10), ("C420p12", 12)] {
        let wide = dir.path().join(format!("{to}.y4m"));
        std::fs::write(
            &wide,
            widened_y4m(&bytes, 64 * 64 * 3 / 2, "C420jpeg", to, bits),
        )
        .unwrap();
        let (frames, errors) = drain(&mut *open(&uri(&wide)).unwrap());
        assert!(errors.is_empty(), "{to}: {errors:?}");
        assert_eq!(frames.len(), eight.len(), "{to}");
        for (a, b) in frames.iter().zip(&eight) {
            assert_eq!(a.rgb, b.rgb, "{to}");
        }
    }
    // 4:2:2 and 4:4:4 at 10 bits, full range, on a file made here
    for (c8, c10, chroma) in [
        ("C422", "C422p10", 2 * 8 * 4),
        ("C444", "C444p10", 2 * 8 * 8),
    ] {
        let samples: Vec<u8> = (0..8 * 8 + chroma).map(|i| (i * 37 % 251) as u8).collect();
        let mut file = format!("YUV4MPEG2 W8 H8 F30:1 {c8} XCOLORRANGE=FULL\nFRAME\n").into_bytes();
        file.extend_from_slice(&samples);
        let narrow = dir.path().join(format!("{c8}.y4m"));
        std::fs::write(&narrow, &file).unwrap();
        let wide = dir.path().join(format!("{c10}.y4m"));
        std::fs::write(&wide, widened_y4m(&file, samples.len(), c8, c10, 10)).unwrap();
        let (a, ea) = drain(&mut *open(&uri(&narrow)).unwrap());
        let (b, eb) = drain(&mut *open(&uri(&wide)).unwrap());
        assert!(ea.is_empty() && eb.is_empty(), "{ea:?} {eb:?}");
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(a[0].rgb, b[0].rgb, "{c10}");
    }
}

#[test]
fn y4m_header_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.y4m");
    for (header, says) in [
        ("YUV4MPEG2 W0 H8 F30:1 C420", "width 0"),
        ("YUV4MPEG2 W8 H-1 F30:1 C420", "height -1"),
        ("YUV4MPEG2 W8 H8 F30:1 C999", "unknown colour space C999"),
        ("YUV4MPEG2 H8 F30:1 C420", "no width"),
        ("YUV4MPEG2 W8 H8 Fthirty C420", "frame rate Fthirty"),
        ("YUV4MPEG2 W99999 H99999 C444p12", "more than 256 MiB"),
    ] {
        std::fs::write(&path, format!("{header}\nFRAME\n")).unwrap();
        let err = open(&uri(&path)).err().expect(header);
        let text = err.to_string();
        assert!(text.contains(says), "{header}: {text}");
        assert!(!text.contains("General parsing error"), "{text}");
    }
}

#[test]
fn ffmpeg_video_files() {
    let missing = FfmpegSource::open(
        "clip.mp4",
        FfmpegOptions {
            program: "dinoedge-no-such-ffmpeg".into(),
            ..Default::default()
        },
    );
    let err = missing.err().expect("a missing ffmpeg is an error");
    assert!(matches!(err, CameraError::ProgramMissing { .. }), "{err}");
    assert!(err.to_string().contains("apt install ffmpeg"));

    let ffmpeg = FfmpegOptions::default().program;
    if !ffmpeg_available(&ffmpeg) {
        println!("SKIPPED the ffmpeg decoding part: `{ffmpeg}` is not installed");
        return;
    }
    let y4m = media("y4m_rav1e_small_input_64x64_420jpeg.y4m");
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mkv");
    let status = std::process::Command::new(&ffmpeg)
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&y4m)
        .args(["-c:v", "ffv1"])
        .arg(&video)
        .status()
        .unwrap();
    assert!(status.success());
    let (ours, _) = drain(&mut *open(&uri(&y4m)).unwrap());
    let (theirs, errors) = drain(&mut *open(&uri(&video)).unwrap());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(theirs.len(), 5);
    // ffmpeg's own YUV→RGB against ours on the same lossless frames
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let mean = a
            .rgb
            .iter()
            .zip(&b.rgb)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / a.rgb.len() as f64;
        assert!(mean < 4.0, "mean difference {mean}");
    }
    // loop: ffmpeg restarted at the end, sequence numbers continue
    let (looped, _) = drain(&mut *open(&format!("{}?loop&frames=12", uri(&video))).unwrap());
    assert_eq!(looped.len(), 12);
    assert_eq!(looped[11].seq, 11);
    assert_eq!(looped[7].rgb, theirs[2].rgb);

    // a file ffmpeg cannot read: its message reaches the user
    let bad = dir.path().join("broken.mp4");
    std::fs::write(&bad, b"not a video at all").unwrap();
    let (f, e) = drain(&mut *open(&uri(&bad)).unwrap());
    assert!(f.is_empty());
    assert!(matches!(e[..], [CameraError::ChildExited { .. }]), "{e:?}");
}

#[test]
fn synthetic_source_paced_and_fast() {
    let mut s = open("synthetic://?width=96&height=64&fps=100&frames=5").unwrap();
    assert_eq!(s.info().fps, Some(100.0));
    let start = std::time::Instant::now();
    let (frames, _) = drain(&mut *s);
    assert_eq!(frames.len(), 5);
    // paced: five frames at 100 fps take at least 40 ms (no upper bound: shared machines)
    assert!(start.elapsed() >= Duration::from_millis(40));
    for f in &frames {
        assert_eq!(read_frame_number(&f.rgb, f.width, f.height), Some(f.seq));
    }
    let (fast, _) = drain(&mut *open("synthetic://?pace=fast&frames=3").unwrap());
    assert_eq!((fast.len(), fast[0].width, fast[0].height), (3, 640, 480));
}

/// A stand-in for rpicam-vid: records its arguments, writes `frames` MJPEG frames, exits.
fn fake_rpicam(dir: &Path, frames: usize) -> PathBuf {
    let frame = media("jpeg_mjpeg_frame_no_dht_mozilla963907.jpg");
    let script = dir.join("fake-rpicam-vid");
    let args_file = dir.join("args.txt");
    let body = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\ni=0\nwhile [ $i -lt {frames} ]; do cat '{}'; i=$((i+1)); done\nexit 0\n",
        args_file.display(),
        frame.display()
    );
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn csi_camera_through_a_stand_in_rpicam_vid() {
    let dir = tempfile::tempdir().unwrap();
    let script = fake_rpicam(dir.path(), 3);
    let uri = format!(
        "csi://1?width=960&height=720&fps=15&reconnect=false&program={}",
        script.display()
    );
    let mut source = open(&uri).unwrap();
    let (frames, errors) = drain(&mut *source);
    assert_eq!(frames.len(), 3);
    assert_eq!((frames[0].width, frames[0].height), (960, 720));
    // a camera program that exits is an error (with its status), not a clean end
    assert!(
        matches!(errors[..], [CameraError::ChildExited { .. }]),
        "{errors:?}"
    );
    let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
    for expected in [
        "--camera 1",
        "--codec mjpeg",
        "--width 960",
        "--height 720",
        "--framerate 15",
        "--output -",
    ] {
        assert!(args.contains(expected), "{expected} not in {args}");
    }

    // with reconnection (the default) the program is started again and frames go on
    let uri = format!("csi://0?program={}", script.display());
    let mut spec = SourceSpec::parse(&uri).unwrap();
    spec.backoff = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        max_attempts: Some(5),
    };
    let mut source = spec.open().unwrap();
    let (mut frames, mut errors) = (Vec::new(), Vec::new());
    while frames.len() < 7 {
        match source.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => panic!("a reconnecting camera does not end"),
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(errors.len(), 2, "one report per exit: {errors:?}");
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    let starts = std::fs::read_to_string(dir.path().join("args.txt"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(starts, 1 + 3);

    let err = open("csi://0?program=/nonexistent/rpicam-vid")
        .err()
        .unwrap();
    assert!(matches!(err, CameraError::ProgramMissing { .. }), "{err}");
}

/// A camera that delivers `ok` frames, then fails; opening fails while `down` says so.
struct Flaky {
    left: u32,
    seq: u64,
}

impl FrameSource for Flaky {
    fn next_frame(&mut self) -> dinoedge_camera::Result<Option<Frame>> {
        if self.left == 0 {
            return Err(CameraError::Device {
                device: "flaky".into(),
                reason: "unplugged".into(),
            });
        }
        self.left -= 1;
        self.seq += 1;
        Ok(Some(Frame::new(vec![0; 3], 1, 1, self.seq)))
    }
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "test",
            description: "flaky camera".into(),
            size: None,
            fps: None,
            live: true,
        }
    }
}

#[test]
fn reconnect_reports_once_and_recovers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let opens = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&opens);
    // open #1 works (3 frames), #2 and #3 fail (still unplugged), #4 works (3 frames)…
    let open = Box::new(move || -> dinoedge_camera::Result<Box<dyn FrameSource>> {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 2 || n == 3 {
            return Err(CameraError::Device {
                device: "flaky".into(),
                reason: "no such device".into(),
            });
        }
        Ok(Box::new(Flaky { left: 3, seq: 100 }))
    });
    let backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
        max_attempts: Some(10),
    };
    let mut source = Reconnecting::new(open, backoff).unwrap();
    let mut events = Vec::new();
    for _ in 0..8 {
        events.push(match source.next_frame() {
            Ok(Some(f)) => format!("f{}", f.seq),
            Ok(None) => "end".into(),
            Err(_) => "err".into(),
        });
    }
    assert_eq!(events, ["f0", "f1", "f2", "err", "f3", "f4", "f5", "err"]);
    assert_eq!(opens.load(Ordering::SeqCst), 4);
    assert_eq!(source.outages(), 2);

    // a camera that never comes back: the retry limit ends it with one clear error
    let open = Box::new({
        let mut first = true;
        move || -> dinoedge_camera::Result<Box<dyn FrameSource>> {
            if std::mem::take(&mut first) {
                Ok(Box::new(Flaky { left: 1, seq: 0 }))
            } else {
                Err(CameraError::Device {
                    device: "flaky".into(),
                    reason: "gone".into(),
                })
            }
        }
    });
    let mut source = Reconnecting::new(
        open,
        Backoff {
            max_attempts: Some(3),
            ..backoff
        },
    )
    .unwrap();
    assert!(source.next_frame().unwrap().is_some());
    assert!(matches!(
        source.next_frame(),
        Err(CameraError::Device { .. })
    ));
    let gave_up = source.next_frame().expect_err("gives up");
    assert!(
        matches!(gave_up, CameraError::GaveUp { attempts: 3, .. }),
        "{gave_up}"
    );
    assert!(source.next_frame().unwrap().is_none());
}

#[test]
fn newest_frame_hand_over_under_a_slow_consumer() {
    let source = open("synthetic://?width=64&height=48&fps=400&frames=120").unwrap();
    let capture = Capture::spawn(source).unwrap();
    let mut got = Vec::new();
    while let Some(event) = capture.next() {
        let frame = event.unwrap();
        std::thread::sleep(Duration::from_millis(15)); // a slow consumer
        got.push(frame);
    }
    let received = got.len() as u64;
    let dropped: u64 = got.iter().map(|f| f.dropped_before).sum();
    println!("received {received}, dropped {dropped}, of 120");
    assert!(received < 120, "the consumer was slower than the source");
    assert_eq!(
        received + dropped,
        120,
        "every frame is delivered or counted as dropped"
    );
    assert_eq!(capture.dropped_total(), dropped);
    assert!(got.windows(2).all(|w| w[1].seq > w[0].seq));
    assert_eq!(
        got.last().unwrap().seq,
        119,
        "the newest frame is the one handed over"
    );
    for f in &got {
        assert_eq!(read_frame_number(&f.rgb, f.width, f.height), Some(f.seq));
    }
}

#[test]
fn capture_passes_errors_through() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a1.png"), 1);
    std::fs::write(dir.path().join("a2.png"), b"broken").unwrap();
    write_png(&dir.path().join("a3.png"), 3);
    let capture = Capture::spawn(open(&uri(dir.path())).unwrap()).unwrap();
    let mut ok = 0;
    let mut err = 0;
    while let Some(e) = capture.next() {
        match e {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    assert_eq!(err, 1);
    assert!((1..=2).contains(&ok));
}

#[test]
fn v4l2_missing_device() {
    let result = open("v4l2:///dev/video97?width=640&height=480");
    let err = result.err().expect("no such camera");
    let msg = err.to_string();
    if dinoedge_camera::V4L2_BUILT {
        assert!(matches!(err, CameraError::Device { .. }), "{msg}");
        assert!(msg.contains("/dev/video97"), "{msg}");
        // the error lists what was found (here, usually nothing)
        assert!(
            msg.contains("cameras found") || msg.contains("no V4L2 cameras"),
            "{msg}"
        );
    } else {
        assert!(matches!(err, CameraError::NotBuilt(_)), "{msg}");
        assert!(msg.contains("--features camera"), "{msg}");
    }
}

#[test]
fn v4l2_a_node_that_is_no_camera() {
    // /dev/null opens, but answers no V4L2 format query: the error says what it is not
    let err = open("v4l2:///dev/null").err().expect("not a camera");
    let msg = err.to_string();
    if dinoedge_camera::V4L2_BUILT {
        assert!(matches!(err, CameraError::Device { .. }), "{msg}");
        assert!(msg.contains("not a V4L2 video capture device"), "{msg}");
    } else {
        assert!(matches!(err, CameraError::NotBuilt(_)), "{msg}");
    }
}
