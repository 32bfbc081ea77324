//! `meridian-cloud-bench`: what the cloud tier past one machine costs
//! (issue 16), in one run. `cargo xtask bench cloud` builds it in release
//! and runs it; `--smoke` keeps it from rotting in the test command.
//!
//! - **Propagation**: a client of edge A writes, a client of edge B sees
//!   the change; the time from the change to the observer having it, over
//!   four cloud tiers: one hub on SQLite (the embedded default), one hub
//!   on PostgreSQL, and two hubs on one PostgreSQL with the NATS bus (edge A
//!   on hub 1, edge B on hub 2: A → hub 1 → PostgreSQL and NATS → hub 2 →
//!   B), without and with the change feed relayed to JetStream. Hubs and
//!   edges run in this process, on loopback.
//! - **Durable writes per second** of the hub's store: the storage thread's
//!   group commit (batches of 1 and of 64 appended changes over 100
//!   documents) on SQLite (with fsync per commit, the hub's default, and with `--unsafe-no-fsync`)
//!   and on PostgreSQL 15 with its default durability (fsync on).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_node::quic::HubTrust;
use meridian_node::store::{DocStore, PostgresStore, SqliteStore, StoreOptions};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{AutoCommit, ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use meridian_tests::bench::{Args, percentile};
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::nats::Nats;
use meridian_tests::pg::Postgres;

struct Options {
    writes: usize,
    store_time: Duration,
}

fn parse() -> Result<Options> {
    let args = Args::from_env();
    Ok(Options {
        writes: args.value("--writes", 10, 500)? as usize,
        store_time: Duration::from_secs(args.value("--seconds", 1, 5)?),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let options = parse()?;
    let pg = tokio::task::spawn_blocking(Postgres::start_durable).await??;
    let nats = Nats::start()?;

    let mut propagation = Vec::new();
    for tier in [Tier::OneHubSqlite, Tier::OneHubPostgres, Tier::TwoHubs, Tier::TwoHubsFeed] {
        eprintln!("== propagation: {} ==", tier.name());
        let samples = propagate(tier, &pg, &nats, options.writes).await.with_context(|| tier.name())?;
        propagation.push((tier, samples));
    }
    let mut writes = Vec::new();
    for store in [Store::Sqlite, Store::SqliteFsync, Store::Postgres] {
        for batch in [1, 64] {
            eprintln!("== durable writes: {} in batches of {batch} ==", store.name());
            let url = pg.url();
            let time = options.store_time;
            let rate = tokio::task::spawn_blocking(move || write_rate(store, &url, batch, time)).await??;
            writes.push((store, batch, rate));
        }
    }
    println!("{}", table(&propagation, &writes, &options));
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    OneHubSqlite,
    OneHubPostgres,
    TwoHubs,
    /// With the change feed relayed to JetStream meanwhile.
    TwoHubsFeed,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::OneHubSqlite => "one hub, SQLite",
            Tier::OneHubPostgres => "one hub, PostgreSQL",
            Tier::TwoHubs => "two hubs, PostgreSQL + NATS",
            Tier::TwoHubsFeed => "two hubs, PostgreSQL + NATS, with the change feed (--feed)",
        }
    }
}

/// A hub of the tier (both PostgreSQL tiers use one database; each
/// measures a document of its own).
async fn hub(tier: Tier, pg: &Postgres, nats: &Nats, dir: &std::path::Path) -> Result<Hub> {
    let mut config = HubConfig::new(dir).ephemeral_ports().edge("a", "a-secret").edge("b", "b-secret");
    if tier != Tier::OneHubSqlite {
        config.store = Some(pg.url());
    }
    if matches!(tier, Tier::TwoHubs | Tier::TwoHubsFeed) {
        config.bus = vec![nats.url()];
        config.feed = tier == Tier::TwoHubsFeed;
    }
    Ok(Hub::start(config).await?)
}

async fn edge(hub: &Hub, id: &str, dir: &std::path::Path) -> Result<EdgeNode> {
    let uplink = UplinkConfig::new(hub.quic_addr(), id, format!("{id}-secret"), HubTrust::CaFile(hub.ca_path().into()));
    let config = EdgeConfig::new(dir).ephemeral_port().peer_id(format!("edge-{id}")).uplink(uplink);
    let edge = EdgeNode::start(config).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.metrics().uplink_in_use().is_none() {
        anyhow::ensure!(Instant::now() < deadline, "edge {id}: no uplink");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(edge)
}

/// Milliseconds from each change through edge A to a client of edge B having it.
async fn propagate(tier: Tier, pg: &Postgres, nats: &Nats, writes: usize) -> Result<Vec<f64>> {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let hub1 = hub(tier, pg, nats, dirs[0].path()).await?;
    let hub2 = match tier {
        Tier::TwoHubs | Tier::TwoHubsFeed => Some(hub(tier, pg, nats, dirs[1].path()).await?),
        _ => None,
    };
    let a = edge(&hub1, "a", dirs[2].path()).await?;
    let b = edge(hub2.as_ref().unwrap_or(&hub1), "b", dirs[3].path()).await?;
    let writer = Client::connect(&a.ws_url(), fast()).await?;
    let observer = Client::connect(&b.ws_url(), fast()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "title", "propagation").map(|_| ())).await?;
    writer.wait_acked(doc).await?;
    find_eventually(&observer, doc).await?;
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let key = format!("k{i}");
        let k = key.clone();
        let started = Instant::now();
        writer.change(doc, move |tx| tx.put(ROOT, k.as_str(), i as i64).map(|_| ())).await?;
        let seen = observer.wait_for(doc, move |d| d.get(ROOT, key.as_str()).ok().flatten().is_some());
        tokio::time::timeout(Duration::from_secs(20), seen).await.context("a change never arrived")??;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    writer.close().await;
    observer.close().await;
    a.shutdown().await;
    b.shutdown().await;
    if let Some(h) = hub2 {
        h.shutdown().await;
    }
    hub1.shutdown().await;
    Ok(samples)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Sqlite,
    SqliteFsync,
    Postgres,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "SQLite --unsafe-no-fsync",
            Store::SqliteFsync => "SQLite (hub default: fsync per commit)",
            Store::Postgres => "PostgreSQL 15 (fsync on)",
        }
    }
}

