//! A node's documents spread over several engines (shards), each the
//! unchanged engine owning the documents that hash to it, so a node uses
//! every core (`meridian-edge --engine-threads`).
//!
//! - A document belongs to one shard ([`Shard::of`]): its messages, storage
//!   tasks, timers and outputs are that shard's alone, so everything the
//!   engine guarantees per document (durable before advertised, order)
//!   holds unchanged.
//! - A connection is registered with every shard under one id
//!   ([`Engine::handle_connect_as`]). Its handshake (`join`, `peer`) goes to
//!   every shard ([`route`]), but only the primary (shard 0) answers it:
//!   the others take the peer as joined without a word (they never send a
//!   `join`, a `peer` or an `error` about the handshake). A client sends
//!   nothing about a document before it has the primary's `peer`, so no
//!   shard's message can overtake it.
//! - Storage task ids are numbered `index, index + count, ...` so the
//!   shards may share one store and one storage thread ([`Shard::task`]).
//!
//! The node runtime runs each shard on its own task; [`ShardedEngine`] runs
//! them one after the other in one thread with the same routing: the
//! simulation's model of a sharded node.

use std::collections::BTreeMap;

use automerge::Automerge;
use automerge::transaction::Transaction;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::codec::{self, Decoded, Message};
use crate::drive::Driver;
use crate::ids::{ConnId, DocumentId};
use crate::storage::StorageTaskId;

use super::{
    Access, Applied, Direction, Divergence, DocDemand, DocError, Engine, EngineConfig, EngineStats, Event,
    HandoffStatus, HandoffTargets, Millis,
};

/// Which of a node's shards an engine is, and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    /// The only one: a node that is not sharded.
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// The shard of `count` that owns `doc` (FNV-1a over its bytes: ids are
    /// random, so documents spread evenly).
    pub fn of(doc: &DocumentId, count: usize) -> usize {
        if count <= 1 {
            return 0;
        }
        let hash = doc
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        (hash % count as u64) as usize
    }

    pub fn owns(&self, doc: &DocumentId) -> bool {
        Self::of(doc, self.count) == self.index
    }

    /// The shard that answers a connection's handshake and speaks for the
    /// node about the connection as a whole.
    pub fn is_primary(&self) -> bool {
        self.index == 0
    }

    /// The shard that issued a storage task.
    pub fn task(id: StorageTaskId, count: usize) -> usize {
        (id.0 % count.max(1) as u64) as usize
    }
}

/// Where a node with several shards hands a message from a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The shard owning the message's document.
    Shard(usize),
    /// Every shard: the handshake.
    All,
    /// The primary alone: what concerns the connection, not a document
    /// (an `error`, remote-heads subscriptions, which the engine ignores).
    Primary,
}

/// Where `message` goes among `count` shards.
pub fn route(message: &Message, count: usize) -> Route {
    match message {
        Message::Join { .. } | Message::Peer { .. } => Route::All,
        Message::Error { .. } | Message::RemoteSubscriptionChange { .. } => Route::Primary,
        Message::Request { document_id, .. }
        | Message::Sync { document_id, .. }
        | Message::DocUnavailable { document_id, .. }
        | Message::Ephemeral { document_id, .. }
        | Message::RemoteHeadsChanged { document_id, .. } => Route::Shard(Shard::of(document_id, count)),
    }
}

/// The config of shard `index` of `count` made from a node's `config`.
/// The documents a node keeps in memory are split between the shards (each
/// counts its own). The rates per connection or per subject (ephemeral
/// messages, lookups of unknown documents, creations) are each shard's:
/// a client that spreads over documents in several shards may get up to
/// `count` times the rate in all, and never less than the rate on one.
pub fn shard_config(config: &EngineConfig, index: usize, count: usize) -> EngineConfig {
    let count = count.max(1);
    let mut c = config.clone();
    c.shard = Shard { index, count };
    c.rng_seed = config.rng_seed.wrapping_add(index as u64);
    if config.max_loaded_docs > 0 {
        c.max_loaded_docs = config.max_loaded_docs.div_ceil(count);
    }
    c
}

/// Several shards driven in one thread with the routing of a sharded node
/// (the simulation's model of one; the node runtime runs each shard on its
/// own task instead). It offers the engine's methods a simulated node uses.
#[derive(Debug)]
pub struct ShardedEngine {
    shards: Vec<Engine>,
    next_conn: u64,
    rng: ChaCha8Rng,
}

impl ShardedEngine {
    pub fn new(config: EngineConfig, count: usize) -> Self {
        let count = count.max(1);
        let shards = (0..count).map(|i| Engine::new(shard_config(&config, i, count))).collect();
        Self { shards, next_conn: 0, rng: ChaCha8Rng::seed_from_u64(config.rng_seed ^ 0x5348_4152_4453) }
    }

    pub fn shards(&self) -> &[Engine] {
        &self.shards
    }

