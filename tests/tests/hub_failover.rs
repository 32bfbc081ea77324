//! The cloud tier's failure tests (issue 16), with real `meridian-hub`
//! processes on one PostgreSQL database with the NATS bus between them, and
//! edges given both hubs (`--hub A,B`):
//! - a hub SIGKILLed under write load: its edges fail over to the other,
//!   writes keep crossing, and every change that had reached the other side
//!   before the kill (so a hub had committed it) is in PostgreSQL, read
//!   directly; several rounds, each hub killed in turn;
//! - NATS stopped while both hubs take writes: they still converge (each
//!   hub reads the store again), and the fast path resumes when it is back;
//! - PostgreSQL restarted: hubs retry, edges keep serving their clients,
//!   nothing acknowledged is lost;
//! - the change feed read across a hub kill: every change in PostgreSQL
//!   reaches the consumer, each after its dependencies;
//! - the placer's hub SIGKILLed: the other hub takes the lease over within
//!   seconds and continues from the homes in the store; reports of edges on
//!   the other hub reached the placer before; a pin is honoured.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::{acked_writer, fast, find_eventually};
use meridian_tests::nats::Nats;
use meridian_tests::pg::Postgres;
use meridian_tests::process::{HubProcess, free_port};

const WAIT: Duration = Duration::from_secs(60);

/// Two hub processes on one database and one bus, and the ports to start
/// either again on.
struct Cloud {
    /// Extra flags of every hub.
    flags: Vec<String>,
    pg: Postgres,
    nats: Nats,
    /// A NATS cluster the hubs use instead of `nats`, if started.
    cluster: Vec<Nats>,
    hubs: [Option<HubProcess>; 2],
    ports: [(u16, u16); 2],
    dirs: [PathBuf; 2],
    _root: tempfile::TempDir,
}

impl Cloud {
    fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    fn start_with(flags: &[&str]) -> Result<Self> {
        Self::start_on(flags, 0)
    }

    /// Hubs with `flags`, on a NATS cluster of `nodes` servers (0: one server).
    fn start_on(flags: &[&str], nodes: usize) -> Result<Self> {
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let pg = Postgres::start()?;
        let nats = Nats::start()?;
        let root = tempfile::tempdir()?;
        let dirs = [root.path().join("hub1"), root.path().join("hub2")];
        let ports = [(free_port()?, free_port()?), (free_port()?, free_port()?)];
        let cluster = if nodes > 0 { Nats::cluster(nodes)? } else { Vec::new() };
        let mut cloud = Self { flags, pg, nats, cluster, hubs: [None, None], ports, dirs, _root: root };
        cloud.start_hub(0)?;
        // Hubs of one tier present certificates of one CA (here: the
        // development CA the first hub made), so an edge trusts them all.
        std::fs::create_dir_all(cloud.dirs[1].join("tls"))?;
        for f in ["ca.pem", "hub-cert.pem", "hub-key.pem"] {
            std::fs::copy(cloud.dirs[0].join("tls").join(f), cloud.dirs[1].join("tls").join(f))?;
        }
        cloud.start_hub(1)?;
        Ok(cloud)
    }

    fn start_hub(&mut self, i: usize) -> Result<()> {
        let (quic, http) = self.ports[i];
        let bus = match self.cluster.as_slice() {
            [] => self.nats.url(),
            // Every hub prefers the first node, then the next.
            nodes => nodes.iter().map(Nats::url).collect::<Vec<_>>().join(","),
        };
        let (url, id) = (self.pg.url(), format!("h{}", i + 1));
        let mut flags =
            vec!["--store", &url, "--bus", &bus, "--hub-id", &id, "--edge", "eu=eu-secret", "--edge", "us=us-secret"];
        flags.extend(self.flags.iter().map(String::as_str));
        self.hubs[i] = Some(HubProcess::start(&self.dirs[i], quic, http, &flags)?);
        Ok(())
    }

    fn kill_hub(&mut self, i: usize) -> Result<()> {
        self.hubs[i].as_mut().context("hub not running")?.kill9()?;
        self.hubs[i] = None;
        Ok(())
    }

