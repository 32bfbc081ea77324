//! `cargo xtask demo` leaves nothing running, however it ends (issue 20):
//! killed with SIGKILL (its watchdog stops the children), stopped with
//! SIGTERM, or when one of its processes dies (it stops the rest and shows
//! that one's last lines). It refuses to start when its ports are taken.
//!
//! Runs the real xtask binary (`demo --debug --no-build`: the test build's
//! binaries) on the demo's fixed ports, so it shares a nextest test group
//! with the other fixed-port test (`.config/nextest.toml`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meridian_tests::process::workspace_binary;

/// The demo's edges' WebSocket ports: all up means the cluster is up.
const EDGE_PORTS: [u16; 3] = [7300, 7310, 7320];

/// Processes whose command line mentions `dir` (every child of the demo
/// gets a path in its data folder), except `except`.
fn processes_using(dir: &Path, except: &[u32]) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !except.contains(pid) && *pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A zombie has an empty command line: it is gone but for its exit status.
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Waits (bounded: a hang fails the test) until no process uses `dir`.
fn none_left(dir: &Path, except: &[u32]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = processes_using(dir, except);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes left running: {left:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills whatever still uses the data folder when the test ends (a
/// failed step must not leave the demo's ports taken).
struct Leftovers(std::path::PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, _) in processes_using(&self.0, &[]) {
            let _ = signal(pid, "KILL");
        }
    }
}

struct Demo {
    xtask: Child,
    log: std::path::PathBuf,
}

impl Demo {
    fn start(data: &Path) -> Result<Self> {
        let log = data.with_extension("log");
        let mut xtask = Command::new(workspace_binary("xtask")?)
            .args(["demo", "--debug", "--no-build", "--data"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting xtask demo")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !EDGE_PORTS.iter().all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()) {
            if let Some(status) = xtask.try_wait()? {
                bail!("xtask demo exited with {status}: {}", std::fs::read_to_string(&log)?);
            }
            if Instant::now() > deadline {
                let _ = xtask.kill();
                bail!("the demo did not come up: {}", std::fs::read_to_string(&log)?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { xtask, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.xtask.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.xtask.kill();
                bail!("xtask demo did not exit: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    ensure!(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?.success(), "kill -{sig} {pid}");
    Ok(())
}

#[test]
fn the_demo_leaves_nothing_running_when_killed_stopped_or_a_child_dies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo-data");
    let _leftovers = Leftovers(data.clone());
    refuses_to_start_when_its_ports_are_taken(&data)?;

    // kill -9 xtask: the watchdog stops the hub, the sites and the edges.
    let mut demo = Demo::start(&data)?;
    let xtask = demo.xtask.id();
    let children = processes_using(&data, &[xtask]);
    ensure!(children.len() >= 5, "hub, sites and three edges run: {children:#?}");
    signal(xtask, "KILL")?;
    let _ = demo.wait()?;
    none_left(&data, &[])?;

    // SIGTERM: every child stops, then xtask exits 0.
    let mut demo = Demo::start(&data)?;
    signal(demo.xtask.id(), "TERM")?;
    let status = demo.wait()?;
    ensure!(status.success(), "xtask demo after SIGTERM: {status}: {}", demo.log());
    none_left(&data, &[])?;

    // One of its processes dies: the rest are stopped, its last lines shown.
    let mut demo = Demo::start(&data)?;
    let edge = processes_using(&data, &[demo.xtask.id()])
        .into_iter()
        .find(|(_, cmd)| cmd.contains("--edge-id eu"))
        .context("the eu edge is running")?;
    signal(edge.0, "KILL")?;
    let status = demo.wait()?;
    ensure!(!status.success(), "xtask demo went on after its eu edge died: {}", demo.log());
    ensure!(demo.log().contains("eu exited"), "{}", demo.log());
    none_left(&data, &[])?;
    Ok(())
}

/// (In the same test as the rest: both use the demo's ports.)
fn refuses_to_start_when_its_ports_are_taken(data: &Path) -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:7401")?;
    let out = Command::new(workspace_binary("xtask")?)
        .args(["demo", "--debug", "--no-build", "--data"])
        .arg(data)
        .stdin(Stdio::null())
        .output()?;
    drop(taken);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{err}");
    ensure!(err.contains("7401/tcp (hub HTTP)") && err.contains("Is a demo already running?"), "{err}");
    ensure!(!data.exists(), "nothing is created before the ports are checked");
    Ok(())
}
