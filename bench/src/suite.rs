//! The suite: every scenario at its sizes, against every server, taking
//! turns at going first each round so machine noise hits all; medians per
//! figure; results kept per scenario and rendered into the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::report::{self, Row};
use crate::scenario::{Figure, attacks, connect, fanout, large_doc, median, stored, typing, writers};
use crate::server::{ConnCaps, Kind, Paths, Server};

pub const SCENARIOS: [&str; 7] = ["connect", "fanout", "writers", "typing", "large-doc", "stored", "attacks"];

#[derive(Debug)]
pub struct Options {
    pub scenarios: Vec<String>,
    pub smoke: bool,
    pub rounds: Option<usize>,
    /// Overrides how many documents the `stored` scenario writes.
    pub stored: Option<usize>,
    /// Runs only the cases of this size.
    pub size: Option<usize>,
    /// Measures only this server (profiling); nothing is saved.
    pub only: Option<Kind>,
    pub paths: Paths,
    /// Where each scenario's rows are kept between runs.
    pub results: PathBuf,
    /// The markdown report to update (full runs only).
    pub report: Option<PathBuf>,
}

/// One size of one scenario.
#[derive(Clone, Copy, Debug)]
enum Case {
    Connect(usize),
    Fanout(fanout::Params),
    Writers(writers::Params),
    Typing(typing::Params),
    LargeDoc(large_doc::Params),
    Stored(stored::Params),
    Attacks(attacks::Params),
}

impl Case {
    /// The size the case is named by (clients, watchers, writers, operations, stored documents,
    /// idle sockets).
    fn size(&self) -> usize {
        match self {
            Case::Connect(n) => *n,
            Case::Fanout(p) => p.watchers,
            Case::Writers(p) => p.writers,
            Case::Typing(p) => p.typists,
            Case::LargeDoc(p) => p.ops,
            Case::Stored(p) => p.stored,
            Case::Attacks(p) => p.idle,
        }
    }

    fn label(&self) -> String {
        match self {
            Case::Connect(n) => format!("connect {} clients to {} documents", thousands(*n), thousands(*n)),
            Case::Fanout(p) => format!("1 writer, {} watchers ({} changes)", thousands(p.watchers), p.changes),
            Case::Writers(p) => format!("{} writers on {} documents, window {}", p.writers, p.writers, p.window),
            Case::Typing(p) => format!(
                "{} of {} automerge-repo clients ({} processes) typing {} characters/s into one text for {} s",
                p.typists, p.clients, p.processes, p.rate, p.seconds
            ),
            Case::LargeDoc(p) => format!("large document: {} text operations", thousands(p.ops)),
            Case::Stored(p) => format!("{} stored documents, {} open", thousands(p.stored), thousands(p.open)),
            Case::Attacks(p) => format!(
                "a well-behaved client during attacks ({} × {}-op documents, {} messages, {} idle sockets, {} random ids, a {}-character text)",
                p.bombs,
                thousands(p.bomb_ops),
                thousands(p.flood),
                thousands(p.idle),
                thousands(p.random),
                thousands(p.long_text)
            ),
        }
    }

    async fn run(self, server: Server, paths: &Paths) -> Result<Vec<Figure>> {
        match self {
            Case::Connect(n) => connect::run(&server, n).await,
            Case::Fanout(p) => fanout::run(&server, p).await,
            Case::Writers(p) => writers::run(&server, p).await,
            Case::Typing(p) => {
                let js = paths.js_server.parent().context("the JS server script has no folder")?;
                typing::run(&server, js.to_owned(), p).await
            }
            Case::LargeDoc(p) => large_doc::run(server, p).await,
            Case::Stored(p) => stored::run(server, p).await,
            Case::Attacks(p) => attacks::run(server, p).await,
        }
    }

    /// The edge's connection caps: off (every load client is 127.0.0.1),
    /// but the defaults against an attacker from its own address.
    fn caps(&self) -> ConnCaps {
        match self {
            Case::Attacks(_) => ConnCaps::Default,
            _ => ConnCaps::Off,
        }
    }
}