    fn quic(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.ports[i].0))
    }

    /// An edge given both hubs, `first` preferred.
    async fn edge(&self, id: &str, first: usize, dir: &Path) -> Result<EdgeNode> {
        let trust = HubTrust::CaFile(self.dirs[0].join("tls/ca.pem"));
        let mut uplink =
            UplinkConfig::new(self.quic(first), id, format!("{id}-secret"), trust).fallback(self.quic(1 - first));
        uplink.min_backoff = Duration::from_millis(50);
        uplink.max_backoff = Duration::from_millis(500);
        uplink.connect_timeout = Duration::from_secs(2);
        let mut config = EdgeConfig::new(dir).ephemeral_port().peer_id(format!("edge-{id}")).uplink(uplink);
        config.tick_interval = Duration::from_millis(100);
        // Where other edges reach it when it is a document's home.
        config.peer_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let edge = EdgeNode::start(config).await?;
        wait_for(|| async { edge.metrics().uplink_in_use().is_some() }, "the uplink to come up").await?;
        Ok(edge)
    }

    /// The keys of `doc`'s root map as stored in PostgreSQL, read directly.
    async fn stored_keys(&self, doc: DocumentId) -> Result<BTreeSet<String>> {
        let url = self.pg.url();
        tokio::task::spawn_blocking(move || -> Result<BTreeSet<String>> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            let rows = c.query(
                "SELECT data FROM chunks WHERE doc_id = $1 ORDER BY CASE WHEN kind = 'snapshot' THEN 0 ELSE 1 END, seq",
                &[&doc.as_bytes().as_slice()],
            )?;
            let mut d = Automerge::new();
            for row in rows {
                d.load_incremental(row.get::<_, &[u8]>(0))?;
            }
            Ok(d.keys(ROOT).collect())
        })
        .await?
    }
}

impl Cloud {
    /// The hashes of `doc`'s changes stored in PostgreSQL, read directly.
    async fn stored_changes(&self, doc: DocumentId) -> Result<BTreeSet<String>> {
        let url = self.pg.url();
        tokio::task::spawn_blocking(move || -> Result<BTreeSet<String>> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            let rows = c.query("SELECT data FROM chunks WHERE doc_id = $1", &[&doc.as_bytes().as_slice()])?;
            let mut d = Automerge::new();
            for row in rows {
                d.load_incremental(row.get::<_, &[u8]>(0))?;
            }
            Ok(d.get_changes(&[]).iter().map(|c| c.hash().to_string()).collect())
        })
        .await?
    }
}

