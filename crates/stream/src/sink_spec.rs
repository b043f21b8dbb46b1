//! `--sink` specifications: `files:DIR[?format=jpg]`, `jsonl[:FILE]`, `mcap:FILE[?overwrite]`,
//! `http[:ADDR]`, parsed into a [`SinkSpec`] before anything is opened (a typo is reported
//! before the model loads), then opened with [`SinkSpec::open`].

use std::path::{Path, PathBuf};

use crate::http::HttpSink;
use crate::mcap_sink::McapSink;
use crate::points::Points;
use crate::region::Region;
use crate::render::View;
use crate::sink::{FileSink, JsonLinesSink, PictureFormat, Sink};
use crate::stats::SharedStats;
use crate::{Result, StreamError};
use dinoedge_camera::Intrinsics;

/// The live view's address when `http` names none and `--listen` is not given: this machine only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where results go, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// `files:DIR` (`dir:` too): pictures and arrays per result.
    Files {
        /// The directory (created).
        dir: PathBuf,
        /// Overlays as PNG (default) or JPEG (`?format=jpg`).
        format: PictureFormat,
    },
    /// `jsonl` (stdout, also `jsonl:-`) or `jsonl:FILE` (`json` too): one JSON object per frame.
    JsonLines {
        /// The file; `None` is standard output.
        file: Option<PathBuf>,
    },
    /// `mcap:FILE`: a Foxglove recording (`?overwrite` replaces an existing file).
    Mcap {
        /// The recording.
        file: PathBuf,
        /// Replace the file if it exists.
        overwrite: bool,
        /// `?points=stride:N` or `?points=off` as given (`None`: the default, every 4th pixel
        /// when there are intrinsics and metric depth).
        points: Option<Points>,
    },
    /// `http` or `http:ADDR` (`view` too): the live view in the browser.
    Http {
        /// The address to listen on; `None` takes `--listen`, else [`DEFAULT_LISTEN`].
        addr: Option<String>,
    },
}

/// What [`SinkSpec::open`] needs besides the spec.
#[derive(Debug, Clone)]
pub struct SinkContext<'a> {
    /// Opacity of segmentation over the frame.
    pub alpha: f32,
    /// Regions summarised in JSON lines.
    pub regions: &'a [Region],
    /// The live view's address when the spec names none.
    pub listen: Option<&'a str>,
    /// The live view's title.
    pub title: &'a str,
    /// The pictures the live view shows (see [`crate::Analysis::views`]).
    pub views: &'a [View],
    /// The camera's intrinsics as the user gave them (`--intrinsics`): for point clouds.
    pub intrinsics: Option<Intrinsics>,
    /// The numbers the live view shows.
    pub stats: &'a SharedStats,
}

fn invalid(spec: &str, reason: String) -> StreamError {
    StreamError::InvalidSink {
        spec: spec.to_string(),
        reason,
    }
}

impl SinkSpec {
    /// Parse `kind:target?option&option`. Every mistake names the spec and says what the
    /// sink takes.
    pub fn parse(spec: &str) -> Result<SinkSpec> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        let options: Vec<&str> = query.split('&').filter(|q| !q.is_empty()).collect();
        let allow = |allowed: &[&str]| -> Result<()> {
            let unknown = options
                .iter()
                .find(|o| !allowed.contains(&o.split('=').next().unwrap_or("")));
            match unknown {
                None => Ok(()),
                Some(o) => Err(invalid(
                    spec,
                    format!(
                        "unknown option `{o}` (this sink takes: {})",
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                )),
            }
        };
        let need = |what: &str, example: &str| -> Result<()> {
            if target.is_empty() {
                return Err(invalid(
                    spec,
                    format!("give {what}, e.g. `{kind}:{example}`"),
                ));
            }
            Ok(())
        };
        Ok(match kind {
            "files" | "dir" => {
                need("a directory", "out/")?;
                allow(&["format"])?;
                let format = match options.iter().find_map(|o| o.strip_prefix("format=")) {
                    None | Some("png") => PictureFormat::Png,
                    Some("jpg" | "jpeg") => PictureFormat::Jpeg,
                    Some(o) => return Err(invalid(spec, format!("format={o}: use png or jpg"))),
                };
                SinkSpec::Files {
                    dir: PathBuf::from(target),
                    format,
                }
            }
            "jsonl" | "json" => {
                allow(&[])?;
                SinkSpec::JsonLines {
                    file: (!target.is_empty() && target != "-").then(|| PathBuf::from(target)),
                }
            }
            "mcap" => {
                need("a file", "run.mcap")?;
                allow(&["overwrite", "points"])?;
                let points = options
                    .iter()
                    .find_map(|o| o.strip_prefix("points="))
                    .map(|p| p.parse::<Points>().map_err(|e| invalid(spec, e)))
                    .transpose()?;
                if points.is_none() && options.contains(&"points") {
                    return Err(invalid(
                        spec,
                        "points needs a value: points=stride:N or points=off".into(),
                    ));
                }
                SinkSpec::Mcap {
                    file: PathBuf::from(target),
                    overwrite: options.contains(&"overwrite"),
                    points,
                }
            }
            "http" | "view" => {
                allow(&[])?;
                SinkSpec::Http {
                    addr: (!target.is_empty()).then(|| target.trim_start_matches("//").to_string()),
                }
            }
            other => {
                return Err(invalid(
                    spec,
                    format!(
                        "unknown sink `{other}`: use files:DIR, jsonl[:FILE], mcap:FILE.mcap or http[:ADDR]"
                    ),
                ));
            }
        })
    }

