//! `cargo xtask build-js`: builds the browser package `@meridian/client`
//! into `client-wasm/pkg/`, and the client's own tests (Node import test,
//! wasm-bindgen-test in headless Chromium).
//!
//! Steps: `cargo build --profile wasm-release --target wasm32-unknown-unknown
//! -p meridian-client-wasm` (release, tuned for size); `wasm-bindgen --target web` (installed at the
//! version pinned in the root `Cargo.toml` if missing); `wasm-opt -Oz` from
//! the npm `binaryen` package (skipped, with a message, if npm cannot
//! provide it); then the hand-written `index.js`, `index.d.ts`,
//! `package.json` and `README.md` from `client-wasm/js/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, root, run};

const CRATE: &str = "meridian-client-wasm";
const WASM_NAME: &str = "meridian_client_wasm";

fn client_dir() -> PathBuf {
    root().join("client-wasm")
}

pub fn pkg_dir() -> PathBuf {
    client_dir().join("pkg")
}

/// `cargo xtask build-js [--dev]`: `--dev` skips the release profile and
/// wasm-opt (a quicker, larger build for iterating).
pub fn build(args: &[String]) -> Result<()> {
    let dev = args.iter().any(|a| a == "--dev");
    crate::ensure_wasm_target()?;
    let bindgen = ensure_wasm_bindgen()?;
    // `wasm-release` (root Cargo.toml): release tuned for size.
    let profile = if dev { "debug" } else { "wasm-release" };
    let mut build = cargo();
    build.args(["build", "--target", "wasm32-unknown-unknown", "-p", CRATE]);
    if !dev {
        build.args(["--profile", profile]);
    }
    run(&mut build)?;
    let wasm = crate::target_dir().join(format!("wasm32-unknown-unknown/{profile}/{WASM_NAME}.wasm"));
    let out = pkg_dir();
    // The same wasm as last time: only refresh the hand-written files.
    let stamp = format!("{profile} {}", fingerprint(&wasm)?);
    if std::fs::read_to_string(out.join(".built-from")).ok().as_deref() == Some(stamp.as_str()) {
        copy_js_files(&out)?;
        eprintln!("xtask: @meridian/client in {} is current", out.display());
        return Ok(());
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    run(Command::new(&bindgen).args(["--target", "web", "--out-dir"]).arg(&out).arg(&wasm))?;
    let bg = out.join(format!("{WASM_NAME}_bg.wasm"));
    if !dev {
        optimize(&bg)?;
    }
    copy_js_files(&out)?;
    report_size(&bg);
    std::fs::write(out.join(".built-from"), stamp)?;
    eprintln!("xtask: @meridian/client built in {}", out.display());
    Ok(())
}

/// The hand-written files of the package, next to what wasm-bindgen writes.
const JS_FILES: &[&str] = &[
    "index.js",
    "node.js",
    "draft.js",
    "repo.js",
    "repo-node.js",
    "index.d.ts",
    "repo.d.ts",
    "package.json",
    "README.md",
];

fn copy_js_files(out: &Path) -> Result<()> {
    for file in JS_FILES {
        std::fs::copy(client_dir().join("js").join(file), out.join(file)).with_context(|| format!("copying {file}"))?;
    }
    Ok(())
}

/// Size and modification time of a build output.
fn fingerprint(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{} was not built", path.display()))?;
    let modified = meta.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(format!("{} {}", meta.len(), modified.as_nanos()))
}

/// The version `wasm-bindgen` is pinned to in the root `Cargo.toml`.
fn pinned_wasm_bindgen() -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("wasm-bindgen = \"="))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .context("root Cargo.toml must pin wasm-bindgen with `=`")
}

/// `wasm-bindgen` (and `wasm-bindgen-test-runner`) at the pinned version,
/// installed with `cargo install` if missing or different.
fn ensure_wasm_bindgen() -> Result<PathBuf> {
    let version = pinned_wasm_bindgen()?;
    let bin_dir = cargo_home().join("bin");
    let bindgen = bin_dir.join("wasm-bindgen");
    let installed =
        Command::new(&bindgen).arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let matches = installed.as_deref().is_some_and(|v| v.split_whitespace().nth(1) == Some(version.as_str()));
    if !matches {
        eprintln!("xtask: installing wasm-bindgen-cli {version} (found: {installed:?})");
        run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            &version,
        ]))?;
    }
    Ok(bindgen)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

/// `wasm-opt -Oz` from npm `binaryen` (Debian's is too old for the
/// features rustc emits). Skipped with a message if npm cannot provide it.
fn optimize(wasm: &Path) -> Result<()> {
    let dir = client_dir();
    let wasm_opt = dir.join("node_modules/.bin/wasm-opt");
    if !wasm_opt.exists() {
        let installed = run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&dir));
        if let Err(e) = installed {
            eprintln!("xtask: wasm-opt skipped: npm could not install `binaryen` ({e:#}); the package is unoptimized");
            return Ok(());
        }
    }
    let optimized = wasm.with_extension("opt.wasm");
    run(Command::new(&wasm_opt)
        .arg("-Oz")
        .args([
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
        ])
        .arg(wasm)
        .arg("-o")
        .arg(&optimized))?;
    std::fs::rename(&optimized, wasm)?;
    Ok(())
}

fn report_size(wasm: &Path) {
    let raw = std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0);
    let gzipped = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(wasm)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout.len());
    match gzipped {
        Some(gz) => eprintln!("xtask: {}: {raw} bytes raw, {gz} bytes gzipped (-9)", wasm.display()),
        None => eprintln!("xtask: {}: {raw} bytes raw (gzip not found)", wasm.display()),
    }
}

/// The client's own tests; `build` must have run. The end-to-end browser
/// test and the JS automerge-repo compatibility test are Rust tests in the
/// `tests` crate (`browser_client.rs`) and run with the workspace.
pub fn test() -> Result<()> {
    ensure_test_npm()?;
    // Node: the package imports and works without a bundler.
    run(Command::new("node").args(["--test", "client-wasm/tests/node/"]).current_dir(root()))?;
    // wasm-bindgen-test in headless Chromium: IndexedDB store, offline queue.
    let chromedriver = which("chromedriver").context(
        "chromedriver not found: the browser tests need Chromium (Debian: `apt-get install -y chromium chromium-driver`; `cargo xtask test` installs it as root)",
    )?;
    let runner = cargo_home().join("bin/wasm-bindgen-test-runner");
    run(cargo()
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner)
        .env("CHROMEDRIVER", &chromedriver)
        .env("WASM_BINDGEN_TEST_TIMEOUT", "120")
        .args(["test", "--target", "wasm32-unknown-unknown", "-p", CRATE]))
}

/// `cargo xtask test-js`: the package and every test of it, nothing else.
pub fn test_all() -> Result<()> {
    crate::ensure_npm()?;
    crate::ensure_chromium()?;
    build(&[])?;
    test()?;
    run(cargo().args(["test", "-p", "meridian-tests", "--test", "browser_client"]))
}

/// `tests/js` needs playwright-core for the browser end-to-end test; an
/// older checkout's `node_modules` may predate it.
pub fn ensure_test_npm() -> Result<()> {
    let dir = root().join("tests/js");
    if dir.join("node_modules/playwright-core").exists() {
        return Ok(());
    }
    run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&dir))
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}
