//! Storage as effects: the engine emits [`StorageTask`]s, the driver runs
//! them against a real store (SQLite on devices, edges and the hub;
//! IndexedDB in the browser) and feeds back a [`StorageResult`] with the
//! same [`StorageTaskId`].
//!
//! A driver must run the tasks of one engine **in the order they were
//! emitted** and must only report a write as done once it is durable: the
//! engine relies on both to never advertise heads that are not committed.
//! And once a write of a document failed, the document's later writes must
//! fail too until it is loaded again ([`WriteFence`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{DocumentId, StorageId};

/// The part of the driver contract about failed writes. The engine forgets
/// a document whose write failed and loads it again before it writes more,
/// so every write of that document a driver gets in between was issued in
/// the failed sequence: committing one would store changes whose
/// dependencies were lost with the failed write (and a reload would then
/// hold, and send peers, changes it cannot apply; found by fuzzing the
/// engine, docs/FUZZING.md). A driver asks [`WriteFence::check`] before
/// each task and tells [`WriteFence::record`] each result.
#[derive(Debug, Default)]
pub struct WriteFence {
    failed: BTreeSet<DocumentId>,
}

impl WriteFence {
    /// `Some(result)`: report it instead of running `task` (a write of a
    /// document whose earlier write failed). A load lifts the fence.
    pub fn check(&mut self, task: &StorageTask) -> Option<StorageResult> {
        match task {
            StorageTask::LoadDoc { doc } => {
                self.failed.remove(doc);
                None
            }
            StorageTask::AppendChunk { doc, .. }
            | StorageTask::Compact { doc, .. }
            | StorageTask::Quarantine { doc, .. }
                if self.failed.contains(doc) =>
            {
                Some(StorageResult::Failed("an earlier write of this document failed; it is loaded again first".into()))
            }
            _ => None,
        }
    }

    /// A write answered anything but done (failed, or an answer the engine
    /// takes as a failure) fences its document.
    pub fn record(&mut self, task: &StorageTask, result: &StorageResult) {
        if let StorageTask::AppendChunk { doc, .. }
        | StorageTask::Compact { doc, .. }
        | StorageTask::Quarantine { doc, .. } = task
            && *result != StorageResult::Done
        {
            self.failed.insert(*doc);
        }
    }
}

/// Correlates a task with its completion; unique per engine instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorageTaskId(pub u64);

/// One unit of storage work.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageTask {
    /// Load every chunk of a document, concatenated (snapshot first, then
    /// incrementals) so that one `Automerge::load` reads all of it.
    LoadDoc {
        doc: DocumentId,
    },
    /// Read every chunk of a document held in memory already, as
    /// [`StorageTask::LoadDoc`] does, to take what other nodes sharing the
    /// store wrote (a refresh). Unlike a load it does not make the chunks
    /// this node's: a store whose compaction deletes exactly the chunks the
    /// node loaded or appended (the PostgreSQL store) must not count these,
    /// since a snapshot issued before the read is taken in does not hold
    /// them (found by the simulation of several hubs).
    ReadDoc {
        doc: DocumentId,
    },
    /// Append an incremental chunk (changes since the last chunk).
    AppendChunk {
        doc: DocumentId,
        data: Vec<u8>,
    },
    /// Replace every chunk stored for the document so far with one
    /// snapshot. Chunks appended by earlier tasks are covered by it.
    Compact {
        doc: DocumentId,
        snapshot: Vec<u8>,
    },
    /// Forget a document and its sync states.
    DeleteDoc {
        doc: DocumentId,
    },
    /// Replace the document's copy, in one transaction: move every chunk
    /// stored for it so far to the quarantine (kept for inspection with
    /// `reason`, never loaded or served again), forget its sync states (they
    /// describe the old copy), and store `snapshot` as its only chunk. The
    /// last resort of divergence repair (`Engine::check_divergence`).
    Quarantine {
        doc: DocumentId,
        snapshot: Vec<u8>,
        reason: String,
    },
    /// Load the persisted sync state we share with a remote store.
    LoadSyncState {
        doc: DocumentId,
        peer: StorageId,
    },
    PutSyncState {
        doc: DocumentId,
        peer: StorageId,
        state: Vec<u8>,
    },
}

/// The answer to a task.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageResult {
    /// For `LoadDoc`, `ReadDoc` and `LoadSyncState`: the bytes, or `None` if absent.
    Loaded(Option<Vec<u8>>),
    /// For every write: it is durable.
    Done,
    /// The store failed; the engine treats the document as unavailable and
    /// never advertises the data of a failed write.
    Failed(String),
}

/// An in-memory store that executes tasks immediately, for tests, the
/// simulation harness and ephemeral peers.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    docs: BTreeMap<DocumentId, Vec<Vec<u8>>>,
    sync_states: BTreeMap<(DocumentId, StorageId), Vec<u8>>,
    /// Chunks set aside by [`StorageTask::Quarantine`], with the reason.
    quarantined: Vec<(DocumentId, Vec<u8>, String)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one task and returns its result.
    pub fn execute(&mut self, task: &StorageTask) -> StorageResult {
        match task {
            StorageTask::LoadDoc { doc } | StorageTask::ReadDoc { doc } => {
                StorageResult::Loaded(self.docs.get(doc).map(|chunks| chunks.concat()))
            }
            StorageTask::AppendChunk { doc, data } => {
                self.docs.entry(*doc).or_default().push(data.clone());
                StorageResult::Done
            }
            StorageTask::Compact { doc, snapshot } => {
                self.docs.insert(*doc, vec![snapshot.clone()]);
                StorageResult::Done
            }
            StorageTask::DeleteDoc { doc } => {
                self.docs.remove(doc);
                self.sync_states.retain(|(d, _), _| d != doc);
                StorageResult::Done
            }
            StorageTask::Quarantine { doc, snapshot, reason } => {
                let old = self.docs.insert(*doc, vec![snapshot.clone()]).unwrap_or_default();
                self.quarantined.extend(old.into_iter().map(|c| (*doc, c, reason.clone())));
                self.sync_states.retain(|(d, _), _| d != doc);
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

    /// Number of documents with at least one chunk.
    pub fn doc_count(&self) -> usize {
        self.docs.len()
    }

    pub fn chunk_count(&self, doc: &DocumentId) -> usize {
        self.docs.get(doc).map_or(0, Vec::len)
    }

    /// Chunks of `doc` in the quarantine, with why.
    pub fn quarantined(&self, doc: &DocumentId) -> Vec<(&[u8], &str)> {
        self.quarantined.iter().filter(|(d, ..)| d == doc).map(|(_, c, r)| (c.as_slice(), r.as_str())).collect()
    }
}
