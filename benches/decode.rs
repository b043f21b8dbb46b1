//! Criterion benches of frame decoding, the camera crate's per-frame cost before the model:
//! MJPEG (a 1280x720 photo encoded at quality 85, and a real 960x720 4:2:2 webcam frame
//! without Huffman tables) and YUYV / planar YUV 4:2:0 at 1280x720, to RGB8.
//!
//! `cargo bench --bench decode` (media from `../shared/media` or `$DINOEDGE_MEDIA`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dinoedge_camera::decode::{Chroma, YuvColor, jpeg_to_rgb, planar_to_rgb, yuyv_to_rgb};

use dinoedge_testkit::media;

/// A real photo at 1280x720.
fn photo_720p() -> image::RgbImage {
    let photo = image::open(media("jpeg_progressive3.jpg")).expect("shared media");
    photo
        .resize_exact(1280, 720, image::imageops::FilterType::Triangle)
        .into_rgb8()
}

/// BT.601 limited-range luma and chroma of one pixel.
fn yuv(p: &[u8]) -> (u8, u8, u8) {
    let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
    let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
    let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
    let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
    (y as u8, u as u8, v as u8)
}

fn decode(c: &mut Criterion) {
    let photo = photo_720p();
    let (w, h) = photo.dimensions();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&photo)
        .unwrap();
    let webcam = std::fs::read(media("jpeg_mjpeg_frame_no_dht_mozilla963907.jpg")).unwrap();

    let mut yuyv = Vec::with_capacity((w * h * 2) as usize);
    for px in photo.as_raw().chunks_exact(6) {
        let (y0, u, v) = yuv(&px[..3]);
        let (y1, _, _) = yuv(&px[3..]);
        yuyv.extend_from_slice(&[y0, u, y1, v]);
    }
    let (mut yp, mut up, mut vp) = (Vec::new(), Vec::new(), Vec::new());
    for (i, px) in photo.as_raw().chunks_exact(3).enumerate() {
        let (y, u, v) = yuv(px);
        yp.push(y);
        let (x, row) = (i as u32 % w, i as u32 / w);
        if x % 2 == 0 && row % 2 == 0 {
            up.push(u);
            vp.push(v);
        }
    }

    let mut group = c.benchmark_group("decode_to_rgb");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::new();
    group.bench_function("mjpeg_1280x720_q85", |b| {
        b.iter(|| jpeg_to_rgb(&jpeg, &mut out).unwrap())
    });
    group.bench_function("mjpeg_webcam_960x720_422_no_dht", |b| {
        b.iter(|| jpeg_to_rgb(&webcam, &mut out).unwrap())
    });
    group.bench_function("yuyv_1280x720", |b| {
        b.iter(|| yuyv_to_rgb(&yuyv, w, h, w * 2, YuvColor::BT601_LIMITED, &mut out).unwrap())
    });
    group.bench_function("yuv420_1280x720", |b| {
        b.iter(|| {
            planar_to_rgb(
                [&yp, &up, &vp],
                w,
                h,
                Chroma::Yuv420,
                YuvColor::BT601_LIMITED,
                &mut out,
            )
            .unwrap()
        })
    });
    group.finish();
    println!("(MJPEG 1280x720 q85 frame: {} KiB)", jpeg.len() / 1024);
}

criterion_group!(benches, decode);
criterion_main!(benches);
