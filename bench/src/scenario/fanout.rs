//! One writer, N watchers on one document: how long a change takes from
//! the writer's send to each watcher's receipt.
//!
//! The writer makes each change live, with its sequence number and send
//! time (µs on this process's clock) as the commit message, and notes both
//! in a table shared with the watchers (same process, same clock). A
//! watcher holds change k once a message advertises heads at or past k (a
//! server may send several changes at once, or a whole document to a
//! watcher that fell far behind); it records now - send time of every
//! change it newly holds in an HDR histogram and acknowledges the heads as
//! a real peer would.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::ChangeHash;
use hdrhistogram::Histogram;
use meridian_protocol::codec::Message;
use meridian_protocol::ids::{DocumentId, PeerId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Figure, histogram, ms, wait_heads};
use crate::peer;
use crate::server::Server;
use crate::wire::{Conn, sync_payload};
use crate::workload::{TextWriter, ack, doc_id, empty_request, push, run_salt};

/// Changes the document has before watchers join, so later single changes
/// travel as changes (automerge sends a whole document when a peer lacks
/// more than a third of it).
const PRELUDE: u64 = 10;

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub watchers: usize,
    pub changes: u64,
    pub interval: Duration,
}

fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub async fn run(server: &Server, p: Params) -> Result<Vec<Figure>> {
    let salt = run_salt();
    let doc = doc_id(salt, 0);
    let mut writer = TextWriter::new(salt, 0);
    let mut conn = Conn::join(&server.url, PeerId::new(format!("writer-{salt:x}"))).await?;
    let mut changes = vec![writer.first_change()];
    changes.extend((1..=PRELUDE).map(|k| writer.type_some(k, None)));
    let head = changes.last().map(|c| c.0).context("no changes")?;
    conn.tx.sync(doc, push(vec![head], changes.into_iter().map(|c| c.1).collect())).await?;
    wait_heads(&mut conn.rx, doc, head, Duration::from_secs(30)).await?;

    let watchers = join_watchers(&server.url, salt, doc, head, p.watchers).await?;
    let sent = Arc::new(RwLock::new(Sent::default()));
    let mut tasks = JoinSet::new();
    for w in watchers {
        tasks.spawn(watch(w, doc, p.changes, sent.clone()));
    }
    // The writer's acknowledgements are drained so its socket never backs up.
    let Conn { mut tx, mut rx } = conn;
    let drain = tokio::spawn(async move { while rx.recv().await.is_ok() {} });
    for k in 1..=p.changes {
        let at = now_us();
        let (hash, bytes) = writer.type_some(PRELUDE + k, Some(format!("{k} {at}")));
        if let Ok(mut table) = sent.write() {
            table.seq.insert(hash, k);
            table.at.push(at);
        }
        tx.sync(doc, push(vec![hash], vec![bytes])).await?;
        tokio::time::sleep(p.interval).await;
    }
    let mut all = histogram();
    let deadline = Duration::from_secs(120) + p.interval * p.changes as u32;
    let collected = tokio::time::timeout(deadline, async {
        while let Some(r) = tasks.join_next().await {
            all.add(r.context("watcher task")??)?;
        }
        anyhow::Ok(())
    })
    .await;
    drain.abort();
    match collected {
        Ok(r) => r?,
        Err(_) => bail!("watchers did not all receive the {} changes (not converged)", p.changes),
    }
    let expected = p.watchers as u64 * p.changes;
    if all.len() != expected {
        bail!("recorded {} latencies, expected {expected}", all.len());
    }
    let heads = writer.doc.get_heads();
    let s = peer::fetch(&server.url, "verify", doc, &heads, Duration::from_secs(30)).await?;
    if s.doc.get_heads() != heads {
        bail!("a fresh peer did not converge on the writer's heads");
    }
    tx.close().await;
    if let (Some(generated), Some(shared)) = (
        server.edge_metric("meridian_edge_sync_generated_total"),
        server.edge_metric("meridian_edge_sync_shared_total"),
    ) {
        eprintln!("  sync messages generated {generated}, shared {shared}");
    }
    Ok(vec![
        Figure::lower("propagation p50", "ms", ms(&all, 0.5)),
        Figure::lower("propagation p99", "ms", ms(&all, 0.99)),
        Figure::lower("propagation max", "ms", all.max() as f64 / 1000.0),
    ])
}

/// N watchers connect and fetch the document.
async fn join_watchers(url: &str, salt: u64, doc: DocumentId, head: ChangeHash, n: usize) -> Result<Vec<Conn>> {
    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (url, permits) = (url.to_owned(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = Conn::join(&url, PeerId::new(format!("watcher-{salt:x}-{i}"))).await?;
            conn.tx.request(doc, empty_request()).await?;
            wait_heads(&mut conn.rx, doc, head, Duration::from_secs(60)).await?;
            conn.tx.sync(doc, ack(vec![head])).await?;
            anyhow::Ok(conn)
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(c) = tasks.join_next().await {
        conns.push(c.context("watcher task")??);
    }
    Ok(conns)
}

/// What the writer sent: sequence number by change hash, and send time
/// (µs) by sequence number - 1.
#[derive(Debug, Default)]
struct Sent {
    seq: HashMap<ChangeHash, u64>,
    at: Vec<u64>,
}

/// Receives until change `last` arrived; returns the latencies.
async fn watch(mut conn: Conn, doc: DocumentId, last: u64, sent: Arc<RwLock<Sent>>) -> Result<Histogram<u64>> {
    let mut h = histogram();
    let mut seen = 0u64;
    while seen < last {
        let m = conn.rx.recv().await?;
        if let Message::DocUnavailable { .. } = m {
            bail!("document became unavailable");
        }
        let Some((d, msg)) = sync_payload(&m) else { continue };
        if d != doc {
            continue;
        }
        let now = now_us();
        if let Ok(table) = sent.read() {
            let top = msg.heads.iter().filter_map(|h| table.seq.get(h)).max().copied().unwrap_or(0);
            for at in table.at.iter().take(top as usize).skip(seen as usize) {
                h.saturating_record(now.saturating_sub(*at).max(1));
            }
            seen = seen.max(top);
        }
        conn.tx.sync(doc, ack(msg.heads)).await?;
    }
    conn.tx.close().await;
    Ok(h)
}
