//! The demo's processes, supervised: whatever happens to `cargo xtask
//! demo`, it leaves nothing running.
//!
//! - Every child runs in one process group of its own (services such as
//!   PostgreSQL in theirs), so a stop reaches all of them and nothing else.
//! - Ctrl-C, SIGTERM and SIGHUP to xtask (or its parent `cargo` going away)
//!   stop the children (SIGTERM, then SIGKILL after [`STOP_WITHIN`]), then
//!   the services, then xtask exits.
//! - If xtask itself is killed (`kill -9`), a watchdog it started — a shell
//!   in a group of its own that polls xtask's pid — terminates the groups.
//! - A child that exits while the demo runs (or before it is ready) stops
//!   the demo at once: its last log lines are shown and xtask exits 1.
//! - Each child's stderr is shown prefixed with its name and kept in
//!   `DATA/logs/NAME.log`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a child may take to stop after SIGTERM before SIGKILL.
pub const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Lines of a child's log kept to show when it fails.
const TAIL_LINES: usize = 20;

/// Set by the signal handler; polled by every wait.
static STOP: AtomicBool = AtomicBool::new(false);

/// xtask's parent when the supervisor started (cargo, for `cargo xtask`).
static PARENT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Ctrl-C, SIGTERM or SIGHUP arrived, or xtask's parent is gone (`cargo`
/// killed: xtask would be left running with everything it started).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst) || PARENT.get().is_some_and(|&p| std::os::unix::process::parent_id() != p)
}

/// One supervised process.
struct Proc {
    name: String,
    child: std::process::Child,
    /// A service the others use (PostgreSQL, NATS): stopped after them.
    service: bool,
    /// The last lines of its stderr (services: none, they log to files).
    tail: Arc<Mutex<VecDeque<String>>>,
    log: Option<PathBuf>,
}

/// The demo's children and the watchdog that outlives xtask.
pub struct Supervisor {
    procs: Vec<Proc>,
    logs: PathBuf,
    /// The process group of the non-service children (the first one's pid).
    group: Option<u32>,
    /// Every process group to stop, one per line (the watchdog reads it).
    groups_file: PathBuf,
    watchdog: Option<std::process::Child>,
    /// Show children's stderr on the terminal.
    echo: bool,
}

impl Supervisor {
    /// Installs the signal handler and starts the watchdog. Logs go to
    /// `data/logs`.
    pub fn new(data: &Path) -> Result<Self> {
        let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
        let _ = PARENT.set(std::os::unix::process::parent_id());
        let logs = data.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let groups_file = logs.join(".process-groups");
        std::fs::write(&groups_file, "")?;
        // Polls xtask's pid; once it is gone (however it died), stops every
        // group listed. A shell, so it needs nothing built (POSIX sh: dash's
        // `kill` takes no `--`).
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
            for g in $(cat "$2"); do kill -TERM "-$g" 2>/dev/null; done
            i=0
            while [ $i -lt 40 ]; do
                alive=0
                for g in $(cat "$2"); do kill -0 "-$g" 2>/dev/null && alive=1; done
                [ $alive = 0 ] && exit 0
                sleep 0.5; i=$((i + 1))
            done
            for g in $(cat "$2"); do kill -KILL "-$g" 2>/dev/null; done
        "#;
        let watchdog = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .args(["-c", script, "meridian-demo-watchdog"])
                .arg(std::process::id().to_string())
                .arg(&groups_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("starting the demo's watchdog (sh)")?
        };
        Ok(Self { procs: Vec::new(), logs, group: None, groups_file, watchdog: Some(watchdog), echo: true })
    }

