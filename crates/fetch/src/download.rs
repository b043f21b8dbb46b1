//! Downloading one manifest entry: a worker thread does the transfer and reports progress over
//! a channel; the calling thread shows it and gives up when nothing arrives for the timeout.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cache::ModelCache;
use crate::error::{FetchError, Result, io};
use crate::manifest::{Entry, Source};

/// How to download.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Give up when no data arrives for this long (connecting included).
    pub timeout: Duration,
    /// The Hugging Face endpoint: `$HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: String,
    /// A Hugging Face token for gated repositories: `$HF_TOKEN`, else hf-hub's token file.
    pub token: Option<String>,
    /// Download again even when the file is cached.
    pub force: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            timeout: Duration::from_secs(30),
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            token: hub_token(),
            force: false,
        }
    }
}

/// The Hugging Face token, where the Hub's own tools look for it: `$HF_TOKEN`, else the file
/// `huggingface-cli login` writes (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, else
/// `~/.cache/huggingface/token`).
pub fn hub_token() -> Option<String> {
    token_from(|key| std::env::var_os(key), dirs::home_dir())
}

/// [`hub_token`] with the environment and home directory given.
fn token_from(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    home: Option<PathBuf>,
) -> Option<String> {
    let non_empty = |v: String| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(t) = env("HF_TOKEN")
        .and_then(|v| v.into_string().ok())
        .and_then(non_empty)
    {
        return Some(t);
    }
    let path = env("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("token")))
        .or_else(|| home.map(|h| h.join(".cache/huggingface/token")))?;
    std::fs::read_to_string(path).ok().and_then(non_empty)
}

/// What to do about a 401 or 403 from the Hub for `repo`: accept the licence of a gated
/// repository, and pass a token (or a better one).
fn gated_hint(endpoint: &str, repo: &str, token_sent: bool) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if token_sent {
        format!(
            ": the token was refused for {repo}, a gated or private repository. Accept its \
             licence at {endpoint}/{repo} with the account the token belongs to (approval can \
             take a while), or check the token (HF_TOKEN, or the file `huggingface-cli login` \
             writes)"
        )
    } else {
        format!(
            ": {repo} is gated (or private) and no token was sent. Accept its licence at \
             {endpoint}/{repo} while signed in, create a read token at \
             {endpoint}/settings/tokens, and pass it as HF_TOKEN=hf_… (or run \
             `huggingface-cli login` once: dinoedge reads the token file it writes)"
        )
    }
}

/// Progress of one download (the CLI draws a bar; tests count).
pub trait Progress {
    /// The transfer starts (again, after a resume): `total` bytes when known, `from` already on disk.
    fn start(&mut self, total: Option<u64>, from: u64);
    /// `bytes` more arrived.
    fn advance(&mut self, bytes: u64);
    /// The file is complete; its digest is being checked.
    fn verifying(&mut self);
}

impl Progress for () {
    fn start(&mut self, _: Option<u64>, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn verifying(&mut self) {}
}

/// A file that is in the cache now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its sha256 (computed for downloads; `None` for a file that was already cached).
    pub sha256: Option<String>,
    /// Whether it was downloaded now (false: it was in the cache).
    pub downloaded: bool,
    /// Bytes that were already on disk from an interrupted download (plain HTTPS only; the Hub
    /// client resumes too, without saying from where).
    pub resumed_from: Option<u64>,
    /// What the digest was checked against: `manifest`, `hub` (the Hub's LFS digest), or `none`.
    pub verified_against: &'static str,
}

enum Event {
    Start(Option<u64>, u64),
    Advance(u64),
    Done(Result<(PathBuf, Option<u64>, Option<String>)>),
}

