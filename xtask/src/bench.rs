//! Benchmarks run side by side with the reference JS automerge-repo sync
//! server and samod on the same machine, taking turns so machine noise hits
//! all.
//!
//! The scenarios of issue 7 live in the `meridian-bench` crate
//! (`meridian-loadgen suite`), which starts the servers itself; this
//! module builds it and runs it. `big-doc` (a real JS client fetching
//! through either server) stays here.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, ensure_npm, root, run as run_cmd, wait_port};

const USAGE: &str = "usage: cargo xtask bench [SCENARIO...] [--smoke] [--rounds R] [--size N] [--only edge|js|samod]
       scenarios: connect fanout writers typing large-doc stored attacks (default: all, then big-doc)
       servers: meridian-edge, the JS sync server (tests/js/server.mjs) and samod (bench/src/bin/samod-server.rs)
       --size N: only that size of each scenario; --only: one server, nothing saved (profiling)
       cargo xtask bench big-doc [--changes N] [--rounds R] [--smoke]
       cargo xtask bench placement [--writes N] [--docs K] [--smoke]
       cargo xtask bench cloud [--writes N] [--seconds S] [--smoke]
       cargo xtask bench cost [--smoke]   (instructions per operation, callgrind; adds a row to docs/BENCHMARKS.md)
       cargo xtask bench browser [--ops N] [--reloads R] [--edits E] [--smoke]   (headless Chromium: @meridian/client against @automerge/automerge)";

pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("big-doc") => {
            build(args.iter().any(|a| a == "--smoke"))?;
            big_doc(&args[1..])
        }
        Some(name @ ("placement" | "cloud")) => crate::bench_placement::run(name, &args[1..]),
        Some("cost") => crate::bench_cost::run(&args[1..]),
        Some("browser") => crate::bench_browser::run(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => suite(args),
    }
}

/// Release binaries for measurements; for the smoke run, the test build's
/// debug binaries (same package selection, so nothing is rebuilt).
fn build(smoke: bool) -> Result<()> {
    let mut build = cargo();
    if smoke {
        build.args(crate::TEST_BUILD);
    } else {
        build.args(["build", "--release", "-p", "meridian-edge", "-p", "meridian-bench"]);
    }
    run_cmd(&mut build)
}

/// Every scenario of issue 7 (or the named ones) against every server;
/// full runs update docs/BENCHMARKS.md, smoke runs only check that every
/// scenario still works (and converges) at tiny sizes.
fn suite(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let all = !args.iter().any(|a| !a.starts_with("--") && a.parse::<usize>().is_err());
    ensure_npm()?;
    build(smoke)?;
    let profile = crate::target_dir().join(if smoke { "debug" } else { "release" });
    let mut loadgen = Command::new(profile.join("meridian-loadgen"));
    loadgen.arg("suite").args(args).arg("--edge-bin").arg(profile.join("meridian-edge"));
    loadgen.arg("--samod-bin").arg(profile.join("samod-server"));
    if !smoke {
        loadgen.arg("--report").arg(root().join("docs/BENCHMARKS.md"));
    }
    run_cmd(loadgen.current_dir(root()))?;
    if all {
        let rounds = flag(args, "--rounds", if smoke { 1 } else { 7 })?.to_string();
        let mut big = vec!["--rounds".to_owned(), rounds];
        if smoke {
            big.push("--smoke".into());
        }
        big_doc(&big)?;
    }
    Ok(())
}

pub(crate) fn flag(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.get(i + 1).context("missing value")?.parse().with_context(|| format!("{name} expects a number"))
        }
        None => Ok(default),
    }
}

/// Kills the child on drop.
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn start_edge(profile: &str, data: &Path) -> Result<(Server, String)> {
    let port = free_port()?;
    let child = Command::new(crate::target_dir().join(profile).join("meridian-edge"))
        // Every load client comes from 127.0.0.1: no per-address cap.
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--quic-listen", "off"])
        .args(["--max-connections", "0", "--max-connections-per-address", "0", "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting meridian-edge")?;
    let s = Server(child);
    wait_port(port)?;
    Ok((s, format!("ws://127.0.0.1:{port}/sync")))
}

fn start_js(data: &Path) -> Result<(Server, String)> {
    let mut child = Command::new("node")
        .arg(root().join("tests/js/server.mjs"))
        .args(["--port", "0", "--dir"])
        .arg(data)
        .current_dir(root().join("tests/js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the JS sync server")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().context("JS server exited")??;
        if let Some(p) = line.split("\"listening\":").nth(1) {
            break p.trim_end_matches('}').split(',').next().unwrap_or("").trim().parse::<u16>()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((Server(child), format!("ws://127.0.0.1:{port}/")))
}

/// Runs a scenario and returns the value of a numeric field of its last line.
fn scenario(url: &str, args: &[&str], field: &str) -> Result<String> {
    let out = Command::new("node")
        .arg(root().join("tests/js/scenario.mjs"))
        .args(["--url", url])
        .args(args)
        .current_dir(root().join("tests/js"))
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    if !out.status.success() || !last.contains("\"ok\":true") {
        bail!("scenario {args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let v = last.split(&format!("\"{field}\":")).nth(1).context("field missing")?;
    let v = v.trim_start_matches('"');
    Ok(v.split([',', '}', '"']).next().unwrap_or("").to_owned())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn big_doc(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let changes = flag(args, "--changes", if smoke { 50 } else { 3000 })?;
    let rounds = flag(args, "--rounds", if smoke { 1 } else { 7 })?;
    ensure_npm()?;
    let profile = if smoke { "debug" } else { "release" };

    let tmp = std::env::temp_dir().join(format!("meridian-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (_edge, edge_url) = start_edge(profile, &tmp.join("edge"))?;
    let (_js, js_url) = start_js(&tmp.join("js"))?;
    let n = changes.to_string();
    let upload = ["--case", "upload", "--changes", n.as_str()];
    let edge_doc = scenario(&edge_url, &upload, "url")?;
    let js_doc = scenario(&js_url, &upload, "url")?;
    let fetch = |url: &str, doc: &str| -> Result<f64> {
        let ms =
            scenario(url, &["--case", "fetch", "--doc", doc, "--expect-count", n.as_str(), "--timeout", "300"], "ms")?;
        ms.parse::<f64>().with_context(|| format!("bad timing {ms}"))
    };
    let (mut edge_ms, mut js_ms) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which server goes first.
        if r % 2 == 0 {
            edge_ms.push(fetch(&edge_url, &edge_doc)?);
            js_ms.push(fetch(&js_url, &js_doc)?);
        } else {
            js_ms.push(fetch(&js_url, &js_doc)?);
            edge_ms.push(fetch(&edge_url, &edge_doc)?);
        }
        eprintln!("round {r}: edge {:.1} ms, js {:.1} ms", edge_ms[r], js_ms[r]);
    }
    let (e, j) = (median(&mut edge_ms), median(&mut js_ms));
    println!(
        "\n| {changes}-change document to a fresh JS peer | meridian-edge | JS sync server | ratio (JS / Meridian) |"
    );
    println!("|---|---|---|---|");
    println!("| median of {rounds} (ms) | {e:.1} | {j:.1} | {:.2}x |", j / e);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
