//! Placement scenarios across simulated regions (issue 6), with real
//! processes: a hub in `us`, edges `eu`, `us` and `ap`, every link through
//! a fault proxy (eu–us 40 ms, us–ap 90 ms, eu–ap 120 ms one way; see
//! `meridian_tests::regions`). Placement moves are on, with 200 ms report
//! and placement intervals and no dwell, so each scenario takes seconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::fault_proxy::FaultHandle;
use meridian_tests::regions::{Cluster, announced, until};
use serde_json::Value;

/// Writes `{prefix}-{n}` through `client` until `stop`, pausing
/// `pause_ms` (changeable while it runs) between writes, and records each
/// key once the edge acknowledged it.
async fn writer(
    client: Arc<Client>,
    doc: DocumentId,
    prefix: &'static str,
    pause_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<String>> {
    let mut acked = Vec::new();
    for n in 0u64.. {
        if stop.load(Relaxed) {
            break;
        }
        let key = format!("{prefix}-{n}");
        let k = key.clone();
        client.change(doc, move |tx| tx.put(ROOT, k.as_str(), n).map(|_| ())).await?;
        client.wait_acked(doc).await?;
        acked.push(key);
        tokio::time::sleep(Duration::from_millis(pause_ms.load(Relaxed))).await;
    }
    Ok(acked)
}

struct Writer {
    pause_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<String>>>,
}

impl Writer {
    fn start(client: Arc<Client>, doc: DocumentId, prefix: &'static str, pause_ms: u64) -> Self {
        let (pause_ms, stop) = (Arc::new(AtomicU64::new(pause_ms)), Arc::new(AtomicBool::new(false)));
        let task = tokio::spawn(writer(client, doc, prefix, pause_ms.clone(), stop.clone()));
        Self { pause_ms, stop, task }
    }

    /// Stops it; the keys the edge acknowledged.
    async fn finish(self) -> Result<Vec<String>> {
        self.stop.store(true, Relaxed);
        self.task.await?
    }
}

fn keys(d: &Automerge) -> Vec<String> {
    d.keys(ROOT).collect()
}

/// Waits until the client's copy holds every key in `expected`.
async fn holds_all(client: &Client, doc: DocumentId, expected: &[String], what: &str) -> Result<()> {
    let expected: Arc<Vec<String>> = Arc::new(expected.to_vec());
    let e = expected.clone();
    let all = client.wait_for(doc, move |d| e.iter().all(|k| d.get(ROOT, k.as_str()).ok().flatten().is_some()));
    if tokio::time::timeout(Duration::from_secs(30), all).await.is_err() {
        let have = client.read(doc, keys).await.unwrap_or_default();
        let missing: Vec<&String> = expected.iter().filter(|k| !have.contains(k)).collect();
        anyhow::bail!("{what} lacks {} acknowledged keys, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    }
    Ok(())
}

async fn announced_home(cluster: &Cluster, doc: DocumentId, region: &str) -> Result<Value> {
    let id = doc.to_string();
    let what = format!("home {region} announced");
    cluster.until_hub("/placement", &what, |p| announced(p, &id).as_deref() == Some(region)).await
}

fn handoffs_of(placement: &Value, doc: DocumentId) -> Vec<Value> {
    let id = doc.to_string();
    placement["recent_handoffs"]
        .as_array()
        .map_or(Vec::new(), |h| h.iter().filter(|h| h["doc"] == id.as_str()).cloned().collect())
}

/// A document written only in `eu` gets its home on `eu`; when the `eu`
/// clients leave and `ap` clients write, it moves to `ap`, and `ap` held
/// every change `eu` had acknowledged. Every edge is told each home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_used_in_eu_lives_in_eu_then_moves_to_ap_when_ap_writes() -> Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let eu = Arc::new(Client::connect(&cluster.edge("eu").ws_url(), fast()).await?);
    let doc = eu.create(|tx| tx.put(ROOT, "title", "regional").map(|_| ())).await?;
    let eu_writer = Writer::start(eu.clone(), doc, "eu", 20);
    let placement = announced_home(&cluster, doc, "eu").await?;
    let h = handoffs_of(&placement, doc);
    ensure!(h.len() == 1 && h[0]["from"] == "hub" && h[0]["to"]["edge"] == "eu", "{h:?}");
    for r in ["eu", "us", "ap"] {
        until(cluster.edge(r).port, "/homes", &format!("{r} told the home is eu"), |v| {
            v["homes"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["doc"] == doc.to_string().as_str() && h["home"] == "eu"))
        })
        .await?;
    }
    let eu_acked = eu_writer.finish().await?;
    drop(eu);

    let ap = Arc::new(Client::connect(&cluster.edge("ap").ws_url(), fast()).await?);
    find_eventually(&ap, doc).await?;
    let ap_writer = Writer::start(ap.clone(), doc, "ap", 20);
    let placement = announced_home(&cluster, doc, "ap").await?;
    let entry = meridian_tests::regions::doc_entry(&placement, &doc.to_string()).context("entry")?;
    eprintln!("moved to ap: {entry:#}\nhand-offs: {:#?}", handoffs_of(&placement, doc));
    // What the new home holds, through a fresh client of it.
    let probe = Client::connect(&cluster.edge("ap").ws_url(), fast()).await?;
    probe.find(doc).await?;
    holds_all(&probe, doc, &eu_acked, "the new home ap").await?;
    let ap_acked = ap_writer.finish().await?;
    let us = Client::connect(&cluster.edge("us").ws_url(), fast()).await?;
    find_eventually(&us, doc).await?;
    holds_all(&us, doc, &[eu_acked, ap_acked].concat(), "us").await?;
    Ok(())
}

/// A document created in `eu`, then written from `eu` and `us` at the same
/// rate: `eu`, the hub (in `us`) and `us` cost about the same (one 80 ms
/// round trip for half the writes), so once placed it stays there: the
/// hysteresis keeps noise in the rates from moving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_written_from_eu_and_us_settles_and_stays() -> Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let eu = Arc::new(Client::connect(&cluster.edge("eu").ws_url(), fast()).await?);
    let doc = eu.create(|tx| tx.put(ROOT, "title", "shared").map(|_| ())).await?;
    eu.wait_acked(doc).await?;
    let us = Arc::new(Client::connect(&cluster.edge("us").ws_url(), fast()).await?);
    find_eventually(&us, doc).await?;
    let writers = [Writer::start(eu.clone(), doc, "eu", 50), Writer::start(us.clone(), doc, "us", 50)];
    let id = doc.to_string();
    // Both edges' writes are in the hub's view...
    cluster
        .until_hub("/placement", "demand from eu and us", |p| {
            meridian_tests::regions::doc_entry(p, &id).is_some_and(|d| {
                d["demand"]["eu"]["writes_per_sec"].as_f64().unwrap_or(0.0) > 0.0
                    && d["demand"]["us"]["writes_per_sec"].as_f64().unwrap_or(0.0) > 0.0
            })
        })
        .await?;
    // ... the first placement is announced (it may have happened before
    // us wrote: then it went to eu) ...
    let settled = cluster
        .until_hub("/placement", "decided and announced homes agree", |p| {
            meridian_tests::regions::doc_entry(p, &id).is_some_and(|d| d["home"] == d["announced_home"])
        })
        .await?;
    let moves_of =
        |p: &Value| p["recent_moves"].as_array().map_or(0, |m| m.iter().filter(|m| m["doc"] == id.as_str()).count());
    let (home, moves) =
        (meridian_tests::regions::doc_entry(&settled, &id).context("tracked")?["home"].clone(), moves_of(&settled));
    // ... and for 3 s (15 placement ticks) of steady demand it stays.
    for _ in 0..30 {
        let p = meridian_tests::regions::get_json(cluster.hub.http_port, "/placement").await?;
        let d = meridian_tests::regions::doc_entry(&p, &id).context("tracked")?;
        ensure!(
            d["home"] == home && d["announced_home"] == home,
            "it moved from {home} while demand was steady: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = meridian_tests::regions::get_json(cluster.hub.http_port, "/placement").await?;
    eprintln!("settled: {:#}", meridian_tests::regions::doc_entry(&p, &id).context("tracked")?);
    ensure!(moves_of(&p) == moves && moves <= 1, "{} moves", moves_of(&p));
    for w in writers {
        w.finish().await?;
    }
    Ok(())
}

/// Writers in `eu` and `ap` whose rates swap (so the home moves back and
/// forth) while links to the hub and between edges are cut and healed: no
/// acknowledged change is lost and every replica converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_partitions_during_moves_lose_nothing() -> Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let eu = Arc::new(Client::connect(&cluster.edge("eu").ws_url(), fast()).await?);
    let doc = eu.create(|tx| tx.put(ROOT, "title", "chaos").map(|_| ())).await?;
    eu.wait_acked(doc).await?;
    let ap = Arc::new(Client::connect(&cluster.edge("ap").ws_url(), fast()).await?);
    find_eventually(&ap, doc).await?;
    let eu_writer = Writer::start(eu.clone(), doc, "eu", 10);
    let ap_writer = Writer::start(ap.clone(), doc, "ap", 400);
    announced_home(&cluster, doc, "eu").await?;

    // ap becomes the busy writer while its uplink is cut, then eu's link to
    // ap: the move to ap happens around the faults.
    let faults: [(FaultHandle, &str); 3] = [
        (cluster.uplink("ap"), "ap's uplink"),
        (cluster.peer_link("eu", "ap"), "eu→ap"),
        (cluster.peer_link("ap", "eu"), "ap→eu"),
    ];
    eu_writer.pause_ms.store(400, Relaxed);
    ap_writer.pause_ms.store(10, Relaxed);
    for (f, what) in &faults {
        eprintln!("cutting {what}");
        f.partition_both();
        tokio::time::sleep(Duration::from_millis(700)).await;
        f.heal();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    announced_home(&cluster, doc, "ap").await?;
    // Back to eu, with eu's uplink cut for a while.
    eu_writer.pause_ms.store(10, Relaxed);
    ap_writer.pause_ms.store(400, Relaxed);
    cluster.uplink("eu").partition_both();
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.uplink("eu").heal();
    announced_home(&cluster, doc, "eu").await?;

    let acked = [eu_writer.finish().await?, ap_writer.finish().await?].concat();
    eprintln!("{} acknowledged writes", acked.len());
    let placement = meridian_tests::regions::get_json(cluster.hub.http_port, "/placement").await?;
    ensure!(handoffs_of(&placement, doc).len() >= 3, "{:#?}", handoffs_of(&placement, doc));
    // Every replica: both writers, a fresh client of us, and the hub itself.
    let us = Client::connect(&cluster.edge("us").ws_url(), fast()).await?;
    find_eventually(&us, doc).await?;
    let hub = Client::connect(&cluster.hub.ws_url(), fast()).await?;
    find_eventually(&hub, doc).await?;
    let replicas: [(&Client, &str); 4] = [(&eu, "eu"), (&ap, "ap"), (&us, "us"), (&hub, "the hub")];
    for (client, what) in replicas {
        holds_all(client, doc, &acked, what).await?;
    }
    let heads = Arc::new(Mutex::new(Vec::new()));
    for (client, _) in replicas {
        let h = client.read(doc, |d| d.get_heads()).await.context("loaded")?;
        heads.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(h);
    }
    let heads = heads.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    ensure!(heads.windows(2).all(|w| w[0] == w[1]) || converge(&replicas, doc).await?, "heads differ: {heads:?}");
    Ok(())
}

/// Heads may still be moving right after the writers stop: wait for them.
async fn converge(replicas: &[(&Client, &str); 4], doc: DocumentId) -> Result<bool> {
    for _ in 0..100 {
        let mut all = Vec::new();
        for (c, _) in replicas {
            all.push(c.read(doc, |d| d.get_heads()).await);
        }
        if all.windows(2).all(|w| w[0] == w[1]) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}
