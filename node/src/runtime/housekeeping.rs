//! The node loop's housekeeping, every tick interval: the store's size (a
//! disk budget, the `store_bytes` metric), the background scrub, the
//! divergence watch, and the metrics read from the engine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_protocol::engine::{EngineStats, Millis};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId};

use super::NodeLoop;
use super::storage::StoreRequest;
use crate::metrics::set_total;
use crate::store::ScrubStep;

/// Bytes of stored chunks the background scrub checks per second by
/// default: a gigabyte store is read through in about a quarter of an hour,
/// for one SHA-256 pass (a few milliseconds of CPU per second).
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 1 << 20;

/// The background scrub: a slow pass over every stored chunk, again and
/// again, checking each as a load would; a corrupt one is quarantined by
/// the store and, if its document is in memory, the document is written
/// again whole ([`Engine::rewrite_stored`]).
#[derive(Debug)]
pub(super) struct Scrub {
    /// Bytes per second (0: off).
    pub(super) rate: u64,
    /// The last chunk checked in this pass.
    pub(super) after: i64,
    pub(super) pending: bool,
    pub(super) last: Option<Instant>,
}

/// How long a replica may stay apart from us (what either side had not
/// crossing) before it is divergent and resynced from scratch.
pub const DEFAULT_DIVERGENCE_AFTER: Duration = Duration::from_secs(30);

/// The divergence watch ([`Engine::check_divergence`]).
#[derive(Debug)]
pub(super) struct DivergenceWatch {
    pub(super) after: Duration,
    /// Divergent at the last check: document, connection, peer, apart (ms).
    pub(super) now: Vec<(DocumentId, ConnId, Option<PeerId>, u64)>,
}

/// What each shard adds to the node's gauges and totals: every shard
/// writes its own figures, then sets the metrics to the sums.
#[derive(Clone, Debug)]
pub(super) struct Figures(Arc<Mutex<Vec<ShardFigures>>>);

#[derive(Clone, Copy, Debug, Default)]
struct ShardFigures {
    stats: EngineStats,
    loaded: usize,
    backfill_queued: usize,
    synced_upstream: usize,
    pending_upstream: usize,
    divergent_documents: usize,
    divergent_replicas: usize,
}

impl Figures {
    pub(super) fn new(shards: usize) -> Self {
        Self(Arc::new(Mutex::new(vec![ShardFigures::default(); shards])))
    }

    /// Shard `index`'s figures changed by `update`; the sums over all shards.
    fn update(&self, index: usize, update: impl FnOnce(&mut ShardFigures)) -> ShardFigures {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        update(&mut all[index]);
        all.iter().fold(ShardFigures::default(), |a, b| ShardFigures {
            stats: a.stats.sum(&b.stats),
            loaded: a.loaded + b.loaded,
            backfill_queued: a.backfill_queued + b.backfill_queued,
            synced_upstream: a.synced_upstream + b.synced_upstream,
            pending_upstream: a.pending_upstream + b.pending_upstream,
            divergent_documents: a.divergent_documents + b.divergent_documents,
            divergent_replicas: a.divergent_replicas + b.divergent_replicas,
        })
    }
}

/// How often a node without a disk budget measures its store (the
/// `store_bytes` metric): a sum over the chunks table.
const USAGE_EVERY: Duration = Duration::from_secs(10);

impl NodeLoop {
    /// Over the disk budget, the engine offers the least recently written
    /// documents to [`Engine::offload`], which drops them only once the hub
    /// holds all of them and nobody here uses them.
    pub(super) fn enforce_disk_budget(&mut self, now: Millis, bytes: u64, oldest: Vec<DocumentId>) {
        self.usage_pending = false;
        self.io.metrics.store_bytes.set(bytes as i64);
        if self.disk_budget > 0 && bytes > self.disk_budget {
            self.engine.relieve_disk(now, oldest);
        }
    }

    /// Looks for divergent replicas; logs the new ones and the healed ones,
    /// and keeps the metrics.
    pub(super) fn check_divergence(&mut self) {
        let now = self.now();
        let found = self.engine.check_divergence(now, self.divergence.after.as_millis() as u64);
        let m = &self.io.metrics;
        for (doc, conn, peer, apart_ms) in &found.divergent {
            if !self.divergence.now.iter().any(|(d, c, ..)| d == doc && c == conn) {
                let peer = peer.as_ref().map_or("?".to_owned(), |p| p.to_string());
                tracing::warn!(
                    %doc, replica = %peer, apart_ms,
                    "divergent replica: it and this node stay apart; resyncing it from scratch"
                );
                m.divergence_detected.inc();
            }
        }
        for (doc, conn, apart_ms) in &found.healed {
            tracing::info!(%doc, conn = conn.0, apart_ms, "divergent replica healed: it and this node met again");
            m.divergence_healed.inc();
            m.divergence_recovery_seconds.observe(*apart_ms as f64 / 1000.0);
        }
        m.divergence_repairs.inc_by(found.repairs);
        let docs: std::collections::BTreeSet<DocumentId> = found.divergent.iter().map(|(d, ..)| *d).collect();
        let shard = self.engine.shard().index;
        let sums = self
            .figures
            .update(shard, |f| (f.divergent_documents, f.divergent_replicas) = (docs.len(), found.divergent.len()));
        m.divergent_documents.set(sums.divergent_documents as i64);
        m.divergent_replicas.set(sums.divergent_replicas as i64);
        self.divergence.now = found.divergent;
        self.drain();
    }

