//! `cargo xtask <command>`: the project's set-up and workflows, in Rust
//! rather than shell scripts.
//!
//! - `cargo xtask demo`  — build and start a local hub, three regional
//!   edges with simulated latency to the hub, and the collaborative editor
//!   (one URL per region), with their data under `./demo-data`.
//! - `cargo xtask test`  — install what the tests need (npm packages, the
//!   wasm target), then run every test and the wasm build check.
//! - `cargo xtask sim-sweep` — the long simulation seed sweep.
//! - `cargo xtask chaos` — the chaos campaign on the regional cluster.
//! - `cargo xtask dist` — static release binaries for x86_64 and aarch64
//!   Linux in `target/dist/`, and the ARM edge tested under qemu.
//! - `cargo xtask bench` — every benchmark scenario against `meridian-edge`
//!   and the JS sync server, side by side (`docs/BENCHMARKS.md`); `bench
//!   big-doc` — a few-thousand-change document to a fresh JS peer.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <command>

Commands:
  demo [--debug] [--cloud] [--data DIR] [--no-build]
              build and start the local cluster: a hub, three regional edges (eu, us, ap) with
              simulated latency to the hub, and the collaborative editor, one URL per region
              (data in ./demo-data, logs in ./demo-data/logs; --debug: debug builds of the
              binaries and the browser package). --cloud: two hubs on PostgreSQL with the NATS
              bus (started too, data in ./demo-data/pg and nats), each edge given both (hub 2
              is its fail-over). Checks its ports first; Ctrl-C, SIGTERM or any process of it
              exiting stops everything (also if xtask is killed). --no-build: use what is built
  test        install test prerequisites and run every test
  sim-sweep   run the deterministic simulation over many seeds (MERIDIAN_SIM_SEEDS, default 5000)
  chaos [--seconds S] [--seed N] [--docs K] [--no-js] [--faults K,..] [--json FILE]
              the chaos campaign (issue 17): random partitions, one-way losses, kill -9 of edges
              and the hub, corrupted chunks on the regional cluster while native and JS
              automerge-repo clients write; then every acknowledged change is looked for on every
              node; prints detect/recover times per fault (default 300 s, seed 1)
  bench [SCENARIO...] [--smoke] [--rounds R]
              meridian-edge vs the JS automerge-repo sync server, side by side (issue 7): connect,
              fanout, writers, typing (real automerge-repo clients typing into one text), large-doc,
              stored, attacks (a well-behaved client during six attacks)
              (default: all, then big-doc); writes docs/BENCHMARKS.md
  bench placement [--writes N] [--docs K] [--smoke]
              placement on vs hub-only on the simulated regions (hub in us; eu, us, ap edges):
              change -> durable at the document's home and cold opens, p50/p99 (issue 6)
  bench cloud [--writes N] [--seconds S] [--smoke]
              the cloud tier (issue 16): propagation edge A -> hub(s) -> edge B on one hub with
              SQLite, one hub with PostgreSQL, two hubs on PostgreSQL + NATS (p50/p99); durable
              writes per second of the hub store, SQLite vs PostgreSQL
  bench cost [--smoke]
              the edge's instructions per operation (connection accepted, durable write, change
              per watcher, document opened from storage), counted by callgrind (needs valgrind);
              adds this commit's row to docs/BENCHMARKS.md (issue 19)
  bench browser [--ops N] [--reloads R] [--edits E] [--smoke]
              the browser's own path in headless Chromium: a large text (default 300,000
              operations) opened from IndexedDB after a reload and a remote edit applied,
              @meridian/client against @automerge/automerge in the same page; writes its table
              into docs/BENCHMARKS.md (issue 19)
  bench big-doc [--changes N] [--rounds R] [--smoke]
              time for an N-change document (default 3000) to reach a fresh JS peer through
              meridian-edge vs the JS automerge-repo sync server, alternating R rounds (default 7)
  dist [--no-qemu-test]
              meridian-edge and meridian-hub for x86_64 and aarch64 Linux: static (musl), stripped,
              with SHA256SUMS, in target/dist/ (zig from PyPI via cargo-zigbuild); then the aarch64
              edge runs under qemu-aarch64-static and the x86_64 CLI syncs a document through it
  build-js [--dev]
              build the browser package @meridian/client into client-wasm/pkg
  test-js     build @meridian/client and run only its tests (Node, Chromium, edge end-to-end)
  help        print this help
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => DemoOptions::parse(&args[1..]).and_then(demo),
        Some("test") => test(&args[1..]),
        Some("sim-sweep") => sim_sweep(),
        Some("chaos") => chaos(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("build-js") => js::build(&args[1..]),
        Some("dist") => dist::run_dist(&args[1..]),
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
mod bench_browser;
mod bench_cost;
mod bench_placement;
mod cloud;
mod dist;
mod js;
mod supervise;

pub(crate) fn root() -> PathBuf {
    // `cargo run` sets it at run time too: that one names this checkout even
    // when a binary built from another checkout sharing the target folder
    // (same sources, so not rebuilt) is run.
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Cargo's target folder (`CARGO_TARGET_DIR` if set).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The test build: binaries built together with the tests so the features
/// resolve once (`--bins` alone resolves without the dev-dependencies, and
/// every crate sharing one would be built twice: twice the time and the
/// disk). Debug builds of the demo and the benchmarks' smoke runs use the
/// same selection, so they rebuild nothing after it.
pub(crate) const TEST_BUILD: [&str; 7] =
    ["build", "--bins", "--tests", "--examples", "--workspace", "--exclude", "meridian-client-wasm"];

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Makes sure Debian `packages` are installed when one of `programs` is
/// missing: as root with apt-get, otherwise it stops at once with the
/// command to run.
pub(crate) fn ensure_debian(programs: &[&str], packages: &[&str], why: &str) -> Result<()> {
    if programs.iter().all(|p| js::which(p).is_some()) {
        return Ok(());
    }
    install_debian(packages, why)
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs Debian `packages` as root, or stops with the command to run.
fn install_debian(packages: &[&str], why: &str) -> Result<()> {
    let install = format!("apt-get update && apt-get install -y {}", packages.join(" "));
    if !is_root() {
        bail!("{why} need {}; run: sudo sh -c '{install}'", packages.join(" "));
    }
    eprintln!("xtask: installing {} ({why})", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-qq"]).args(packages))
}

/// Debian's Chromium and ChromeDriver for the browser tests (no browser is
/// downloaded).
pub(crate) fn ensure_chromium() -> Result<()> {
    ensure_debian(&["chromium", "chromedriver"], &["chromium", "chromium-driver"], "the browser tests")
}

/// PostgreSQL for the store tests (Debian keeps its programs in
/// `/usr/lib/postgresql/N/bin`, off `PATH`); the tests make their own
/// clusters.
fn ensure_postgres() -> Result<()> {
    if cloud::pg_bin("initdb").is_ok() {
        return Ok(());
    }
    install_debian(&["postgresql"], "the PostgreSQL store tests")
}

/// npm packages for the interop tests (the real JS automerge-repo).
pub(crate) fn ensure_npm() -> Result<()> {
    let dir = root().join("tests/js");
    if !have("npm", "--version") {
        ensure_debian(&["node", "npm"], &["nodejs", "npm"], "the JS interop tests")?;
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

/// Everything the tests need from Debian, checked before anything is
/// built: what is missing is installed in one `apt-get` as root, or named
/// with the exact command to run.
fn test_prerequisites() -> Result<()> {
    let mut missing: Vec<(&str, &str)> = Vec::new();
    let mut need = |programs: &[&str], packages: &'static [&'static str], why: &'static str| {
        if !programs.iter().all(|p| js::which(p).is_some()) {
            missing.extend(packages.iter().map(|p| (*p, why)));
        }
    };
    need(&["node", "npm"], &["nodejs", "npm"], "the JS interop tests");
    need(&["chromium", "chromedriver"], &["chromium", "chromium-driver"], "the browser tests");
    need(&["nats-server"], &["nats-server"], "the hub bus tests");
    need(&["promtool"], &["prometheus"], "the tests of deploy/'s alert rules");
    if cloud::pg_bin("initdb").is_err() {
        missing.push(("postgresql", "the PostgreSQL store tests"));
    }
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
        let mut why: Vec<&str> = missing.iter().map(|(_, w)| *w).collect();
        why.dedup();
        install_debian(&packages, &why.join(", "))?;
    }
    check_disk_space()
}

/// About what a test build from scratch takes in the target folder (debug
/// binaries and tests, the wasm builds, the benchmarks' smoke runs): 7.1 GiB
/// measured on 2026-12-07, with room to spare.
const TEST_BUILD_GIB: u64 = 10;

/// Stops at once if the target folder's disk cannot hold the test build
/// (less what is already built there), instead of failing with "No space
/// left on device" after many minutes of building.
fn check_disk_space() -> Result<()> {
    let target = target_dir();
    let probe = if target.exists() { target.clone() } else { root() };
    let kib = |out: std::process::Output| -> Option<u64> {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().last()?.split_whitespace().nth(3)?.parse().ok()
    };
    let Some(free_kib) = Command::new("df").args(["-Pk"]).arg(&probe).output().ok().and_then(kib) else {
        return Ok(()); // no df: nothing to check with
    };
    let built_kib: u64 = Command::new("du")
        .args(["-sk"])
        .arg(&target)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let needed_kib = (TEST_BUILD_GIB << 20).saturating_sub(built_kib).max(2 << 20);
    if free_kib < needed_kib {
        bail!(
            "only {:.1} GiB free on the disk holding {} and the test build needs about {:.1} GiB more: \
             free some space (`cargo clean` removes old builds) or point CARGO_TARGET_DIR elsewhere",
            free_kib as f64 / (1 << 20) as f64,
            target.display(),
            needed_kib as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    test_prerequisites()?;
    ensure_npm()?;
    ensure_wasm_target()?;
    // The browser package: the browser and JS-compatibility tests load it.
    js::build(&[])?;
    js::ensure_test_npm()?;
    // The protocol crate (and the browser binding) must build for wasm32.
    run(cargo().args([
        "build",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "meridian-protocol",
        "-p",
        "meridian-client-wasm",
    ]))?;
    // Integration tests start the real binaries.
    run(cargo().args(TEST_BUILD))?;
    if have("cargo-nextest", "--version") || have("cargo", "nextest") {
        run(cargo().args(["nextest", "run", "--workspace", "--exclude", "meridian-client-wasm"]).args(extra))?;
    } else {
        run(cargo().args(["test", "--workspace", "--exclude", "meridian-client-wasm"]).args(extra))?;
    }
    // nextest does not run doctests.
    run(cargo().args(["test", "--doc", "-p", "meridian-protocol", "-p", "meridian-node", "-p", "meridian-edge"]))?;
    js::test()?;
    // Keep the benchmark harness from rotting: tiny sizes, no timing goals.
    bench::run(&["--smoke".into()])?;
    bench_cost::smoke()?;
    bench_browser::run(&["--smoke".into()])?;
    bench::run(&["cloud".into(), "--smoke".into()])
}

/// The chaos campaign: the node binaries and `meridian-chaos`, then a run.
fn chaos(args: &[String]) -> Result<()> {
    if !args.iter().any(|a| a == "--no-js") {
        js::ensure_test_npm()?;
    }
    run(cargo().args(["build", "-p", "meridian-edge", "-p", "meridian-hub", "--bins"]))?;
    run(cargo().args(["run", "-p", "meridian-tests", "--bin", "meridian-chaos", "--"]).args(args))
}

fn sim_sweep() -> Result<()> {
    let seeds = std::env::var("MERIDIAN_SIM_SEEDS").unwrap_or_else(|_| "5000".into());
    run(cargo().env("MERIDIAN_SIM_SEEDS", seeds).args([
        "test",
        "--release",
        "-p",
        "meridian-tests",
        "--test",
        "sim_convergence",
    ]))
}

/// The regions of the local cluster: (id, edge WebSocket port, edge QUIC
/// port for devices, edge QUIC port for other edges, demo site port,
/// latency link port to the hub, one-way delay to the hub in ms). The hub
/// is "in" `us`; the delays are DESIGN.md §7's example geography.
const REGIONS: [(&str, u16, u16, u16, u16, u16, u64); 3] = [
    ("eu", 7300, 7302, 7303, 7380, 7391, 40),
    ("us", 7310, 7312, 7313, 7381, 7392, 5),
    ("ap", 7320, 7322, 7323, 7382, 7393, 90),
];

/// With --cloud, the port of a region's latency link to the second hub
/// (its link to the first is `link`: 7391-7393 -> 7394-7396).
fn hub2_link(link: u16) -> u16 {
    link + REGIONS.len() as u16
}

/// One-way delay between two regions' edges, in ms.
fn edge_delay(a: &str, b: &str) -> u64 {
    match (a.min(b), a.max(b)) {
        ("eu", "us") => 40,
        ("ap", "us") => 90,
        ("ap", "eu") => 120,
        _ => 0,
    }
}

/// The UDP port of the latency link from edge `from` to edge `to`.
fn peer_link_port(from: usize, to: usize) -> u16 {
    7410 + (from * REGIONS.len() + to) as u16
}

/// `cargo xtask demo` options.
#[derive(Debug, Default)]
struct DemoOptions {
    /// Debug builds (binaries and the browser package) instead of release.
    debug: bool,
    /// Two hubs on PostgreSQL with NATS.
    cloud: bool,
    /// Use what is built (the tests: the test build made it).
    no_build: bool,
    /// The data folder (default `./demo-data`).
    data: Option<PathBuf>,
}

impl DemoOptions {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--debug" => o.debug = true,
                "--cloud" => o.cloud = true,
                "--no-build" => o.no_build = true,
                "--data" => o.data = Some(it.next().context("--data needs a folder")?.into()),
                other => bail!("unknown demo option `{other}`\n\n{HELP}"),
            }
        }
        Ok(o)
    }
}

/// Every port the demo binds (port, tcp|udp, what), checked first.
fn demo_ports(cloud: bool) -> Vec<(u16, &'static str, String)> {
    let mut ports = vec![(7400, "udp", "hub QUIC".to_owned()), (7401, "tcp", "hub HTTP".to_owned())];
    for (id, ws, quic, peer, site, link, _) in REGIONS {
        ports.push((ws, "tcp", format!("{id} edge")));
        ports.push((quic, "udp", format!("{id} edge QUIC")));
        ports.push((peer, "udp", format!("{id} edge peer link")));
        ports.push((site, "tcp", format!("{id} editor site")));
        ports.push((link, "udp", format!("{id} latency link to the hub")));
        if cloud {
            ports.push((hub2_link(link), "udp", format!("{id} latency link to hub2")));
        }
    }
    for i in 0..REGIONS.len() {
        for j in (0..REGIONS.len()).filter(|&j| j != i) {
            ports.push((peer_link_port(i, j), "udp", "edge-to-edge latency link".to_owned()));
        }
    }
    if cloud {
        ports.push((cloud::HUB2_QUIC, "udp", "hub2 QUIC".to_owned()));
        ports.push((cloud::HUB2_HTTP, "tcp", "hub2 HTTP".to_owned()));
        ports.push((cloud::PG_PORT, "tcp", "PostgreSQL".to_owned()));
        ports.push((cloud::NATS_PORT, "tcp", "NATS".to_owned()));
    }
    ports
}

fn demo(opts: DemoOptions) -> Result<()> {
    let DemoOptions { debug, cloud, .. } = opts;
    let profile = if debug { "debug" } else { "release" };
    let ports = demo_ports(cloud);
    let named: Vec<(u16, &str, &str)> = ports.iter().map(|(p, proto, what)| (*p, *proto, what.as_str())).collect();
    supervise::check_ports(&named)?;
    if !opts.no_build {
        // The browser package the editor imports (a no-op when it is current).
        eprintln!("xtask: building the browser package @meridian/client ({})…", if debug { "dev" } else { "release" });
        let dev = if debug { vec!["--dev".to_owned()] } else { Vec::new() };
        js::build(&dev)?;
        let mut build = cargo();
        if debug {
            // What the test build built: nothing to rebuild after it.
            build.args(TEST_BUILD);
        } else {
            build.args(["build", "--release", "--bins", "--workspace", "--exclude", "meridian-client-wasm"]);
        }
        eprintln!("xtask: building the binaries ({profile}; the first build takes several minutes)…");
        run(&mut build)?;
    }
    let data = opts.data.clone().unwrap_or_else(|| root().join("demo-data"));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let secrets = demo_secrets(&data)?;
    let bin = |name: &str| target_dir().join(profile).join(name);
    // Auth on, as in production: the site mints each page's token with the
    // private key; the hub and the edges check them with the public one.
    let keys = data.join("auth");
    if !keys.join("auth-private.pem").exists() {
        let mut keygen = Command::new(bin("meridian-edge"));
        run(keygen.args(["auth", "keygen", "--out"]).arg(&keys))?;
    }
    let public = keys.join("auth-public.pem");
    let mut sup = supervise::Supervisor::new(&data)?;
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("xtask: starting {what}… ({:.1} s)", started.elapsed().as_secs_f64());
    // --cloud: PostgreSQL and NATS first, for two hubs on them.
    if cloud {
        step("PostgreSQL and NATS");
        cloud::start_services(&data, &mut sup)?;
    }
    let hub_cmd = |id: &str, quic: u16, http: u16, dir: &str| {
        let mut cmd = Command::new(bin("meridian-hub"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{quic}"), "--http", &format!("127.0.0.1:{http}")])
            .arg("--data")
            .arg(data.join(dir))
            .arg("--auth-public-key")
            .arg(&public);
        for (id, secret) in &secrets {
            cmd.args(["--edge", &format!("{id}={secret}")]);
        }
        // Documents move to the edge nearest their writers (after catching
        // up). With --cloud, the hub holding the placer's lease does.
        cmd.args(["--placement-moves", "--placement-dwell-secs", "10"]);
        if cloud {
            cmd.args(["--store", &cloud::store_url(), "--bus", &cloud::bus_url(), "--hub-id", id, "--feed"]);
        }
        cmd
    };
    step("the hub");
    sup.spawn("hub", &mut hub_cmd("h1", 7400, 7401, "hub"))?;
    sup.wait_file(&data.join("hub/tls/ca.pem"))?;
    sup.wait_port("the hub", 7401)?;
    if cloud {
        if !data.join("hub2/tls/ca.pem").exists() {
            cloud::share_certificate(&data.join("hub"), &data.join("hub2"))?;
        }
        step("hub2");
        sup.spawn("hub2", &mut hub_cmd("h2", cloud::HUB2_QUIC, cloud::HUB2_HTTP, "hub2"))?;
        sup.wait_port("hub2", cloud::HUB2_HTTP)?;
    }
    // The web sites and the edge-to-hub latency links.
    let mut front = Command::new(bin("meridian-demo"));
    front.arg("--web").arg(root().join("demo-web/web")).arg("--pkg").arg(js::pkg_dir());
    front.arg("--auth-key").arg(keys.join("auth-private.pem"));
    for (id, ws, _, _, site, link, delay) in REGIONS {
        front.args(["--site", &format!("{id}=127.0.0.1:{site}=127.0.0.1:{ws}")]);
        front.args(["--link", &format!("{id}=127.0.0.1:{link}=127.0.0.1:7400={delay}")]);
        if cloud {
            // The second hub is as far from each region as the first.
            let to_hub2 = format!("{id}-h2=127.0.0.1:{}=127.0.0.1:{}={delay}", hub2_link(link), cloud::HUB2_QUIC);
            front.args(["--link", &to_hub2]);
        }
    }
    for (i, (a, ..)) in REGIONS.iter().enumerate() {
        for (j, (b, _, _, peer, ..)) in REGIONS.iter().enumerate().filter(|(j, _)| *j != i) {
            let (port, delay) = (peer_link_port(i, j), edge_delay(a, b));
            front.args(["--link", &format!("{a}-{b}=127.0.0.1:{port}=127.0.0.1:{peer}={delay}")]);
        }
    }
    step("the editor sites and latency links");
    sup.spawn("demo", &mut front)?;
    sup.wait_port("the editor sites", REGIONS[2].4)?;
    // Every edge prefers the first hub; with --cloud the second is its
    // fail-over (kill the first to watch them move).
    let hubs = |link: u16| {
        if cloud { format!("127.0.0.1:{link},127.0.0.1:{}", hub2_link(link)) } else { format!("127.0.0.1:{link}") }
    };
    for (i, ((id, ws, quic, peer, _, link, _), (_, secret))) in REGIONS.iter().zip(&secrets).enumerate() {
        let mut edge = Command::new(bin("meridian-edge"));
        edge.args(["serve", "--listen", &format!("127.0.0.1:{ws}"), "--quic-listen", &format!("127.0.0.1:{quic}")])
            .args(["--peer-id", &format!("edge-{id}"), "--data"])
            .arg(data.join(id))
            .args(["--hub", &hubs(*link), "--edge-id", id, "--hub-secret", secret, "--hub-ca"])
            .arg(data.join("hub/tls/ca.pem"))
            // Other edges reach this one directly when it is a document's
            // home; it reaches them through the latency links.
            .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
            .arg("--auth-public-key")
            .arg(&public);
        for (j, (other, ..)) in REGIONS.iter().enumerate().filter(|(j, _)| *j != i) {
            edge.args(["--peer-route", &format!("{other}=127.0.0.1:{}", peer_link_port(i, j))]);
        }
        step(&format!("the {id} edge"));
        sup.spawn(id, &mut edge)?;
    }
    for (id, ws, ..) in REGIONS {
        sup.wait_port(&format!("the {id} edge"), ws)?;
    }
    eprintln!(
        "\nMeridian local cluster ready in {:.1} s (data in {}):\n",
        started.elapsed().as_secs_f64(),
        data.display()
    );
    eprintln!("  Open the editor, one URL per region (each its own browser storage, like separate people):");
    for (id, _, _, _, site, _, delay) in REGIONS {
        eprintln!("    {id:<3} http://127.0.0.1:{site}/      (edge ↔ hub: {delay} ms each way)");
    }
    eprintln!("  Edge ↔ edge: eu–us 40 ms, us–ap 90 ms, eu–ap 120 ms each way. Documents move to the edge nearest");
    eprintln!("  their writers (the hub's placement; see each page's \"where this document lives\" panel).");
    eprintln!("\n  hub   QUIC 127.0.0.1:7400, metrics http://127.0.0.1:7401/metrics");
    // The operator console asks for an admin token: one for the demo.
    let token = Command::new(bin("meridian-hub"))
        .args(["auth", "token", "--admin", "--ttl", "12h", "--sub", "demo-operator", "--key"])
        .arg(keys.join("auth-private.pem"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    eprintln!("  operator console http://127.0.0.1:7401/console");
    if let Some(token) = token {
        eprintln!("    admin token (12 h): {token}");
    }
    if cloud {
        eprintln!("  hub2  QUIC 127.0.0.1:{}, metrics http://127.0.0.1:{}/metrics", cloud::HUB2_QUIC, cloud::HUB2_HTTP);
        eprintln!("  Both hubs keep documents in {} and share commits over {}.", cloud::store_url(), cloud::bus_url());
        eprintln!("  Every edge uses hub (h1) and fails over to hub2 (h2): stop h1 and watch /info's \"hub\" move.");
    }
    for (id, ws, quic, ..) in REGIONS {
        eprintln!(
            "  {id:<5} ws://127.0.0.1:{ws}/sync   quic://127.0.0.1:{quic}   metrics http://127.0.0.1:{ws}/metrics"
        );
    }
    eprintln!("\n  Auth is on: each site mints its pages' tokens (the share panel has edit and read-only links).");
    eprintln!("  Any automerge-repo app can use an edge with a token:");
    eprintln!(
        "    meridian-edge auth token --key {} --write '*' --create --ttl 1h",
        keys.join("auth-private.pem").display()
    );
    eprintln!("    new Repo({{ network: [new WebSocketClientAdapter(\"ws://127.0.0.1:7300/sync?token=\" + token)] }})");
    eprintln!(
        "\nLogs: warnings only, each line prefixed with its process (all of it in {}); \
         `RUST_LOG=info cargo xtask demo` shows everything. Press Ctrl-C to stop.\n",
        data.join("logs").display()
    );
    // Until Ctrl-C or SIGTERM (Ok), or a child exits (its error); either
    // way every child is stopped when `sup` goes.
    sup.run()
}

/// Waits (30 s at most) until something accepts TCP connections on the port.
pub(crate) fn wait_port(port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port}; see the log above")
}

/// One secret per edge, created on the first run and kept.
fn demo_secrets(data: &Path) -> Result<Vec<(String, String)>> {
    let path = data.join("edge-secrets");
    if !path.exists() {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let lines: Vec<String> = REGIONS
            .iter()
            .enumerate()
            .map(|(i, (id, ..))| {
                format!(
                    "{id}={:x}{:x}",
                    seed.wrapping_mul(6364136223846793005).wrapping_add(i as u128),
                    std::process::id()
                )
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(a, b)| (a.to_owned(), b.to_owned())).collect())
}
