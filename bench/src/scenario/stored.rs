//! Many stored documents, few open: the server stores S documents (written
//! through the protocol), restarts, and then clients open O of them. The
//! figures: memory with nothing open, memory with O open, and how long an
//! open of a stored document takes (request to the server's answer).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_protocol::ids::PeerId;
use tokio::task::JoinSet;

use super::{Figure, histogram, mib, ms, wait_heads};
use crate::server::Server;
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

pub async fn run(server: Server, p: Params) -> Result<Vec<Figure>> {
    let salt = run_salt();
    let started = Instant::now();
    populate(&server.url, salt, p.stored).await?;
    let write_rate = p.stored as f64 / started.elapsed().as_secs_f64();
    // The JS server saves 100 ms after a document's last change; give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = server.restart()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.rss_kib()?;
    let picks: Vec<u64> = (0..p.open as u64).map(|k| splitmix(k ^ salt) % p.stored as u64).collect();
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
    Ok(vec![
        Figure::higher("documents stored (written through the protocol)", "docs/s", write_rate),
        Figure::lower("RSS after restart, nothing open", "MiB", mib(rss_idle)),
        Figure::lower("RSS with the documents open", "MiB", mib(rss_open)),
        Figure::lower("open latency p50", "ms", ms(&latency, 0.5)),
        Figure::lower("open latency p99", "ms", ms(&latency, 0.99)),
    ])
}

/// Writes `n` one-change documents over a few connections, each keeping
/// a window of documents unacknowledged.
async fn populate(url: &str, salt: u64, n: usize) -> Result<()> {
    let mut tasks = JoinSet::new();
    for w in 0..WRITERS {
        let url = url.to_owned();
        tasks.spawn(async move {
            let mut conn = Conn::join(&url, PeerId::new(format!("populate-{salt:x}-{w}"))).await?;
            let mine: Vec<u64> = (w as u64..n as u64).step_by(WRITERS).collect();
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