/// The sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Get `entry` into `cache`: nothing to do when it is there (unless `force`), else download
/// it, resuming what an interrupted download left, then check size and sha256 (a mismatch
/// deletes the file).
pub fn fetch(
    entry: &Entry,
    cache: &ModelCache,
    options: &FetchOptions,
    progress: &mut dyn Progress,
) -> Result<Fetched> {
    if !options.force
        && let Some(c) = cache.find(entry)
    {
        if let Some(want) = entry.size.filter(|&s| s != c.bytes) {
            tracing::warn!(
                "{}: cached file has {} bytes, the manifest says {want}: downloading again",
                c.path.display(),
                c.bytes
            );
        } else {
            return Ok(Fetched {
                path: c.path,
                bytes: c.bytes,
                sha256: None,
                downloaded: false,
                resumed_from: None,
                verified_against: "none",
            });
        }
    }
    let url = entry.url(&options.endpoint);
    let (tx, rx) = channel();
    let partial = match ModelCache::hub_repo(&entry.source) {
        Some(repo) => {
            let blobs = cache.hub_blobs(&repo);
            let (entry, cache, options) = (entry.clone(), cache.clone(), options.clone());
            std::thread::spawn(move || {
                let r = hub_download(&entry, &cache, &options, &tx);
                let _ = tx.send(Event::Done(r));
            });
            blobs
        }
        None => {
            let target = cache.by_hand_path(entry);
            let part = part_path(&target);
            let (entry, options, url) = (entry.clone(), options.clone(), url.clone());
            std::thread::spawn(move || {
                let r = url_download(&entry, &url, &target, &options, &tx);
                let _ = tx.send(Event::Done(r));
            });
            part
        }
    };
    let (path, resumed_from, hub_digest) = watch(&rx, &url, &partial, options.timeout, progress)?;
    progress.verifying();
    verify(entry, path, resumed_from, hub_digest)
}

