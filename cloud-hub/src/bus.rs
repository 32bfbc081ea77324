//! The bus between hubs sharing one store (issue 16, `--bus nats://…`):
//! PostgreSQL is the truth, NATS the accelerator. A hub publishes every
//! chunk it committed on `meridian.docs.<document id>` (a pointer instead
//! when it is large); hubs holding that document (in memory, or evicted
//! while an edge is subscribed: then loaded) apply it
//! (`Engine::handle_stored_elsewhere`) and sync it to their edges. Any gap
//! (a publisher's sequence jumps, a message cannot be read, the connection
//! to NATS comes back, NATS reports it dropped messages for a slow
//! consumer) makes a hub read what it holds from the store again,
//! and while NATS is unreachable a hub reads its open documents from the
//! store every [`POLL_WHILE_DOWN`], so hubs still converge without it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures_util::StreamExt;
use meridian_node::metrics::{IntCounter, IntGauge, Registry, counter, gauge};
use meridian_node::runtime::{Committed, NodeEvent, NodeEvents};
use meridian_node::task::AbortOnDrop;
use meridian_protocol::ids::DocumentId;
use tokio::sync::mpsc;

/// Subjects of the bus: one per document.
const PREFIX: &str = "meridian.docs.";
/// Chunks past this size go as a pointer (the receivers read the store):
/// NATS's default payload limit is 1 MiB.
const MAX_INLINE: usize = 512 * 1024;
const VERSION: u8 = 1;
const KIND_CHUNK: u8 = 0;
const KIND_POINTER: u8 = 1;
/// How often a hub cut off from NATS reads its open documents from the
/// store (what other hubs committed meanwhile).
pub(crate) const POLL_WHILE_DOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// The bus's metrics, in the hub's registry beside the node's at `/metrics`.
///
/// | name | type | meaning |
/// |---|---|---|
/// | `meridian_hub_bus_connected` | gauge | 1 while connected to a NATS server |
/// | `meridian_hub_bus_connects_total` | counter | connections made (the first, then each reconnect or fail-over to another server) |
/// | `meridian_hub_bus_published_total` | counter | commits published |
/// | `meridian_hub_bus_received_total` | counter | other hubs' commits received |
/// | `meridian_hub_bus_gaps_total` | counter | gaps seen: sequence jumps, messages NATS dropped for a slow consumer (each makes the hub read the store again) |
#[derive(Debug)]
pub struct BusMetrics {
    pub connected: IntGauge,
    pub connects_total: IntCounter,
    pub published_total: IntCounter,
    pub received_total: IntCounter,
    pub gaps_total: IntCounter,
    /// When a slow-consumer report last made the hub read the store.
    last_slow_refresh_ms: AtomicU64,
}

impl BusMetrics {
    /// The bus metrics, in the hub's registry (`meridian_hub_` prefix).
    pub fn new(r: &Registry) -> Self {
        Self {
            connected: gauge(r, "bus_connected", "1 while connected to a NATS server."),
            connects_total: counter(
                r,
                "bus_connects_total",
                "Connections to NATS made (first, reconnects, fail-overs).",
            ),
            published_total: counter(r, "bus_published_total", "Commits published on the bus."),
            received_total: counter(r, "bus_received_total", "Other hubs' commits received."),
            gaps_total: counter(
                r,
                "bus_gaps_total",
                "Gaps seen: sequence jumps, messages NATS dropped (the store is read again).",
            ),
            last_slow_refresh_ms: AtomicU64::new(0),
        }
    }
}

/// One message on the bus.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BusMessage {
    /// The publishing hub's run (random at each start) and its sequence.
    pub(crate) publisher: u64,
    pub(crate) seq: u64,
    /// The chunk, or `None` for a pointer.
    pub(crate) chunk: Option<Vec<u8>>,
}

impl BusMessage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.chunk.as_ref().map_or(0, Vec::len));
        out.push(VERSION);
        out.extend_from_slice(&self.publisher.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        match &self.chunk {
            Some(c) => {
                out.push(KIND_CHUNK);
                out.extend_from_slice(c);
            }
            None => out.push(KIND_POINTER),
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 18 || bytes[0] != VERSION {
            return None;
        }
        let publisher = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let seq = u64::from_be_bytes(bytes[9..17].try_into().ok()?);
        let chunk = match bytes[17] {
            KIND_CHUNK => Some(bytes[18..].to_vec()),
            KIND_POINTER => None,
            _ => return None,
        };
        Some(Self { publisher, seq, chunk })
    }
}

/// Each publisher's last sequence number seen: says when one was missed.
#[derive(Debug, Default)]
pub(crate) struct Sequences {
    last: HashMap<u64, u64>,
}

impl Sequences {
    /// Records `seq` from `publisher`; `false`: something before it was
    /// missed (a publisher seen for the first time is not a gap: what it
    /// committed before is in the store, read when a document is loaded).
    pub(crate) fn in_order(&mut self, publisher: u64, seq: u64) -> bool {
        let previous = self.last.insert(publisher, seq);
        previous.is_none_or(|p| seq == p + 1)
    }
}