    /// A scrub step is done: on to the next, and what it found corrupt is
    /// written again from memory where the document is loaded.
    pub(super) fn scrubbed(&mut self, step: Result<Option<ScrubStep>, ()>) {
        if !self.primary() {
            // The primary runs the scrub; this shard rewrites its documents.
            let now = self.now();
            for (doc, ..) in step.ok().flatten().map(|s| s.corrupt).unwrap_or_default() {
                self.engine.rewrite_stored(now, doc);
            }
            return;
        }
        self.scrub.pending = false;
        let step = match step {
            Ok(Some(step)) => step,
            Ok(None) => {
                tracing::debug!("this store is not scrubbed");
                self.scrub.rate = 0;
                return;
            }
            // Failed (a busy database, say): the same step next time.
            Err(()) => return,
        };
        let m = &self.io.metrics;
        m.scrub_chunks.inc_by(step.chunks);
        m.scrub_bytes.inc_by(step.bytes);
        match step.next {
            Some(next) => self.scrub.after = next,
            None => {
                m.scrub_passes.inc();
                self.scrub.after = 0;
            }
        }
        let now = self.now();
        for (doc, seq, why) in step.corrupt {
            tracing::error!(%doc, seq, error = %why, "the scrub found a corrupt chunk (quarantined)");
            if self.engine.shard().owns(&doc) {
                self.engine.rewrite_stored(now, doc);
            }
        }
    }

    /// The loop's own housekeeping: asks the store how much it holds (disk
    /// budget) and refreshes the metrics read from the engine.
    pub(super) fn housekeeping(&mut self) {
        self.io.traces.prune();
        if self.primary() && self.scrub.rate > 0 && !self.scrub.pending {
            let now = Instant::now();
            let elapsed = self.scrub.last.map_or(Duration::from_secs(1), |t| now - t).min(Duration::from_secs(4));
            let max_bytes = ((self.scrub.rate as f64 * elapsed.as_secs_f64()) as u64).max(1);
            self.scrub.pending = true;
            self.scrub.last = Some(now);
            self.storage.submit(StoreRequest::Scrub { after: self.scrub.after, max_bytes });
        }
        if !self.divergence.after.is_zero() {
            self.check_divergence();
        }
        // With a budget, at every housekeeping; otherwise for the metric only.
        let due = self.disk_budget > 0 || self.last_usage.is_none_or(|t| t.elapsed() >= USAGE_EVERY);
        if self.primary() && due && !self.usage_pending {
            self.usage_pending = true;
            self.last_usage = Some(Instant::now());
            self.storage.submit(StoreRequest::Usage);
        }
        let e = &self.engine;
        let (synced_upstream, pending_upstream) = e.upstream_sync_status();
        let mine = ShardFigures {
            stats: e.stats(),
            loaded: e.loaded_docs(),
            backfill_queued: e.backfill_queued(),
            synced_upstream,
            pending_upstream,
            ..ShardFigures::default()
        };
        let sums = self.figures.update(e.shard().index, |f| {
            *f = ShardFigures {
                divergent_documents: f.divergent_documents,
                divergent_replicas: f.divergent_replicas,
                ..mine
            }
        });
        if !self.primary() {
            return;
        }
        // The primary publishes the sums (one writer: totals never jump).
        let (m, stats) = (&self.io.metrics, sums.stats);
        set_total(&m.offloaded, stats.offloaded);
        set_total(&m.applied_off_loop, stats.applied_off_loop);
        set_total(&m.cold_opens, stats.cold_opens);
        set_total(&m.sync_generated, stats.sync_generated);
        set_total(&m.sync_shared, stats.sync_shared);
        set_total(&m.sync_merged, stats.sync_merged);
        set_total(&m.snapshot_answers, stats.snapshot_answers);
        m.documents_loaded.set(sums.loaded as i64);
        m.backfill_queued.set(sums.backfill_queued as i64);
        m.docs_synced_upstream.set(sums.synced_upstream as i64);
        m.docs_pending_upstream.set(sums.pending_upstream as i64);
    }
}