/// What a reader of the feed printed, line by line.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn entries(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// Waits until `done` says so (a minute at most).
async fn wait_for<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F, what: &str) -> Result<()> {
    let start = Instant::now();
    while !done().await {
        anyhow::ensure!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn keys(c: &Client, doc: DocumentId) -> BTreeSet<String> {
    c.read(doc, |d| d.keys(ROOT).collect()).await.unwrap_or_default()
}

/// What crossed between the two sides: `a-…` keys `b` has and `b-…` keys
/// `a` has. Each went through a hub, which forwards only what it has
/// committed to PostgreSQL (durable before advertised).
async fn crossed(a: &Client, b: &Client, doc: DocumentId) -> BTreeSet<String> {
    let mut seen: BTreeSet<String> = keys(b, doc).await.into_iter().filter(|k| k.starts_with("a-")).collect();
    seen.extend(keys(a, doc).await.into_iter().filter(|k| k.starts_with("b-")));
    seen
}

/// Waits until both clients hold the same keys, `expected` among them.
async fn converge(a: &Client, b: &Client, doc: DocumentId, expected: &BTreeSet<String>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (ka, kb) = (keys(a, doc).await, keys(b, doc).await);
        if ka == kb && ka.is_superset(expected) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < WAIT,
            "not converged: {} vs {} keys, {} expected",
            ka.len(),
            kb.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Writers {
    acked: [Arc<Mutex<Vec<String>>>; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(a: &Arc<Client>, b: &Arc<Client>, doc: DocumentId, prefix: &str) -> Self {
        let acked = [Arc::default(), Arc::default()];
        let tasks = [(a, "a"), (b, "b")]
            .into_iter()
            .zip(&acked)
            .map(|((c, side), acked)| {
                let key = format!("{side}-{prefix}");
                tokio::spawn(acked_writer(c.clone(), doc, key, Duration::from_millis(10), Arc::clone(acked)))
            })
            .collect();
        Self { acked, tasks }
    }

    /// How many writes the edges acknowledged so far.
    fn acked_so_far(&self) -> usize {
        self.acked.iter().map(|a| a.lock().map(|a| a.len()).unwrap_or(0)).sum()
    }

    /// Stops writing: every key the edges acknowledged.
    fn stop(self) -> BTreeSet<String> {
        for t in self.tasks {
            t.abort();
        }
        self.acked.iter().flat_map(|a| a.lock().map(|a| a.clone()).unwrap_or_default()).collect()
    }
}

/// Both sides of a test: edge `eu` (preferring hub 1) and `us` (hub 2),
/// a client of each, and a document created through `eu` that `us` has.
struct Sides {
    eu: EdgeNode,
    us: EdgeNode,
    a: Arc<Client>,
    b: Arc<Client>,
    doc: DocumentId,
    _dirs: Vec<tempfile::TempDir>,
}

async fn sides(cloud: &Cloud, title: &str) -> Result<Sides> {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let eu = cloud.edge("eu", 0, dirs[0].path()).await?;
    let us = cloud.edge("us", 1, dirs[1].path()).await?;
    let a = Arc::new(Client::connect(&eu.ws_url(), fast()).await?);
    let b = Arc::new(Client::connect(&us.ws_url(), fast()).await?);
    let title = title.to_owned();
    let doc = a.create(move |tx| tx.put(ROOT, "title", title.as_str()).map(|_| ())).await?;
    a.wait_acked(doc).await?;
    find_eventually(&b, doc).await.context("the document through the other hub")?;
    Ok(Sides { eu, us, a, b, doc, _dirs: dirs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_under_load_loses_nothing_acknowledged_and_its_edges_fail_over() -> Result<()> {
    let mut cloud = tokio::task::spawn_blocking(Cloud::start).await??;
    let Sides { eu, us, a, b, doc, _dirs } = sides(&cloud, "fail-over").await?;

    let (mut acked, mut checked) = (BTreeSet::new(), 0usize);
    for round in 0..4 {
        let victim = round % 2;
        let writers = Writers::start(&a, &b, doc, &format!("r{round}"));
        // Under load: some changes cross before the kill.
        let before = crossed(&a, &b, doc).await.len();
        wait_for(|| async { crossed(&a, &b, doc).await.len() >= before + 20 }, "writes to cross").await?;
        let seen = crossed(&a, &b, doc).await;
        cloud.kill_hub(victim)?;
        let killed = Instant::now();
        // Everything that had crossed was committed by a hub: it is in
        // PostgreSQL, whichever hub died.
        let stored = cloud.stored_keys(doc).await?;
        let lost: Vec<&String> = seen.difference(&stored).collect();
        assert!(lost.is_empty(), "round {round}: {} crossed changes not in PostgreSQL: {lost:?}", lost.len());
        checked += seen.len();
        // The victim's edges move to the other hub and writes cross again.
        let survivor = cloud.quic(1 - victim).to_string();
        for edge in [&eu, &us] {
            wait_for(
                || async { edge.metrics().uplink_in_use().is_some_and(|(addr, _)| addr == survivor) },
                "the fail-over",
            )
            .await?;
        }
        let failed_over = killed.elapsed();
        let n = crossed(&a, &b, doc).await.len();
        wait_for(|| async { crossed(&a, &b, doc).await.len() >= n + 20 }, "writes to cross after the kill").await?;
        println!(
            "round {round}: killed h{} with {} changes crossed, all in PostgreSQL; edges on {survivor} after {failed_over:?}, writes crossing again after {:?}",
            victim + 1,
            seen.len(),
            killed.elapsed()
        );
        acked.extend(writers.stop());
        tokio::task::block_in_place(|| cloud.start_hub(victim))?;
    }
    let took = converge(&a, &b, doc, &acked).await?;
    let stored = cloud.stored_keys(doc).await?;
    let missing: Vec<&String> = acked.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged by an edge but not in PostgreSQL: {missing:?}");
    println!(
        "4 kill rounds: {checked} crossed changes checked in PostgreSQL at the kills, 0 lost; {} acknowledged writes all stored; converged {took:?} after the last round",
        acked.len()
    );
    let failovers = eu.metrics().uplink_failovers_total.get();
    assert!(failovers >= 2, "edge eu failed over {failovers} times");
    // `/info` and `/metrics` name the hub in use.
    let info = meridian_tests::http::request(eu.local_addr().port(), "GET", "/info", &[])?.json()?;
    let in_use = eu.metrics().uplink_in_use().context("eu is connected")?;
    assert_eq!(info["hub"]["addr"], in_use.0.as_str(), "{info}");
    assert_eq!(info["hub"]["hubId"], in_use.1.as_str(), "{info}");
    assert_eq!(info["hub"]["hubs"].as_array().map(Vec::len), Some(2), "{info}");
    let metrics = meridian_tests::http::request(eu.local_addr().port(), "GET", "/metrics", &[])?.text();
    assert!(metrics.contains(&format!("meridian_edge_uplink_hub_in_use{{hub=\"{}\"}} 1", in_use.0)), "{metrics}");
    for c in [a, b] {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    eu.shutdown().await;
    us.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_the_hubs_still_converge_through_the_store() -> Result<()> {
    let mut cloud = tokio::task::spawn_blocking(Cloud::start).await??;
    let Sides { eu, us, a, b, doc, _dirs } = sides(&cloud, "bus down").await?;

    // The bus goes away while both sides write through their own hubs.
    cloud.nats.stop();
    let writers = Writers::start(&a, &b, doc, "down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writers.stop();
    let took = converge(&a, &b, doc, &acked).await.context("converging with NATS down")?;
    println!("NATS down: {} writes through two hubs converged {took:?} after the last", acked.len());

    // The bus is back: a change crosses fast again (not by the store's
    // periodic read).
    tokio::task::block_in_place(|| cloud.nats.restart())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writers = Writers::start(&a, &b, doc, "up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writers.stop();
    let took = converge(&a, &b, doc, &acked).await.context("converging with NATS back")?;
    println!("NATS back: {} writes converged {took:?} after the last", acked.len());
    let stored = cloud.stored_keys(doc).await?;
    assert!(acked.is_subset(&stored), "acknowledged writes missing from PostgreSQL");
    eu.shutdown().await;
    us.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_hubs_retry_and_edges_keep_serving() -> Result<()> {
    let cloud = tokio::task::spawn_blocking(Cloud::start).await??;
    let Sides { eu, us, a, b, doc, _dirs } = sides(&cloud, "database restart").await?;

    let writers = Writers::start(&a, &b, doc, "pg");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| cloud.pg.stop())?;
    // The edges keep acknowledging their clients' writes (their own store).
    let during = {
        let n = writers.acked_so_far();
        tokio::time::sleep(Duration::from_secs(2)).await;
        writers.acked_so_far() - n
    };
    assert!(during > 10, "only {during} writes acknowledged in 2 s with PostgreSQL down");
    tokio::task::block_in_place(|| cloud.pg.restart())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writers.stop();
    let took = converge(&a, &b, doc, &acked).await.context("converging after PostgreSQL came back")?;
    let start = Instant::now();
    loop {
        let stored = cloud.stored_keys(doc).await?;
        if acked.is_subset(&stored) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < WAIT,
            "{} acknowledged writes never reached PostgreSQL",
            acked.difference(&stored).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "PostgreSQL restarted: {during} writes acknowledged while it was down; {} in all, converged {took:?} after it came back, all stored",
        acked.len()
    );
    eu.shutdown().await;
    us.shutdown().await;
    Ok(())
}

/// `GET path` on hub `i` as JSON.
fn hub_json(cloud: &Cloud, i: usize, path: &str) -> Result<serde_json::Value> {
    meridian_tests::http::request(cloud.ports[i].1, "GET", path, &[])?.json()
}

/// The edge `doc` is homed on in a hub's `/placement` (`homes`: what the
/// placer announced, read from the store by the others).
fn home_in(placement: &serde_json::Value, doc: DocumentId) -> Option<String> {
    let homes = placement["homes"].as_array()?;
    homes.iter().find(|h| h["doc"] == doc.to_string().as_str()).and_then(|h| h["edge"].as_str().map(str::to_owned))
}

/// Waits until `done` holds for hub `i`'s `/placement`; returns it.
async fn placement_until(
    cloud: &Cloud,
    i: usize,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        if let Ok(p) = hub_json(cloud, i, "/placement")
            && done(&p)
        {
            return Ok(p);
        }
        anyhow::ensure!(start.elapsed() < WAIT, "timed out waiting for {what} at h{}", i + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes to `doc` through `client` every 50 ms until dropped.
fn keep_writing(client: Arc<Client>, doc: DocumentId, key: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0i64.. {
            let _ = client.change(doc, move |tx| tx.put(ROOT, key, n).map(|_| ())).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placers_hub_killed_another_takes_over_from_the_stored_homes() -> Result<()> {
    let flags = [
        "--placement-moves",
        "--placement-min-gain-ms",
        "0",
        "--report-interval-ms",
        "200",
        "--placement-interval-ms",
        "200",
    ];
    let mut cloud = tokio::task::spawn_blocking(move || Cloud::start_with(&flags)).await??;
    // h1 started first: it holds the lease; h2 follows.
    placement_until(&cloud, 0, "h1 to be the placer", |p| p["placer"]["this_hub"] == true).await?;
    let p2 = placement_until(&cloud, 1, "h2 to see h1 place", |p| p["placer"]["hub"] == "h1").await?;
    assert_eq!(p2["placer"]["this_hub"], false, "{p2:#}");

    // eu on h1 (the placer's hub), us on h2.
    let Sides { eu, us, a, b, doc, _dirs } = sides(&cloud, "placement").await?;
    // A document written only through eu is handed off to eu; the home is
    // in the store, so h2 shows it too.
    let writing = keep_writing(a.clone(), doc, "eu_writes");
    placement_until(&cloud, 0, "eu to be the home", |p| home_in(p, doc).as_deref() == Some("eu")).await?;
    placement_until(&cloud, 1, "h2 to follow the home", |p| home_in(p, doc).as_deref() == Some("eu")).await?;
    // One written only through us (connected to h2) reaches the placer
    // through the store: its demand counts at h1, but the hand-off waits,
    // since us is not connected to h1.
    let other = b.create(|tx| tx.put(ROOT, "title", "us only").map(|_| ())).await?;
    let writing_us = keep_writing(b.clone(), other, "us_writes");
    let p1 = placement_until(&cloud, 0, "us's demand at the placer", |p| {
        p["documents"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["doc"] == other.to_string().as_str() && d["demand"]["us"]["writes_per_sec"].as_f64() > Some(0.0)
            })
        })
    })
    .await?;
    let waiting = p1["handoffs"].as_array().and_then(|h| h.iter().find(|h| h["doc"] == other.to_string().as_str()));
    let topology = hub_json(&cloud, 0, "/topology")?;
    assert!(
        topology["edges_on_other_hubs"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["id"] == "us" && e["hub"] == "h2")),
        "{topology:#}"
    );
    println!("h1 sees us through the store; the hand-off of its document: {waiting:?}");

    // The placer's hub dies.
    cloud.kill_hub(0)?;
    let killed = Instant::now();
    let p2 = placement_until(&cloud, 1, "h2 to take over", |p| p["placer"]["this_hub"] == true).await?;
    let took_over = killed.elapsed();
    assert_eq!(home_in(&p2, doc).as_deref(), Some("eu"), "the stored home survives: {p2:#}");
    // It continues from it: eu stays the home without a new hand-off ...
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p2 = hub_json(&cloud, 1, "/placement")?;
    assert_eq!(home_in(&p2, doc).as_deref(), Some("eu"), "{p2:#}");
    let again = |p: &serde_json::Value, d: DocumentId| {
        p["recent_handoffs"].as_array().is_some_and(|h| h.iter().any(|h| h["doc"] == d.to_string().as_str()))
    };
    assert!(!again(&p2, doc), "h2 handed eu's document off again: {p2:#}");
    // ... and us, now on the placer's hub, gets its document.
    let p2 = placement_until(&cloud, 1, "us to be the home", |p| home_in(p, other).as_deref() == Some("us")).await?;
    assert!(again(&p2, other));
    // Deciding again (eu failed over to h2 and reports there): eu's document stays.
    assert_eq!(p2["placer"]["settling_ms"], serde_json::Value::Null, "{p2:#}");
    assert_eq!(home_in(&p2, doc).as_deref(), Some("eu"), "{p2:#}");
    assert!(!again(&p2, doc), "h2 handed eu's document off again: {p2:#}");
    let metrics = meridian_tests::http::request(cloud.ports[1].1, "GET", "/metrics", &[])?.text();
    assert!(metrics.contains("\nmeridian_hub_placement_is_placer 1\n"), "{metrics}");
    assert!(metrics.contains("\nmeridian_hub_placement_takeovers_total 1\n"), "{metrics}");

    // An operator pins eu's document to us, through the surviving hub.
    let hub = meridian_tests::process::workspace_binary("meridian-hub")?;
    let http = format!("127.0.0.1:{}", cloud.ports[1].1);
    let pin = std::process::Command::new(&hub)
        .args(["placement", "pin", &format!("automerge:{doc}"), "--to", "us", "--hub-http", &http])
        .output()?;
    assert!(pin.status.success(), "{}", String::from_utf8_lossy(&pin.stderr));
    let p2 = placement_until(&cloud, 1, "the pin honoured", |p| home_in(p, doc).as_deref() == Some("us")).await?;
    assert_eq!(p2["pins"][0]["to"], "us", "{p2:#}");
    let unpin = std::process::Command::new(&hub)
        .args(["placement", "unpin", &doc.to_string(), "--hub-http", &http])
        .output()?;
    assert!(unpin.status.success(), "{}", String::from_utf8_lossy(&unpin.stderr));
    let again = std::process::Command::new(&hub)
        .args(["placement", "unpin", &doc.to_string(), "--hub-http", &http])
        .output()?;
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not pinned"));
    println!("placer take-over: h2 placing {took_over:?} after h1 was killed, with the stored homes");
    writing.abort();
    writing_us.abort();
    eu.shutdown().await;
    us.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_carries_every_committed_change_across_a_hub_kill() -> Result<()> {
    let mut cloud = tokio::task::spawn_blocking(|| Cloud::start_with(&["--feed"])).await??;
    let Sides { eu, us, a, b, doc, _dirs } = sides(&cloud, "feed").await?;
    // A consumer from the start of the stream, following.
    let lines = Lines::default();
    let what = meridian_hub::feed::Consume { doc: None, from: None, patches: false, follow: true };
    let reader = tokio::spawn(meridian_hub::feed::consume_retrying(vec![cloud.nats.url()], what, lines.clone()));

    // Writes through both hubs; the hub that relays the feed (the holder of
    // its lease in the store) is killed under them.
    let writers = Writers::start(&a, &b, doc, "feed");
    let n = crossed(&a, &b, doc).await.len();
    wait_for(|| async { crossed(&a, &b, doc).await.len() >= n + 40 }, "writes to cross").await?;
    let url = cloud.pg.url();
    let holder: String = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        Ok(c.query_one("SELECT holder FROM leases WHERE name = 'feed'", &[])?.get(0))
    })
    .await??;
    let relay = if holder.starts_with("h1#") { 0 } else { 1 };
    cloud.kill_hub(relay)?;
    let killed = Instant::now();
    let n = crossed(&a, &b, doc).await.len();
    wait_for(|| async { crossed(&a, &b, doc).await.len() >= n + 40 }, "writes to cross after the kill").await?;
    let acked = writers.stop();
    converge(&a, &b, doc, &acked).await?;

    // Every change PostgreSQL holds reaches the reader.
    let start = Instant::now();
    let (stored, entries) = loop {
        let stored = cloud.stored_changes(doc).await?;
        let entries = lines.entries();
        let fed: BTreeSet<String> = entries.iter().filter_map(|e| e["hash"].as_str().map(str::to_owned)).collect();
        if stored.is_subset(&fed) && acked.is_subset(&cloud.stored_keys(doc).await?) {
            break (stored, entries);
        }
        anyhow::ensure!(
            start.elapsed() < WAIT,
            "{} of {} stored changes never reached the feed",
            stored.difference(&fed).count(),
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = killed.elapsed();
    // Per document, each change after its dependencies; sequences grow.
    let mut seen = BTreeSet::new();
    let mut last_seq = 0;
    for e in &entries {
        let deps: Vec<&str> = e["deps"].as_array().into_iter().flatten().filter_map(|d| d.as_str()).collect();
        assert!(deps.iter().all(|d| seen.contains(*d)), "a change before its dependencies: {e}");
        seen.insert(e["hash"].as_str().unwrap_or_default().to_owned());
        let seq = e["stream_seq"].as_u64().unwrap_or(0);
        assert!(seq > last_seq, "stream sequences go up: {seq} after {last_seq}");
        last_seq = seq;
    }
    let repeats = entries.len() - seen.len();
    println!(
        "feed across a hub kill: {} stored changes, all on the feed ({} messages, {repeats} repeated) {took:?} after the kill",
        stored.len(),
        entries.len()
    );
    reader.abort();

    // The command prints one document's changes, with patches, and stops when caught up.
    let hub = meridian_tests::process::workspace_binary("meridian-hub")?;
    let out = std::process::Command::new(hub)
        .args(["feed", "--bus", &cloud.nats.url(), "--doc", &doc.to_string(), "--patches", "--no-follow"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let hashes: BTreeSet<String> = printed.iter().filter_map(|e| e["hash"].as_str().map(str::to_owned)).collect();
    assert_eq!(hashes, stored, "the command's changes are the stored ones");
    let first = &printed[0];
    assert_eq!(first["doc"], doc.to_string().as_str());
    assert_eq!(first["patches"][0]["patch"]["key"], "title", "{first}");
    let resumed = std::process::Command::new(meridian_tests::process::workspace_binary("meridian-hub")?)
        .args(["feed", "--bus", &cloud.nats.url(), "--no-follow", "--from", &last_seq.to_string()])
        .output()?;
    let resumed = String::from_utf8_lossy(&resumed.stdout).lines().count();
    assert_eq!(resumed, 1, "from the last sequence: one line");
    eu.shutdown().await;
    us.shutdown().await;
    Ok(())
}

/// A hub's `/metrics` value `name` (0 when absent).
fn hub_metric(cloud: &Cloud, i: usize, name: &str) -> u64 {
    meridian_tests::http::metric(cloud.ports[i].1, name).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_fails_over_between_the_nodes_of_a_nats_cluster() -> Result<()> {
    let mut cloud = tokio::task::spawn_blocking(|| Cloud::start_on(&[], 3)).await??;
    let Sides { eu, us, a, b, doc, _dirs } = sides(&cloud, "nats cluster").await?;
    let writers = Writers::start(&a, &b, doc, "cluster");
    // Both hubs prefer node 1, then 2: kill 1, then 2; node 3 is left.
    for node in 0..2 {
        let connects: Vec<u64> = (0..2).map(|h| hub_metric(&cloud, h, "meridian_hub_bus_connects_total")).collect();
        let received: Vec<u64> = (0..2).map(|h| hub_metric(&cloud, h, "meridian_hub_bus_received_total")).collect();
        cloud.cluster[node].stop();
        let killed = Instant::now();
        // Each hub connects to a node still up, and commits cross on the bus again.
        for (h, before) in connects.iter().enumerate() {
            wait_for(
                || async {
                    hub_metric(&cloud, h, "meridian_hub_bus_connected") == 1
                        && hub_metric(&cloud, h, "meridian_hub_bus_connects_total") > *before
                },
                "the hub to reach another NATS node",
            )
            .await?;
        }
        let reconnected = killed.elapsed();
        for (h, received) in received.iter().enumerate() {
            let before = (*received).max(hub_metric(&cloud, h, "meridian_hub_bus_received_total"));
            wait_for(
                || async { hub_metric(&cloud, h, "meridian_hub_bus_received_total") >= before + 20 },
                "commits on the bus again",
            )
            .await?;
        }
        println!(
            "NATS node {} killed: both hubs on another node after {reconnected:?}, the bus carrying commits again after {:?}",
            node + 1,
            killed.elapsed()
        );
    }
    let acked = writers.stop();
    let took = converge(&a, &b, doc, &acked).await?;
    let stored = cloud.stored_keys(doc).await?;
    assert!(acked.is_subset(&stored), "acknowledged writes missing from PostgreSQL");
    println!("two of three NATS nodes killed under writes: {} writes converged {took:?} after the last", acked.len());
    eu.shutdown().await;
    us.shutdown().await;
    Ok(())
}