/// Appended changes committed per second, in batches of `batch`, for `time`.
fn write_rate(store: Store, url: &str, batch: usize, time: Duration) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut db: Box<dyn DocStore> = match store {
        Store::Sqlite | Store::SqliteFsync => Box::new(SqliteStore::open_with(
            &dir.path().join("hub.sqlite3"),
            StoreOptions { fsync: store == Store::SqliteFsync },
        )?),
        Store::Postgres => Box::new(PostgresStore::open(url)?),
    };
    // 100 documents, each with a writer making small changes.
    let mut docs: Vec<(DocumentId, AutoCommit)> =
        (0..100u8).map(|i| (DocumentId::from_bytes([i.wrapping_add(batch as u8); 16]), AutoCommit::new())).collect();
    let (mut written, mut next_id, started) = (0u64, 0u64, Instant::now());
    while started.elapsed() < time {
        let tasks: Vec<(StorageTaskId, StorageTask)> = (0..batch)
            .map(|_| {
                let (doc, writer) = &mut docs[(next_id % 100) as usize];
                writer.put(ROOT, "n", next_id as i64).expect("put");
                let data = writer.save_incremental();
                next_id += 1;
                (StorageTaskId(next_id), StorageTask::AppendChunk { doc: *doc, data })
            })
            .collect();
        let results = db.execute_batch(&tasks);
        anyhow::ensure!(results.iter().all(|(_, r)| *r == StorageResult::Done), "a write failed: {results:?}");
        written += batch as u64;
    }
    Ok(written as f64 / started.elapsed().as_secs_f64())
}

fn table(propagation: &[(Tier, Vec<f64>)], writes: &[(Store, usize, f64)], options: &Options) -> String {
    let base = propagation.first().map(|(_, s)| (percentile(s, 50.0), percentile(s, 99.0)));
    let mut out = format!(
        "Propagation: a client of edge A writes, a client of edge B sees it ({} sequential writes per tier; \
         hubs and edges in one process on loopback)\n\n\
         | cloud tier | p50 | p99 | p50 / one hub on SQLite |\n|---|---:|---:|---:|\n",
        options.writes
    );
    for (tier, samples) in propagation {
        let (p50, p99) = (percentile(samples, 50.0), percentile(samples, 99.0));
        let ratio = base.map_or(f64::NAN, |(b, _)| p50 / b);
        out.push_str(&format!("| {} | {p50:.2} ms | {p99:.2} ms | {ratio:.2}× |\n", tier.name()));
    }
    out.push_str(&format!(
        "\nDurable writes per second of the hub's store ({:?} each; small appended changes over 100 documents)\n\n\
         | store | batch of 1 | batch of 64 |\n|---|---:|---:|\n",
        options.store_time
    ));
    for store in [Store::Sqlite, Store::SqliteFsync, Store::Postgres] {
        let rate = |b: usize| writes.iter().find(|(s, n, _)| *s == store && *n == b).map_or(f64::NAN, |w| w.2);
        out.push_str(&format!("| {} | {:.0}/s | {:.0}/s |\n", store.name(), rate(1), rate(64)));
    }
    out
}
