//! Several hubs on one store (issue 16): a model of the PostgreSQL store's
//! semantics that the hubs of a [`super::Sim`] share, and the bus between
//! them.
//!
//! The store keeps chunks with a growing `seq`; each writer (hub) covers
//! the chunks it loaded or appended since, and a compaction deletes only
//! those (`node/src/store/postgres.rs`), so two hubs compacting one document
//! never lose each other's changes. The bus hands every committed chunk to
//! the other hubs after a network delay, FIFO per pair; a message is lost
//! now and then, which the receiver is told of (NATS reports a slow
//! consumer, or the connection drops) and answers by reading every open
//! document from the store again; while the bus is down nothing crosses and
//! hubs read the store every 2 s.

use std::collections::BTreeMap;

use automerge::Automerge;
use meridian_protocol::ids::{DocumentId, StorageId};
use meridian_protocol::storage::{StorageResult, StorageTask};

use super::NodeId;

/// How often a hub cut off from the bus reads its open documents again
/// (`cloud-hub/src/bus.rs`, `POLL_WHILE_DOWN`).
pub const POLL_WHILE_DOWN: u64 = 2_000;

#[derive(Debug, Default)]
pub struct SharedStore {
    next_seq: u64,
    /// Per document: `(seq, snapshot, bytes)` in `seq` order.
    chunks: BTreeMap<DocumentId, Vec<(u64, bool, Vec<u8>)>>,
    sync_states: BTreeMap<(DocumentId, StorageId), Vec<u8>>,
    /// The chunks each writer's engine holds, per document.
    covered: BTreeMap<(NodeId, DocumentId), Vec<u64>>,
    /// The hubs on it.
    pub members: Vec<NodeId>,
    /// Arrival time of the last bus message from one hub to another (FIFO).
    pub bus_last: BTreeMap<(NodeId, NodeId), u64>,
}

impl SharedStore {
    pub fn new(first: NodeId) -> Self {
        Self { members: vec![first], ..Self::default() }
    }

    /// Runs a task for `writer`, as the PostgreSQL store does.
    pub fn execute(&mut self, writer: NodeId, task: &StorageTask) -> StorageResult {
        match task {
            StorageTask::LoadDoc { doc } | StorageTask::ReadDoc { doc } => {
                let load = matches!(task, StorageTask::LoadDoc { .. });
                let Some(chunks) = self.chunks.get(doc).filter(|c| !c.is_empty()) else {
                    if load {
                        self.covered.insert((writer, *doc), Vec::new());
                    }
                    return StorageResult::Loaded(None);
                };
                // A refresh's read is not covered (see `StorageTask::ReadDoc`).
                if load {
                    self.covered.insert((writer, *doc), chunks.iter().map(|c| c.0).collect());
                }
                // Snapshots first, then appended chunks, as the store orders them.
                let mut bytes = Vec::new();
                for (_, _, data) in chunks.iter().filter(|c| c.1).chain(chunks.iter().filter(|c| !c.1)) {
                    bytes.extend_from_slice(data);
                }
                StorageResult::Loaded(Some(bytes))
            }
            StorageTask::AppendChunk { doc, data } => {
                let seq = self.insert(*doc, false, data.clone());
                self.covered.entry((writer, *doc)).or_default().push(seq);
                StorageResult::Done
            }
            StorageTask::Compact { doc, snapshot } => {
                let covered = self.covered.remove(&(writer, *doc)).unwrap_or_default();
                if let Some(chunks) = self.chunks.get_mut(doc) {
                    chunks.retain(|c| !covered.contains(&c.0));
                }
                let seq = self.insert(*doc, true, snapshot.clone());
                self.covered.insert((writer, *doc), vec![seq]);
                StorageResult::Done
            }
            StorageTask::Quarantine { doc, snapshot, .. } => {
                // Every chunk leaves (to the quarantine), whoever wrote it.
                self.chunks.remove(doc);
                self.sync_states.retain(|(d, _), _| d != doc);
                let seq = self.insert(*doc, true, snapshot.clone());
                self.covered.insert((writer, *doc), vec![seq]);
                StorageResult::Done
            }
            StorageTask::DeleteDoc { doc } => {
                self.chunks.remove(doc);
                self.sync_states.retain(|(d, _), _| d != doc);
                self.covered.retain(|(_, d), _| d != doc);
                StorageResult::Done
            }
            StorageTask::LoadSyncState { doc, peer } => {
                StorageResult::Loaded(self.sync_states.get(&(*doc, peer.clone())).cloned())
            }
            StorageTask::PutSyncState { doc, peer, state } => {
                self.sync_states.insert((*doc, peer.clone()), state.clone());
                StorageResult::Done
            }
        }
    }

    fn insert(&mut self, doc: DocumentId, snapshot: bool, data: Vec<u8>) -> u64 {
        self.next_seq += 1;
        self.chunks.entry(doc).or_default().push((self.next_seq, snapshot, data));
        self.next_seq
    }

    /// A writer's process died: what its engine held goes with it.
    pub fn forget_writer(&mut self, writer: NodeId) {
        self.covered.retain(|(w, _), _| *w != writer);
    }

    /// Everything stored of `doc`, loaded (`None`: nothing).
    pub fn load(&self, doc: &DocumentId) -> Option<Result<Automerge, automerge::AutomergeError>> {
        let chunks = self.chunks.get(doc).filter(|c| !c.is_empty())?;
        let mut d = Automerge::new();
        for (_, _, data) in chunks {
            if let Err(e) = d.load_incremental(data) {
                return Some(Err(e));
            }
        }
        Some(Ok(d))
    }
}
