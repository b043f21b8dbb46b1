//! The live view's sink never waits for a viewer: one whose socket is full only misses
//! pictures, while a viewer that reads keeps getting them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use dinoedge_camera::Frame;
use dinoedge_stream::{HttpSink, Output, SharedStats, Sink, View};

/// A frame of noise: its JPEG does not compress (≈ 1 MB at 1280×720).
fn noise_frame(seq: u64) -> Output {
    let (w, h) = (1280u32, 720u32);
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seq;
    let rgb = (0..w * h * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Output {
        frame: Arc::new(Frame::new(rgb, w, h, seq)),
        result: None,
        fresh: false,
        dropped_before: 0,
    }
}

fn stats(addr: &str) -> serde_json::Value {
    let body = ureq::get(&format!("http://{addr}/stats"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_viewer_that_never_reads_is_skipped_not_waited_for() {
    let mut sink = HttpSink::bind(
        "127.0.0.1:0",
        "test",
        &View::ALL,
        SharedStats::default(),
        0.5,
    )
    .unwrap();
    let addr = sink.addr().to_string();
    // asks for the stream, never reads a byte
    let mut stalled = TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "GET /stream/camera.mjpg HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    // registered (as viewer 0) before the reading viewer connects: the ids follow the order
    // the requests are parsed in, which a busy machine can swap
    while stats(&addr)["viewers"].as_array().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // reads everything
    let reader = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(s, "GET /stream/camera.mjpg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            // read until nothing came for 2 s (the sink has finished)
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8_lossy(&buf)
                .matches("--dinoedgeframe\r\n")
                .count()
        })
    };
    // both viewers registered before the pictures start
    while stats(&addr)["viewers"].as_array().unwrap().len() < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // 60 pictures of ~1 MB: far more than the stalled socket's buffers hold. If the sink
    // waited for that viewer, this loop would never end.
    let frames: Vec<Output> = (0..4).map(noise_frame).collect();
    for i in 0..60 {
        sink.write(&frames[i % 4]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = stats(&addr);
    let viewers = s["viewers"].as_array().unwrap();
    let stalled_viewer = viewers.iter().find(|v| v["id"] == 0).unwrap();
    let sent = stalled_viewer["sent"].as_u64().unwrap();
    let dropped = stalled_viewer["dropped"].as_u64().unwrap();
    eprintln!("stalled viewer: {sent} sent, {dropped} skipped; {s}");
    assert!(sent < 30, "the stalled viewer cannot have taken {sent} MB");
    assert!(dropped > 0);
    sink.finish().unwrap();
    let got = reader.join().unwrap();
    eprintln!("reading viewer: {got} pictures");
    assert!(
        got >= 10,
        "the reading viewer got only {got} of 60 pictures"
    );
    drop(stalled);
}
