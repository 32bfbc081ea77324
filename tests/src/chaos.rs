//! The chaos campaign (`cargo xtask chaos`; a short run in CI,
//! `tests/tests/chaos.rs`): the regional cluster of real processes (a hub
//! and edges `eu`, `us`, `ap`, every link through the fault proxy, placement
//! moves on) while native clients (one per edge) and a JS automerge-repo
//! client write, and faults follow each other at random (seeded):
//!
//! | fault | what | detected when | recovered when |
//! |---|---|---|---|
//! | `partition` | an edge's link to the hub cut both ways, 1–8 s | the edge's `meridian_edge_uplink_connected` is 0 | after the heal, a probe written at that edge is at the hub and every other edge, and one written at the hub is at that edge |
//! | `one-way-loss` | 30–80 % of one direction of an edge's link lost, 2–4 s | as above (if the link goes down at all) | as above |
//! | `kill-edge` | kill -9 of an edge, restarted after 0.5–2 s; while it is down its SQLite file must hold everything it acknowledged | not measured (its clients' connections are reset at once) | as above, from the restart |
//! | `kill-hub` | kill -9 of the hub, restarted after 0.5–2 s | every edge's uplink is down | a probe written at each edge reaches all the others through the restarted hub |
//! | `corrupt-chunk` | a byte flipped in a stored chunk of an edge's SQLite file under the running edge (only of a document the hub holds in full) | the edge's `meridian_edge_chunks_quarantined_total` rises (the scrub runs at 16 MiB/s here) | two more complete scrub passes find nothing |
//!
//! At the end every fault is healed and every process runs; the checker
//! then opens every document on every node with a fresh client and waits
//! until each holds every acknowledged change and all hold the same heads.
//! [`Report`] has what was injected, the acknowledged changes, those lost
//! (goal: none), and the time to detect and to recover per fault kind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ChangeHash, ROOT, ReadDoc};
use meridian_protocol::ids::{AutomergeUrl, DocumentId};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::clients::{fast, find_eventually};
use crate::fault_proxy::Direction;
use crate::js::{js_dir, require_node_modules};
use crate::regions::{Cluster, REGIONS, get_text};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Documents the native writers share.
    pub docs: usize,
    /// Run the JS automerge-repo writer too (needs `tests/js/node_modules`).
    pub js: bool,
    /// The fault kinds to inject (default: all of [`FAULTS`]).
    pub faults: Vec<&'static str>,
}

/// Fault kinds, in report order.
pub const FAULTS: [&str; 5] = ["partition", "one-way-loss", "kill-edge", "kill-hub", "corrupt-chunk"];

/// One kind's figures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FaultFigures {
    pub injected: usize,
    /// Faults that were detected (some losses never take a link down; a
    /// corrupt chunk a compaction replaced before the scrub came to it is
    /// gone, not found).
    pub detected: usize,
    pub detect_ms: Vec<u64>,
    pub recover_ms: Vec<u64>,
}

/// What a campaign found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_secs: f64,
    pub faults: BTreeMap<String, FaultFigures>,
    /// Changes acknowledged to the native and the JS writers.
    pub acked_native: usize,
    pub acked_js: usize,
    /// Acknowledged changes missing on some node at the end (goal: 0).
    pub lost: Vec<String>,
    /// From the end of the faults until every node held every acknowledged
    /// change and all heads were the same.
    pub converged_ms: u64,
    pub documents: usize,
}

impl Report {
    /// The figures per fault kind as Markdown table rows: kind, injected,
    /// detected, time to detect and to recover (median / max).
    pub fn rows(&self) -> String {
        let mut out = String::new();
        for kind in FAULTS {
            let f = self.faults.get(kind).cloned().unwrap_or_default();
            out.push_str(&format!(
                "| {kind} | {} | {} | {} | {} |\n",
                f.injected,
                f.detected,
                median_max(&f.detect_ms),
                median_max(&f.recover_ms)
            ));
        }
        out
    }
}

