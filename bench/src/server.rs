//! The servers under test, as real processes on loopback: `meridian-edge`,
//! the reference JS sync server (`tests/js/server.mjs`) and samod, a second
//! reference in Rust (`samod-server`, built from `src/bin/samod-server.rs`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_protocol::ids::DocumentId;

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Edge,
    Js,
    Samod,
}

impl Kind {
    /// Every server, in the order of the report's columns.
    pub const ALL: [Kind; 3] = [Kind::Edge, Kind::Js, Kind::Samod];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Edge => "meridian-edge",
            Kind::Js => "JS sync server",
            Kind::Samod => "samod",
        }
    }

    /// The short name `--only` takes and data folders are named by.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Edge => "edge",
            Kind::Js => "js",
            Kind::Samod => "samod",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

/// Where the binaries live, and what the edge is given besides.
#[derive(Clone, Debug)]
pub struct Paths {
    pub edge_bin: PathBuf,
    pub js_server: PathBuf,
    pub samod_bin: PathBuf,
    /// Extra `meridian-edge serve` flags (`--edge-arg`, e.g. `--unsafe-no-fsync`).
    pub edge_args: Vec<String>,
}

/// meridian-edge's connection caps (`--max-connections`,
/// `--max-connections-per-address`; the JS server has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnCaps {
    /// No cap: every load client comes from 127.0.0.1, so the
    /// per-address cap would measure the cap, not the server.
    Off,
    /// The edge's defaults (10,000 in all, 256 per client address): what a
    /// deployment runs, for the abuse scenario.
    Default,
}

/// A running server; killed on drop if still running.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    pub url: String,
    pub data: PathBuf,
    child: Child,
    paths: Paths,
    caps: ConnCaps,
}

impl Server {
    pub fn start(kind: Kind, paths: &Paths, data: &Path, caps: ConnCaps) -> Result<Self> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let (child, url) = match kind {
            Kind::Edge => start_edge(paths, data, caps)?,
            Kind::Js => start_js(&paths.js_server, data)?,
            Kind::Samod => start_samod(&paths.samod_bin, data)?,
        };
        Ok(Self { kind, url, data: data.to_owned(), child, paths: paths.clone(), caps })
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
    }

    /// A counter or gauge from meridian-edge's `/metrics` (None for the JS
    /// server, or if it cannot be read): for diagnostics printed beside the
    /// figures, e.g. how many sync messages were shared.
    pub fn edge_metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        if self.kind != Kind::Edge {
            return None;
        }
        let addr = self.url.strip_prefix("ws://")?.split('/').next()?;
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// SIGTERM and wait: every server flushes their storage on SIGTERM.
    pub fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not stop within 60 s", self.kind.name())
    }

    /// Stops and starts again on the same data.
    pub fn restart(self) -> Result<Self> {
        self.restart_with(|_, _| Ok(()))
    }

    /// Stops, runs `offline` on the stopped server's data folder (with the
    /// harness's paths), and starts again on it.
    pub fn restart_with(self, offline: impl FnOnce(&Paths, &Path) -> Result<()>) -> Result<Self> {
        let (kind, paths, data, caps) = (self.kind, self.paths.clone(), self.data.clone(), self.caps);
        self.stop()?;
        offline(&paths, &data)?;
        Self::start(kind, &paths, &data, caps)
    }
}

/// Stores documents in a stopped JS server's data folder with
/// automerge-repo's own code (`seed-store.mjs`, next to the server script):
/// the files it writes are the ones the server writes when a peer syncs the
/// same documents to it. `docs` are (document id, automerge bytes).
pub fn seed_js(paths: &Paths, data: &Path, docs: &[(DocumentId, Vec<u8>)]) -> Result<()> {
    let script = paths.js_server.with_file_name("seed-store.mjs");
    let mut records = String::new();
    for (id, bytes) in docs {
        records.push_str(&id.to_string());
        records.push(' ');
        for b in bytes {
            let _ = write!(records, "{b:02x}");
        }
        records.push('\n');
    }
    let mut child = Command::new("node")
        .arg(&script)
        .arg("--dir")
        .arg(data)
        .current_dir(script.parent().context("seed script has no folder")?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    // Feed stdin from another thread while this one collects stdout, so
    // neither side can block the other on a full pipe.
    let mut stdin = child.stdin.take().context("no stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(records.as_bytes()));
    let output = child.wait_with_output().context("waiting for seed-store.mjs")?;
    let fed = feeder.join().map_err(|_| anyhow::anyhow!("the stdin feeder panicked"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("seed-store.mjs failed ({}): {}", output.status, stdout.trim());
    }
    fed.context("writing the records to seed-store.mjs")?;
    let expected = format!("{{\"seeded\":{}}}", docs.len());
    if stdout.trim() != expected {
        bail!("seed-store.mjs printed {:?}, expected {expected}", stdout.trim());
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listening on {port}")
}

fn start_edge(paths: &Paths, data: &Path, caps: ConnCaps) -> Result<(Child, String)> {
    let bin = &paths.edge_bin;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--quic-listen", "off"]);
    if caps == ConnCaps::Off {
        // Every load client comes from 127.0.0.1: no per-address cap.
        cmd.args(["--max-connections", "0", "--max-connections-per-address", "0"]);
    }
    let mut child = cmd
        .args(&paths.edge_args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", std::env::var("LOADGEN_EDGE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    if let Err(e) = wait_port(&mut child, port) {
        let _ = child.kill();
        return Err(e);
    }
    Ok((child, format!("ws://127.0.0.1:{port}/sync")))
}

fn start_js(script: &Path, data: &Path) -> Result<(Child, String)> {
    let child = Command::new("node")
        .arg(script)
        .args(["--port", "0", "--dir"])
        .arg(data)
        .current_dir(script.parent().context("server script has no folder")?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the JS sync server (node)")?;
    listening(child, "the JS server")
}

fn start_samod(bin: &Path, data: &Path) -> Result<(Child, String)> {
    let child = Command::new(bin)
        .args(["--port", "0", "--dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} (built by `cargo xtask bench`)", bin.display()))?;
    listening(child, "samod-server")
}

/// Waits for a reference server's `{"listening":PORT,...}` line on its
/// stdout; then keeps draining its stdout so it never blocks on a full pipe.
fn listening(mut child: Child, what: &str) -> Result<(Child, String)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            bail!("{what} exited before listening");
        };
        let line = line?;
        if let Some(p) = line.split("\"listening\":").nth(1) {
            break p.split([',', '}']).next().unwrap_or("").trim().parse::<u16>()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, format!("ws://127.0.0.1:{port}/")))
}
