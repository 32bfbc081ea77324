//! Many stored documents, few open: the server stores S documents,
//! restarts, and then clients open O of them, picked at random among all S.
//! The figures: how fast the first documents are written through the
//! protocol, memory with nothing open, memory with O open, and how long an
//! open of a stored document takes (request to the server's answer).
//!
//! Only the first part ([`written`] documents) is written through the
//! protocol and timed, the same for both servers. The rest is stored
//! untimed: at the edge through the protocol as well (thousands of
//! documents/s), at the JS server offline with automerge-repo's own code
//! while it is stopped ([`server::seed_js`]): through the protocol its rate
//! falls as documents accumulate (about 230/s over the first 1,500, 29/s
//! over the first 10,000), so 100,000 would take at least an hour.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_protocol::ids::PeerId;
use tokio::task::JoinSet;

use super::{Figure, histogram, mib, ms, wait_heads};
use crate::server::{self, Kind, Server};
use crate::suite::thousands;
use crate::wire::{Conn, advertised_heads};
use crate::workload::{SmallDoc, doc_id, empty_request, run_salt, splitmix};

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub stored: usize,
    pub open: usize,
}

/// Connections writing the stored documents, and documents each keeps in
/// flight. A deeper queue makes the JS server's keep-alive (a pong queued
/// behind seconds of work) terminate the writers' sockets.
const WRITERS: usize = 8;
const WINDOW: usize = 8;
/// Connections opening documents, each one at a time.
const OPENERS: usize = 10;
/// At most this many documents are written through the protocol, timed.
const WRITTEN_MAX: usize = 10_000;

/// How many of `stored` documents are written through the protocol and
/// timed: half, at most [`WRITTEN_MAX`], so that small runs (smoke,
/// `--stored`) exercise the offline seeding of the rest too.
pub fn written(stored: usize) -> usize {
    (stored / 2).clamp(1, WRITTEN_MAX).min(stored)
}

pub async fn run(server: Server, p: Params) -> Result<Vec<Figure>> {
    if p.stored == 0 || p.open == 0 {
        bail!("the stored scenario needs at least one stored and one open document");
    }
    let salt = run_salt();
    let written = written(p.stored);
    let started = Instant::now();
    populate(&server.url, salt, 0..written).await?;
    let write_rate = written as f64 / started.elapsed().as_secs_f64();
    let (rest, kind) = (written..p.stored, server.kind);
    // The edge stores thousands of documents per second: the rest goes
    // through the protocol too, untimed.
    if kind == Kind::Edge {
        populate(&server.url, salt, rest.clone()).await?;
    }
    // The JS server saves 100 ms after a document's last change; give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = server.restart_with(|paths, data| match kind {
        Kind::Edge => Ok(()),
        // samod's filesystem storage reads automerge-repo's nodefs layout.
        Kind::Js | Kind::Samod => seed(paths, data, salt, rest),
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.rss_kib()?;
    let picks: Vec<u64> = (0..p.open as u64).map(|k| splitmix(k ^ salt) % p.stored as u64).collect();
    let untimed = picks.iter().filter(|&&i| i >= written as u64).count();
    eprintln!("loadgen: opening {} documents at random, {untimed} of them beyond the first {written}", p.open);
    let mut tasks = JoinSet::new();
    for (c, chunk) in picks.chunks(p.open.div_ceil(OPENERS)).enumerate() {
        let (url, chunk) = (server.url.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut conn = Conn::join(&url, PeerId::new(format!("opener-{salt:x}-{c}"))).await?;
            let mut h = histogram();
            for i in chunk {
                let t = Instant::now();
                conn.tx.request(doc_id(salt, i), empty_request()).await?;
                wait_heads(&mut conn.rx, doc_id(salt, i), SmallDoc::new(salt, i).head, Duration::from_secs(60))
                    .await
                    .with_context(|| format!("opening stored document {i}"))?;
                h.saturating_record(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok((conn, h))
        });
    }
    let mut latency = histogram();
    let mut open = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (conn, h) = r.context("opener task")??;
        latency.add(h)?;
        open.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = server.rss_kib()?;
    for conn in open {
        conn.tx.close().await;
    }
    server.stop()?;
    let write_metric =
        format!("documents stored (written through the protocol; measured on the first {})", thousands(written));
    Ok(vec![
        Figure::higher(&write_metric, "docs/s", write_rate),
        Figure::lower("RSS after restart, nothing open", "MiB", mib(rss_idle)),
        Figure::lower("RSS with the documents open", "MiB", mib(rss_open)),
        Figure::lower("open latency p50", "ms", ms(&latency, 0.5)),
        Figure::lower("open latency p99", "ms", ms(&latency, 0.99)),
    ])
}

/// Stores documents `range` in the stopped JS server's data folder offline:
/// the same ids and the same change bytes [`populate`] would send.
fn seed(paths: &server::Paths, data: &std::path::Path, salt: u64, range: Range<usize>) -> Result<()> {
    let started = Instant::now();
    let docs: Vec<_> = range.map(|i| (doc_id(salt, i as u64), SmallDoc::new(salt, i as u64).change)).collect();
    server::seed_js(paths, data, &docs).with_context(|| format!("seeding {} documents offline", docs.len()))?;
    eprintln!("loadgen: seeded {} documents offline in {:.1} s", docs.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Writes one-change documents `range` over a few connections, each
/// keeping a window of documents unacknowledged.
async fn populate(url: &str, salt: u64, range: Range<usize>) -> Result<()> {
    let mut tasks = JoinSet::new();
    for w in 0..WRITERS {
        let url = url.to_owned();
        let range = range.clone();
        tasks.spawn(async move {
            let mut conn = Conn::join(&url, PeerId::new(format!("populate-{salt:x}-{w}"))).await?;
            let mine: Vec<u64> = (range.start + w..range.end).step_by(WRITERS).map(|i| i as u64).collect();
            let mut pending = HashMap::new();
            let mut next = mine.iter();
            loop {
                while pending.len() < WINDOW {
                    let Some(&i) = next.next() else { break };
                    let doc = SmallDoc::new(salt, i);
                    conn.tx.sync(doc_id(salt, i), doc.push_message()).await?;
                    pending.insert(doc_id(salt, i), doc.head);
                }
                if pending.is_empty() {
                    break;
                }
                let m = tokio::time::timeout(Duration::from_secs(60), conn.rx.recv())
                    .await
                    .context("stored documents were not acknowledged within 60 s")??;
                if let Some((d, heads)) = advertised_heads(&m)
                    && pending.get(&d).is_some_and(|h| heads.contains(h))
                {
                    pending.remove(&d);
                }
            }
            conn.tx.close().await;
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("populate task")??;
    }
    Ok(())
}
