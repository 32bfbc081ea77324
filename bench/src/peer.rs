//! A real automerge peer: a document and a sync state, replying to every
//! sync message as automerge-repo does. Used to upload a document, to fetch
//! one as a fresh peer, and to verify convergence after a run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};
use meridian_protocol::codec::Message;
use meridian_protocol::ids::{DocumentId, PeerId};

use crate::wire::Conn;

/// What a sync session with a server cost.
#[derive(Debug)]
pub struct Session {
    pub doc: Automerge,
    pub elapsed: Duration,
    /// From the start until the last message carrying changes was received
    /// (before the peer applied it): the server's part of a fetch, without
    /// the time the peer spends loading what it got.
    pub data_arrived: Duration,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// Pushes `doc` to the server until it advertises our heads.
pub async fn upload(url: &str, me: &str, doc_id: DocumentId, doc: Automerge, timeout: Duration) -> Result<Session> {
    let conn = Conn::join(url, PeerId::new(me)).await?;
    let target = doc.get_heads();
    sync_until(conn, doc_id, doc, &target, false, timeout).await
}

/// Fetches a document as a fresh peer until we hold `target` heads.
pub async fn fetch(
    url: &str,
    me: &str,
    doc_id: DocumentId,
    target: &[ChangeHash],
    timeout: Duration,
) -> Result<Session> {
    let conn = Conn::join(url, PeerId::new(me)).await?;
    sync_until(conn, doc_id, Automerge::new(), target, true, timeout).await
}

async fn sync_until(
    mut conn: Conn,
    doc_id: DocumentId,
    mut doc: Automerge,
    target: &[ChangeHash],
    fresh: bool,
    timeout: Duration,
) -> Result<Session> {
    let mut state = sync::State::new();
    let started = Instant::now();
    let first = doc.generate_sync_message(&mut state).context("nothing to send")?.encode();
    if fresh {
        conn.tx.request(doc_id, first).await?;
    } else {
        conn.tx.sync(doc_id, first).await?;
    }
    let deadline = started + timeout;
    let mut data_arrived = Duration::ZERO;
    loop {
        let m = tokio::time::timeout_at(deadline.into(), conn.rx.recv()).await.context("sync did not finish")??;
        let data = match m {
            // A server that has nothing of the document answers with `request`.
            Message::Sync { document_id, data, .. } | Message::Request { document_id, data, .. }
                if document_id == doc_id =>
            {
                data
            }
            Message::DocUnavailable { .. } => bail!("the server says {doc_id} is unavailable"),
            _ => continue,
        };
        let msg = sync::Message::decode(&data).context("bad sync message")?;
        if !msg.changes.is_empty() {
            data_arrived = started.elapsed();
        }
        let their_heads = msg.heads.clone();
        doc.receive_sync_message(&mut state, msg)?;
        while let Some(reply) = doc.generate_sync_message(&mut state) {
            conn.tx.sync(doc_id, reply.encode()).await?;
        }
        let mut ours = doc.get_heads();
        ours.sort();
        let mut want = target.to_vec();
        want.sort();
        let mut theirs = their_heads;
        theirs.sort();
        // Fetching: done once we hold the target. Uploading: once the server says it does.
        if (fresh && ours == want) || (!fresh && theirs == want) {
            break;
        }
    }
    let elapsed = started.elapsed();
    let bytes = conn.bytes().clone();
    conn.tx.close().await;
    Ok(Session {
        doc,
        elapsed,
        data_arrived,
        bytes_received: bytes.received.load(Ordering::Relaxed),
        bytes_sent: bytes.sent.load(Ordering::Relaxed),
    })
}
