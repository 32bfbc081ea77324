//! `meridian-placement-bench`: placement on vs hub-only, same regional
//! topology, same run (issue 6). `cargo xtask bench placement` builds the
//! release binaries and runs it.
//!
//! The topology is `meridian_tests::regions`: a hub in `us`, edges `eu`,
//! `us` and `ap`, every link through a fault proxy (eu–us 40 ms, us–ap
//! 90 ms, eu–ap 120 ms one way). Every edge keeps a tiny disk budget and
//! evicts idle documents from memory after a second, so what is not hot at
//! an edge lives only in the cloud copy. Two measurements, each mode on a
//! fresh cluster:
//!
//! - **change → durable at the home**: a client of `ap` writes a document
//!   used only in `ap`; the time from the change to the moment an observer
//!   client connected to the document's home (the `ap` edge with placement,
//!   the hub without) sees it. Nodes only advertise committed changes, so
//!   that is when the change is durable at the home.
//! - **cold open**: documents written in `ap` earlier and idle since; a
//!   fresh client of `ap` opens each one. With placement `ap` is their home
//!   and keeps them; hub-only, the disk budget dropped them for the hub's
//!   copy, so the open fetches from the hub.
//! - **bytes crossing regions per change** (the fault proxies' counters,
//!   both ways, every link between two regions, less what crosses while
//!   nobody writes): a document written by a client of `ap` alone, and one
//!   written in turn by clients of `ap` and `eu`; each change is waited
//!   for until every writer has it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_edge::client::{Client, ConnectionState};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::bench::{Args, percentile};
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::regions::{Cluster, announced, get_json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    HubOnly,
    Placement,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::HubOnly => "hub-only",
            Mode::Placement => "placement",
        }
    }
}

struct Options {
    writes: usize,
    docs: usize,
}

#[derive(Default)]
struct Samples {
    durable_ms: Vec<f64>,
    cold_ms: Vec<f64>,
    /// Bytes crossing regions per change: written from `ap`; from `ap` and `eu`.
    bytes_one: f64,
    bytes_two: f64,
}

fn parse() -> Result<Options> {
    let args = Args::from_env();
    Ok(Options { writes: args.value("--writes", 10, 200)? as usize, docs: args.value("--docs", 2, 20)? as usize })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let options = parse()?;
    let mut results = Vec::new();
    for mode in [Mode::HubOnly, Mode::Placement] {
        eprintln!("== {} ==", mode.name());
        results.push(run(mode, &options).await.with_context(|| mode.name())?);
    }
    println!("{}", table(&results[0], &results[1], &options));
    Ok(())
}

async fn run(mode: Mode, options: &Options) -> Result<Samples> {
    // 1 byte of disk: everything that may leave an edge does.
    let edge_flags = ["--disk-budget-mb", "0.000001", "--idle-evict-secs", "1"];
    let cluster = Cluster::start_with(mode == Mode::Placement, &[], &edge_flags).await?;
    let home = if mode == Mode::Placement { "ap" } else { "hub" };
    let mut samples = Samples::default();
    durable_at_home(&cluster, home, options, &mut samples).await?;
    cold_opens(&cluster, home, options, &mut samples).await?;
    drop(cluster);
    // Traffic on a cluster of edges as they run by default (the tiny disk
    // budget above keeps documents moving to the hub and back).
    let cluster = Cluster::start_with(mode == Mode::Placement, &[], &[]).await?;
    samples.bytes_one = traffic(&cluster, &["ap"], options).await?;
    samples.bytes_two = traffic(&cluster, &["ap", "eu"], options).await?;
    Ok(samples)
}