    fn owner(&mut self, doc: &DocumentId) -> &mut Engine {
        let i = Shard::of(doc, self.shards.len());
        &mut self.shards[i]
    }

    fn owner_ref(&self, doc: &DocumentId) -> &Engine {
        &self.shards[Shard::of(doc, self.shards.len())]
    }

    pub fn handle_connect(&mut self, now: Millis, direction: Direction) -> ConnId {
        self.handle_connect_with(now, direction, Access::full())
    }

    pub fn handle_connect_with(&mut self, now: Millis, direction: Direction, access: Access) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        for shard in &mut self.shards {
            shard.handle_connect_as(now, conn, direction, false, access.clone());
        }
        conn
    }

    pub fn handle_disconnect(&mut self, now: Millis, conn: ConnId) {
        for shard in &mut self.shards {
            shard.handle_disconnect(now, conn);
        }
    }

    /// A frame from `conn`, decoded once and handed where [`route`] says;
    /// what does not decode goes to the primary, which refuses it.
    pub fn handle_frame(&mut self, now: Millis, conn: ConnId, bytes: &[u8]) -> Option<&'static str> {
        let message = match codec::decode(bytes) {
            Ok(Decoded::Message(m)) => m,
            Ok(Decoded::Unknown { .. }) => return Some("other"),
            Err(e) => {
                // The primary refuses it; the others stop listening.
                for shard in &mut self.shards[1..] {
                    shard.reject_connection(conn, super::ErrorKind::Decode, e.to_string());
                }
                return self.shards[0].handle_frame(now, conn, bytes);
            }
        };
        let kind = message.type_name();
        match route(&message, self.shards.len()) {
            Route::Shard(i) => {
                self.shards[i].handle_decoded(now, conn, message);
            }
            Route::Primary => {
                self.shards[0].handle_decoded(now, conn, message);
            }
            Route::All => {
                for shard in &mut self.shards {
                    shard.handle_decoded(now, conn, message.clone());
                }
            }
        }
        Some(kind)
    }

    /// Every shard's outputs up to the next event, primary first; a close
    /// the driver carries out at once disconnects the connection from
    /// every shard.
    pub fn drive_to_event(&mut self, now: Millis, driver: &mut impl Driver) -> Option<Event> {
        for i in 0..self.shards.len() {
            let mut closing = ClosedNow { driver, closed: Vec::new() };
            let event = self.shards[i].drive_to_event(now, &mut closing);
            for conn in closing.closed {
                self.handle_disconnect(now, conn);
            }
            if event.is_some() {
                return event;
            }
        }
        None
    }

    pub fn handle_storage_result(&mut self, now: Millis, id: StorageTaskId, result: crate::storage::StorageResult) {
        let i = Shard::task(id, self.shards.len());
        self.shards[i].handle_storage_result(now, id, result);
    }

    pub fn handle_applied(&mut self, now: Millis, applied: Applied) {
        self.owner(&applied.doc()).handle_applied(now, applied);
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        self.shards.iter().filter_map(Engine::poll_timeout).min()
    }

    pub fn handle_timeout(&mut self, now: Millis) {
        for shard in &mut self.shards {
            shard.handle_timeout(now);
        }
    }

    pub fn begin_batch(&mut self) {
        self.shards.iter_mut().for_each(Engine::begin_batch);
    }

    pub fn end_batch(&mut self, now: Millis) {
        for shard in &mut self.shards {
            shard.end_batch(now);
        }
    }

    /// A new document, made in the shard that owns the id drawn for it.
    pub fn create<F>(&mut self, now: Millis, init: F) -> Result<DocumentId, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        let doc = DocumentId::random(&mut self.rng);
        self.owner(&doc).create_as(now, doc, Default::default(), init)?;
        Ok(doc)
    }

    pub fn change<F, O>(&mut self, now: Millis, doc: DocumentId, f: F) -> Result<O, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<O, automerge::AutomergeError>,
    {
        self.owner(&doc).change(now, doc, f)
    }

    pub fn document(&self, doc: &DocumentId) -> Option<&Automerge> {
        self.owner_ref(doc).document(doc)
    }

    pub fn find(&mut self, now: Millis, doc: DocumentId) {
        self.owner(&doc).find(now, doc);
    }

    pub fn broadcast_ephemeral(&mut self, doc: DocumentId, session_id: &str, count: u64, data: Vec<u8>) {
        self.owner(&doc).broadcast_ephemeral(doc, session_id, count, data);
    }

    pub fn handoff_status(
        &mut self,
        now: Millis,
        doc: DocumentId,
        to: Option<ConnId>,
        from: Option<ConnId>,
        targets: HandoffTargets,
    ) -> HandoffStatus {
        self.owner(&doc).handoff_status(now, doc, to, from, targets)
    }

    pub fn pin(&mut self, doc: DocumentId, pinned: bool) {
        self.owner(&doc).pin(doc, pinned);
    }

    pub fn is_pinned(&self, doc: &DocumentId) -> bool {
        self.owner_ref(doc).is_pinned(doc)
    }

    pub fn offload(&mut self, now: Millis, doc: DocumentId) {
        self.owner(&doc).offload(now, doc);
    }

    pub fn handle_stored_elsewhere(&mut self, now: Millis, doc: DocumentId, bytes: Vec<u8>) {
        self.owner(&doc).handle_stored_elsewhere(now, doc, bytes);
    }

    pub fn refresh_all_from_store(&mut self, now: Millis) {
        for shard in &mut self.shards {
            shard.refresh_all_from_store(now);
        }
    }

    /// Every stored document, for the shards to open theirs.
    pub fn backfill(&mut self, now: Millis, docs: Vec<DocumentId>) {
        for shard in &mut self.shards {
            shard.backfill(now, docs.clone());
        }
    }

    pub fn check_divergence(&mut self, now: Millis, threshold_ms: u64) -> Divergence {
        let mut all = Divergence::default();
        for shard in &mut self.shards {
            let d = shard.check_divergence(now, threshold_ms);
            all.divergent.extend(d.divergent);
            all.repairs += d.repairs;
            all.healed.extend(d.healed);
            all.refetching.extend(d.refetching);
        }
        all
    }

    pub fn take_demand(&mut self) -> BTreeMap<DocumentId, DocDemand> {
        self.shards.iter_mut().flat_map(Engine::take_demand).collect()
    }

    pub fn stats(&self) -> EngineStats {
        self.shards.iter().map(Engine::stats).fold(EngineStats::default(), |a, b| a.sum(&b))
    }

    pub fn loaded_docs(&self) -> usize {
        self.shards.iter().map(Engine::loaded_docs).sum()
    }

    pub fn backfill_queued(&self) -> usize {
        self.shards.iter().map(Engine::backfill_queued).sum()
    }

    pub fn replies_awaited(&self) -> usize {
        self.shards.iter().map(Engine::replies_awaited).sum()
    }
}

