//! How events reach the node's engine shards ([`NodeEvents`]): transports
//! and the node's own tasks send [`NodeEvent`]s through it, in their own
//! task. A frame is decoded there (once, on the connection's task, not on
//! an engine's) and handed to the shard that owns its document, the
//! handshake to every shard (`meridian_protocol::engine::route`); a
//! connection gets its id here and is registered with every shard; what
//! asks a question of the whole node (demand, documents, divergence) is
//! asked of every shard and the answers joined.
//!
//! What concerns a connection as a whole lives here too: the connections
//! gauge, and the clients' tokens forwarded to upstreams (`grants`), told
//! before the connection is registered with any shard, so before anything
//! of the client's can reach an upstream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use meridian_protocol::codec::{self, Decoded, Message};
use meridian_protocol::engine::{Access, Direction, DocDemand, Route, Shard, route};
use meridian_protocol::ids::{ConnId, DocumentId};
use smallvec::{SmallVec, smallvec};
use tokio::sync::{mpsc, oneshot};

use super::grants::Grants;
use super::{DocReplicas, NodeEvent, OutboundSender};
use crate::metrics::NodeMetrics;

/// What one engine shard's loop takes.
#[derive(Debug)]
pub(super) enum ShardEvent {
    Connect {
        conn: ConnId,
        direction: Direction,
        edge_peer: bool,
        link: bool,
        access: Access,
        valid_for: Option<Duration>,
        out: OutboundSender,
    },
    /// A message from a connection, decoded; `len`: its frame's bytes.
    Message { conn: ConnId, message: Message, len: usize, parent: Option<String> },
    /// A frame that did not decode (to the primary, which refuses it).
    Undecodable { conn: ConnId, bytes: Vec<u8> },
    /// Everything else, as the node was sent it.
    Node(NodeEvent),
}

/// [`NodeEvents::send`] waiting for room in a full queue (`Sync`, as
/// some callers' futures must be).
pub type Waiting = std::pin::Pin<Box<dyn Future<Output = Result<(), Closed>> + Send + Sync>>;

/// The events one [`NodeEvent`] becomes, with their shards: most often
/// one, kept inline (no allocation per frame).
type Targets = SmallVec<[(usize, ShardEvent); 1]>;

/// The loop (or loops: one per engine shard) is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the node has stopped")
    }
}

impl std::error::Error for Closed {}

/// Where the node's events go: cheap to clone, one per task that sends.
#[derive(Clone, Debug)]
pub struct NodeEvents {
    inner: Arc<Router>,
}

#[derive(Debug)]
struct Router {
    shards: Vec<mpsc::Sender<ShardEvent>>,
    next_conn: AtomicU64,
    grants: Mutex<Grants>,
    metrics: Arc<NodeMetrics>,
}

impl NodeEvents {
    pub(super) fn new(shards: Vec<mpsc::Sender<ShardEvent>>, metrics: Arc<NodeMetrics>) -> Self {
        let router = Router { shards, next_conn: AtomicU64::new(0), grants: Mutex::default(), metrics };
        Self { inner: Arc::new(router) }
    }

    /// Hands `event` to the shard (or shards) it concerns, waiting while a
    /// shard's queue is full. Every connection's task awaits this, so the
    /// future is small: the routing and the queueing happen in this call,
    /// and only waiting for room in a full queue is boxed.
    pub fn send(&self, event: NodeEvent) -> Either<Ready<Result<(), Closed>>, Waiting> {
        let mut targets = self.inner.dispatch(event).into_iter();
        while let Some((shard, event)) = targets.next() {
            match self.inner.shards[shard].try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Either::Left(ready(Err(Closed))),
                Err(mpsc::error::TrySendError::Full(event)) => {
                    let inner = self.inner.clone();
                    return Either::Right(Box::pin(async move {
                        inner.shards[shard].send(event).await.map_err(|_| Closed)?;
                        for (shard, event) in targets {
                            inner.shards[shard].send(event).await.map_err(|_| Closed)?;
                        }
                        Ok(())
                    }));
                }
            }
        }
        Either::Left(ready(Ok(())))
    }

    /// [`NodeEvents::send`] without waiting: fails when a queue is full.
    pub fn try_send(&self, event: NodeEvent) -> Result<(), Closed> {
        let r = &self.inner;
        for (shard, event) in r.dispatch(event) {
            r.shards[shard].try_send(event).map_err(|_| Closed)?;
        }
        Ok(())
    }
}

impl Router {
    fn count(&self) -> usize {
        self.shards.len()
    }

    fn owner(&self, doc: &DocumentId) -> usize {
        Shard::of(doc, self.count())
    }

    fn all(&self, make: impl Fn() -> NodeEvent) -> Targets {
        (0..self.count()).map(|i| (i, ShardEvent::Node(make()))).collect()
    }

