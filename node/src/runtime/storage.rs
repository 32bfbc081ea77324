//! The storage thread: runs the engine shards' storage tasks in order,
//! grouping whatever is queued, from every shard, into one transaction
//! (group commit: one commit and one fsync for all of them), and answers
//! each shard only after the transaction committed.

use std::sync::Arc;
use std::time::Instant;

use meridian_protocol::engine::Shard;
use meridian_protocol::ids::DocumentId;
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId, WriteFence};
use tokio::sync::mpsc;

use crate::metrics::NodeMetrics;
use crate::store::{DocStore, ScrubStep};

type Batch = Vec<(StorageTaskId, StorageTask)>;
type BatchResult = Vec<(StorageTaskId, StorageResult)>;

/// Work for the storage thread.
pub(super) enum StoreRequest {
    Tasks(Batch),
    /// Every stored document id (to sync them with a new upstream).
    ListDocs,
    /// Bytes stored and the least recently written documents (disk budget).
    Usage,
    /// Who created these documents (the first record of each stands).
    Creators(Vec<(DocumentId, String)>),
    /// One step of the background scrub ([`DocStore::scrub`]).
    Scrub {
        after: i64,
        max_bytes: u64,
    },
}

/// Answers from the storage thread.
#[derive(Clone)]
pub(super) enum StoreReply {
    Done(BatchResult),
    Docs(Vec<DocumentId>),
    Usage(u64, Vec<DocumentId>),
    /// `Ok(None)`: the store does not scrub; `Err`: the step failed
    /// (logged), to be tried again.
    Scrubbed(Result<Option<ScrubStep>, ()>),
}

/// Least recently written documents listed per disk-budget check (the
/// engine offers a few of them for offloading, [`meridian_protocol::engine::Engine::relieve_disk`]).
const OFFLOAD_CANDIDATES: usize = 64;

