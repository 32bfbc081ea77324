//! The spans of a change's way through this node, exported as traces while
//! [`crate::telemetry::tracing_on`] (none are made otherwise):
//!
//! - `receive` — a document message handled (document, peer, bytes,
//!   changes), from its arrival until the engine's batch that applied it
//!   ended; its parent is the sender's span when the message came over a
//!   link between nodes with a [`Control::Trace`] in front of it;
//! - `store.write` — a chunk written, from the engine's request until the
//!   commit;
//! - `send` — a message sent for the document; towards another node (the
//!   hub, an edge) the span's context goes with it (W3C `traceparent` in a
//!   [`Control::Trace`] frame), so the next node's `receive` continues the
//!   same trace.
//!
//! What a node stores and sends for a document after a message brought it
//! changes belongs to that message's trace: the last such message's span
//! is the document's *cause* for a few seconds.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use meridian_protocol::codec::Message;
use meridian_protocol::codec::federation::{self, Control};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::{TARGET, tracing_on};

/// How long a message's span stays the cause of what its document does.
const CAUSE_FOR: Duration = Duration::from_secs(5);

/// Documents with a cause at once, and storage writes followed at once
/// (past these, no new ones are traced until some are done).
const MAX_FOLLOWED: usize = 10_000;

#[derive(Default)]
pub(super) struct Traces {
    /// Connections to other nodes: what we send them carries our context.
    links: BTreeSet<ConnId>,
    /// The span of the last message that brought each document changes.
    causes: HashMap<DocumentId, (opentelemetry::Context, Instant)>,
    /// Storage writes not committed yet.
    writes: HashMap<StorageTaskId, Span>,
    /// `receive` spans of the engine batch in progress.
    batch: Vec<Span>,
}

impl Traces {
    pub(super) fn connected(&mut self, conn: ConnId, link: bool) {
        if link {
            self.links.insert(conn);
        }
    }

    pub(super) fn disconnected(&mut self, conn: ConnId) {
        self.links.remove(&conn);
    }

    /// A document message from `conn`; `parent`: the sender's `traceparent`.
    pub(super) fn received(&mut self, conn: ConnId, message: &Message, bytes: usize, parent: Option<&str>) {
        if !tracing_on() {
            return;
        }
        let Some(doc) = message.document_id() else { return };
        let changes = match message {
            Message::Sync { data, .. } | Message::Request { data, .. } => {
                meridian_protocol::automerge::sync::Message::decode(data).map(|m| m.changes.len()).unwrap_or(0)
            }
            _ => 0,
        };
        let peer = sender(message);
        let span = tracing::info_span!(target: TARGET, "receive", otel.kind = "consumer", doc = %doc, peer,
            conn = conn.0, r#type = message.type_name(), bytes, changes);
        if let Some(parent) = parent {
            let mut carrier = HashMap::with_capacity(1);
            carrier.insert("traceparent".to_owned(), parent.to_owned());
            let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
        }
        if changes > 0 && (self.causes.len() < MAX_FOLLOWED || self.causes.contains_key(&doc)) {
            self.causes.insert(doc, (span.context(), Instant::now()));
        }
        self.batch.push(span);
    }

    /// The engine's batch ended: the messages received in it are handled.
    pub(super) fn batch_done(&mut self) {
        self.batch.clear();
    }

    /// A message for `message`'s document is sent on `conn`; returns the
    /// [`Control::Trace`] frame to send in front of it (links only).
    pub(super) fn sending(&mut self, conn: ConnId, message: &Message, bytes: usize) -> Option<Vec<u8>> {
        if !tracing_on() {
            return None;
        }
        let doc = message.document_id()?;
        let cause = self.cause(doc)?;
        let link = self.links.contains(&conn);
        let span = tracing::info_span!(target: TARGET, "send", otel.kind = "producer", doc = %doc,
            conn = conn.0, r#type = message.type_name(), bytes, link);
        let _ = span.set_parent(cause);
        if !link {
            return None;
        }
        let mut carrier = HashMap::with_capacity(1);
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        let traceparent = carrier.remove("traceparent")?;
        Some(federation::encode_control(&Control::Trace { traceparent }))
    }

    /// The engine asked for a storage task: a write of a document with a
    /// cause is followed until it commits.
    pub(super) fn storage(&mut self, id: StorageTaskId, task: &StorageTask) {
        if !tracing_on() || self.writes.len() >= MAX_FOLLOWED {
            return;
        }
        let (doc, kind, bytes) = match task {
            StorageTask::AppendChunk { doc, data } => (doc, "append", data.len()),
            StorageTask::Compact { doc, snapshot } => (doc, "compact", snapshot.len()),
            _ => return,
        };
        let Some(cause) = self.cause(*doc) else { return };
        let span = tracing::info_span!(target: TARGET, "store.write", doc = %doc, kind, bytes,
            otel.status_code = tracing::field::Empty);
        let _ = span.set_parent(cause);
        self.writes.insert(id, span);
    }

    /// A storage task's result came (committed, or failed).
    pub(super) fn stored(&mut self, id: StorageTaskId, result: &StorageResult) {
        if let Some(span) = self.writes.remove(&id)
            && let StorageResult::Failed(_) = result
        {
            span.record("otel.status_code", "ERROR");
        }
    }

    /// Forgets causes past [`CAUSE_FOR`] (each housekeeping tick).
    pub(super) fn prune(&mut self) {
        self.causes.retain(|_, (_, at)| at.elapsed() < CAUSE_FOR);
    }

    fn cause(&self, doc: DocumentId) -> Option<opentelemetry::Context> {
        let (cx, at) = self.causes.get(&doc)?;
        (at.elapsed() < CAUSE_FOR).then(|| cx.clone())
    }
}

fn sender(message: &Message) -> String {
    match message {
        Message::Request { sender_id, .. }
        | Message::Sync { sender_id, .. }
        | Message::DocUnavailable { sender_id, .. }
        | Message::Ephemeral { sender_id, .. }
        | Message::RemoteHeadsChanged { sender_id, .. } => {
            meridian_protocol::log::Escaped(sender_id.as_str()).to_string()
        }
        _ => String::new(),
    }
}
