//! The collaborative editor demo end to end: a real hub with placement
//! moves on, an `eu` and a `us` edge whose links to the hub carry simulated
//! latency (40 ms and 5 ms each way, through `meridian-demo`'s UDP proxies)
//! and which link to each other directly when one is a document's home, the
//! demo's regional sites, and three pages in headless Chromium
//! (`tests/js/demo-e2e.mjs`, which lists the steps). Screenshots go to
//! `target/demo-e2e/`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_tests::http;
use meridian_tests::js::{js_dir, require_node_modules};
use meridian_tests::process::{
    EdgeProcess, HubProcess, free_port, free_udp_port, wait_port, workspace_binary, workspace_root,
};
use serde_json::Value;

/// `meridian-demo`, killed on drop.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /info` of an edge (readable from any web page).
fn edge_info(port: u16) -> Result<Value> {
    let r = http::request(port, "GET", "/info", &[])?;
    anyhow::ensure!(r.header("access-control-allow-origin") == Some("*"), "no CORS header: {r:?}");
    r.json()
}

fn wait_uplink(port: u16, edge_id: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = edge_info(port)?;
        if info["hub"]["connected"] == Value::Bool(true) && info["hub"]["rttMs"].as_f64().unwrap_or(0.0) > 0.0 {
            anyhow::ensure!(info["edgeId"] == edge_id, "edge id in /info: {info}");
            return Ok(info);
        }
        anyhow::ensure!(Instant::now() < deadline, "edge {edge_id} never linked to the hub: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn editor_pages_on_two_edges_collaborate_offline_merge_restore_and_reload() -> Result<()> {
    require_node_modules()?;
    let pkg = workspace_root().join("client-wasm/pkg/index.js");
    if !pkg.exists() {
        bail!("{} is missing: run `cargo xtask build-js` (or `cargo xtask test`) first", pkg.display());
    }
    let dir = tempfile::tempdir()?;
    // Auth on, as `cargo xtask demo` runs it: the sites mint the pages' tokens.
    meridian_node::auth::keygen(&dir.path().join("auth"))?;
    let public = dir.path().join("auth/auth-public.pem");
    let public = public.to_str().context("key path")?;
    let (hub_quic, hub_http) = (free_udp_port()?, free_port()?);
    // As in `cargo xtask demo`: documents move to the edge nearest their
    // writers while the pages edit them.
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        hub_quic,
        hub_http,
        &[
            "--edge",
            "eu=eu-secret",
            "--edge",
            "us=us-secret",
            "--placement-moves",
            "--placement-interval-ms",
            "500",
            "--auth-public-key",
            public,
        ],
    )?;
    // The demo's sites and latency links: eu 40 ms, us 5 ms each way.
    let regions = [("eu", 40), ("us", 5)];
    let mut sites = Vec::new();
    let mut demo = Command::new(workspace_binary("meridian-demo")?);
    demo.arg("--hub-http").arg(format!("127.0.0.1:{hub_http}"));
    demo.arg("--auth-key").arg(dir.path().join("auth/auth-private.pem"));
    let mut plan = Vec::new();
    for (id, delay) in regions {
        let (site, edge, link, peer) = (free_port()?, free_port()?, free_udp_port()?, free_udp_port()?);
        demo.args(["--site", &format!("{id}=127.0.0.1:{site}=127.0.0.1:{edge}")]);
        demo.args(["--link", &format!("{id}=127.0.0.1:{link}=127.0.0.1:{hub_quic}={delay}")]);
        sites.push(format!("http://127.0.0.1:{site}/"));
        plan.push((id, site, edge, link, peer));
    }
    // The direct edge-to-edge links (used once one edge is a document's
    // home) carry the eu–us latency too: 40 ms each way.
    let mut peer_routes = Vec::new();
    for (from, to) in [(0, 1), (1, 0)] {
        let (port, (a, ..), (b, .., peer)) = (free_udp_port()?, plan[from], plan[to]);
        demo.args(["--link", &format!("{a}-{b}=127.0.0.1:{port}=127.0.0.1:{peer}=40")]);
        peer_routes.push(format!("{b}=127.0.0.1:{port}"));
    }
    let _demo = Demo(demo.stdout(Stdio::null()).spawn().context("starting meridian-demo")?);
    let mut edges = Vec::new();
    for ((id, site, edge, link, peer), route) in plan.iter().zip(&peer_routes) {
        wait_port(*site, Duration::from_secs(30))?;
        let ca = hub.ca_path();
        let args = [
            "--hub",
            &format!("127.0.0.1:{link}"),
            "--edge-id",
            id,
            "--hub-secret",
            &format!("{id}-secret"),
            "--hub-ca",
            ca.to_str().context("CA path")?,
            "--peer-id",
            &format!("edge-{id}"),
            "--peer-listen",
            &format!("127.0.0.1:{peer}"),
            "--peer-route",
            route,
            "--auth-public-key",
            public,
        ];
        edges.push(EdgeProcess::start(&dir.path().join(id), *edge, &args)?);
    }
    for (id, _, edge, ..) in &plan {
        let info = wait_uplink(*edge, id)?;
        eprintln!("edge {id}: {info}");
    }

    let shots = workspace_root().join("target/demo-e2e");
    let _ = std::fs::remove_dir_all(&shots);
    let mut child = Command::new("node")
        .arg(js_dir().join("demo-e2e.mjs"))
        .args(["--eu", &sites[0], "--us", &sites[1], "--out"])
        .arg(&shots)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting node demo-e2e.mjs")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut last = Value::Null;
    for line in stdout.lines() {
        let line = line?;
        eprintln!("demo-e2e: {line}");
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        if v["step"] == "stop-edges" {
            for e in &mut edges {
                e.terminate()?;
            }
            writeln!(stdin, "stopped")?;
        }
        last = v;
    }
    let status = child.wait()?;
    if !status.success() || last["ok"] != Value::Bool(true) {
        bail!("demo-e2e.mjs failed ({status}): {last}");
    }
    let latency = &last["latency"];
    eprintln!(
        "keystroke to other page, median (p90) over {} keystrokes: same edge {} ms ({}), across edges {} ms ({})",
        latency["sameEdge"]["n"],
        latency["sameEdge"]["median"],
        latency["sameEdge"]["p90"],
        latency["crossEdge"]["median"],
        latency["crossEdge"]["p90"]
    );
    for file in [
        "1-remote-cursor.png",
        "2-concurrent-a.png",
        "4-merged-b.png",
        "6-restored-b.png",
        "7-reload-all-edges-down-a.png",
    ] {
        anyhow::ensure!(Path::new(&shots).join(file).exists(), "screenshot {file} missing");
    }
    Ok(())
}
