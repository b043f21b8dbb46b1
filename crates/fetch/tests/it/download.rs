//! Downloads against a real HTTP server on 127.0.0.1 serving fixture files: a Hugging Face
//! style `resolve` endpoint (the headers hf-hub reads) and plain files, with byte ranges. The
//! server can cut a transfer short, stall, lie about a digest, or not have the file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinoedge_fetch::{
    FetchError, FetchOptions, Manifest, ModelCache, Progress, fetch, sha256_file,
};
use dinoedge_testkit::fixtures;

const HUB_FILE: &str = "tiny/dinov2-tiny/onnx/model_int8.onnx";
const URL_FILE: &str = "heads/dinov2_vits14_voc2012_linear_head.pth";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the server does with the next request for a path.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Serve,
    /// Send the headers of the whole answer, then only this many bytes, then close.
    CutAfter(usize),
    /// Send the headers and a little, then say nothing for seconds.
    Stall,
    /// Serve, with a wrong ETag (a Hub whose digest does not match the content).
    WrongEtag,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// path → modes for the next transfers (a metadata probe does not use one)
    modes: HashMap<String, Vec<Mode>>,
    /// (path, Range header) of every request
    log: Vec<(String, Option<String>)>,
    /// path prefix of a gated repository → the token it lets in (as the Hub: 401 without a
    /// token, 403 with another)
    gated: HashMap<String, String>,
}

struct Server {
    addr: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &s);
                });
            }
        });
        Server { addr, state }
    }

    fn serve(&self, path: &str, bytes: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.into(), bytes);
    }

    fn then(&self, path: &str, modes: &[Mode]) {
        self.state
            .lock()
            .unwrap()
            .modes
            .insert(path.into(), modes.to_vec());
    }

    fn gate(&self, prefix: &str, token: &str) {
        let mut st = self.state.lock().unwrap();
        st.gated.insert(prefix.into(), token.into());
    }

    fn log(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let refused = {
        let st = state.lock().unwrap();
        st.gated
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .and_then(|(_, token)| match &authorization {
                None => Some("401 Unauthorized"),
                Some(a) if *a != format!("Bearer {token}") => Some("403 Forbidden"),
                Some(_) => None,
            })
    };
    if let Some(status) = refused {
        let body = "Access to model dinoedge-test/gated is restricted.";
        conn.write_all(
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
        return Ok(());
    }
    let (body, mode) = {
        let mut st = state.lock().unwrap();
        st.log.push((path.clone(), range.clone()));
        let probe = range.as_deref() == Some("bytes=0-0");
        let mode = match st.modes.get_mut(&path) {
            Some(m) if !m.is_empty() && (!probe || m[0] == Mode::WrongEtag) => {
                if probe {
                    m[0]
                } else {
                    m.remove(0)
                }
            }
            _ => Mode::Serve,
        };
        (st.files.get(&path).cloned(), mode)
    };
    let Some(body) = body else {
        conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        )?;
        return Ok(());
    };
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next()?.parse().ok())
        .unwrap_or(0);
    let end: usize = range
        .as_deref()
        .and_then(|r| r.split('-').nth(1)?.parse::<usize>().ok())
        .map(|e| e + 1)
        .unwrap_or(body.len())
        .min(body.len());
    let digest = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(&body);
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        if mode == Mode::WrongEtag {
            hex.replace(|c: char| c != '0', "0").replacen('0', "1", 1)
        } else {
            hex
        }
    };
    let mut head = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
            end - 1,
            body.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    head += &format!(
        "Content-Length: {}\r\nETag: \"{digest}\"\r\nX-Repo-Commit: {COMMIT}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        end - start
    );
    conn.write_all(head.as_bytes())?;
    let part = &body[start..end];
    match mode {
        Mode::CutAfter(n) => {
            conn.write_all(&part[..n.min(part.len())])?;
            conn.flush()?;
            conn.shutdown(std::net::Shutdown::Both)?;
        }
        Mode::Stall => {
            conn.write_all(&part[..1000.min(part.len())])?;
            conn.flush()?;
            std::thread::sleep(Duration::from_secs(30));
        }
        _ => conn.write_all(part)?,
    }
    Ok(())
}

