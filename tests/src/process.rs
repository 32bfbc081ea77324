//! Real `meridian-edge` processes for tests that need to kill one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Path of a workspace binary next to the test executable (cargo and
/// nextest build every workspace binary before running integration tests
/// through `cargo xtask test`), or next to a binary of this crate (the
/// placement benchmark); builds it if it is missing.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary is
    // target/<profile>/<bin> already.
    let parent = exe.parent().context("test executable has no parent")?;
    let dir = if parent.ends_with("deps") { parent.parent().context("no profile folder")? } else { parent };
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--bin", name])
            .status()?;
        if !status.success() || !path.exists() {
            bail!("could not build {name} at {}", path.display());
        }
    }
    Ok(path)
}

/// Runs `meridian-edge client ARGS…` to completion: its trimmed stdout, or
/// an error carrying its stderr.
pub fn edge_client(args: &[&str]) -> Result<String> {
    let out =
        Command::new(workspace_binary("meridian-edge")?).arg("client").args(args).env("RUST_LOG", "warn").output()?;
    anyhow::ensure!(out.status.success(), "client {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A free loopback port for a child process to listen on (TCP and UDP
/// both free at the time of the call).
///
/// The port is bound then released, so something else could take it before
/// the child binds it. Asking the kernel (`bind(…:0)`) would hand out a port
/// from the ephemeral range, which every outgoing connection of every test
/// running in parallel draws from too: CI saw an edge fail with "Address
/// already in use" that way. So the port is drawn at random from below the
/// ephemeral range, where only other tests' picks can collide.
///
/// A port is handed out once per test process: two picks in a row (before
/// the first child binds its port) never return the same one, which they
/// otherwise did about once in a few hundred runs of a test picking ten.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (low, high) = (10_000u16, ephemeral_range_start().saturating_sub(1).max(10_001));
    for _ in 0..1_000 {
        let port = rand::random_range(low..high);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{high}")
}

/// A free loopback UDP port, e.g. for QUIC (see [`free_port`]).
pub fn free_udp_port() -> Result<u16> {
    free_port()
}

/// First port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Waits until something accepts TCP connections on the loopback port.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A `meridian-edge serve` child process, killed on drop.
#[derive(Debug)]
pub struct EdgeProcess {
    child: Child,
    pub port: u16,
    pub data: PathBuf,
}

impl EdgeProcess {
    /// Starts an edge on `port` with its store in `data`, and waits until
    /// `/healthz` answers.
    pub fn start(data: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        let bin = workspace_binary("meridian-edge")?;
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            // Without --quic-listen, QUIC takes the --listen port on UDP
            // (free_port checks both).
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .spawn()
            .context("spawning meridian-edge")?;
        let mut edge = Self { child, port, data: data.to_path_buf() };
        edge.wait_healthy(Duration::from_secs(30))?;
        Ok(edge)
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("meridian-edge exited early with {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("meridian-edge did not start listening on {} within {timeout:?}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/sync", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        terminate(&mut self.child)
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `meridian-hub serve` child process, killed on drop.
#[derive(Debug)]
pub struct HubProcess {
    child: Child,
    pub quic_port: u16,
    pub http_port: u16,
    pub data: PathBuf,
}

impl HubProcess {
    /// Starts a hub that serves clients at `/sync` on its HTTP port too.
    pub fn start(data: &Path, quic_port: u16, http_port: u16, extra: &[&str]) -> Result<Self> {
        let bin = workspace_binary("meridian-hub")?;
        let child = Command::new(bin)
            .args(["serve", "--serve-clients", "--listen", &format!("127.0.0.1:{quic_port}")])
            .args(["--http", &format!("127.0.0.1:{http_port}"), "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .spawn()
            .context("spawning meridian-hub")?;
        let mut hub = Self { child, quic_port, http_port, data: data.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
            if let Some(status) = hub.child.try_wait()? {
                bail!("meridian-hub exited early with {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "meridian-hub did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(hub)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/sync", self.http_port)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data.join("tls/ca.pem")
    }

    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        terminate(&mut self.child)
    }
}

/// SIGTERM to `child`, and its exit status once it is gone.
fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    Ok(child.wait()?)
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Root of the workspace (for the JS scripts under `tests/js`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}