/// A driver that notes the connections closed at once (the driver's
/// [`Driver::close`] returned true), to disconnect them from every shard.
struct ClosedNow<'a, D> {
    driver: &'a mut D,
    closed: Vec<ConnId>,
}

impl<D: Driver> Driver for ClosedNow<'_, D> {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.driver.send(conn, message);
    }

    fn close(&mut self, conn: ConnId, reason: String) -> bool {
        let now = self.driver.close(conn, reason);
        if now {
            self.closed.push(conn);
        }
        now
    }

    fn storage(
        &mut self,
        id: StorageTaskId,
        task: crate::storage::StorageTask,
    ) -> Option<crate::storage::StorageResult> {
        self.driver.storage(id, task)
    }

    fn apply(&mut self, job: super::ApplyJob) -> Option<Applied> {
        self.driver.apply(job)
    }

    fn event(&mut self, event: Event) {
        self.driver.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_spread_over_the_shards_and_stay_put() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let docs: Vec<DocumentId> = (0..3000).map(|_| DocumentId::random(&mut rng)).collect();
        for count in [2usize, 3, 4] {
            let mut per = vec![0usize; count];
            for d in &docs {
                let i = Shard::of(d, count);
                assert_eq!(i, Shard::of(d, count));
                per[i] += 1;
            }
            let even = docs.len() / count;
            assert!(per.iter().all(|n| n.abs_diff(even) < even / 5), "{count} shards: {per:?}");
        }
        assert!(docs.iter().all(|d| Shard::of(d, 1) == 0));
    }

    #[test]
    fn task_ids_name_the_shard_that_issued_them() {
        for index in 0..3 {
            let config = shard_config(&EngineConfig::new(crate::ids::PeerId::new("n"), None), index, 3);
            let mut e = Engine::new(config);
            let doc = DocumentId::from_bytes([index as u8; 16]);
            e.find(Millis(0), doc);
            let ids: Vec<StorageTaskId> = std::iter::from_fn(|| e.poll_output())
                .filter_map(|o| match o {
                    super::super::Output::Storage { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            assert!(!ids.is_empty());
            assert!(ids.iter().all(|id| Shard::task(*id, 3) == index), "{ids:?}");
        }
    }

    #[test]
    fn the_memory_budget_is_split_between_the_shards_and_rates_are_not() {
        let mut config = EngineConfig::new(crate::ids::PeerId::new("n"), None);
        config.max_loaded_docs = 1000;
        config.creates_per_minute = 120;
        let c = shard_config(&config, 1, 3);
        assert_eq!((c.max_loaded_docs, c.creates_per_minute, c.ephemeral_per_second), (334, 120, 50));
        assert_eq!(c.shard, Shard { index: 1, count: 3 });
        assert_ne!(c.rng_seed, shard_config(&config, 0, 3).rng_seed);
    }
}
