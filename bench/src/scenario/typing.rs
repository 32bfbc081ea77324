//! Real automerge-repo clients typing into one text (automerge-repo#207):
//! `clients` official JS clients (automerge-repo 2.5.6, `tests/js/typists.mjs`)
//! spread over `processes` Node processes, the first `typists` of them
//! typing `rate` characters a second each at random places for `seconds`.
//! Measured: the lag from a keystroke to each other client's change event
//! (every keystroke, every observer), the CPU the client processes and the
//! server used while typing, and the sync messages each client received
//! per second (what coalescing saves the clients).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use super::{Figure, histogram, ms};
use crate::server::Server;

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub clients: usize,
    pub typists: usize,
    pub processes: usize,
    pub rate: u32,
    pub seconds: u64,
}

/// Quiet time after the typing for the last keystrokes to arrive.
const SETTLE_MS: u64 = 3000;

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    /// Starts a process of `clients` clients, `typists` of them typing;
    /// with `doc` they find it, without it the first creates one.
    fn start(
        script: &Path,
        url: &str,
        name: &str,
        (clients, typists): (usize, usize),
        p: &Params,
        doc: Option<&str>,
    ) -> Result<Self> {
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .args(["--url", url, "--name", name])
            .args(["--clients", &clients.to_string(), "--typists", &typists.to_string()])
            .args(["--rate", &p.rate.to_string(), "--seconds", &p.seconds.to_string()])
            .args(["--settle-ms", &SETTLE_MS.to_string()])
            .current_dir(script.parent().context("the script has no folder")?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(doc) = doc {
            cmd.args(["--doc", doc]);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", script.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    /// The next JSON line it prints.
    fn line(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("typists.mjs exited early ({:?})", self.child.try_wait()?);
        }
        serde_json::from_str(&line).with_context(|| format!("typists.mjs printed {line:?}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) a process used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field, utime the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').context("unexpected /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3).context("short /proc stat")?.parse::<u64>().context("a /proc stat field");
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second of `/proc` CPU times (100 on Linux).
const TICKS: f64 = 100.0;

pub async fn run(server: &Server, js_dir: PathBuf, p: Params) -> Result<Vec<Figure>> {
    let (url, server_pid) = (server.url.clone(), server.pid());
    let script = js_dir.join("typists.mjs");
    let script = script.canonicalize().with_context(|| format!("finding {}", script.display()))?;
    // Everything here blocks on child processes.
    tokio::task::spawn_blocking(move || measure(&script, &url, server_pid, p)).await?
}

fn measure(script: &Path, url: &str, server_pid: u32, p: Params) -> Result<Vec<Figure>> {
    // Clients and typists dealt round-robin over the processes.
    let share = |total: usize, i: usize| total / p.processes + usize::from(i < total % p.processes);
    let counts = |i: usize| (share(p.clients, i), share(p.typists, i));
    let mut procs = Vec::new();
    // The first process creates the document, the others find it.
    let mut first = Proc::start(script, url, "p0", counts(0), &p, None)?;
    let created = first.line()?;
    let doc = created["doc"].as_str().context("the first process printed no document")?.to_owned();
    procs.push(first);
    for i in 1..p.processes {
        procs.push(Proc::start(script, url, &format!("p{i}"), counts(i), &p, Some(&doc))?);
    }
    for proc in &mut procs {
        let ready = proc.line()?;
        if ready["ready"] != serde_json::Value::Bool(true) {
            bail!("typists.mjs printed {ready} instead of ready");
        }
    }
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let clients_before: u64 = pids.iter().map(|pid| cpu_ticks(*pid)).sum::<Result<u64>>()?;
    let server_before = cpu_ticks(server_pid)?;
    for proc in &mut procs {
        writeln!(proc.stdin, "go")?;
    }
    std::thread::sleep(Duration::from_secs(p.seconds));
    let clients_cpu = (pids.iter().map(|pid| cpu_ticks(*pid)).sum::<Result<u64>>()? - clients_before) as f64;
    let server_cpu = (cpu_ticks(server_pid)? - server_before) as f64;
    let mut sent: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen: Vec<(String, String, usize, u64)> = Vec::new();
    let mut messages = 0u64;
    for proc in &mut procs {
        let result = proc.line()?;
        for (typist, times) in result["sent"].as_object().context("no `sent`")? {
            let times = times.as_array().context("`sent` times")?.iter().filter_map(|t| t.as_u64()).collect();
            sent.insert(typist.clone(), times);
        }
        for row in result["seen"].as_array().context("no `seen`")? {
            let (observer, typist) = (row[0].as_str().context("observer")?, row[1].as_str().context("typist")?);
            let (n, t) = (row[2].as_u64().context("n")? as usize, row[3].as_u64().context("t")?);
            seen.push((observer.to_owned(), typist.to_owned(), n, t));
        }
        messages +=
            result["messages"].as_object().context("no `messages`")?.values().filter_map(|v| v.as_u64()).sum::<u64>();
    }
    let lags = lags(&sent, &seen, p.clients)?;
    let keystrokes: usize = sent.values().map(Vec::len).sum();
    eprintln!(
        "  typing: {keystrokes} keystrokes by {} typists, {} lags measured, {messages} sync messages to {} clients",
        p.typists,
        lags.len(),
        p.clients
    );
    let secs = p.seconds as f64;
    Ok(vec![
        Figure::lower("lag, keystroke to another client (p50)", "ms", ms(&lags, 0.5)),
        Figure::lower("lag, keystroke to another client (p99)", "ms", ms(&lags, 0.99)),
        Figure::lower("the clients' CPU, all processes", "%", clients_cpu / TICKS / secs * 100.0),
        Figure::lower("the server's CPU", "%", server_cpu / TICKS / secs * 100.0),
        Figure::lower(
            "sync messages each client received per second",
            "msg/s",
            messages as f64 / p.clients as f64 / (secs + SETTLE_MS as f64 / 1000.0),
        ),
    ])
}

/// Every keystroke's lag to every other client (µs): an observer that saw
/// typist X reach n at t saw every keystroke of X after the last it saw.
/// Fails if an observer never saw a keystroke.
fn lags(
    sent: &HashMap<String, Vec<u64>>,
    seen: &[(String, String, usize, u64)],
    clients: usize,
) -> Result<Histogram<u64>> {
    let mut h = histogram();
    let mut upto: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut rows: Vec<&(String, String, usize, u64)> = seen.iter().collect();
    rows.sort_by_key(|r| (r.3, r.2));
    for (observer, typist, n, t) in rows {
        let times =
            sent.get(typist).with_context(|| format!("{observer} saw keystrokes of unknown typist {typist}"))?;
        let from = upto.entry((observer, typist)).or_default();
        for k in *from + 1..=*n {
            let at =
                times.get(k - 1).with_context(|| format!("{observer} saw keystroke {k} of {typist}, never typed"))?;
            h.record(t.saturating_sub(*at).max(1) * 1000)?;
        }
        *from = (*from).max(*n);
    }
    for (typist, times) in sent {
        let observers = upto.iter().filter(|((_, t), n)| *t == typist && **n == times.len()).count();
        if !times.is_empty() && observers != clients - 1 {
            bail!("only {observers} of {} other clients saw all {} keystrokes of {typist}", clients - 1, times.len());
        }
    }
    Ok(h)
}