fn median_max(v: &[u64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    format!("{} / {} ms", s[s.len() / 2], s[s.len() - 1])
}

/// Acknowledged keys per document.
type Acked = Arc<Mutex<BTreeMap<DocumentId, Vec<String>>>>;

/// Runs a campaign; fails only if it could not run (lost changes are in
/// the report).
pub async fn run(config: &ChaosConfig) -> Result<Report> {
    let started = Instant::now();
    // Scrub fast so corrupt chunks are found within a second or so.
    let mut cluster = Cluster::start_with(true, &[], &["--scrub-bytes-per-sec", "16777216"]).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let acked: Acked = Arc::default();

    // Native writers: one per edge, each over its own documents' share.
    let first = Client::connect(&cluster.edge("eu").ws_url(), fast()).await?;
    let mut docs = Vec::new();
    for i in 0..config.docs {
        let doc = first.create(move |tx| tx.put(ROOT, "doc", i as i64).map(|_| ())).await?;
        first.wait_acked(doc).await?;
        docs.push(doc);
    }
    first.close().await;
    let probe_doc = {
        let c = Client::connect(&cluster.hub.ws_url(), fast()).await?;
        let doc = c.create(|tx| tx.put(ROOT, "probe", 0).map(|_| ())).await?;
        c.wait_acked(doc).await?;
        c.close().await;
        doc
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let client = Arc::new(Client::connect(&cluster.edge(region).ws_url(), fast()).await?);
        for doc in &docs {
            find_eventually(&client, *doc).await?;
        }
        let task = writer(client, docs.clone(), format!("n{i}"), acked.clone(), stop.clone());
        writers.push(tokio::spawn(task));
    }
    let mut js = if config.js { Some(JsWriter::start(&cluster.edge("us").ws_url())?) } else { None };

    // Probe clients, one per node (hub first), on the probe document.
    let mut probes = vec![("hub".to_owned(), Client::connect(&cluster.hub.ws_url(), fast()).await?)];
    for region in REGIONS {
        probes.push((region.to_owned(), Client::connect(&cluster.edge(region).ws_url(), fast()).await?));
    }
    for (_, p) in &probes {
        find_eventually(p, probe_doc).await?;
    }
    let mut probe = Probe { clients: probes, doc: probe_doc, n: 0 };

    let mut report =
        Report { seed: config.seed, documents: docs.len() + 1 + usize::from(js.is_some()), ..Report::default() };
    let until = Instant::now() + config.duration;
    // Every kind once first (in a seeded order), then at random.
    let kinds = if config.faults.is_empty() { FAULTS.to_vec() } else { config.faults.clone() };
    let mut first_round = kinds.clone();
    for i in (1..first_round.len()).rev() {
        first_round.swap(i, rng.random_range(0..=i));
    }
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let kind = first_round.pop().unwrap_or_else(|| kinds[rng.random_range(0..kinds.len())]);
        let figures = report.faults.entry(kind.to_owned()).or_default();
        let (detect, recover) =
            inject(kind, &mut cluster, &mut rng, &mut probe, &docs, &acked, &mut js, &mut report.lost)
                .await
                .with_context(|| format!("fault {kind}"))?;
        figures.injected += 1;
        if let Some(d) = detect {
            figures.detected += 1;
            figures.detect_ms.push(d.as_millis() as u64);
        }
        if detect.is_some() || kind != "corrupt-chunk" {
            figures.recover_ms.push(recover.as_millis() as u64);
        }
        tracing::info!(kind, ?detect, ?recover, "fault done");
    }

    // Every fault is over (each heals itself); stop the writers, then check.
    let faults_over = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    if let Some(js) = js.take() {
        let (doc, keys) = js.stop()?;
        report.acked_js = keys.len();
        acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(doc, keys);
    }
    let acked = acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    report.acked_native = acked.iter().filter(|(d, _)| docs.contains(d)).map(|(_, k)| k.len()).sum();
    let (lost, converged) = check(&cluster, &acked, Duration::from_secs(120)).await?;
    report.lost.extend(lost);
    report.converged_ms = converged.map_or(0, |c| (c - faults_over).as_millis() as u64);
    ensure!(converged.is_some() || !report.lost.is_empty(), "replicas never converged (heads differ)");
    report.duration_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes `{prefix}-{n} = n` into the documents in turn, recording each key
/// the edge acknowledged; carries on through errors until `stop`.
async fn writer(
    client: Arc<Client>,
    docs: Vec<DocumentId>,
    prefix: String,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let doc = docs[n as usize % docs.len()];
        let key = format!("{prefix}-{n}");
        n += 1;
        let k = key.clone();
        if client.change(doc, move |tx| tx.put(ROOT, k.as_str(), n as i64).map(|_| ())).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(30), client.wait_acked(doc)).await
            && let Ok(mut a) = acked.lock()
        {
            a.entry(doc).or_default().push(key);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Probe clients on every node, on one document.
struct Probe {
    clients: Vec<(String, Client)>,
    doc: DocumentId,
    n: u64,
}

impl Probe {
    /// Writes a key at `from` and waits until every node in `to` has it.
    async fn round(&mut self, from: &str, to: &[&str]) -> Result<()> {
        self.n += 1;
        let key = format!("probe-{from}-{}", self.n);
        let writer = &self.clients.iter().find(|(n, _)| n == from).context("probe client")?.1;
        let k = key.clone();
        writer.change(self.doc, move |tx| tx.put(ROOT, k.as_str(), 1).map(|_| ())).await?;
        for (name, client) in self.clients.iter().filter(|(n, _)| to.contains(&n.as_str())) {
            let k = key.clone();
            tokio::time::timeout(
                Duration::from_secs(60),
                client.wait_for(self.doc, move |d| d.get(ROOT, k.as_str()).ok().flatten().is_some()),
            )
            .await
            .with_context(|| format!("probe {key} never reached {name}"))??;
        }
        Ok(())
    }

    /// Probes from `node` to every other node and back.
    async fn both_ways(&mut self, node: &str) -> Result<()> {
        let others: Vec<String> = self.clients.iter().map(|(n, _)| n.clone()).filter(|n| n != node).collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        self.round(node, &others).await?;
        let back = if node == "hub" { "eu" } else { "hub" };
        self.round(back, &[node]).await
    }
}

/// One edge metric's value.
async fn metric(port: u16, name: &str) -> Option<f64> {
    crate::http::metric_value(&get_text(port, "/metrics").await.ok()?, name)
}

/// Polls until `cond` (at most `limit`); the time it took, if it came.
async fn time_until<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond().await {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Injects one fault, waits for it to be over and healed; the time to
/// detect it (if it was) and the time to recover from its end.
#[allow(clippy::too_many_arguments)] // the campaign's state, lent to one fault
async fn inject(
    kind: &str,
    cluster: &mut Cluster,
    rng: &mut ChaCha8Rng,
    probe: &mut Probe,
    docs: &[DocumentId],
    acked: &Acked,
    js: &mut Option<JsWriter>,
    lost: &mut Vec<String>,
) -> Result<(Option<Duration>, Duration)> {
    let region = REGIONS[rng.random_range(0..REGIONS.len())];
    let port = cluster.edge(region).port;
    let uplink_down = || async move { metric(port, "meridian_edge_uplink_connected").await == Some(0.0) };
    let (detect, end) = match kind {
        "partition" | "one-way-loss" => {
            let link = cluster.uplink(region);
            // Partitions long enough for the link to notice (QUIC idle
            // timeout) half the time or so.
            let hold = Duration::from_millis(if kind == "partition" {
                rng.random_range(1000..8000)
            } else {
                rng.random_range(2000..4000)
            });
            if kind == "partition" {
                link.partition_both();
            } else {
                let dir = if rng.random_bool(0.5) { Direction::ToUpstream } else { Direction::ToClient };
                link.set_loss(dir, rng.random_range(0.3..0.8));
            }
            let detect = time_until(hold, uplink_down).await;
            tokio::time::sleep(hold.saturating_sub(detect.unwrap_or(hold))).await;
            link.heal();
            for dir in [Direction::ToUpstream, Direction::ToClient] {
                link.set_loss(dir, 0.0);
            }
            (detect, Instant::now())
        }
        "kill-edge" => {
            cluster.kill_edge(region)?;
            // Everything this edge acknowledged is in its file, read while it
            // is dead (its writers still hold their changes and would send
            // them again once it is back, hiding a loss).
            let mut wanted = BTreeMap::new();
            let prefix = format!("n{}-", REGIONS.iter().position(|r| *r == region).unwrap_or(0));
            for (doc, keys) in acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
                wanted.insert(*doc, keys.iter().filter(|k| k.starts_with(&prefix)).cloned().collect::<Vec<_>>());
            }
            if region == "us"
                && let Some(js) = js.as_mut()
            {
                js.drain();
                wanted.insert(js.doc, js.acked.clone());
            }
            lost.extend(missing_in_file(&cluster.edge_database(region), region, &wanted)?);
            // Its clients see their connections reset at once (not measured).
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
            cluster.restart_edge(region)?;
            (None, Instant::now())
        }
        "kill-hub" => {
            cluster.kill_hub()?;
            let ports: Vec<u16> = REGIONS.iter().map(|r| cluster.edge(r).port).collect();
            let all_down = || {
                let ports = ports.clone();
                async move {
                    for p in ports {
                        if metric(p, "meridian_edge_uplink_connected").await != Some(0.0) {
                            return false;
                        }
                    }
                    true
                }
            };
            let hold = Duration::from_millis(rng.random_range(500..2000));
            let detect = time_until(Duration::from_secs(15), all_down).await;
            tokio::time::sleep(hold.saturating_sub(detect.unwrap_or(hold))).await;
            cluster.restart_hub()?;
            let end = Instant::now();
            for r in REGIONS {
                probe.round(r, &["hub", "eu", "us", "ap"].into_iter().filter(|n| *n != r).collect::<Vec<_>>()).await?;
            }
            return Ok((detect, end.elapsed()));
        }
        "corrupt-chunk" => {
            let doc = docs[rng.random_range(0..docs.len())];
            // Its snapshot, once the hub is in step with this edge on the
            // document (writers keep writing: 3 s at most).
            let hub_port = cluster.hub.http_port;
            let in_step = || async move { hub_in_step(hub_port, region, doc).await };
            let _ = time_until(Duration::from_secs(3), in_step).await;
            let before = metric(port, "meridian_edge_chunks_quarantined_total").await.unwrap_or(0.0);
            let db = cluster.edge_database(region);
            let corrupted = crate::disk::flip_a_byte(&db, doc)?;
            // Found (quarantined), or gone: a compaction may replace the
            // chunk before the scrub comes to it.
            let (db2, corrupted2) = (db.clone(), corrupted.clone());
            let found_or_gone = || {
                let (db, corrupted) = (db2.clone(), corrupted2.clone());
                async move {
                    metric(port, "meridian_edge_chunks_quarantined_total").await.unwrap_or(0.0) > before
                        || !crate::disk::still_there(&db, &corrupted).unwrap_or(true)
                }
            };
            let settled = time_until(Duration::from_secs(20), found_or_gone).await;
            let found = metric(port, "meridian_edge_chunks_quarantined_total").await.unwrap_or(0.0) > before;
            let detect = if found { settled } else { None };
            if !found {
                // A corrupt chunk left in place is a failure.
                ensure!(!crate::disk::still_there(&db, &corrupted)?, "a corrupt chunk was not found in 20 s");
                return Ok((None, Duration::ZERO));
            }
            let found = Instant::now();
            let passes = metric(port, "meridian_edge_scrub_passes_total").await.unwrap_or(0.0);
            let q = metric(port, "meridian_edge_chunks_quarantined_total").await.unwrap_or(0.0);
            let clean = || async move {
                metric(port, "meridian_edge_scrub_passes_total").await.unwrap_or(0.0) >= passes + 2.0
                    && metric(port, "meridian_edge_chunks_quarantined_total").await.unwrap_or(0.0) == q
            };
            if time_until(Duration::from_secs(60), clean).await.is_none() {
                let now_passes = metric(port, "meridian_edge_scrub_passes_total").await;
                let now_q = metric(port, "meridian_edge_chunks_quarantined_total").await;
                bail!(
                    "the store never scrubbed clean again: passes {passes} -> {now_passes:?}, quarantined {q} -> {now_q:?}"
                );
            }
            return Ok((detect, found.elapsed()));
        }
        other => bail!("unknown fault {other}"),
    };
    probe.both_ways(region).await?;
    Ok((detect, end.elapsed()))
}

/// The hub holds everything `region`'s edge has of `doc`.
async fn hub_in_step(hub_port: u16, region: &str, doc: DocumentId) -> bool {
    let Ok(v) = crate::regions::get_json(hub_port, &format!("/api/docs/{doc}/replicas")).await else { return false };
    let subject = format!("node:{region}");
    v["replicas"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|r| r["subject"] == subject.as_str() && r["in_sync"] == true))
}

/// The keys of `wanted` missing from the documents stored in a (dead)
/// node's SQLite file.
fn missing_in_file(
    db: &std::path::Path,
    node: &str,
    wanted: &BTreeMap<DocumentId, Vec<String>>,
) -> Result<Vec<String>> {
    use meridian_node::store::SqliteStore;
    use meridian_protocol::storage::{StorageResult, StorageTask};
    let mut store = SqliteStore::open(db)?;
    let mut missing = Vec::new();
    for (doc, keys) in wanted.iter().filter(|(_, k)| !k.is_empty()) {
        let stored = match store.execute(&StorageTask::LoadDoc { doc: *doc }) {
            StorageResult::Loaded(Some(bytes)) => meridian_protocol::automerge::Automerge::load(&bytes).ok(),
            _ => None,
        };
        let has = |k: &String| stored.as_ref().is_some_and(|d| d.get(ROOT, k.as_str()).ok().flatten().is_some());
        missing.extend(keys.iter().filter(|k| !has(k)).map(|k| format!("{node} (file after kill -9):{doc}:{k}")));
    }
    Ok(missing)
}

/// Opens every document on every node with a fresh client and waits until
/// each holds every acknowledged key and all heads agree. Returns the keys
/// still missing somewhere at the deadline, and when all agreed.
async fn check(
    cluster: &Cluster,
    acked: &BTreeMap<DocumentId, Vec<String>>,
    limit: Duration,
) -> Result<(Vec<String>, Option<Instant>)> {
    let mut readers = vec![("hub".to_owned(), Client::connect(&cluster.hub.ws_url(), fast()).await?)];
    for r in REGIONS {
        readers.push((r.to_owned(), Client::connect(&cluster.edge(r).ws_url(), fast()).await?));
    }
    let deadline = Instant::now() + limit;
    loop {
        let mut missing = Vec::new();
        let mut agreed = true;
        for (doc, keys) in acked {
            let mut heads: Vec<Vec<ChangeHash>> = Vec::new();
            for (node, reader) in &readers {
                if find_eventually(reader, *doc).await.is_err() {
                    missing.extend(keys.iter().map(|k| format!("{node}:{doc}:{k}")));
                    continue;
                }
                let keys = keys.clone();
                let every = keys.clone();
                // Not readable: every key counts as missing there.
                let (absent, h) = reader
                    .read(*doc, move |d| {
                        let absent: Vec<String> =
                            keys.iter().filter(|k| d.get(ROOT, k.as_str()).ok().flatten().is_none()).cloned().collect();
                        let mut h = d.get_heads();
                        h.sort();
                        (absent, h)
                    })
                    .await
                    .unwrap_or((every, Vec::new()));
                missing.extend(absent.into_iter().map(|k| format!("{node}:{doc}:{k}")));
                heads.push(h);
            }
            agreed &= heads.windows(2).all(|w| w[0] == w[1]);
        }
        if missing.is_empty() && agreed {
            return Ok((Vec::new(), Some(Instant::now())));
        }
        if Instant::now() > deadline {
            return Ok((missing, None));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `node tests/js/chaos-writer.mjs`, reading its acknowledged keys as they come.
struct JsWriter {
    child: Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    doc: DocumentId,
    acked: Vec<String>,
}

impl JsWriter {
    fn start(url: &str) -> Result<Self> {
        require_node_modules()?;
        let mut child = Command::new("node")
            .arg(js_dir().join("chaos-writer.mjs"))
            .args(["--url", url, "--prefix", "js"])
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running node chaos-writer.mjs")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let first: serde_json::Value =
            lines.recv_timeout(Duration::from_secs(30)).context("chaos-writer printed nothing")?;
        let url: AutomergeUrl = first["doc"].as_str().context("no doc line")?.parse()?;
        Ok(Self { child, lines, doc: url.document_id, acked: Vec::new() })
    }

    /// Takes the keys acknowledged so far.
    fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            if let Some(k) = v["acked"].as_str() {
                self.acked.push(k.to_owned());
            }
        }
    }

    /// Stops it; its document and every key it saw acknowledged.
    fn stop(mut self) -> Result<(DocumentId, Vec<String>)> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v.get("ok").is_some() => break,
                Ok(v) => {
                    if let Some(k) = v["acked"].as_str() {
                        self.acked.push(k.to_owned());
                    }
                }
                Err(_) => bail!("chaos-writer did not stop"),
            }
        }
        let _ = self.child.wait();
        Ok((self.doc, std::mem::take(&mut self.acked)))
    }
}

impl Drop for JsWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