    /// Open the sink. Returns it and, for sinks that leave something behind, a line saying
    /// where (for the run's summary).
    pub fn open(&self, cx: &SinkContext<'_>) -> Result<(Box<dyn Sink>, Option<String>)> {
        Ok(match self {
            SinkSpec::Files { dir, format } => {
                let s = FileSink::new(dir.clone(), *format, cx.alpha)?;
                (Box::new(s), Some(format!("files in {}", dir.display())))
            }
            SinkSpec::JsonLines { file: None } => {
                let s = JsonLinesSink::new(std::io::stdout(), "jsonl", cx.regions.to_vec());
                (Box::new(s), None)
            }
            SinkSpec::JsonLines { file: Some(f) } => {
                let s = JsonLinesSink::create(f, cx.regions.to_vec())?;
                (Box::new(s), Some(format!("JSON lines in {}", f.display())))
            }
            SinkSpec::Mcap {
                file,
                overwrite,
                points,
            } => {
                let s = McapSink::create(Path::new(file), *overwrite, cx.alpha)?
                    .with_points(points.unwrap_or_default(), cx.intrinsics);
                let where_ = format!(
                    "MCAP recording {} (open it in Foxglove, or run it again with --source {})",
                    file.display(),
                    file.display()
                );
                (Box::new(s), Some(where_))
            }
            SinkSpec::Http { addr } => {
                let addr = addr.as_deref().or(cx.listen).unwrap_or(DEFAULT_LISTEN);
                let s = HttpSink::bind(addr, cx.title, cx.views, cx.stats.clone(), cx.alpha)?;
                let url = format!("http://{}/", s.addr());
                (Box::new(s), Some(format!("live view at {url}")))
            }
        })
    }
}

impl SinkSpec {
    /// What this sink writes: a path made absolute (`stdout` for JSON lines on standard
    /// output, `listen ADDR` for the live view), to compare sinks by.
    fn output(&self) -> String {
        let path = |p: &std::path::Path| {
            // `./a` and `a`, `out/` and `out` are one output
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .components()
                .collect::<std::path::PathBuf>()
                .display()
                .to_string()
        };
        match self {
            SinkSpec::Files { dir, .. } => path(dir),
            SinkSpec::JsonLines { file: None } => "standard output".into(),
            SinkSpec::JsonLines { file: Some(f) } => path(f),
            SinkSpec::Mcap { file, .. } => path(file),
            SinkSpec::Http { addr } => format!(
                "the address {}",
                addr.as_deref().unwrap_or("given by --listen")
            ),
        }
    }