/// Follow the worker's events; a silence longer than `timeout` is a stall.
fn watch(
    rx: &Receiver<Event>,
    url: &str,
    partial: &Path,
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<(PathBuf, Option<u64>, Option<String>)> {
    loop {
        match rx.recv_timeout(timeout) {
            Ok(Event::Start(total, from)) => progress.start(total, from),
            Ok(Event::Advance(n)) => progress.advance(n),
            Ok(Event::Done(r)) => return r,
            // the worker is stuck in a read that has no timeout of its own (the Hub client):
            // it is left behind; its partial file stays for the next attempt
            Err(RecvTimeoutError::Timeout) => {
                return Err(FetchError::Stalled {
                    url: url.to_string(),
                    seconds: timeout.as_secs().max(1),
                    partial: partial.to_owned(),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(FetchError::Hub {
                    url: url.to_string(),
                    reason: "the download thread ended without a result".into(),
                });
            }
        }
    }
}

/// Size and digest checks; a file that fails them is deleted.
fn verify(
    entry: &Entry,
    path: PathBuf,
    resumed_from: Option<u64>,
    hub_digest: Option<String>,
) -> Result<Fetched> {
    let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
    // for the Hub, `path` is the snapshot's link; the bytes are in the blob
    let blob = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let remove = |p: &Path| {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(p);
    };
    if let Some(expected) = entry.size.filter(|&s| s != bytes) {
        remove(&path);
        return Err(FetchError::Size {
            name: entry.name.clone(),
            expected,
            got: bytes,
            path,
        });
    }
    let got = sha256_file(&path)?;
    let (expected, against) = match (&entry.sha256, hub_digest) {
        (Some(s), _) => (Some(s.clone()), "manifest"),
        (None, Some(d)) => (Some(d), "hub"),
        (None, None) => (None, "none"),
    };
    if let Some(expected) = expected.filter(|e| *e != got) {
        remove(&path);
        return Err(FetchError::Checksum {
            name: entry.name.clone(),
            expected,
            got,
            path,
        });
    }
    Ok(Fetched {
        path,
        bytes,
        sha256: Some(got),
        downloaded: true,
        resumed_from,
        verified_against: against,
    })
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

fn is_offline(kind: ureq2::ErrorKind) -> bool {
    matches!(
        kind,
        ureq2::ErrorKind::Dns | ureq2::ErrorKind::ConnectionFailed | ureq2::ErrorKind::ProxyConnect
    )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Plain HTTP(S) into `<target>.part`, resumed with a Range request, renamed when complete.
fn url_download(
    entry: &Entry,
    url: &str,
    target: &Path,
    options: &FetchOptions,
    tx: &Sender<Event>,
) -> Result<(PathBuf, Option<u64>, Option<String>)> {
    let dir = target.parent().expect("a file in the cache");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let part = part_path(target);
    let stalled = || FetchError::Stalled {
        url: url.to_string(),
        seconds: options.timeout.as_secs().max(1),
        partial: part.clone(),
    };
    let agent = ureq2::AgentBuilder::new()
        .timeout_connect(options.timeout)
        .timeout_read(options.timeout)
        .try_proxy_from_env(true)
        .user_agent(concat!("dinoedge/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut from = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if from > 0 {
        request = request.set("Range", &format!("bytes={from}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq2::Error::Status(404, _)) => {
            return Err(FetchError::NotFound {
                name: entry.name.clone(),
                url: url.to_string(),
            });
        }
        Err(ureq2::Error::Status(416, _)) if from > 0 => {
            // the partial file is not a prefix of what the server has now: start over
            std::fs::remove_file(&part).map_err(io(&part))?;
            return url_download(entry, url, target, options, tx);
        }
        Err(ureq2::Error::Status(status, _)) => {
            return Err(FetchError::Http {
                url: url.to_string(),
                status,
                hint: String::new(),
            });
        }
        Err(ureq2::Error::Transport(t)) => {
            if is_offline(t.kind()) {
                return Err(FetchError::Offline {
                    url: url.to_string(),
                    reason: t.to_string(),
                    by_hand: target.to_owned(),
                });
            }
            if t.kind() == ureq2::ErrorKind::Io {
                return Err(stalled());
            }
            return Err(FetchError::Hub {
                url: url.to_string(),
                reason: t.to_string(),
            });
        }
    };
    let mut file = if response.status() == 206 {
        OpenOptions::new()
            .append(true)
            .open(&part)
            .map_err(io(&part))?
    } else {
        // a full answer: the server ignored the range (or there was none)
        from = 0;
        File::create(&part).map_err(io(&part))?
    };
    let total = response
        .header("Content-Range")
        .and_then(|r| r.rsplit('/').next()?.parse::<u64>().ok())
        .or_else(|| {
            response
                .header("Content-Length")
                .and_then(|l| l.parse::<u64>().ok())
                .map(|l| l + from)
        });
    let _ = tx.send(Event::Start(total, from));
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = from;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => return Err(stalled()),
            Err(e) => {
                file.flush().map_err(io(&part))?;
                return Err(FetchError::Interrupted {
                    url: url.to_string(),
                    got,
                    total: total.unwrap_or(0),
                    reason: e.to_string(),
                    partial: part.clone(),
                });
            }
        };
        file.write_all(&buf[..n]).map_err(io(&part))?;
        got += n as u64;
        let _ = tx.send(Event::Advance(n as u64));
    }
    file.sync_all().map_err(io(&part))?;
    if let Some(total) = total.filter(|&t| t != got) {
        return Err(FetchError::Interrupted {
            url: url.to_string(),
            got,
            total,
            reason: "the connection closed early".into(),
            partial: part.clone(),
        });
    }
    std::fs::rename(&part, target).map_err(io(target))?;
    Ok((target.to_owned(), Some(from), None))
}

/// hf-hub's progress, forwarded to the watching thread.
struct ChannelProgress(Sender<Event>);

impl hf_hub::api::Progress for ChannelProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        let _ = self.0.send(Event::Start(Some(size as u64), 0));
    }
    fn update(&mut self, size: usize) {
        let _ = self.0.send(Event::Advance(size as u64));
    }
    fn finish(&mut self) {}
}

/// A Hub file through hf-hub (its cache layout, its resume of `blobs/<etag>.part`).
fn hub_download(
    entry: &Entry,
    cache: &ModelCache,
    options: &FetchOptions,
    tx: &Sender<Event>,
) -> Result<(PathBuf, Option<u64>, Option<String>)> {
    use hf_hub::api::sync::{ApiBuilder, ApiError};
    let Source::Hub { file, .. } = &entry.source else {
        unreachable!("hub_download is called for Hub entries")
    };
    let url = entry.url(&options.endpoint);
    let hub_err = |reason: String| FetchError::Hub {
        url: url.clone(),
        reason,
    };
    let repo = ModelCache::hub_repo(&entry.source).expect("a Hub entry");
    let repo_id = match &entry.source {
        crate::Source::Hub { repo, .. } => repo.as_str(),
        crate::Source::Url(_) => "",
    };
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.hub_dir()))
        .with_endpoint(options.endpoint.trim_end_matches('/').to_string())
        .with_progress(false)
        .with_retries(0)
        .with_user_agent("dinoedge", env!("CARGO_PKG_VERSION"));
    if options.token.is_some() {
        builder = builder.with_token(options.token.clone());
    }
    let api = builder.build().map_err(|e| hub_err(e.to_string()))?;
    let result = api
        .repo(repo.clone())
        .download_with_progress(file, ChannelProgress(tx.clone()));
    let path = match result {
        Ok(p) => p,
        Err(e) => {
            let e = match e {
                ApiError::TooManyRetries(inner) => *inner,
                e => e,
            };
            return Err(match e {
                ApiError::RequestError(r) => match *r {
                    ureq2::Error::Status(404, _) => FetchError::NotFound {
                        name: entry.name.clone(),
                        url,
                    },
                    ureq2::Error::Status(status, _) => FetchError::Http {
                        url,
                        status,
                        hint: if status == 401 || status == 403 {
                            gated_hint(&options.endpoint, repo_id, options.token.is_some())
                        } else {
                            String::new()
                        },
                    },
                    ureq2::Error::Transport(t) if is_offline(t.kind()) => FetchError::Offline {
                        url,
                        reason: t.to_string(),
                        by_hand: cache.by_hand_path(entry),
                    },
                    ureq2::Error::Transport(t) => hub_err(t.to_string()),
                },
                ApiError::IoError(e) => FetchError::Interrupted {
                    url,
                    got: 0,
                    total: 0,
                    reason: e.to_string(),
                    partial: cache.hub_blobs(&repo),
                },
                ApiError::LockAcquisition(p) => FetchError::Locked(p),
                ApiError::MissingHeader(h) => hub_err(format!(
                    "the answer has no {h} header: is {} a Hugging Face Hub endpoint?",
                    options.endpoint
                )),
                other => hub_err(other.to_string()),
            });
        }
    };
    // the configs beside the model (optional: dinoedge has defaults, so a miss is a warning)
    let repo_api = api.repo(repo);
    for extra in &entry.also {
        if let Err(e) = repo_api.download(extra) {
            tracing::warn!("{}: {extra} not fetched: {e}", entry.name);
        }
    }
    // the blob is named by its ETag, which for LFS files is the sha256 of the content
    let digest = std::fs::canonicalize(&path)
        .ok()
        .and_then(|b| b.file_name()?.to_str().map(str::to_string))
        .filter(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()));
    Ok((path, None, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_hf_token_else_the_file_huggingface_cli_login_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".cache/huggingface")).unwrap();
        std::fs::write(dir.path().join(".cache/huggingface/token"), "hf_home\n").unwrap();
        std::fs::write(dir.path().join("hf_home_token"), "hf_hf_home").unwrap();
        let home = Some(dir.path().to_path_buf());
        let env = |vars: Vec<(&'static str, String)>| {
            move |key: &str| {
                vars.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let read = |vars: Vec<(&'static str, String)>| token_from(env(vars), home.clone());
        assert_eq!(read(vec![]).as_deref(), Some("hf_home"));
        assert_eq!(
            read(vec![("HF_TOKEN", "hf_env".into())]).as_deref(),
            Some("hf_env")
        );
        // an empty HF_TOKEN is no token: the file is read
        assert_eq!(
            read(vec![("HF_TOKEN", " ".into())]).as_deref(),
            Some("hf_home")
        );
        let path = dir.path().join("hf_home_token").display().to_string();
        assert_eq!(
            read(vec![("HF_TOKEN_PATH", path)]).as_deref(),
            Some("hf_hf_home")
        );
        assert_eq!(token_from(env(vec![]), None), None);
    }
}