/// Counts what the progress callbacks saw.
#[derive(Default, Debug)]
struct Count {
    starts: Vec<(Option<u64>, u64)>,
    bytes: u64,
    verified: bool,
}

impl Progress for Count {
    fn start(&mut self, total: Option<u64>, from: u64) {
        self.starts.push((total, from));
    }
    fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
    fn verifying(&mut self) {
        self.verified = true;
    }
}

struct Setup {
    server: Server,
    manifest: Manifest,
    cache: ModelCache,
    options: FetchOptions,
    hub_bytes: Vec<u8>,
    url_bytes: Vec<u8>,
    _dir: tempfile::TempDir,
}

const HUB_PATH: &str = "/dinoedge-test/tiny/resolve/main/onnx/model_int8.onnx";
const URL_PATH: &str = "/heads/dinov2_vits14_voc2012_linear_head.pth";

fn setup(url_sha: Option<&str>) -> Option<Setup> {
    let (hub, url) = (fixtures().join(HUB_FILE), fixtures().join(URL_FILE));
    if !hub.is_file() || !url.is_file() {
        eprintln!("skipping: no fixtures at {}", fixtures().display());
        return None;
    }
    let server = Server::start();
    let hub_bytes = std::fs::read(&hub).unwrap();
    let url_bytes = std::fs::read(&url).unwrap();
    server.serve(HUB_PATH, hub_bytes.clone());
    server.serve(URL_PATH, url_bytes.clone());
    server.serve(
        "/dinoedge-test/tiny/resolve/main/config.json",
        std::fs::read(fixtures().join("tiny/dinov2-tiny/config.json")).unwrap(),
    );
    let sha = url_sha
        .map(str::to_string)
        .unwrap_or_else(|| sha256_file(&url).unwrap());
    let text = format!(
        r#"
[[model]]
name = "tiny-int8"
kind = "backbone"
description = "fixture"
hub = "dinoedge-test/tiny"
file = "onnx/model_int8.onnx"
also = ["config.json", "preprocessor_config.json"]

[[model]]
name = "voc-head"
kind = "head"
backbone = "tiny-int8"
description = "fixture"
url = "{addr}{URL_PATH}"
size = {size}
sha256 = "{sha}"

[[model]]
name = "gated"
kind = "backbone"
description = "a licence to accept first"
hub = "dinoedge-test/gated"
file = "onnx/model_int8.onnx"

[[model]]
name = "missing-hub"
kind = "backbone"
description = "not on the server"
hub = "dinoedge-test/none"
file = "onnx/model.onnx"

[[model]]
name = "missing-url"
kind = "head"
description = "not on the server"
url = "{addr}/heads/none.pth"

[[model]]
name = "offline"
kind = "head"
description = "nobody listens there"
url = "http://127.0.0.1:9/x.pth"
"#,
        addr = server.addr,
        size = url_bytes.len()
    );
    let manifest = Manifest::parse(&text, "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(dir.path().join("models"));
    let options = FetchOptions {
        timeout: Duration::from_secs(2),
        endpoint: server.addr.clone(),
        token: None,
        force: false,
    };
    Some(Setup {
        server,
        manifest,
        cache,
        options,
        hub_bytes,
        url_bytes,
        _dir: dir,
    })
}

impl Setup {
    fn fetch(
        &self,
        name: &str,
        progress: &mut Count,
    ) -> Result<dinoedge_fetch::Fetched, FetchError> {
        fetch(
            self.manifest.get(name).unwrap(),
            &self.cache,
            &self.options,
            progress,
        )
    }
}

#[test]
fn complete_downloads_from_the_hub_and_over_http_then_from_the_cache() {
    let Some(s) = setup(None) else { return };
    let mut p = Count::default();
    let got = s.fetch("tiny-int8", &mut p).unwrap();
    assert!(got.downloaded);
    assert_eq!(std::fs::read(&got.path).unwrap(), s.hub_bytes);
    assert_eq!(
        got.verified_against, "hub",
        "checked against the Hub's LFS digest"
    );
    assert_eq!(p.bytes, s.hub_bytes.len() as u64);
    assert!(p.verified);
    // the Hub's layout, as hf-hub writes it
    assert!(
        got.path.starts_with(
            s.cache
                .hub_dir()
                .join("models--dinoedge-test--tiny/snapshots")
                .join(COMMIT)
        )
    );
    assert_eq!(
        std::fs::read_to_string(
            s.cache
                .hub_dir()
                .join("models--dinoedge-test--tiny/refs/main")
        )
        .unwrap(),
        COMMIT
    );

    let mut p = Count::default();
    let got = s.fetch("voc-head", &mut p).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.url_bytes);
    assert_eq!(got.verified_against, "manifest");
    assert_eq!(got.resumed_from, Some(0));
    assert_eq!(p.starts, vec![(Some(s.url_bytes.len() as u64), 0)]);
    assert_eq!(
        got.path,
        s.cache.by_hand_path(s.manifest.get("voc-head").unwrap())
    );

    // both are cached now: no request goes out
    let before = s.server.log().len();
    for name in ["tiny-int8", "voc-head"] {
        let again = s.fetch(name, &mut Count::default()).unwrap();
        assert!(!again.downloaded, "{name}");
        assert_eq!(
            s.cache.find(s.manifest.get(name).unwrap()).unwrap().path,
            again.path
        );
    }
    assert_eq!(s.server.log().len(), before);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let Some(s) = setup(None) else { return };
    // plain HTTP: cut after 40,000 bytes
    s.server.then(URL_PATH, &[Mode::CutAfter(40_000)]);
    let e = s.fetch("voc-head", &mut Count::default()).unwrap_err();
    assert!(
        matches!(e, FetchError::Interrupted { got: 40_000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("resumes"), "{e}");
    let entry = s.manifest.get("voc-head").unwrap();
    assert!(
        s.cache.find(entry).is_none(),
        "a partial file is not a cached file"
    );
    let mut p = Count::default();
    let got = s.fetch("voc-head", &mut p).unwrap();
    assert_eq!(got.resumed_from, Some(40_000));
    assert_eq!(
        p.bytes,
        s.url_bytes.len() as u64 - 40_000,
        "only the rest was sent"
    );
    assert_eq!(std::fs::read(&got.path).unwrap(), s.url_bytes);
    let ranges: Vec<_> = s
        .server
        .log()
        .into_iter()
        .filter(|(p, _)| p == URL_PATH)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=40000-".into())]);

    // the Hub: hf-hub keeps blobs/<etag>.part and asks for the rest
    s.server.then(HUB_PATH, &[Mode::CutAfter(100_000)]);
    let e = s.fetch("tiny-int8", &mut Count::default()).unwrap_err();
    assert!(matches!(e, FetchError::Interrupted { .. }), "{e}");
    let got = s.fetch("tiny-int8", &mut Count::default()).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.hub_bytes);
    let ranges: Vec<_> = s
        .server
        .log()
        .into_iter()
        .filter(|(p, _)| p == HUB_PATH)
        .map(|(_, r)| r.unwrap_or_default())
        .collect();
    assert!(ranges.contains(&"bytes=100000-".to_string()), "{ranges:?}");
}

#[test]
fn a_checksum_mismatch_deletes_the_file_and_says_so() {
    let wrong = "ab".repeat(32);
    let Some(s) = setup(Some(&wrong)) else { return };
    let e = s.fetch("voc-head", &mut Count::default()).unwrap_err();
    let FetchError::Checksum {
        expected,
        got,
        path,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(expected, &wrong);
    assert_eq!(got, &sha256_file(&fixtures().join(URL_FILE)).unwrap());
    assert!(!path.exists(), "deleted");
    assert!(e.to_string().contains("deleted"), "{e}");
    assert!(s.cache.find(s.manifest.get("voc-head").unwrap()).is_none());

    // a Hub whose digest does not match what it sent
    s.server.then(HUB_PATH, &[Mode::WrongEtag]);
    let e = s.fetch("tiny-int8", &mut Count::default()).unwrap_err();
    let FetchError::Checksum { path, .. } = &e else {
        panic!("{e}")
    };
    assert!(!path.exists());
    assert!(s.cache.find(s.manifest.get("tiny-int8").unwrap()).is_none());
}

#[test]
fn a_missing_file_is_a_404_with_its_address() {
    let Some(s) = setup(None) else { return };
    for (name, url) in [
        (
            "missing-hub",
            format!(
                "{}/dinoedge-test/none/resolve/main/onnx/model.onnx",
                s.server.addr
            ),
        ),
        ("missing-url", format!("{}/heads/none.pth", s.server.addr)),
    ] {
        let e = s.fetch(name, &mut Count::default()).unwrap_err();
        assert!(matches!(e, FetchError::NotFound { .. }), "{e}");
        assert!(
            e.to_string().contains(&url) && e.to_string().contains("404"),
            "{e}"
        );
    }
}

#[test]
fn a_gated_repository_says_where_to_accept_the_licence_and_takes_the_token() {
    let Some(mut s) = setup(None) else { return };
    let path = "/dinoedge-test/gated/resolve/main/onnx/model_int8.onnx";
    s.server.serve(path, s.hub_bytes.clone());
    s.server.gate("/dinoedge-test/gated/", "hf_right");

    // no token: 401, and what to do
    let e = s.fetch("gated", &mut Count::default()).unwrap_err();
    let t = e.to_string();
    assert!(matches!(e, FetchError::Http { status: 401, .. }), "{t}");
    assert!(
        t.contains("dinoedge-test/gated is gated")
            && t.contains(&format!("{}/dinoedge-test/gated", s.server.addr))
            && t.contains("settings/tokens")
            && t.contains("HF_TOKEN"),
        "{t}"
    );
    // a token without access: 403, and that the token was refused
    s.options.token = Some("hf_wrong".into());
    let e = s.fetch("gated", &mut Count::default()).unwrap_err();
    let t = e.to_string();
    assert!(matches!(e, FetchError::Http { status: 403, .. }), "{t}");
    assert!(t.contains("the token was refused"), "{t}");
    // the right token: the file
    s.options.token = Some("hf_right".into());
    let got = s.fetch("gated", &mut Count::default()).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.hub_bytes);
}

#[test]
fn a_stalled_server_times_out_with_a_clear_error() {
    let Some(s) = setup(None) else { return };
    for (name, path) in [("voc-head", URL_PATH), ("tiny-int8", HUB_PATH)] {
        s.server.then(path, &[Mode::Stall]);
        let t = Instant::now();
        let e = s.fetch(name, &mut Count::default()).unwrap_err();
        assert!(
            matches!(e, FetchError::Stalled { seconds: 2, .. }),
            "{name}: {e}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: gave up after {:?}",
            t.elapsed()
        );
        assert!(e.to_string().contains("no data for 2 s"), "{e}");
    }
}

#[test]
fn offline_says_which_file_and_where_to_put_it() {
    let Some(s) = setup(None) else { return };
    let e = s.fetch("offline", &mut Count::default()).unwrap_err();
    let by_hand = s.cache.by_hand_path(s.manifest.get("offline").unwrap());
    assert!(matches!(e, FetchError::Offline { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("http://127.0.0.1:9/x.pth") && msg.contains(&by_hand.display().to_string()),
        "{msg}"
    );
    // a file put there by hand is then found
    std::fs::create_dir_all(by_hand.parent().unwrap()).unwrap();
    std::fs::write(&by_hand, b"by hand").unwrap();
    let got = s.fetch("offline", &mut Count::default()).unwrap();
    assert!(!got.downloaded);
    assert_eq!(got.path, by_hand);
}