    /// An error when two sinks would write the same file, directory or address (their
    /// outputs would interleave into one corrupt file): `sinks` as given and as parsed.
    pub fn check_distinct<S: AsRef<str>>(sinks: &[(S, SinkSpec)]) -> Result<()> {
        for (i, (text, a)) in sinks.iter().enumerate() {
            if let Some((other, _)) = sinks[..i].iter().find(|(_, b)| b.output() == a.output()) {
                return Err(invalid(
                    text.as_ref(),
                    format!(
                        "`{}` writes {} too: give each sink its own output",
                        other.as_ref(),
                        a.output()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for SinkSpec {
    type Err = StreamError;

    fn from_str(s: &str) -> Result<SinkSpec> {
        SinkSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sinks_on_one_output_are_refused() {
        let specs = |v: &[&'static str]| -> Vec<(&'static str, SinkSpec)> {
            v.iter()
                .map(|s| (*s, SinkSpec::parse(s).unwrap()))
                .collect()
        };
        for same in [
            &["mcap:out.mcap", "jsonl:out.mcap"][..],
            &["jsonl:a.jsonl", "jsonl:./a.jsonl"],
            &["jsonl", "jsonl:-"],
            &["files:out", "files:out/"],
            &["http:127.0.0.1:9000", "http:127.0.0.1:9000"],
        ] {
            let err = SinkSpec::check_distinct(&specs(same))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("writes") && err.contains("too"),
                "{same:?}: {err}"
            );
        }
        let distinct = specs(&["mcap:a.mcap", "jsonl:a.jsonl", "jsonl", "files:out", "http"]);
        SinkSpec::check_distinct(&distinct).unwrap();
    }

    fn err(spec: &str) -> String {
        SinkSpec::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn every_kind_parses() {
        assert_eq!(
            SinkSpec::parse("files:out").unwrap(),
            SinkSpec::Files {
                dir: "out".into(),
                format: PictureFormat::Png
            }
        );
        assert_eq!(
            SinkSpec::parse("dir:a/b?format=jpeg").unwrap(),
            SinkSpec::Files {
                dir: "a/b".into(),
                format: PictureFormat::Jpeg
            }
        );
        assert_eq!(
            SinkSpec::parse("jsonl").unwrap(),
            SinkSpec::JsonLines { file: None }
        );
        assert_eq!(
            SinkSpec::parse("jsonl:-").unwrap(),
            SinkSpec::JsonLines { file: None }
        );
        assert_eq!(
            SinkSpec::parse("json:r.jsonl").unwrap(),
            SinkSpec::JsonLines {
                file: Some("r.jsonl".into())
            }
        );
        assert_eq!(
            SinkSpec::parse("mcap:run.mcap?overwrite").unwrap(),
            SinkSpec::Mcap {
                file: "run.mcap".into(),
                overwrite: true,
                points: None,
            }
        );
        assert_eq!(
            SinkSpec::parse("mcap:run.mcap?points=stride:2").unwrap(),
            SinkSpec::Mcap {
                file: "run.mcap".into(),
                overwrite: false,
                points: Some(crate::points::Points::Stride(2)),
            }
        );
        assert_eq!(
            SinkSpec::parse("http").unwrap(),
            SinkSpec::Http { addr: None }
        );
        assert_eq!(
            SinkSpec::parse("view://0.0.0.0:9000").unwrap(),
            SinkSpec::Http {
                addr: Some("0.0.0.0:9000".into())
            }
        );
        assert_eq!(
            "http:127.0.0.1:0".parse::<SinkSpec>().unwrap(),
            SinkSpec::Http {
                addr: Some("127.0.0.1:0".into())
            }
        );
    }

    #[test]
    fn mistakes_name_the_spec_and_the_fix() {
        assert_eq!(
            err("ftp:host"),
            "sink `ftp:host`: unknown sink `ftp`: use files:DIR, jsonl[:FILE], mcap:FILE.mcap or http[:ADDR]"
        );
        assert_eq!(
            err("files"),
            "sink `files`: give a directory, e.g. `files:out/`"
        );
        assert_eq!(
            err("mcap"),
            "sink `mcap`: give a file, e.g. `mcap:run.mcap`"
        );
        assert_eq!(
            err("files:out?format=gif"),
            "sink `files:out?format=gif`: format=gif: use png or jpg"
        );
        assert_eq!(
            err("files:out?fmt=jpg"),
            "sink `files:out?fmt=jpg`: unknown option `fmt=jpg` (this sink takes: format)"
        );
        assert_eq!(
            err("jsonl:x?pretty"),
            "sink `jsonl:x?pretty`: unknown option `pretty` (this sink takes: none)"
        );
        assert_eq!(
            err("mcap:r.mcap?append"),
            "sink `mcap:r.mcap?append`: unknown option `append` (this sink takes: overwrite, points)"
        );
        assert_eq!(
            err("mcap:r.mcap?points=stride:0"),
            "sink `mcap:r.mcap?points=stride:0`: points=stride:0: use points=stride:N (every N-th pixel along both axes, 1 to 64) or points=off"
        );
        assert_eq!(
            err("mcap:r.mcap?points"),
            "sink `mcap:r.mcap?points`: points needs a value: points=stride:N or points=off"
        );
    }

    #[test]
    fn open_reports_where_results_go_and_fails_cleanly() {
        let dir = std::env::temp_dir().join(format!("dinoedge-sinkspec-{}", std::process::id()));
        let stats = SharedStats::default();
        let cx = SinkContext {
            alpha: 0.5,
            regions: &[],
            listen: None,
            title: "t",
            views: &View::ALL,
            intrinsics: None,
            stats: &stats,
        };
        let files = SinkSpec::parse(&format!("files:{}", dir.display())).unwrap();
        let (sink, where_) = files.open(&cx).unwrap();
        assert!(dir.is_dir());
        assert_eq!(sink.name(), format!("files:{}", dir.display()));
        assert_eq!(where_.unwrap(), format!("files in {}", dir.display()));
        // a JSON lines file in a directory that does not exist: the sink's error, no panic
        let missing = dir.join("no/such/dir/r.jsonl");
        let spec = SinkSpec::JsonLines {
            file: Some(missing.clone()),
        };
        let e = spec
            .open(&cx)
            .err()
            .expect("cannot create the file")
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
