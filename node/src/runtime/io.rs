//! The node loop's side of the engine's outputs ([`Driver`]): connections'
//! queues, metrics, storage tasks, and apply jobs run off the loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_protocol::codec;
use meridian_protocol::drive::Driver;
use meridian_protocol::engine::{Applied, ApplyJob, Event};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::log::{Escaped, Maybe};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use tokio::sync::mpsc;

use super::traces::Traces;
use super::{Outbound, OutboundSender};
use crate::metrics::NodeMetrics;

/// The loop's side of the engine's outputs ([`Driver`]): connections'
/// queues, metrics, and the storage tasks of one drain.
pub(super) struct Io {
    pub(super) conns: BTreeMap<ConnId, OutboundSender>,
    pub(super) metrics: Arc<NodeMetrics>,
    pub(super) batch: Vec<(StorageTaskId, StorageTask)>,
    /// Documents clients created, with their subject (recorded in the store).
    pub(super) created: Vec<(DocumentId, String)>,
    /// Where apply jobs run off the loop send their results.
    pub(super) applied: mpsc::UnboundedSender<Applied>,
    /// Spans of changes' ways through this node (while traces are exported).
    pub(super) traces: Traces,
    /// The primary shard's: it logs connections joining and leaving.
    pub(super) primary: bool,
}

impl Driver for Io {
    fn send(&mut self, conn: ConnId, message: codec::Message) {
        let Some(tx) = self.conns.get(&conn) else { return };
        let bytes = codec::encode(&message);
        self.metrics.message_out(message.type_name(), bytes.len());
        let trace = self.traces.sending(conn, &message, bytes.len());
        if !tx.traced_frame(bytes, trace) {
            // Too slow (or already gone): its task closes the connection;
            // the engines hear about it as a disconnect.
            tracing::warn!(%conn, "peer is not reading; closing its connection");
            self.metrics.limit_hit("send_queue");
            tx.kill();
            self.conns.remove(&conn);
        }
    }

    fn close(&mut self, conn: ConnId, reason: String) -> bool {
        if let Some(tx) = self.conns.get(&conn) {
            tx.other(Outbound::Close(reason));
        }
        // Its task reports the disconnect once the transport is closed.
        false
    }

    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        self.traces.storage(id, &task);
        self.batch.push((id, task));
        None
    }

    /// A large document's messages are applied on a blocking thread; the
    /// loop goes on serving the others and takes the result as an event.
    fn apply(&mut self, job: ApplyJob) -> Option<Applied> {
        let tx = self.applied.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(job.run());
        });
        None
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::ProtocolError { conn, kind, detail } => {
                self.metrics.error(kind);
                tracing::info!(%conn, kind = kind.as_str(), detail = %Escaped(&detail), "bad input");
            }
            Event::Evicted { doc } => {
                self.metrics.evictions.inc();
                tracing::debug!(%doc, "evicted");
            }
            Event::PeerConnected { conn, peer, .. } if self.primary => {
                tracing::info!(%conn, peer = %Escaped(peer.as_str()), "peer joined")
            }
            Event::PeerDisconnected { conn, peer } if self.primary => {
                tracing::info!(%conn, peer = %Escaped(peer.as_ref().map_or("-", |p| p.as_str())), "peer left")
            }
            Event::StorageFailed { doc, detail } => tracing::error!(doc = %Maybe(&doc), %detail, "storage failed"),
            Event::DocChanged { doc, .. } => tracing::trace!(%doc, "changed"),
            Event::HomeConfirmed { lag_ms, .. } => self.metrics.home_lag_seconds.observe(lag_ms as f64 / 1000.0),
            Event::ReplicaConfirmed { lag_ms, .. } => self.metrics.replica_lag_seconds.observe(lag_ms as f64 / 1000.0),
            Event::Refused { refusal, .. } => self.metrics.access_refused(refusal),
            Event::Created { doc, conn, subject } => {
                tracing::info!(%doc, %conn, subject = %Escaped(&subject), "document created");
                self.created.push((doc, subject));
            }
            Event::Unapplicable { .. } => self.metrics.unapplicable.inc(),
            Event::Refetched { .. } => self.metrics.divergence_refetches.inc(),
            Event::PeerConnected { .. }
            | Event::PeerDisconnected { .. }
            | Event::DocUpdated { .. }
            | Event::DocReady { .. }
            | Event::DocUnavailable { .. }
            | Event::Ephemeral { .. } => {}
        }
    }
}
