//! The README's "A hub with two edges, by hand" commands, run exactly as
//! written (read from the README itself, in a scratch folder, with this
//! build's binaries for `target/release/...`): the cluster comes up, a
//! document created through one edge opens through the other, and each
//! edge's uplink stays up (edges started without `--peer-id` all join the
//! hub as `meridian-edge`; the hub tells them apart by their `hello`).
//!
//! The commands use the README's fixed ports (7300, 7302, 7310, 7312,
//! 7400, 7401); the test stops at once, naming them, if one is taken (a
//! running `cargo xtask demo`, say).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_tests::http::metric;
use meridian_tests::process::{edge_client, workspace_binary, workspace_root};

/// The commands of the README's code block under `heading` that start
/// with `target/release/` (continuation lines joined), as argument lists.
fn readme_commands(heading: &str) -> Result<Vec<Vec<String>>> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let section = readme.split(heading).nth(1).context("no such README section")?;
    let block = section.split("```").nth(1).context("no code block in the section")?;
    let joined = block.replace("\\\n", " ");
    Ok(joined
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("target/release/"))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect())
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn the_readme_hub_with_two_edges_works_as_written() -> Result<()> {
    let commands = readme_commands("## A hub with two edges, by hand")?;
    assert_eq!(commands.len(), 3, "the README shows a hub and two edges: {commands:?}");
    for port in [7300, 7310, 7400, 7401] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} is taken (a running demo?): the README's commands need it");
        }
    }
    for port in [7302, 7312, 7400] {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            bail!("UDP port {port} is taken (a running demo?): the README's commands need it");
        }
    }
    let dir = tempfile::tempdir()?;
    let mut processes = Processes(Vec::new());
    for (i, args) in commands.iter().enumerate() {
        let bin = args[0].trim_start_matches("target/release/");
        let child = Command::new(workspace_binary(bin)?)
            .args(&args[1..])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        processes.0.push(child);
        if i == 0 {
            // The edges need the hub's CA, written on its first start.
            wait_for("the hub wrote its CA", || dir.path().join("hub-data/tls/ca.pem").exists())?;
        }
    }
    for port in [7300, 7310] {
        wait_for("both edges linked to the hub", || metric(port, "meridian_edge_uplink_connected") == Some(1.0))?;
    }
    let url = edge_client(&["--url", "ws://127.0.0.1:7300/sync", "create", r#"{"title":"from eu"}"#])?;
    let seen = edge_client(&["--url", "ws://127.0.0.1:7310/sync", "print", &url])?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&seen)?, serde_json::json!({"title": "from eu"}));
    // No flapping: each edge connected once and stays connected.
    std::thread::sleep(Duration::from_secs(2));
    for port in [7300, 7310] {
        assert_eq!(metric(port, "meridian_edge_uplink_connects_total"), Some(1.0), "edge on {port} reconnected");
        assert_eq!(metric(port, "meridian_edge_uplink_connected"), Some(1.0));
    }
    for c in &mut processes.0 {
        assert!(c.try_wait()?.is_none(), "a process exited");
    }
    Ok(())
}
