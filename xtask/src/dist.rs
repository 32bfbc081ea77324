//! `cargo xtask dist`: `meridian-edge` and `meridian-hub` for x86_64 and
//! aarch64 Linux, statically linked against musl, stripped (the
//! `dist-release` profile), with SHA-256 sums, in `target/dist/`. Built with what this
//! machine's registries offer: rustup's musl targets, and zig (PyPI's
//! `ziglang`) as the C compiler and linker through `cargo-zigbuild`
//! (crates.io) — jemalloc, SQLite and ring's C parts included.
//!
//! Then, unless `--no-qemu-test`: the aarch64 edge runs under
//! `qemu-aarch64-static` (Debian's `qemu-user-static`) and the x86_64 CLI
//! creates, changes and prints a document through it over WebSocket and
//! QUIC, and reads it again after the emulated edge restarted. This runs
//! here and not in `cargo xtask test`: two cross release builds take longer
//! on 2 cores than CI's budget allows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{cargo, ensure_debian, is_root, run, target_dir};

/// (rustup target, the name's architecture part).
const TARGETS: [(&str, &str); 2] = [("x86_64-unknown-linux-musl", "x86_64"), ("aarch64-unknown-linux-musl", "aarch64")];
const BINARIES: [&str; 2] = ["meridian-edge", "meridian-hub"];
/// The cargo profile (root Cargo.toml); its host build files go to
/// `target/dist-release/`, so `target/dist/` holds only the results.
const PROFILE: &str = "dist-release";
/// Issue 20's goal for the device binary.
const EDGE_GOAL_BYTES: u64 = 15_000_000;

pub fn run_dist(args: &[String]) -> Result<()> {
    let qemu_test = !args.iter().any(|a| a == "--no-qemu-test");
    if let Some(other) = args.iter().find(|a| *a != "--no-qemu-test") {
        bail!("unknown dist option `{other}` (cargo xtask dist [--no-qemu-test])");
    }
    ensure_tools()?;
    let out = target_dir().join("dist");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut sums = String::new();
    for (target, arch) in TARGETS {
        eprintln!("xtask: building {} for {target} (release, static; a few minutes)…", BINARIES.join(" and "));
        let mut build = cargo();
        build.args(["zigbuild", "--profile", PROFILE, "--target", target]);
        for b in BINARIES {
            build.args(["-p", b]);
        }
        run(&mut build)?;
        for b in BINARIES {
            let built = target_dir().join(target).join(PROFILE).join(b);
            let name = format!("{b}-{arch}-linux-musl");
            let dest = out.join(&name);
            std::fs::copy(&built, &dest).with_context(|| format!("copying {}", built.display()))?;
            let bytes = std::fs::read(&dest)?;
            ensure!(is_static_elf(&bytes), "{name} is not a statically linked ELF binary");
            let sum = sha256_hex(&dest)?;
            sums.push_str(&format!("{sum}  {name}\n"));
            let size = bytes.len() as u64;
            let goal = if b == "meridian-edge" {
                format!(
                    " (goal ≤ {:.0} MB: {})",
                    EDGE_GOAL_BYTES as f64 / 1e6,
                    if size <= EDGE_GOAL_BYTES { "met" } else { "NOT met" }
                )
            } else {
                String::new()
            };
            eprintln!("xtask: {name}: {:.1} MB, static, stripped{goal}", size as f64 / 1e6);
        }
    }
    std::fs::write(out.join("SHA256SUMS"), &sums)?;
    eprintln!("xtask: {} and SHA256SUMS in {}", TARGETS.len() * BINARIES.len(), out.display());
    print!("{sums}");
    if qemu_test {
        qemu_sync_test(&out)?;
    }
    Ok(())
}

