//! `cargo xtask demo --cloud`: the demo's cloud tier as two hubs on
//! PostgreSQL with the NATS bus between them (issue 16), instead of one hub
//! on SQLite. PostgreSQL (Debian's) and nats-server run as children of the
//! demo, with their data in `demo-data/pg` and `demo-data/nats`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::supervise::Supervisor;
use crate::{ensure_debian, ensure_postgres, is_root, run};

/// PostgreSQL's port, NATS's, and the second hub's QUIC and HTTP ports.
pub const PG_PORT: u16 = 7440;
pub const NATS_PORT: u16 = 7442;
pub const HUB2_QUIC: u16 = 7404;
pub const HUB2_HTTP: u16 = 7405;

/// The database and bus URLs the hubs are given.
pub fn store_url() -> String {
    format!("postgres://postgres@127.0.0.1:{PG_PORT}/meridian")
}

pub fn bus_url() -> String {
    format!("nats://127.0.0.1:{NATS_PORT}")
}

/// Starts PostgreSQL and NATS for the demo (installing them first as root,
/// else stopping with the command to run), as services of `sup`.
pub fn start_services(data: &Path, sup: &mut Supervisor) -> Result<()> {
    ensure_postgres()?;
    ensure_debian(&["nats-server"], &["nats-server"], "cargo xtask demo --cloud")?;
    start_postgres(&data.join("pg"), sup)?;
    let nats_dir = data.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let mut nats = Command::new("nats-server");
    nats.args(["-a", "127.0.0.1", "-p", &NATS_PORT.to_string(), "-js", "-sd"]).arg(&nats_dir);
    nats.arg("-l").arg(nats_dir.join("nats.log"));
    sup.spawn_service("nats-server", &mut nats)?;
    sup.wait_port("nats-server", NATS_PORT)
}

/// Debian keeps PostgreSQL's programs in `/usr/lib/postgresql/N/bin`
/// (off `PATH`); the newest version's.
pub(crate) fn pg_bin(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .or_else(|| crate::js::which(name))
        .with_context(|| format!("{name} not found (PostgreSQL is not installed)"))
}

/// `program` as the owner of the cluster: PostgreSQL refuses to run as root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_postgres(dir: &Path, sup: &mut Supervisor) -> Result<()> {
    let cluster = dir.join("data");
    if !cluster.join("PG_VERSION").exists() {
        std::fs::create_dir_all(dir)?;
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir))?;
        }
        let mut init = as_owner(&pg_bin("initdb")?);
        init.arg("-D").arg(&cluster).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        run(&mut init)?;
    }
    let mut postgres = as_owner(&pg_bin("postgres")?);
    postgres
        .arg("-D")
        .arg(&cluster)
        .args(["-p", &PG_PORT.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .stderr(log_file(&dir.join("postgres.log"))?);
    sup.spawn_service("postgres", &mut postgres)?;
    sup.wait_port("PostgreSQL", PG_PORT)?;
    // The demo's database, once.
    let psql = pg_bin("psql")?;
    let exists = Command::new(&psql)
        .args(["-h", "127.0.0.1", "-p", &PG_PORT.to_string(), "-U", "postgres", "-tAc"])
        .arg("SELECT 1 FROM pg_database WHERE datname = 'meridian'")
        .output()
        .context("running psql")?;
    if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
        let out = Command::new(&psql)
            .args(["-h", "127.0.0.1", "-p", &PG_PORT.to_string(), "-U", "postgres", "-c", "CREATE DATABASE meridian"])
            .output()?;
        if !out.status.success() {
            bail!("could not create the demo database: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// A log file for a service's own output (appended to, readable by the
/// `postgres` user the server runs as).
fn log_file(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(file)
}

/// Gives the second hub the first one's certificate, so edges trust both
/// with one CA file (hubs of one tier share it).
pub fn share_certificate(from: &Path, to: &Path) -> Result<()> {
    let tls = to.join("tls");
    std::fs::create_dir_all(&tls)?;
    for f in ["ca.pem", "hub-cert.pem", "hub-key.pem"] {
        std::fs::copy(from.join("tls").join(f), tls.join(f))
            .with_context(|| format!("copying {f} to {}", tls.display()))?;
    }
    Ok(())
}
