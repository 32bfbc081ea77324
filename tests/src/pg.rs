//! A real PostgreSQL server for a test: Debian's `postgresql` binaries,
//! a cluster made with `initdb` in a temporary directory (as the `postgres`
//! user when running as root, since `initdb` refuses root), listening on a
//! free loopback port, stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The directory of the newest installed PostgreSQL's programs
/// (`/usr/lib/postgresql/N/bin`), or `None` to use `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn program(name: &str) -> PathBuf {
    bin_dir().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when we are root.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running PostgreSQL cluster with a database `meridian`.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    /// fsync on (benchmarks); tests run without it, as nothing here
    /// survives the machine.
    durable: bool,
}

impl Postgres {
    /// Makes a cluster and starts it; fails with the command to install
    /// PostgreSQL when it is missing.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// [`Postgres::start`] with PostgreSQL's defaults for durability
    /// (`fsync`, full page writes): for benchmarks against SQLite's.
    pub fn start_durable() -> Result<Self> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self> {
        if !program("initdb").exists() && which("initdb").is_none() {
            bail!(
                "PostgreSQL is missing: run `cargo xtask test` (it installs it as root), or \
                 `sudo apt-get install -y postgresql`"
            );
        }
        let dir = tempfile::Builder::new().prefix("meridian-pg").tempdir()?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown of the cluster directory",
            )?;
        }
        let mut init = as_owner(&program("initdb"));
        init.args(["-D"]).arg(dir.path().join("data")).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        run(init, "initdb")?;
        let port = crate::process::free_port()?;
        let pg = Self { dir, port, durable };
        pg.pg_ctl_start()?;
        pg.wait_ready(Duration::from_secs(30))?;
        let mut admin = postgres::Client::connect(&pg.url_of("postgres"), postgres::NoTls)?;
        admin.batch_execute("CREATE DATABASE meridian")?;
        Ok(pg)
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1{}",
            self.port,
            self.dir.path().display(),
            if self.durable { "" } else { " -c fsync=off -c full_page_writes=off" }
        );
        let mut start = as_owner(&program("pg_ctl"));
        start.arg("-D").arg(&data).args(["-l"]).arg(self.dir.path().join("log")).args(["-o", &options, "-w", "start"]);
        run(start, "pg_ctl start")
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match postgres::Client::connect(&self.url_of("postgres"), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("PostgreSQL did not accept connections: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The test database's URL.
    pub fn url(&self) -> String {
        self.url_of("meridian")
    }

    /// A client of the test database (to check what is stored directly).
    pub fn client(&self) -> Result<postgres::Client> {
        Ok(postgres::Client::connect(&self.url(), postgres::NoTls)?)
    }

    /// Stops the server (`immediate`: as a crash would), keeping its data.
    pub fn stop(&self) -> Result<()> {
        let mut stop = as_owner(&program("pg_ctl"));
        stop.arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "-w", "stop"]);
        run(stop, "pg_ctl stop")
    }

    /// Starts it again after [`Self::stop`], on the same port.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl_start()?;
        self.wait_ready(Duration::from_secs(30))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}
