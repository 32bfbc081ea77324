//! What an operator sees when something is wrong at start, and what the CLI
//! does against an edge that is down (issue 20): the real binaries, real
//! sockets on loopback.
//!
//! - QUIC takes the `--listen` port on UDP unless `--quic-listen` says
//!   otherwise, so two edges on one host never collide on a default;
//! - a port in use names its flag, the error is printed once on one line
//!   (no "Caused by", no backtrace even with `RUST_BACKTRACE=1`), the exit
//!   status is 1, and nothing is created on disk;
//! - logs written to a file carry no colour codes;
//! - the CLI against an edge that is down fails within `--wait-secs` with
//!   "cannot reach … (connection refused)", and a write with nowhere to keep
//!   it is an error, not a silent loss.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meridian_tests::process::{EdgeProcess, HubProcess, edge_client, free_port, workspace_binary};

/// Runs a binary to completion, killing it if it is still running after
/// `limit` (a hang fails the test instead of blocking it; not a timing goal).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            anyhow::bail!("still running after {limit:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failed start: exit 1, one line naming `needle` on stderr, no
/// backtrace or Debug chain, and `data` not created.
fn assert_clean_failure(out: &Output, needle: &str, data: &Path) -> Result<()> {
    let err = stderr(out);
    ensure!(out.status.code() == Some(1), "exit status {:?}; stderr: {err}", out.status);
    ensure!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    let error_lines: Vec<&str> =
        err.lines().filter(|l| l.starts_with("meridian-") && l.contains(": error: ")).collect();
    ensure!(error_lines.len() == 1, "the error is printed once, on one line: {err}");
    for noise in ["Caused by", "Backtrace", "stack backtrace", "Os {", "Some("] {
        ensure!(!err.contains(noise), "stderr shows {noise:?}: {err}");
    }
    ensure!(!data.exists(), "{} was created by a start that failed", data.display());
    Ok(())
}

#[test]
fn quic_takes_the_listen_port_and_a_second_edge_on_it_fails_cleanly_naming_the_flag() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _edge = EdgeProcess::start(&dir.path().join("first"), port, &[])?;
    // The QUIC listener is on UDP `port`: binding it here fails.
    let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
    ensure!(udp.is_err(), "nothing listens on UDP {port}: QUIC did not take the --listen port");
    // And devices sync through it over quic:// on that port.
    let ca = dir.path().join("first/tls/ca.pem");
    let quic = format!("quic://127.0.0.1:{port}");
    let ca = ca.to_str().context("path")?;
    let url = edge_client(&["--url", &quic, "--edge-ca", ca, "create", r#"{"n":1}"#])?;
    let printed = edge_client(&["--url", &format!("ws://127.0.0.1:{port}/sync"), "print", &url])?;
    ensure!(printed.contains("\"n\": 1") || printed.contains("\"n\":1"), "{printed}");

    let edge = workspace_binary("meridian-edge")?;
    let second = dir.path().join("second");
    let listen = format!("127.0.0.1:{port}");
    let out = run_bounded(
        Command::new(&edge).args(["serve", "--listen", &listen, "--data"]).arg(&second).env("RUST_BACKTRACE", "1"),
        Duration::from_secs(30),
    )?;
    assert_clean_failure(&out, &format!("cannot bind --listen {listen} (TCP)"), &second)?;
    ensure!(stderr(&out).contains("choose another with --listen"), "{}", stderr(&out));

    // Another TCP port, but the first edge's QUIC port: the UDP flag is named.
    let other = format!("127.0.0.1:{}", free_port()?);
    let out = run_bounded(
        Command::new(&edge)
            .args(["serve", "--listen", &other, "--quic-listen", &listen, "--data"])
            .arg(&second)
            .env("RUST_BACKTRACE", "1"),
        Duration::from_secs(30),
    )?;
    assert_clean_failure(&out, &format!("cannot bind --quic-listen {listen} (UDP)"), &second)
}

#[test]
fn a_hub_whose_port_is_taken_fails_cleanly_and_creates_no_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (quic, http) = (free_port()?, free_port()?);
    let _hub = HubProcess::start(&dir.path().join("first"), quic, http, &[])?;
    let second = dir.path().join("second");
    let hub = workspace_binary("meridian-hub")?;
    let listen = format!("127.0.0.1:{quic}");
    let out = run_bounded(
        Command::new(&hub)
            .args(["serve", "--listen", &listen, "--http", &format!("127.0.0.1:{}", free_port()?), "--data"])
            .arg(&second)
            .env("RUST_BACKTRACE", "1"),
        Duration::from_secs(30),
    )?;
    assert_clean_failure(&out, &format!("cannot bind --listen {listen} (UDP)"), &second)?;
    let http_addr = format!("127.0.0.1:{http}");
    let out = run_bounded(
        Command::new(&hub)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()?), "--http", &http_addr, "--data"])
            .arg(&second),
        Duration::from_secs(30),
    )?;
    assert_clean_failure(&out, &format!("cannot bind --http {http_addr} (TCP)"), &second)
}

#[test]
fn a_data_folder_that_cannot_be_made_says_so_and_hub_needs_a_secret() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder")?;
    let edge = workspace_binary("meridian-edge")?;
    let data = file.join("data");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let out = run_bounded(
        Command::new(&edge).args(["serve", "--listen", &listen, "--data"]).arg(&data),
        Duration::from_secs(30),
    )?;
    assert_clean_failure(&out, &format!("the data folder {} (--data) cannot be created", data.display()), &data)?;

    let fresh = dir.path().join("fresh");
    let out = run_bounded(
        Command::new(&edge)
            .args(["serve", "--listen", &listen, "--hub", "127.0.0.1:9", "--hub-ca", "/nonexistent", "--data"])
            .arg(&fresh),
        Duration::from_secs(30),
    )?;
    assert_clean_failure(&out, "--hub needs --hub-secret", &fresh)
}

