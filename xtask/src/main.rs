//! `cargo xtask <command>`: the project's set-up and workflows, in Rust
//! rather than shell scripts.
//!
//! - `cargo xtask demo`  — build and start a local edge with its data under
//!   `./demo-data`, and print how to connect.
//! - `cargo xtask test`  — install what the tests need (npm packages, the
//!   wasm target), then run every test and the wasm build check.
//! - `cargo xtask sim-sweep` — the long simulation seed sweep.
//! - `cargo xtask bench big-doc` — a few-thousand-change document to a fresh
//!   JS peer, through `meridian-edge` and through the JS sync server, side by
//!   side in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <command>

Commands:
  demo        build and start a local Meridian edge (data in ./demo-data)
  test        install test prerequisites and run every test
  sim-sweep   run the deterministic simulation over many seeds (MERIDIAN_SIM_SEEDS, default 5000)
  bench big-doc [--changes N] [--rounds R] [--smoke]
              time for an N-change document (default 3000) to reach a fresh JS peer through
              meridian-edge vs the JS automerge-repo sync server, alternating R rounds (default 7)
  build-js [--dev]
              build the browser package @meridian/client into client-wasm/pkg
  test-js     build @meridian/client and run only its tests (Node, Chromium, edge end-to-end)
  help        print this help
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("sim-sweep") => sim_sweep(),
        Some("bench") => bench::run(&args[1..]),
        Some("build-js") => js::build(&args[1..]),
        Some("test-js") => js::test_all(),
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

mod bench;
mod js;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().map(|o| o.status.success()).unwrap_or(false)
}

/// npm packages for the interop tests (the real JS automerge-repo).
pub(crate) fn ensure_npm() -> Result<()> {
    let dir = root().join("tests/js");
    if !have("npm", "--version") {
        bail!("npm is required for the interop tests; install Node.js 20+ (Debian: `apt-get install -y nodejs npm`)");
    }
    if dir.join("node_modules/@automerge/automerge-repo").exists() {
        return Ok(());
    }
    // `npm install` honours package-lock.json; `npm ci` rejects this lock
    // (npm 11 lists cbor-extract's optional platform packages as missing).
    run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&dir))
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown") => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"])),
        Err(_) => bail!("rustup not found; install the wasm target with `rustup target add wasm32-unknown-unknown`"),
    }
}

fn test(extra: &[String]) -> Result<()> {
    ensure_npm()?;
    ensure_wasm_target()?;
    // The browser package: the browser and JS-compatibility tests load it.
    js::build(&[])?;
    js::ensure_test_npm()?;
    // The protocol crate (and the browser binding) must build for wasm32.
    run(cargo().args(["build", "--target", "wasm32-unknown-unknown", "-p", "meridian-protocol", "-p", "meridian-client-wasm"]))?;
    // Integration tests start the real binaries.
    run(cargo().args(["build", "--bins", "--workspace", "--exclude", "meridian-client-wasm"]))?;
    if have("cargo-nextest", "--version") || have("cargo", "nextest") {
        run(cargo().args(["nextest", "run", "--workspace", "--exclude", "meridian-client-wasm"]).args(extra))?;
    } else {
        run(cargo().args(["test", "--workspace", "--exclude", "meridian-client-wasm"]).args(extra))?;
    }
    // nextest does not run doctests.
    run(cargo().args(["test", "--doc", "-p", "meridian-protocol", "-p", "meridian-edge"]))?;
    js::test()?;
    // Keep the benchmark harness from rotting: tiny sizes, no timing goals.
    bench::run(&["big-doc".into(), "--smoke".into()])
}

fn sim_sweep() -> Result<()> {
    let seeds = std::env::var("MERIDIAN_SIM_SEEDS").unwrap_or_else(|_| "5000".into());
    run(cargo().env("MERIDIAN_SIM_SEEDS", seeds).args(["test", "--release", "-p", "meridian-tests", "--test", "sim_convergence"]))
}

fn demo() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "meridian-edge"]))?;
    let data = root().join("demo-data/edge");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let bin = root().join("target/release/meridian-edge");
    eprintln!(
        "\nMeridian edge starting.\n  WebSocket (automerge-repo): ws://127.0.0.1:7300/sync\n  Metrics: http://127.0.0.1:7300/metrics\n  Data: {}\nPoint an automerge-repo app at it:\n  new Repo({{ network: [new WebSocketClientAdapter(\"ws://127.0.0.1:7300/sync\")] }})\nPress Ctrl-C to stop.\n",
        data.display()
    );
    let status = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:7300", "--data"])
        .arg(&data)
        .status()
        .context("starting meridian-edge")?;
    // Ctrl-C reaches the edge too; it shuts down cleanly and exits.
    if !status.success() && status.code().is_some() {
        bail!("meridian-edge exited with {status}");
    }
    Ok(())
}
