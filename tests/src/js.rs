//! Running the node scripts in `tests/js` (the real JS automerge-repo from
//! npm) from Rust tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::workspace_root;

pub fn js_dir() -> PathBuf {
    workspace_root().join("tests/js")
}

/// Fails with instructions if the npm packages are not installed.
pub fn require_node_modules() -> Result<()> {
    if !js_dir().join("node_modules/@automerge/automerge-repo").exists() {
        bail!("npm packages missing: run `cargo xtask test` (or `npm ci` in tests/js) first");
    }
    Ok(())
}

/// Runs `node tests/js/<script> <args>` to completion; returns every JSON
/// line it printed, failing unless the last says `"ok": true`.
pub fn run_script(script: &str, args: &[&str]) -> Result<Vec<Value>> {
    run_script_with_env(script, args, &[])
}

/// [`run_script`] with extra environment variables.
pub fn run_script_with_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Vec<Value>> {
    require_node_modules()?;
    let out = Command::new("node")
        .arg(js_dir().join(script))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running node {script}"))?;
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let last = lines.last().cloned().unwrap_or(Value::Null);
    if !out.status.success() || last.get("ok") != Some(&Value::Bool(true)) {
        bail!(
            "node {script} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            tail(&String::from_utf8_lossy(&out.stderr), 4000)
        );
    }
    Ok(lines)
}

/// The last JSON line of a successful scenario run.
pub fn scenario(url: &str, case: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["--url", url, "--case", case];
    args.extend_from_slice(extra);
    let lines = run_script("scenario.mjs", &args)?;
    lines.last().cloned().context("no output")
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// The reference JS sync server (`server.mjs`), killed on drop.
#[derive(Debug)]
pub struct JsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl JsServer {
    pub fn start() -> Result<Self> {
        require_node_modules()?;
        let dir = tempfile::tempdir()?;
        let mut child = Command::new("node")
            .arg(js_dir().join("server.mjs"))
            .args(["--port", "0", "--dir"])
            .arg(dir.path())
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting node server.mjs")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines.next().context("server.mjs exited before listening")??;
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if let Some(p) = v.get("listening").and_then(Value::as_u64) {
                break p as u16;
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, port, _dir: dir })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

impl Drop for JsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