/// Owns the storage thread. Dropping every sender (the runtime's and the
/// shards' [`StorageSender`]s) ends the thread after it has run every
/// queued request.
#[derive(Debug)]
pub(super) struct StorageWorker {
    tx: Option<std::sync::mpsc::Sender<(usize, StoreRequest)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One shard's way to the storage thread.
pub(super) struct StorageSender {
    shard: usize,
    tx: std::sync::mpsc::Sender<(usize, StoreRequest)>,
}

impl StorageSender {
    pub(super) fn submit(&self, request: StoreRequest) {
        // The thread only goes away at shutdown; nothing to do then.
        let _ = self.tx.send((self.shard, request));
    }
}

impl StorageWorker {
    /// The thread, answering shard `i` on `replies[i]`.
    pub(super) fn start(
        mut store: Box<dyn DocStore>,
        replies: Vec<mpsc::UnboundedSender<StoreReply>>,
        metrics: Arc<NodeMetrics>,
        committed: Option<mpsc::UnboundedSender<super::Committed>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, StoreRequest)>();
        let thread = std::thread::Builder::new().name("meridian-store".into()).spawn(move || {
            let mut fence = WriteFence::default();
            while let Ok(first) = rx.recv() {
                // Group commit: every batch already queued goes into the same
                // transaction, in order.
                let mut pending = vec![first];
                pending.extend(rx.try_iter());
                run_requests(store.as_mut(), &mut fence, pending, &replies, &metrics, committed.as_ref());
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Shard `shard`'s sender.
    pub(super) fn sender(&self, shard: usize) -> Option<StorageSender> {
        self.tx.as_ref().map(|tx| StorageSender { shard, tx: tx.clone() })
    }

    /// Waits until every submitted request has run (once the shards have
    /// dropped their senders).
    pub(super) fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs queued requests on the storage thread.
fn run_requests(
    store: &mut dyn DocStore,
    fence: &mut WriteFence,
    pending: Vec<(usize, StoreRequest)>,
    replies: &[mpsc::UnboundedSender<StoreReply>],
    metrics: &NodeMetrics,
    committed: Option<&mpsc::UnboundedSender<super::Committed>>,
) {
    let mut batch = Vec::new();
    let (mut list, mut usage, mut scrub) = (Vec::new(), false, None);
    for (shard, request) in pending {
        match request {
            StoreRequest::Tasks(b) => batch.extend(b),
            StoreRequest::ListDocs => list.push(shard),
            StoreRequest::Usage => usage = true,
            StoreRequest::Scrub { after, max_bytes } => scrub = Some((after, max_bytes)),
            StoreRequest::Creators(created) => {
                let at = crate::auth::unix_now();
                for (doc, subject) in created {
                    if let Err(e) = store.record_creator(&doc, &subject, at) {
                        tracing::error!(%doc, error = %e, "recording a document's creator failed");
                    }
                }
            }
        }
    }
    if !batch.is_empty() {
        let started = Instant::now();
        // Writes of a document whose earlier write failed are refused
        // without touching the store (`WriteFence`); the rest run as one
        // transaction (all or nothing, so within it a failure fails the
        // writes after it too).
        let mut fenced = Vec::new();
        let mut run = Vec::with_capacity(batch.len());
        for (id, task) in batch {
            match fence.check(&task) {
                Some(result) => fenced.push((id, task, result)),
                None => run.push((id, task)),
            }
        }
        let mut out = store.execute_batch(&run);
        for ((_, task), (_, result)) in run.iter().zip(&out) {
            fence.record(task, result);
            // What committed, for other nodes sharing the store (the hubs' bus).
            if let Some(tx) = committed
                && matches!(result, StorageResult::Done)
                && let StorageTask::AppendChunk { doc, data } | StorageTask::Compact { doc, snapshot: data } = task
            {
                let _ = tx.send(super::Committed { doc: *doc, data: data.clone() });
            }
        }
        out.extend(fenced.into_iter().map(|(id, _, result)| (id, result)));
        // Back in the order they were issued (task ids grow).
        out.sort_by_key(|(id, _)| *id);
        metrics.storage_batch_seconds.observe(started.elapsed().as_secs_f64());
        metrics.storage_batches.inc();
        metrics.storage_tasks.inc_by(out.len() as u64);
        let failed = out.iter().filter(|(_, r)| matches!(r, StorageResult::Failed(_))).count();
        metrics.storage_failures.inc_by(failed as u64);
        crate::metrics::set_total(&metrics.chunks_quarantined, store.quarantined());
        // Each shard its own results (a task id names its shard).
        let mut per_shard: Vec<BatchResult> = vec![Vec::new(); replies.len()];
        for (id, result) in out {
            per_shard[Shard::task(id, replies.len())].push((id, result));
        }
        for (shard, results) in per_shard.into_iter().enumerate() {
            if !results.is_empty() {
                let _ = replies[shard].send(StoreReply::Done(results));
            }
        }
    }
    if !list.is_empty() {
        let docs = match store.document_ids() {
            Ok(docs) => docs,
            Err(e) => {
                tracing::error!(error = %e, "listing stored documents failed");
                Vec::new()
            }
        };
        list.sort_unstable();
        list.dedup();
        for shard in list {
            let _ = replies[shard].send(StoreReply::Docs(docs.clone()));
        }
    }
    if let Some((after, max_bytes)) = scrub {
        let step = store.scrub(after, max_bytes).map_err(|e| {
            tracing::error!(error = %e, "scrubbing the store failed; the step is tried again");
        });
        crate::metrics::set_total(&metrics.chunks_quarantined, store.quarantined());
        // Every shard rewrites the corrupt documents it owns.
        to_every_shard(replies, StoreReply::Scrubbed(step));
    }
    if usage {
        let (bytes, oldest) = store.usage(OFFLOAD_CANDIDATES).unwrap_or_else(|e| {
            tracing::error!(error = %e, "measuring the store failed");
            (0, Vec::new())
        });
        // Every shard offers the documents it owns for the disk budget.
        to_every_shard(replies, StoreReply::Usage(bytes, oldest));
    }
}

/// A shard that stopped listening (shutting down) is skipped: the thread
/// runs until every sender is gone, so every shard's last writes commit.
fn to_every_shard(replies: &[mpsc::UnboundedSender<StoreReply>], reply: StoreReply) {
    for tx in replies {
        let _ = tx.send(reply.clone());
    }
}