fn cases(scenario: &str, smoke: bool) -> Result<(Vec<Case>, usize)> {
    let secs = Duration::from_secs;
    Ok(match (scenario, smoke) {
        ("connect", true) => (vec![Case::Connect(20)], 1),
        ("connect", false) => (vec![Case::Connect(100), Case::Connect(1000), Case::Connect(5000)], 3),
        ("fanout", true) => {
            (vec![Case::Fanout(fanout::Params { watchers: 5, changes: 5, interval: Duration::from_millis(10) })], 1)
        }
        ("fanout", false) => (
            [10, 100, 1000]
                .map(|watchers| {
                    Case::Fanout(fanout::Params { watchers, changes: 100, interval: Duration::from_millis(50) })
                })
                .to_vec(),
            3,
        ),
        ("writers", true) => {
            let p = writers::Params { writers: 4, changes_per_writer: 20, window: 4, duration: secs(1) };
            (vec![Case::Writers(p)], 1)
        }
        ("writers", false) => {
            let p = writers::Params { writers: 50, changes_per_writer: 4000, window: 32, duration: secs(10) };
            // A lone writer with one change in flight: each acknowledgement
            // waits for its own commit (and fsync), nothing to group it with.
            let lone = writers::Params { writers: 1, changes_per_writer: 4000, window: 1, duration: secs(10) };
            (vec![Case::Writers(lone), Case::Writers(p)], 3)
        }
        ("typing", smoke) => {
            let seconds = if smoke { 2 } else { 20 };
            let p = |typists| typing::Params { clients: 8, typists, processes: 4, rate: 6, seconds };
            (
                if smoke { vec![Case::Typing(p(8))] } else { vec![Case::Typing(p(8)), Case::Typing(p(1))] },
                if smoke { 1 } else { 3 },
            )
        }
        ("large-doc", true) => (vec![Case::LargeDoc(large_doc::Params { ops: 2000, fetches: 1 })], 1),
        ("large-doc", false) => (vec![Case::LargeDoc(large_doc::Params { ops: 300_000, fetches: 5 })], 1),
        ("stored", true) => (vec![Case::Stored(stored::Params { stored: 200, open: 20 })], 1),
        ("stored", false) => (vec![Case::Stored(stored::Params { stored: 100_000, open: 1000 })], 1),
        ("attacks", smoke) => {
            let p = if smoke {
                attacks::Params {
                    phase: Duration::from_millis(500),
                    round_trips: 20,
                    pause: Duration::from_millis(10),
                    ack_timeout: secs(10),
                    settle: secs(20),
                    bombs: 2,
                    bomb_ops: 200_000,
                    flood: 2000,
                    // Past the edge's 256 per address, so the 503 path runs too.
                    idle: 300,
                    random: 500,
                    long_text: 100_000,
                }
            } else {
                attacks::Params {
                    phase: secs(3),
                    round_trips: 300,
                    pause: Duration::from_millis(10),
                    ack_timeout: secs(30),
                    settle: secs(60),
                    bombs: 8,
                    bomb_ops: 1_000_000,
                    flood: 20_000,
                    idle: 2000,
                    random: 5000,
                    long_text: 1_000_000,
                }
            };
            (vec![Case::Attacks(p)], if smoke { 1 } else { 3 })
        }
        (other, _) => bail!("unknown scenario `{other}` (scenarios: {})", SCENARIOS.join(", ")),
    })
}

pub async fn run(opts: Options) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("meridian-bench-{}", std::process::id()));
    let mut all_rows = Vec::new();
    for scenario in &opts.scenarios {
        let (mut cases, default_rounds) = cases(scenario, opts.smoke)?;
        if let Some(n) = opts.stored {
            for case in &mut cases {
                if let Case::Stored(p) = case {
                    p.stored = n;
                    p.open = p.open.min(n);
                }
            }
        }
        if let Some(size) = opts.size {
            cases.retain(|c| c.size() == size);
        }
        let rounds = opts.rounds.unwrap_or(default_rounds);
        let mut rows = Vec::new();
        for case in cases {
            rows.extend(run_case(case, rounds, &opts, &tmp).await?);
        }
        // A one-server run has no ratios to keep.
        if !opts.smoke && opts.only.is_none() {
            report::save_rows(&opts.results, scenario, &rows)?;
        }
        all_rows.extend(rows);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("\n{}", report::table(&all_rows));
    if let Some(path) = &opts.report
        && !opts.smoke
        && opts.only.is_none()
    {
        let rows = report::load_rows(&opts.results, &SCENARIOS)?;
        report::write(path, &rows)?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    Ok(())
}

async fn run_case(case: Case, rounds: usize, opts: &Options, tmp: &Path) -> Result<Vec<Row>> {
    let (smoke, paths) = (opts.smoke, &opts.paths);
    let label = case.label();
    // Each server's figures per round (None: that round failed), in the
    // order of Kind::ALL.
    let mut runs: [Vec<Option<Vec<Figure>>>; 3] = Default::default();
    for r in 0..rounds {
        // Each round starts with the next server, so machine noise hits all.
        let mut order = Kind::ALL;
        order.rotate_left(r % Kind::ALL.len());
        for kind in order.into_iter().filter(|k| opts.only.is_none_or(|only| only == *k)) {
            let data = tmp.join(format!("{}-{r}", kind.tag()));
            let _ = std::fs::remove_dir_all(&data);
            let server = Server::start(kind, paths, &data, case.caps())?;
            let outcome = case.run(server, paths).await.with_context(|| format!("{label} against {}", kind.name()));
            let _ = std::fs::remove_dir_all(&data);
            let figures = match outcome {
                Ok(f) => Some(f),
                // A smoke run exists to catch a broken scenario.
                Err(e) if smoke => return Err(e),
                // A full run records the failure and goes on.
                Err(e) => {
                    eprintln!("{label}, round {r}, {}: FAILED: {e:#}", kind.name());
                    None
                }
            };
            if let Some(figures) = &figures {
                eprintln!("{label}, round {r}, {}:", kind.name());
                for f in figures {
                    eprintln!("  {} = {:.2} {}", f.metric, f.value, f.unit);
                }
            }
            runs[kind as usize].push(figures);
        }
    }
    let Some(names) = runs.iter().flatten().flatten().next().cloned() else {
        eprintln!("{label}: failed against every server in every round");
        return Ok(Vec::new());
    };
    let med = |kind: Kind, i: usize| {
        let runs = &runs[kind as usize];
        median(&mut runs.iter().flatten().filter_map(|r| r.get(i)).map(|f| f.value).collect::<Vec<_>>())
    };
    let rows = names
        .iter()
        .enumerate()
        .map(|(i, f)| Row {
            scenario: label.clone(),
            metric: f.metric.clone(),
            unit: f.unit.to_owned(),
            better: f.better,
            edge: med(Kind::Edge, i),
            js: med(Kind::Js, i),
            samod: med(Kind::Samod, i),
            rounds,
        })
        .collect();
    Ok(rows)
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