/// The bus of one hub: its connection, publisher and subscriber tasks.
pub(crate) struct Bus {
    client: async_nats::Client,
    _tasks: Vec<AbortOnDrop<()>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    /// Connects to the NATS servers `urls` (the first that answers, in
    /// order: list the nearest first) and starts publishing what
    /// `committed` says and handing other hubs' commits to `events`. When
    /// its server goes away it connects to the next (of the list, and of
    /// the servers the cluster told it of).
    pub(crate) async fn start(
        urls: &[String],
        mut committed: mpsc::UnboundedReceiver<Committed>,
        events: NodeEvents,
        registry: &Registry,
    ) -> Result<Self, String> {
        let reconnected = events.clone();
        let metrics = Arc::new(BusMetrics::new(registry));
        let up = metrics.clone();
        let up_events = up.clone();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .retain_servers_order()
            .event_callback(move |event| {
                let (events, up) = (reconnected.clone(), up_events.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            up.connected.set(1);
                            up.connects_total.inc();
                            // Whatever was published while we were away is
                            // in the store.
                            tracing::info!("connected to the bus: reading open documents from the store again");
                            let _ = events.send(NodeEvent::Refresh { doc: None }).await;
                        }
                        async_nats::Event::Disconnected => {
                            up.connected.set(0);
                            tracing::warn!(
                                "lost the bus: reading open documents from the store every {POLL_WHILE_DOWN:?} until it is back"
                            );
                        }
                        // Messages dropped for us (we fell behind): what they
                        // carried is in the store.
                        // One read per half second at most: NATS says it once per
                        // message dropped, and the hub is behind already.
                        async_nats::Event::SlowConsumer(_) => {
                            up.gaps_total.inc();
                            let now = crate::control::unix_ms();
                            if now.saturating_sub(up.last_slow_refresh_ms.load(Relaxed)) >= 500 {
                                up.last_slow_refresh_ms.store(now, Relaxed);
                                tracing::warn!("the bus dropped messages for this hub: reading open documents from the store again");
                                let _ = events.send(NodeEvent::Refresh { doc: None }).await;
                            }
                        }
                        // Each failed reconnect attempt: said once above.
                        async_nats::Event::ClientError(error) => tracing::debug!(%error, "bus"),
                        other => tracing::warn!(event = %other, "bus"),
                    }
                }
            })
            .connect(urls)
            .await
            .map_err(|e| format!("connecting to NATS at {}: {e}", urls.join(",")))?;
        let publisher: u64 = rand::random();
        let mut subscription =
            client.subscribe(format!("{PREFIX}*")).await.map_err(|e| format!("subscribing to {PREFIX}*: {e}"))?;
        let publishing = client.clone();
        let client_kept = client.clone();
        let (published, received) = (metrics.clone(), metrics.clone());
        let publish = tokio::spawn(async move {
            let mut seq = 0u64;
            while let Some(Committed { doc, data }) = committed.recv().await {
                seq += 1;
                let chunk = (data.len() <= MAX_INLINE).then_some(data);
                let message = BusMessage { publisher, seq, chunk };
                match publishing.publish(format!("{PREFIX}{doc}"), message.encode().into()).await {
                    Ok(()) => {
                        published.published_total.inc();
                    }
                    // The others see the gap in our sequence and read the store.
                    Err(e) => tracing::warn!(%doc, error = %e, "publishing a commit on the bus failed"),
                }
            }
        });
        let polling = events.clone();
        let receive = tokio::spawn(async move {
            let mut sequences = Sequences::default();
            while let Some(m) = subscription.next().await {
                let doc = m.subject.as_str().strip_prefix(PREFIX).and_then(|d| d.parse::<DocumentId>().ok());
                let decoded = BusMessage::decode(&m.payload);
                let event = match (doc, decoded) {
                    (Some(_), Some(b)) if b.publisher == publisher => continue,
                    (Some(doc), Some(b)) => {
                        received.received_total.inc();
                        if !sequences.in_order(b.publisher, b.seq) {
                            received.gaps_total.inc();
                            tracing::info!(
                                publisher = b.publisher,
                                seq = b.seq,
                                "a gap on the bus: reading the store again"
                            );
                            let _ = events.send(NodeEvent::Refresh { doc: None }).await;
                        }
                        match b.chunk {
                            Some(bytes) => NodeEvent::StoredElsewhere { doc, bytes },
                            None => NodeEvent::Refresh { doc: Some(doc) },
                        }
                    }
                    (Some(doc), None) => NodeEvent::Refresh { doc: Some(doc) },
                    (None, _) => continue,
                };
                if events.send(event).await.is_err() {
                    break;
                }
            }
        });
        let poll = tokio::spawn(async move {
            let mut every = tokio::time::interval(POLL_WHILE_DOWN);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if up.connected.get() == 0 && polling.send(NodeEvent::Refresh { doc: None }).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self { client: client_kept, _tasks: vec![AbortOnDrop(publish), AbortOnDrop(receive), AbortOnDrop(poll)] })
    }

    /// The connection to NATS (the change feed's relay publishes on it too).
    pub(crate) fn client(&self) -> async_nats::Client {
        self.client.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for chunk in [Some(vec![1, 2, 3]), Some(Vec::new()), None] {
            let m = BusMessage { publisher: 7, seq: 42, chunk };
            assert_eq!(BusMessage::decode(&m.encode()), Some(m));
        }
        assert_eq!(BusMessage::decode(&[2; 30]), None, "another version");
        assert_eq!(BusMessage::decode(&[1; 5]), None, "too short");
    }

    #[test]
    fn a_missed_sequence_is_a_gap() {
        let mut s = Sequences::default();
        assert!(s.in_order(1, 5), "a new publisher");
        assert!(s.in_order(1, 6));
        assert!(!s.in_order(1, 8), "7 was missed");
        assert!(s.in_order(2, 1));
        assert!(!s.in_order(1, 1), "the publisher restarted: its earlier run's tail may be missed");
    }
}
