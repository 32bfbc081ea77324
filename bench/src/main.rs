//! `meridian-loadgen`: the benchmark load generator (issue 7).
//!
//! It speaks the automerge-repo v1 protocol over WebSocket through the
//! `meridian-protocol` codec, holds thousands of raw clients in one process
//! (replaying sync messages generated before the measurement), and checks
//! convergence with real automerge peers. `suite` starts `meridian-edge`,
//! the reference JS sync server and samod itself and runs every scenario
//! against each, taking turns.
//!
//! ```text
//! meridian-loadgen suite [SCENARIO...] [--smoke] [--rounds R]
//!     [--edge-bin PATH] [--js-server PATH] [--samod-bin PATH] [--results DIR] [--report FILE]
//! ```
//! `cargo xtask bench` builds the binaries and runs this.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

mod peer;
mod report;
mod scenario;
mod server;
mod suite;
mod wire;
mod workload;

const USAGE: &str =
    "usage: meridian-loadgen suite [connect|fanout|writers|typing|large-doc|stored|attacks ...] [--smoke] [--rounds R] [--stored N]
                        [--size N] [--only edge|js|samod]
                        [--edge-bin PATH] [--edge-arg FLAG]... [--js-server PATH] [--samod-bin PATH]
                        [--results DIR] [--report FILE]

  --size N         only the cases of size N (e.g. `fanout --size 1000`)
  --only SERVER    measure one server: edge, js or samod (for profiling; results are not saved)
  --edge-arg FLAG  give meridian-edge serve FLAG too (e.g. --edge-arg --unsafe-no-fsync; repeatable)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) != Some("suite") {
        bail!("{USAGE}");
    }
    let opts = options(&args[1..])?;
    // Two workers: the machine the figures are for has two cores, shared
    // with the server under test.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(suite::run(opts))
}

fn options(args: &[String]) -> Result<suite::Options> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default();
    let mut opts = suite::Options {
        scenarios: Vec::new(),
        smoke: false,
        rounds: None,
        stored: None,
        size: None,
        only: None,
        paths: server::Paths {
            edge_bin: root.join("target/release/meridian-edge"),
            js_server: root.join("tests/js/server.mjs"),
            samod_bin: root.join("target/release/samod-server"),
            edge_args: Vec::new(),
        },
        results: root.join("docs/bench-results"),
        report: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--smoke" => opts.smoke = true,
            "--rounds" => opts.rounds = Some(value()?.parse().context("--rounds expects a number")?),
            "--stored" => opts.stored = Some(value()?.parse().context("--stored expects a number")?),
            "--size" => opts.size = Some(value()?.parse().context("--size expects a number")?),
            "--only" => {
                let tag = value()?;
                opts.only = Some(
                    server::Kind::from_tag(tag)
                        .with_context(|| format!("--only expects edge, js or samod, not {tag}"))?,
                )
            }
            "--edge-bin" => opts.paths.edge_bin = value()?.into(),
            "--edge-arg" => opts.paths.edge_args.push(value()?.clone()),
            "--js-server" => opts.paths.js_server = value()?.into(),
            "--samod-bin" => opts.paths.samod_bin = value()?.into(),
            "--results" => opts.results = value()?.into(),
            "--report" => opts.report = Some(value()?.into()),
            s if s.starts_with("--") => bail!("unknown flag {s}\n{USAGE}"),
            s => opts.scenarios.push(s.to_owned()),
        }
    }
    if opts.scenarios.is_empty() {
        opts.scenarios = suite::SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
    }
    Ok(opts)
}
