//! The live view: an HTTP server with a page that shows the camera and the result side by
//! side as MJPEG streams, with the numbers updating.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/stream/camera.mjpg`, `/stream/result.mjpg` | MJPEG (`multipart/x-mixed-replace`) |
//! | `/frame/camera.jpg`, `/frame/result.jpg` | the newest picture, once |
//! | `/stats` | the run's numbers and each viewer's, JSON |
//!
//! Each viewer has its own newest-wins slot: the sink puts the newest JPEG in every slot and
//! moves on; a viewer's own thread sends what is in its slot when its socket takes it. A
//! slow or stalled viewer only misses pictures; it never holds up the pipeline or the other
//! viewers. Pictures are only encoded for views someone is watching.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dinoedge_camera::{Frame, LatestSender, latest};
use tiny_http::{Header, Request, Response, Server};

use crate::render::{View, jpeg, render};
use crate::result::{FrameResult, Output};
use crate::sink::{Sink, sink_err};
use crate::stats::SharedStats;
use crate::{Result, StreamError};

const BOUNDARY: &str = "dinoedgeframe";
const PAGE: &str = include_str!("live.html");

/// One viewer of a stream.
struct Client {
    id: u64,
    view: View,
    tx: LatestSender<Arc<Vec<u8>>>,
    sent: Arc<AtomicU64>,
}

/// The newest output's frame, result and freshness.
type Newest = (Arc<Frame>, Option<Arc<FrameResult>>, bool);

/// What the server threads and the sink share.
struct Hub {
    clients: Mutex<Vec<Client>>,
    /// The newest output (frame and result), for `/frame/…` and a new viewer's first picture.
    last: Mutex<Option<Newest>>,
    stats: SharedStats,
    title: String,
    /// The views the page shows, in order.
    views: Vec<View>,
    alpha: f32,
    quality: u8,
    next_id: AtomicU64,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// The newest picture of `view`, as JPEG.
    fn picture(&self, view: View) -> Option<Vec<u8>> {
        let last = lock(&self.last).clone()?;
        let (frame, result, fresh) = last;
        let out = Output {
            frame,
            result,
            fresh,
            dropped_before: 0,
        };
        jpeg(&render(&out, view, self.alpha), self.quality).ok()
    }
}