/// rustup's musl targets, zig from PyPI, cargo-zigbuild from crates.io,
/// qemu-user-static from Debian: installed when missing (apt as root),
/// otherwise stopped at with the command to run.
fn ensure_tools() -> Result<()> {
    let installed =
        Command::new("rustup").args(["target", "list", "--installed"]).output().context("running rustup")?;
    let installed = String::from_utf8_lossy(&installed.stdout).into_owned();
    for (target, _) in TARGETS {
        if !installed.lines().any(|l| l.trim() == target) {
            run(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    let zig = Command::new("python3").args(["-m", "ziglang", "version"]).output();
    if !zig.is_ok_and(|o| o.status.success()) {
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "ziglang"]);
        if run(&mut pip).is_err() {
            // Debian's python refuses system-wide installs without this.
            run(Command::new("python3").args(["-m", "pip", "install", "--break-system-packages", "ziglang"]))
                .context("zig is needed as the cross C compiler: run `python3 -m pip install ziglang`")?;
        }
    }
    let zigbuild = cargo().args(["zigbuild", "--help"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !zigbuild.is_ok_and(|s| s.success()) {
        run(cargo().args(["install", "cargo-zigbuild"]))?;
    }
    if crate::js::which("qemu-aarch64-static").is_none() && !is_root() {
        eprintln!(
            "xtask: qemu-aarch64-static not found (Debian: qemu-user-static); the ARM test will stop with the command"
        );
    }
    Ok(())
}

/// An ELF file with no program interpreter (`PT_INTERP`): nothing to load
/// at start, so it runs on any Linux of its architecture.
fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| bytes.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    // 64-bit, little-endian ELF.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return false };
    (0..phnum).all(|i| {
        let at = phoff as usize + i * phentsize;
        bytes.get(at..at + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

fn sha256_hex(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output().context("running sha256sum")?;
    ensure!(out.status.success(), "sha256sum {} failed", path.display());
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned())
}

/// The aarch64 edge under qemu, the x86_64 CLI against it.
fn qemu_sync_test(dist: &Path) -> Result<()> {
    ensure_debian(&["qemu-aarch64-static"], &["qemu-user-static"], "the ARM edge test of `cargo xtask dist`")?;
    let edge_arm = dist.join("meridian-edge-aarch64-linux-musl");
    let cli = dist.join("meridian-edge-x86_64-linux-musl");
    let data = std::env::temp_dir().join(format!("meridian-dist-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let started = Instant::now();
    let mut edge = EmulatedEdge::start(&edge_arm, port, &data)?;
    eprintln!("xtask: the aarch64 edge answers under qemu after {:.1} s", started.elapsed().as_secs_f64());
    let ws = format!("ws://127.0.0.1:{port}/sync");
    let quic = format!("quic://127.0.0.1:{port}");
    let ca = data.join("tls/ca.pem");
    let ca = ca.to_str().context("the data path is not UTF-8")?;
    let url = cli_run(&cli, &["--url", &ws, "create", r#"{"device":"arm64","note":"hello"}"#])?;
    ensure!(url.starts_with("automerge:"), "create printed {url:?}");
    cli_run(&cli, &["--url", &quic, "--edge-ca", ca, "append", &url, "note", " from x86_64 over QUIC"])?;
    let printed = cli_run(&cli, &["--url", &ws, "print", &url])?;
    ensure!(printed.contains("hello from x86_64 over QUIC") && printed.contains("arm64"), "printed {printed}");
    // A restart of the emulated edge keeps the document (its SQLite store).
    edge.stop()?;
    let mut edge = EmulatedEdge::start(&edge_arm, port, &data)?;
    let again = cli_run(&cli, &["--url", &ws, "print", &url])?;
    ensure!(again == printed, "after a restart the edge printed {again}, before {printed}");
    edge.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    eprintln!(
        "xtask: ARM test passed in {:.1} s: the aarch64 edge under qemu synced {url} with the x86_64 CLI \
         over WebSocket and QUIC, and kept it across a restart",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the x86_64 CLI (`client ARGS`), 60 s at most; its trimmed stdout.
fn cli_run(cli: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(cli).arg("client").args(["--wait-secs", "30"]).args(args).output()?;
    ensure!(out.status.success(), "client {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct EmulatedEdge(std::process::Child);

impl EmulatedEdge {
    fn start(bin: &PathBuf, port: u16, data: &Path) -> Result<Self> {
        let child = Command::new("qemu-aarch64-static")
            .arg(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting qemu-aarch64-static")?;
        let mut edge = Self(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = edge.0.try_wait()? {
                bail!("the aarch64 edge exited under qemu: {status}");
            }
            ensure!(Instant::now() < deadline, "the aarch64 edge did not listen within 120 s under qemu");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(edge)
    }

    /// SIGTERM, and a clean exit within 60 s.
    fn stop(&mut self) -> Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait()? {
                ensure!(status.success(), "the aarch64 edge exited with {status} on SIGTERM");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the aarch64 edge did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EmulatedEdge {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