    fn note_group(&self, pgid: u32) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.groups_file)?;
        writeln!(f, "{pgid}")?;
        Ok(())
    }

    /// Starts a child in the demo's process group, its stderr shown
    /// prefixed with `name` and kept in `logs/NAME.log`.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        check_stop()?;
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(self.group.unwrap_or(0) as i32);
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(file.try_clone()?);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        if self.group.is_none() {
            self.group = Some(child.id());
            self.note_group(child.id())?;
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let (tail, name, echo, mut file) = (tail.clone(), name.to_owned(), self.echo, file);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    if echo {
                        eprintln!("[{name}] {line}");
                    }
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        self.procs.push(Proc { name: name.to_owned(), child, service: false, tail, log: Some(log) });
        Ok(())
    }

    /// Starts a service the other children use (in a process group of its
    /// own; its output goes where `cmd` says); stopped after them.
    pub fn spawn_service(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        check_stop()?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.note_group(child.id())?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        self.procs.push(Proc { name: name.to_owned(), child, service: true, tail, log: None });
        Ok(())
    }

    /// Waits (at most 60 s) until something accepts TCP connections on
    /// `port`, failing at once if a child exits or a stop is requested.
    pub fn wait_port(&mut self, what: &str, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            self.check_children()?;
            check_stop()?;
            if Instant::now() > deadline {
                bail!("{what} did not listen on 127.0.0.1:{port} within 60 s{}", self.logs_hint());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 60 s) for a file a child writes.
    pub fn wait_file(&mut self, path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            self.check_children()?;
            check_stop()?;
            if Instant::now() > deadline {
                bail!("{} did not appear within 60 s{}", path.display(), self.logs_hint());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn logs_hint(&self) -> String {
        format!(" (logs in {})", self.logs.display())
    }

    /// An error naming the first child that exited, with its last lines.
    fn check_children(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{}", exited(p, status));
            }
        }
        Ok(())
    }

    /// Runs until a stop is requested (Ok) or a child exits (its error).
    pub fn run(&mut self) -> Result<()> {
        loop {
            if stop_requested() {
                eprintln!("\nxtask: stopping the demo…");
                return Ok(());
            }
            self.check_children()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every child (SIGTERM to the group, SIGKILL after
    /// [`STOP_WITHIN`]), then the services the same way.
    pub fn stop_all(&mut self) {
        for services in [false, true] {
            let procs: Vec<&mut Proc> = self.procs.iter_mut().filter(|p| p.service == services).collect();
            if procs.is_empty() {
                continue;
            }
            let groups: Vec<u32> =
                if services { procs.iter().map(|p| p.child.id()).collect() } else { self.group.into_iter().collect() };
            for g in &groups {
                signal_group(*g, "TERM");
            }
            let deadline = Instant::now() + STOP_WITHIN;
            for p in procs {
                while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for g in &groups {
                signal_group(*g, "KILL");
            }
        }
        for p in &mut self.procs {
            let _ = p.child.wait();
        }
        self.procs.clear();
    }
}

impl Drop for Supervisor {
    /// However the demo ends (an error part-way, a stop, a panic), its
    /// children go with it; then the watchdog is not needed.
    fn drop(&mut self) {
        self.stop_all();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn signal_group(pgid: u32, signal: &str) {
    let _ =
        Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

fn check_stop() -> Result<()> {
    if stop_requested() {
        bail!("stopped (Ctrl-C or SIGTERM) while starting");
    }
    Ok(())
}

/// "`eu` exited (exit status: 1); its last lines: …".
fn exited(p: &Proc, status: ExitStatus) -> String {
    let tail = p.tail.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = format!("{} exited ({status})", p.name);
    if tail.is_empty() {
        if let Some(log) = &p.log {
            out.push_str(&format!("; it printed nothing (log: {})", log.display()));
        }
    } else {
        out.push_str("; its last lines:");
        for line in tail.iter() {
            out.push_str("\n    ");
            out.push_str(line);
        }
    }
    out
}

/// Ports the demo binds, checked before anything is built or started: a
/// taken one stops it at once with what to do.
pub fn check_ports(ports: &[(u16, &str, &str)]) -> Result<()> {
    let mut taken = Vec::new();
    for &(port, proto, what) in ports {
        let free = match proto {
            "udp" => std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
            _ => std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        };
        if !free {
            taken.push(format!("{port}/{proto} ({what})"));
        }
    }
    if !taken.is_empty() {
        bail!(
            "ports the demo needs are in use: {}. Is a demo already running? Stop it (Ctrl-C in its terminal), \
             or find what holds a port with `ss -ltnup | grep :7300`",
            taken.join(", ")
        );
    }
    Ok(())
}