/// The live view as a sink. The server starts when the sink is made and stops at
/// [`Sink::finish`].
pub struct HttpSink {
    hub: Arc<Hub>,
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpSink {
    /// Serve on `addr` (`127.0.0.1:8080`; port 0 picks a free one). `title` heads the page
    /// (the model and task), which shows `views` side by side; `stats` are the run's numbers.
    pub fn bind(
        addr: &str,
        title: &str,
        views: &[View],
        stats: SharedStats,
        alpha: f32,
    ) -> Result<HttpSink> {
        let server = Server::http(addr).map_err(|e| StreamError::Sink {
            name: format!("http://{addr}"),
            reason: format!("cannot listen: {e}"),
        })?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| sink_err(&format!("http://{addr}"), "not an IP address"))?;
        let server = Arc::new(server);
        let hub = Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            stats,
            title: title.to_string(),
            views: views.to_vec(),
            alpha,
            quality: 80,
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let thread = {
            let (server, hub) = (server.clone(), hub.clone());
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || {
                    while !hub.closed.load(Ordering::Relaxed) {
                        match server.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(req)) => handle(&hub, req),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| sink_err(&format!("http://{local}"), e))?
        };
        Ok(HttpSink {
            hub,
            server,
            addr: local,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("static header")
}

fn respond(req: Request, r: Response<std::io::Cursor<Vec<u8>>>) {
    // a viewer that went away before the answer: nothing to do
    let _ = req.respond(r.with_header(header("Cache-Control", "no-store")));
}

fn handle(hub: &Arc<Hub>, req: Request) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let not_found = |req: Request| {
        respond(
            req,
            Response::from_string("not found: try /, /stream/camera.mjpg, /stream/result.mjpg, /frame/result.jpg, /stats")
                .with_status_code(404),
        )
    };
    match path.as_str() {
        "/" | "/index.html" => {
            let views: Vec<&str> = hub.views.iter().map(|v| v.name()).collect();
            let page = PAGE
                .replace("{{title}}", &html_escape(&hub.title))
                .replace("{{views}}", &serde_json::json!(views).to_string());
            respond(
                req,
                Response::from_string(page)
                    .with_header(header("Content-Type", "text/html; charset=utf-8")),
            )
        }
        "/stats" => {
            let clients: Vec<serde_json::Value> = lock(&hub.clients)
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id,
                        "view": c.view.name(),
                        "sent": c.sent.load(Ordering::Relaxed),
                        "dropped": c.tx.dropped_total(),
                    })
                })
                .collect();
            let mut v = serde_json::to_value(hub.stats.snapshot()).unwrap_or_default();
            v["viewers"] = clients.into();
            v["title"] = hub.title.clone().into();
            respond(
                req,
                Response::from_string(v.to_string())
                    .with_header(header("Content-Type", "application/json")),
            )
        }
        p => {
            let view = |prefix: &str, suffix: &str| {
                p.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(suffix))
                    .and_then(View::from_name)
            };
            if let Some(v) = view("/frame/", ".jpg") {
                match hub.picture(v) {
                    Some(jpg) => respond(
                        req,
                        Response::from_data(jpg).with_header(header("Content-Type", "image/jpeg")),
                    ),
                    None => respond(
                        req,
                        Response::from_string("no frame yet").with_status_code(503),
                    ),
                }
            } else if let Some(v) = view("/stream/", ".mjpg") {
                stream(hub.clone(), req, v)
            } else {
                not_found(req)
            }
        }
    }
}

/// Serve one MJPEG viewer on its own thread until it goes away or the run ends.
fn stream(hub: Arc<Hub>, req: Request, view: View) {
    let (tx, rx) = latest::<Arc<Vec<u8>>>();
    if let Some(first) = hub.picture(view) {
        let _ = tx.send(Arc::new(first));
    }
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let sent = Arc::new(AtomicU64::new(0));
    lock(&hub.clients).push(Client {
        id,
        view,
        tx,
        sent: sent.clone(),
    });
    let spawned = std::thread::Builder::new()
        .name(format!("http-viewer-{id}"))
        .spawn(move || {
            let mut w = req.into_writer();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            );
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            while let Some(r) = rx.recv() {
                let jpg = r.item;
                let part = format!(
                    "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    jpg.len()
                );
                let ok = w.write_all(part.as_bytes()).is_ok()
                    && w.write_all(&jpg).is_ok()
                    && w.write_all(b"\r\n").is_ok()
                    && w.flush().is_ok();
                if !ok {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // gone: the sink drops this viewer at its next send
        });
    if let Err(e) = spawned {
        tracing::warn!("live view: cannot start a viewer thread: {e}");
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Sink for HttpSink {
    fn name(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        *lock(&self.hub.last) = Some((out.frame.clone(), out.result.clone(), out.fresh));
        let mut clients = lock(&self.hub.clients);
        let mut cache: HashMap<View, Arc<Vec<u8>>> = HashMap::new();
        let mut gone = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let jpg = match cache.get(&c.view) {
                Some(j) => j.clone(),
                None => {
                    let img = render(out, c.view, self.hub.alpha);
                    let j = Arc::new(
                        jpeg(&img, self.hub.quality).map_err(|e| sink_err(&self.name(), e))?,
                    );
                    cache.insert(c.view, j.clone());
                    j
                }
            };
            if c.tx.send(jpg).is_err() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            clients.remove(i);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.hub.closed.store(true, Ordering::Relaxed);
        // closing every viewer's slot ends its stream
        lock(&self.hub.clients).clear();
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