async fn connected(url: &str) -> Result<Client> {
    let client = Client::connect(url, fast()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.connection_state().await? != ConnectionState::Connected {
        if Instant::now() > deadline {
            bail!("no connection to {url}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(client)
}

/// Writes to `doc` through `client` until its announced home is `home`.
async fn warm_up(cluster: &Cluster, client: &Client, docs: &[DocumentId], home: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0i64.. {
        for doc in docs {
            client.change(*doc, move |tx| tx.put(ROOT, "warm", n).map(|_| ())).await?;
        }
        let p = get_json(cluster.hub.http_port, "/placement").await?;
        if docs.iter().all(|d| announced(&p, &d.to_string()).as_deref() == Some(home)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the documents never got their home {home}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn durable_at_home(cluster: &Cluster, home: &str, options: &Options, samples: &mut Samples) -> Result<()> {
    let writer = connected(&cluster.edge("ap").ws_url()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "title", "regional").map(|_| ())).await?;
    warm_up(cluster, &writer, &[doc], home).await?;
    let url = if home == "hub" { cluster.hub.ws_url() } else { cluster.edge(home).ws_url() };
    let observer = Arc::new(connected(&url).await?);
    find_eventually(&observer, doc).await?;
    for i in 0..options.writes {
        let key = format!("k{i}");
        let k = key.clone();
        let started = Instant::now();
        writer.change(doc, move |tx| tx.put(ROOT, k.as_str(), i as i64).map(|_| ())).await?;
        let seen = observer.wait_for(doc, move |d| d.get(ROOT, key.as_str()).ok().flatten().is_some());
        tokio::time::timeout(Duration::from_secs(20), seen).await.context("the change never reached the home")??;
        samples.durable_ms.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn cold_opens(cluster: &Cluster, home: &str, options: &Options, samples: &mut Samples) -> Result<()> {
    let ap = cluster.edge("ap");
    let writer = connected(&ap.ws_url()).await?;
    let mut docs = Vec::new();
    for i in 0..options.docs {
        docs.push(writer.create(move |tx| tx.put(ROOT, "n", i as i64).map(|_| ())).await?);
    }
    warm_up(cluster, &writer, &docs, home).await?;
    for doc in &docs {
        writer.wait_acked(*doc).await?;
    }
    writer.close().await;
    // Idle for longer than the memory eviction, plus a few disk-budget
    // checks (hub-only: until every document went to the cloud copy).
    tokio::time::sleep(Duration::from_secs(3)).await;
    if home == "hub" {
        let deadline = Instant::now() + Duration::from_secs(30);
        while offloaded(ap.port).await? < options.docs as f64 {
            anyhow::ensure!(Instant::now() < deadline, "the ap edge kept its copies");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for doc in docs {
        let reader = connected(&ap.ws_url()).await?;
        let started = Instant::now();
        find_eventually(&reader, doc).await?;
        samples.cold_ms.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(reader.read(doc, |d| d.get(ROOT, "n").ok().flatten().is_some()).await == Some(true));
        reader.close().await;
    }
    Ok(())
}

/// Bytes crossing regions per change to a document written in turn by a
/// client of each edge in `regions`, a change every 50 ms (people typing),
/// each waited for until every writer and the hub's copy have it; less what
/// crosses while nobody writes (reports, keep-alives), measured first.
/// Placement settles the document's home during a warm-up of such writes.
async fn traffic(cluster: &Cluster, regions: &[&str], options: &Options) -> Result<f64> {
    let mut writers = Vec::new();
    for r in regions {
        writers.push(connected(&cluster.edge(r).ws_url()).await?);
    }
    let doc = writers[0].create(|tx| tx.put(ROOT, "title", "traffic").map(|_| ())).await?;
    for w in &writers[1..] {
        find_eventually(w, doc).await?;
    }
    let hub = connected(&cluster.hub.ws_url()).await?;
    find_eventually(&hub, doc).await?;
    let write = |key: String, value: i64, by: usize| {
        let (writers, hub) = (&writers, &hub);
        async move {
            let k = key.clone();
            writers[by].change(doc, move |tx| tx.put(ROOT, k.as_str(), value).map(|_| ())).await?;
            for w in writers.iter().chain([hub]) {
                let key = key.clone();
                let seen = w.wait_for(doc, move |d| d.get(ROOT, key.as_str()).ok().flatten().is_some());
                tokio::time::timeout(Duration::from_secs(20), seen).await.context("a change never arrived")??;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            anyhow::Ok(())
        }
    };
    for n in 0..40i64 {
        write(format!("warm{}", n % 4), n, n as usize % writers.len()).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_from = cluster.cross_region_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_per_sec = (cluster.cross_region_bytes() - idle_from) as f64 / 2.0;
    let before = cluster.cross_region_links();
    let started = Instant::now();
    for i in 0..options.writes {
        write(format!("k{i}"), i as i64, i % writers.len()).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = started.elapsed();
    let after = cluster.cross_region_links();
    let per_link: Vec<(String, u64)> =
        after.iter().zip(&before).map(|((link, a), (_, b))| (link.clone(), a - b)).filter(|(_, d)| *d > 0).collect();
    eprintln!(
        "  {regions:?}: {} writes in {took:?}, bytes per link {per_link:?}, idle {idle_per_sec:.0} B/s",
        options.writes
    );
    let bytes: u64 = per_link.iter().map(|(_, d)| d).sum();
    for w in writers.into_iter().chain([hub]) {
        w.close().await;
    }
    Ok((bytes as f64 - idle_per_sec * took.as_secs_f64()).max(0.0) / options.writes as f64)
}

/// `meridian_edge_offloaded_total` of the edge on `port`.
async fn offloaded(port: u16) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let line = body.lines().find_map(|l| l.strip_prefix("meridian_edge_offloaded_total "));
    Ok(line.and_then(|v| v.trim().parse().ok()).unwrap_or(0.0))
}

fn table(hub: &Samples, placed: &Samples, options: &Options) -> String {
    let mut out = format!(
        "Placement on vs hub-only (hub in us; eu-us 40 ms, us-ap 90 ms, eu-ap 120 ms one way; \
         {} writes, {} cold opens per mode; a client of the ap edge)\n\n\
         | measure | hub-only | placement | hub-only / placement |\n|---|---:|---:|---:|\n",
        options.writes, options.docs
    );
    let rows = [
        ("change → durable at the home, p50", &hub.durable_ms, &placed.durable_ms, 50.0),
        ("change → durable at the home, p99", &hub.durable_ms, &placed.durable_ms, 99.0),
        ("cold open of a regional document, p50", &hub.cold_ms, &placed.cold_ms, 50.0),
        ("cold open of a regional document, p99", &hub.cold_ms, &placed.cold_ms, 99.0),
    ];
    for (name, a, b, p) in rows {
        let (x, y) = (percentile(a, p), percentile(b, p));
        out.push_str(&format!("| {name} | {x:.1} ms | {y:.1} ms | {:.1}× |\n", x / y));
    }
    let bytes = [
        ("bytes crossing regions per change, a document written from ap", hub.bytes_one, placed.bytes_one),
        ("bytes crossing regions per change, a document written from ap and eu", hub.bytes_two, placed.bytes_two),
    ];
    for (name, x, y) in bytes {
        out.push_str(&format!("| {name} | {x:.0} B | {y:.0} B | {:.1}× |\n", x / y));
    }
    out
}