#[test]
fn logs_in_a_file_have_no_colour_codes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.path().join("edge.log"))?;
    let mut child = Command::new(workspace_binary("meridian-edge")?)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    // The port is bound before the edge is ready: wait for its last startup line.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while !text.contains("edge listening") && Instant::now() < deadline && child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(20));
        text = std::fs::read_to_string(dir.path().join("edge.log"))?;
    }
    let _ = child.kill();
    let _ = child.wait();
    ensure!(text.contains("edge listening"), "the log holds the startup lines: {text}");
    ensure!(!text.contains('\u{1b}'), "ANSI escape codes in a log file: {text:?}");
    ensure!(!text.contains("Some("), "Debug formatting in the log: {text}");
    ensure!(
        text.contains("this edge's certificate; devices (quic://) and other edges must trust"),
        "the edge names its own certificate: {text}"
    );
    Ok(())
}

#[test]
fn the_cli_against_an_edge_that_is_down_fails_within_wait_secs_saying_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("ws://127.0.0.1:{}/sync", free_port()?);
    let edge = workspace_binary("meridian-edge")?;
    let doc = meridian_protocol::ids::DocumentId::random(&mut rand::rng()).url().to_string();
    let doc = doc.as_str();
    let out = run_bounded(
        Command::new(&edge).args(["client", "--url", &url, "--wait-secs", "2", "print", doc]),
        Duration::from_secs(60),
    )?;
    let err = stderr(&out);
    ensure!(!out.status.success(), "print against a down edge succeeded: {err}");
    ensure!(err.contains(&format!("cannot reach {url} (connection refused)")), "{err}");
    ensure!(err.contains("--wait-secs"), "{err}");

    // A write with no local store: an error saying it was not kept.
    let out = run_bounded(
        Command::new(&edge).args(["client", "--url", &url, "--wait-secs", "2", "create", "{}"]),
        Duration::from_secs(60),
    )?;
    let err = stderr(&out);
    ensure!(!out.status.success(), "a write kept nowhere succeeded: {err}");
    ensure!(err.contains("not saved anywhere"), "{err}");

    // With a local store it is kept, said so, and the URL printed.
    let store = dir.path().join("device.sqlite3");
    let out = run_bounded(
        Command::new(&edge)
            .args(["client", "--url", &url, "--wait-secs", "2", "--store"])
            .arg(&store)
            .args(["create", r#"{"offline":true}"#]),
        Duration::from_secs(60),
    )?;
    let err = stderr(&out);
    ensure!(out.status.success(), "{err}");
    ensure!(err.contains("kept in the local store"), "{err}");
    ensure!(String::from_utf8_lossy(&out.stdout).trim().starts_with("automerge:"), "{err}");
    Ok(())
}

/// Starts `meridian-edge serve --config FILE ARGS` with `env`, waits
/// until one of `ports` answers, and says which.
fn edge_listens_on(file: &Path, data: &Path, args: &[&str], env: &[(&str, String)], ports: &[u16]) -> Result<u16> {
    let mut cmd = Command::new(workspace_binary("meridian-edge")?);
    cmd.args(["serve", "--config"]).arg(file).arg("--data").arg(data).args(args).stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        if let Some(&p) = ports.iter().find(|&&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()) {
            break Ok(p);
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("meridian-edge exited with {status}"));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("meridian-edge listened on none of {ports:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[test]
fn a_config_file_is_read_and_its_environment_variable_and_flag_win_over_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (from_file, from_env, from_flag) = (free_port()?, free_port()?, free_port()?);
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, format!("listen = \"127.0.0.1:{from_file}\"\nmax-connections = 50\n"))?;
    let ports = [from_file, from_env, from_flag];
    let data = dir.path().join("data");
    ensure!(edge_listens_on(&file, &data, &[], &[], &ports)? == from_file, "the file's listen");
    let env = [("MERIDIAN_LISTEN", format!("127.0.0.1:{from_env}"))];
    ensure!(edge_listens_on(&file, &data, &[], &env, &ports)? == from_env, "the environment wins over the file");
    let flag = format!("127.0.0.1:{from_flag}");
    ensure!(edge_listens_on(&file, &data, &["--listen", &flag], &env, &ports)? == from_flag, "the flag wins over both");

    // `config example` prints a file `serve --config` takes.
    let out = Command::new(workspace_binary("meridian-edge")?).args(["config", "example"]).output()?;
    ensure!(out.status.success(), "{}", stderr(&out));
    let example = String::from_utf8(out.stdout)?;
    ensure!(example.contains("# listen = \"127.0.0.1:7300\""), "{example}");
    std::fs::write(dir.path().join("bad.toml"), "lisen = \"127.0.0.1:1\"\n")?;
    let out = run_bounded(
        Command::new(workspace_binary("meridian-edge")?).args(["serve", "--config"]).arg(dir.path().join("bad.toml")),
        Duration::from_secs(30),
    )?;
    ensure!(!out.status.success() && stderr(&out).contains("unknown key `lisen`"), "{}", stderr(&out));
    Ok(())
}