    /// Which shard gets what, in order.
    fn dispatch(&self, event: NodeEvent) -> Targets {
        let one = |shard: usize, event: NodeEvent| smallvec![(shard, ShardEvent::Node(event))];
        match event {
            NodeEvent::Connected { direction, edge_peer, link, access, valid_for, grant, out, reply } => {
                let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
                self.metrics.connections.inc();
                self.metrics.connections_total.inc();
                {
                    let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
                    if direction == Direction::Outgoing && !edge_peer {
                        // The grants of the clients here before anything else.
                        grants.upstream(conn, out.clone());
                    }
                    if let Some(token) = grant {
                        grants.client(conn, token);
                    }
                }
                let events = (0..self.count())
                    .map(|i| {
                        let access = access.clone();
                        let out = out.clone();
                        (i, ShardEvent::Connect { conn, direction, edge_peer, link, access, valid_for, out })
                    })
                    .collect();
                let _ = reply.send(conn);
                events
            }
            NodeEvent::Frame { conn, bytes, parent } => match codec::decode(&bytes) {
                Ok(Decoded::Message(message)) => {
                    let len = bytes.len();
                    self.metrics.message_in(message.type_name(), len);
                    match route(&message, self.count()) {
                        Route::Shard(i) => smallvec![(i, ShardEvent::Message { conn, message, len, parent })],
                        Route::Primary => smallvec![(0, ShardEvent::Message { conn, message, len, parent })],
                        Route::All => (0..self.count())
                            .map(|i| {
                                let (message, parent) = (message.clone(), parent.clone());
                                (i, ShardEvent::Message { conn, message, len, parent })
                            })
                            .collect(),
                    }
                }
                Ok(Decoded::Unknown { message_type }) => {
                    self.metrics.message_in("other", bytes.len());
                    tracing::debug!(%conn, message_type = %meridian_protocol::log::Escaped(&message_type), "ignoring unknown message type");
                    SmallVec::new()
                }
                Err(e) => {
                    self.metrics.message_in("other", bytes.len());
                    // The primary refuses it; the others stop listening.
                    let mut events: Targets = smallvec![(0, ShardEvent::Undecodable { conn, bytes })];
                    let (kind, detail) = (meridian_protocol::engine::ErrorKind::Decode, e.to_string());
                    let quiet = |i| (i, ShardEvent::Node(NodeEvent::Reject { conn, kind, detail: detail.clone() }));
                    events.extend((1..self.count()).map(quiet));
                    events
                }
            },
            NodeEvent::Disconnected { conn } => {
                self.grants.lock().unwrap_or_else(|e| e.into_inner()).gone(conn);
                self.metrics.connections.dec();
                self.all(|| NodeEvent::Disconnected { conn })
            }
            // The driver refuses the connection: the primary says so, the
            // others stop listening.
            NodeEvent::Reject { conn, kind, detail } => {
                self.all(|| NodeEvent::Reject { conn, kind, detail: detail.clone() })
            }
            e @ (NodeEvent::SendControl { .. } | NodeEvent::ScrubRate { .. }) => one(0, e),
            NodeEvent::Grant { conn, access } => self.all(|| NodeEvent::Grant { conn, access: access.clone() }),
            NodeEvent::Revoke(revoked) => self.all(|| NodeEvent::Revoke(revoked.clone())),
            NodeEvent::DivergenceAfter { after } => self.all(|| NodeEvent::DivergenceAfter { after }),
            NodeEvent::Refresh { doc: None } => self.all(|| NodeEvent::Refresh { doc: None }),
            e @ NodeEvent::Refresh { doc: Some(doc) } => one(self.owner(&doc), e),
            e @ (NodeEvent::Handoff { doc, .. }
            | NodeEvent::Route { doc, .. }
            | NodeEvent::Pin { doc, .. }
            | NodeEvent::StoredElsewhere { doc, .. }
            | NodeEvent::Replicas { doc, .. }) => one(self.owner(&doc), e),
            NodeEvent::TakeDemand { reply } => self.gather(
                reply,
                |reply| NodeEvent::TakeDemand { reply },
                |parts| parts.into_iter().flatten().collect::<BTreeMap<DocumentId, DocDemand>>(),
            ),
            NodeEvent::Documents { after, limit, reply } => self.gather(
                reply,
                |reply| NodeEvent::Documents { after, limit, reply },
                move |parts| {
                    let mut all: Vec<DocReplicas> = parts.into_iter().flatten().collect();
                    all.sort_by_key(|(doc, ..)| *doc);
                    all.truncate(limit);
                    all
                },
            ),
            NodeEvent::Divergent { reply } => self.gather(
                reply,
                |reply| NodeEvent::Divergent { reply },
                |parts| parts.into_iter().flatten().collect(),
            ),
        }
    }

    /// Asks every shard (`ask` makes the question with its reply channel)
    /// and answers `reply` with `join` of their answers.
    fn gather<T: Send + 'static, U: Send + 'static>(
        &self,
        reply: oneshot::Sender<U>,
        ask: impl Fn(oneshot::Sender<T>) -> NodeEvent,
        join: impl FnOnce(Vec<T>) -> U + Send + 'static,
    ) -> Targets {
        let (events, answers): (Targets, Vec<_>) = (0..self.count())
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                ((i, ShardEvent::Node(ask(tx))), rx)
            })
            .unzip();
        tokio::spawn(async move {
            let mut parts = Vec::with_capacity(answers.len());
            for answer in answers {
                match answer.await {
                    Ok(part) => parts.push(part),
                    Err(_) => return,
                }
            }
            let _ = reply.send(join(parts));
        });
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's task awaits `send`: its future must stay small
    /// (a task's size is that of its largest await; 1,144 bytes here made
    /// each connection 1.5 KiB heavier).
    #[test]
    fn the_send_future_is_small() {
        let (tx, _rx) = mpsc::channel(1);
        let events = NodeEvents::new(vec![tx], Arc::new(NodeMetrics::new(crate::metrics::Role::Edge)));
        let f = events.send(NodeEvent::Disconnected { conn: ConnId(1) });
        assert!(std::mem::size_of_val(&f) <= 32, "{} bytes", std::mem::size_of_val(&f));
    }
}
