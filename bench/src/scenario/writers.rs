//! Many writers on many documents, each keeping a window of changes in
//! flight: durable changes per second at saturation.
//!
//! A change counts when the server's sync reply advertises heads that
//! include it. meridian-edge advertises heads only after the SQLite
//! transaction holding the change committed; the JS server advertises them
//! once the change is in its in-memory document (NodeFS saves are
//! debounced and asynchronous), see docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use meridian_protocol::ids::{DocumentId, PeerId};
use tokio::task::JoinSet;

use super::{Figure, histogram, ms};
use crate::peer;
use crate::server::Server;
use crate::wire::{Conn, advertised_heads};
use crate::workload::{TextChain, doc_id, push, run_salt};

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub writers: usize,
    /// Changes each writer has pre-generated (it stops when they run out).
    pub changes_per_writer: usize,
    pub window: usize,
    pub duration: Duration,
}

/// What one writer saw: when each change was acknowledged, relative to the start.
#[derive(Debug)]
struct Outcome {
    doc: DocumentId,
    /// The last change acknowledged (the server's heads at the end).
    head: automerge::ChangeHash,
    acked_at: Vec<Duration>,
    latency: Histogram<u64>,
}

pub async fn run(server: &Server, p: Params) -> Result<Vec<Figure>> {
    let salt = run_salt();
    let chains: Vec<TextChain> = (0..p.writers as u64).map(|i| TextChain::new(salt, i, p.changes_per_writer)).collect();
    let mut conns = Vec::with_capacity(p.writers);
    for i in 0..p.writers {
        conns.push(Conn::join(&server.url, PeerId::new(format!("writer-{salt:x}-{i}"))).await?);
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, (conn, chain)) in conns.into_iter().zip(chains.iter()).enumerate() {
        let messages: Vec<_> = chain.changes.iter().map(|(h, c)| (*h, push(vec![*h], vec![c.clone()]))).collect();
        tasks.spawn(write(conn, doc_id(salt, i as u64), messages, p, started));
    }
    let mut acked_at = Vec::new();
    let mut latency = histogram();
    let mut heads = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let o = r.context("writer task")??;
        acked_at.extend(o.acked_at);
        latency.add(o.latency)?;
        heads.push((o.doc, o.head));
    }
    acked_at.sort();
    let last = acked_at.last().copied().context("nothing was acknowledged")?;
    // Changes acknowledged within the window; if every writer ran out of
    // changes earlier, the window ends with the last acknowledgement.
    let window = if last < p.duration { last } else { p.duration };
    let within = acked_at.iter().filter(|t| **t <= window).count();
    verify(server, &heads).await?;
    if let Some(merged) = server.edge_metric("meridian_edge_sync_merged_total") {
        eprintln!("  (meridian-edge applied {merged} sync messages in one batch with the previous one)");
    }
    Ok(vec![
        Figure::higher("durable changes/s", "changes/s", within as f64 / window.as_secs_f64()),
        Figure::lower("acknowledgement latency p50", "ms", ms(&latency, 0.5)),
        Figure::lower("acknowledgement latency p99", "ms", ms(&latency, 0.99)),
    ])
}

/// Sends changes keeping `window` unacknowledged, until the duration is
/// over; then waits for every sent change to be acknowledged.
async fn write(
    conn: Conn,
    doc: DocumentId,
    messages: Vec<(automerge::ChangeHash, Vec<u8>)>,
    p: Params,
    started: Instant,
) -> Result<Outcome> {
    let Conn { mut tx, mut rx } = conn;
    let index: HashMap<_, _> = messages.iter().enumerate().map(|(i, (h, _))| (*h, i)).collect();
    let mut sent_at = Vec::with_capacity(messages.len());
    let first = messages.first().map(|m| m.0).context("no changes")?;
    let mut out = Outcome { doc, head: first, acked_at: Vec::with_capacity(messages.len()), latency: histogram() };
    let mut messages = messages.into_iter();
    let mut acked = 0usize;
    loop {
        let sending = started.elapsed() < p.duration;
        while sending && sent_at.len() < acked + p.window {
            let Some((_, m)) = messages.next() else { break };
            tx.sync(doc, m).await?;
            sent_at.push(Instant::now());
        }
        if acked == sent_at.len() {
            break;
        }
        let m = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("changes were not acknowledged within 60 s")??;
        let Some((d, heads)) = advertised_heads(&m) else { continue };
        if d != doc {
            continue;
        }
        let Some(&top) = heads.iter().filter_map(|h| index.get(h)).max() else { continue };
        let now = Instant::now();
        for sent in &sent_at[acked.min(top + 1)..top + 1] {
            out.acked_at.push(now - started);
            out.latency.saturating_record((now - *sent).as_micros() as u64);
        }
        if top + 1 > acked {
            acked = top + 1;
            out.head = *heads.iter().find(|h| index.get(h) == Some(&top)).context("head vanished")?;
        }
    }
    tx.close().await;
    if out.acked_at.is_empty() {
        bail!("no change of {doc} was acknowledged");
    }
    Ok(out)
}

/// A real peer fetches two documents and finds every acknowledged change.
async fn verify(server: &Server, heads: &[(DocumentId, automerge::ChangeHash)]) -> Result<()> {
    for (doc, head) in [heads[0], heads[heads.len() - 1]] {
        let s = peer::fetch(&server.url, "verify", doc, &[head], Duration::from_secs(30)).await?;
        if s.doc.get_heads() != vec![head] {
            bail!("document {doc} did not converge");
        }
    }
    Ok(())
}
