//! One storage task inside a batch's transaction, and the chunks each
//! document's next compaction may delete (`Covering`: only those this
//! node loaded or wrote, so a snapshot never deletes another hub's chunk).

use std::collections::HashMap;

use meridian_protocol::ids::DocumentId;
use meridian_protocol::storage::{StorageResult, StorageTask};
use postgres::Transaction;

use super::sql::{
    DELETE_CHUNK, DELETE_CHUNKS, DELETE_COVERED, DELETE_COVERED_FED, DELETE_SYNC_STATES, INSERT_CHUNK, LOAD_DOC,
    LOAD_SYNC_STATE, PUT_SYNC_STATE, QUARANTINE, QUARANTINE_DOC,
};
use super::{MAX_COVERED_DOCS, unix_ms};

/// Changes to the covered chunks a batch makes, applied once it commits.
#[derive(Default)]
pub(super) struct Covering {
    /// Documents whose covered chunks are now exactly these.
    pub(super) set: Vec<(DocumentId, Vec<i64>)>,
    /// Documents forgotten (deleted).
    pub(super) forget: Vec<DocumentId>,
}

impl Covering {
    /// The covered chunks of `doc` as this batch leaves them so far.
    pub(super) fn current<'a>(
        &'a self,
        doc: &DocumentId,
        before: &'a HashMap<DocumentId, Vec<i64>>,
    ) -> Option<&'a Vec<i64>> {
        if let Some((_, seqs)) = self.set.iter().rev().find(|(d, _)| d == doc) {
            return Some(seqs);
        }
        if self.forget.contains(doc) {
            return None;
        }
        before.get(doc)
    }

    pub(super) fn apply(self, covered: &mut HashMap<DocumentId, Vec<i64>>) {
        for doc in self.forget {
            covered.remove(&doc);
        }
        for (doc, seqs) in self.set {
            covered.insert(doc, seqs);
        }
        if covered.len() > MAX_COVERED_DOCS {
            let extra = covered.len() - MAX_COVERED_DOCS;
            let drop: Vec<DocumentId> = covered.keys().take(extra).copied().collect();
            for doc in drop {
                covered.remove(&doc);
            }
        }
    }
}

pub(super) fn run_task(
    tx: &mut Transaction<'_>,
    task: &StorageTask,
    before: &HashMap<DocumentId, Vec<i64>>,
    covering: &mut Covering,
    feed: bool,
    quarantined: &mut u64,
) -> Result<StorageResult, postgres::Error> {
    // With a feed, chunks start in its outbox.
    let fed = !feed;
    use StorageResult::{Done, Loaded};
    Ok(match task {
        StorageTask::LoadDoc { doc } | StorageTask::ReadDoc { doc } => {
            let rows = tx.query(LOAD_DOC, &[&doc.as_bytes().as_slice()])?;
            // Every chunk is checked as automerge will; one that fails is
            // quarantined (kept, never served) and left out, as on SQLite.
            let (mut seqs, mut bytes, mut bad) = (Vec::new(), None::<Vec<u8>>, Vec::new());
            for r in &rows {
                let (seq, data) = (r.get::<_, i64>(0), r.get::<_, &[u8]>(1));
                match meridian_protocol::chunks::verify(data, 1 << 30) {
                    Ok(_) => {
                        seqs.push(seq);
                        bytes.get_or_insert_default().extend_from_slice(data);
                    }
                    Err(error) => bad.push((seq, error.to_string())),
                }
            }
            for (seq, why) in bad {
                tracing::error!(
                    %doc, seq, error = %why,
                    "a stored chunk is corrupt: moved to the quarantine table and left out; the document is synced again from the edges"
                );
                tx.execute(QUARANTINE, &[&seq, &why, &unix_ms()])?;
                tx.execute(DELETE_CHUNK, &[&seq])?;
                *quarantined += 1;
            }
            // A load covers what it read; a refresh's read does not (the
            // engine's snapshots issued before it is taken in lack it).
            if matches!(task, StorageTask::LoadDoc { .. }) {
                covering.set.push((*doc, seqs));
            }
            Loaded(bytes)
        }
        StorageTask::AppendChunk { doc, data } => {
            let seq: i64 =
                tx.query_one(INSERT_CHUNK, &[&doc.as_bytes().as_slice(), &"incremental", data, &fed])?.get(0);
            let mut seqs = covering.current(doc, before).cloned().unwrap_or_default();
            seqs.push(seq);
            covering.set.push((*doc, seqs));
            Done
        }
        StorageTask::Compact { doc, snapshot } => {
            let mut seqs = covering.current(doc, before).cloned().unwrap_or_default();
            if !seqs.is_empty() && feed {
                // Chunks the feed has not carried stay (still covered).
                let deleted: Vec<i64> = tx
                    .query(DELETE_COVERED_FED, &[&doc.as_bytes().as_slice(), &seqs])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                seqs.retain(|s| !deleted.contains(s));
            } else if !seqs.is_empty() {
                tx.execute(DELETE_COVERED, &[&doc.as_bytes().as_slice(), &seqs])?;
                seqs.clear();
            }
            let seq: i64 =
                tx.query_one(INSERT_CHUNK, &[&doc.as_bytes().as_slice(), &"snapshot", snapshot, &fed])?.get(0);
            seqs.push(seq);
            covering.set.push((*doc, seqs));
            Done
        }
        StorageTask::Quarantine { doc, snapshot, reason } => {
            let id = doc.as_bytes();
            *quarantined += tx.execute(QUARANTINE_DOC, &[&id.as_slice(), reason, &unix_ms()])?;
            tx.execute(DELETE_CHUNKS, &[&id.as_slice()])?;
            tx.execute(DELETE_SYNC_STATES, &[&id.as_slice()])?;
            let seq: i64 = tx.query_one(INSERT_CHUNK, &[&id.as_slice(), &"snapshot", snapshot, &fed])?.get(0);
            covering.set.push((*doc, vec![seq]));
            Done
        }
        StorageTask::DeleteDoc { doc } => {
            tx.execute(DELETE_CHUNKS, &[&doc.as_bytes().as_slice()])?;
            tx.execute(DELETE_SYNC_STATES, &[&doc.as_bytes().as_slice()])?;
            covering.set.retain(|(d, _)| d != doc);
            covering.forget.push(*doc);
            Done
        }
        StorageTask::LoadSyncState { doc, peer } => {
            let row = tx.query_opt(LOAD_SYNC_STATE, &[&doc.as_bytes().as_slice(), &peer.as_str()])?;
            Loaded(row.map(|r| r.get::<_, Vec<u8>>(0)))
        }
        StorageTask::PutSyncState { doc, peer, state } => {
            tx.execute(PUT_SYNC_STATE, &[&doc.as_bytes().as_slice(), &peer.as_str(), state])?;
            Done
        }
    })
}
