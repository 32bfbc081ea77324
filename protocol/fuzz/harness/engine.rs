//! The engine fuzz harness: one [`Engine`] (an edge with a store) driven by
//! an input read as a program of up to [`MAX_OPS`] operations from four
//! peer slots on four fixed documents: connects (clients with full,
//! read-only, per-document write, no, create-only or expiring grants;
//! upstreams; edge peers), joins, disconnects, real automerge sync
//! messages made from each slot's own edits, raw frames, the golden
//! frames, ephemeral messages (own, spoofed, oversize), other messages,
//! storage completions (in order; done, failed or the wrong kind), timer
//! ticks, the local application (find, change, import, offload, pin,
//! backfill, routes), revocations and batches.
//!
//! Shared by the `engine` fuzz target (`fuzz_targets/engine.rs`) and the
//! regression test (`protocol/tests/fuzz_regressions.rs`), which includes
//! this file with `#[path]`: it needs nothing but `meridian-protocol` and
//! `automerge` (no `arbitrary`; the input is decoded by hand, one byte at a
//! time, and reading past its end yields zeros).
//!
//! Invariants, checked as the engine's outputs are carried out (a
//! violation panics):
//!
//! 1. No panic in the engine.
//! 2. Durable before advertised: every `sync`/`request` the engine sends
//!    decodes, its heads are all in the store (what completed writes put
//!    there, replayed from the in-memory store), and so is every change it
//!    carries; every `DocChanged` event's heads are in the store.
//! 3. Nothing from a peer without write access is stored: every change in
//!    every write the engine issues (`AppendChunk`, `Compact`) was offered
//!    by a connection whose access may write that document (any message
//!    fed on such a connection counts, structured or raw), was seeded in
//!    the store or was made by the local application. The read-only and
//!    ungranted slots make changes with their own actors, which no writer
//!    ever has unless the engine relayed them.
//! 4. Creation needs the create right: the first write the engine ever
//!    issues for a document that was never stored contains a change
//!    offered by a connection with the create right that may write it (or
//!    a local one).
//! 5. Nothing flows to an ungranted peer: every message about a document
//!    sent to a connection whose access may not read it is
//!    `doc-unavailable`. Every relayed ephemeral message (tagged with the
//!    connection it came from) came from a connection that may read the
//!    document, and a client's (non-relay access) is relayed under the
//!    peer id it joined as.
//! 6. No stored change is lost by a compaction: a `Compact` snapshot holds
//!    every change the store held when it runs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ChangeHash, ROOT};
use meridian_protocol::codec::{self, Decoded, Message, PROTOCOL_V1, PeerMetadata, RemoteHeads};
use meridian_protocol::drive::Driver;
use meridian_protocol::engine::{Access, Direction, DocSet, Engine, EngineConfig, ErrorKind, Event, Millis};
use meridian_protocol::ids::{ConnId, DocumentId, PeerId, StorageId, encode_head};
use meridian_protocol::storage::{MemoryStore, StorageResult, StorageTask, StorageTaskId, WriteFence};

/// `MERIDIAN_FUZZ_TRACE=1`: print what happens (to see what an input does).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MERIDIAN_FUZZ_TRACE").is_some())
}

/// Operations read from one input at most.
pub const MAX_OPS: usize = 64;
const SLOTS: usize = 4;
const DOCS: usize = 4;
const ENGINE_PEER: &str = "edge";

/// The golden frames (`protocol/tests/fixtures/golden`), fed by `Op::Golden`.
const GOLDEN: [&[u8]; 22] = [
    include_bytes!("../../tests/fixtures/golden/doc-unavailable.cbor"),
    include_bytes!("../../tests/fixtures/golden/ephemeral-count-float.cbor"),
    include_bytes!("../../tests/fixtures/golden/ephemeral-count-large.cbor"),
    include_bytes!("../../tests/fixtures/golden/ephemeral.cbor"),
    include_bytes!("../../tests/fixtures/golden/error-unicode.cbor"),
    include_bytes!("../../tests/fixtures/golden/error.cbor"),
    include_bytes!("../../tests/fixtures/golden/join-ephemeral.cbor"),
    include_bytes!("../../tests/fixtures/golden/join-no-versions.cbor"),
    include_bytes!("../../tests/fixtures/golden/join-v2-only.cbor"),
    include_bytes!("../../tests/fixtures/golden/join.cbor"),
    include_bytes!("../../tests/fixtures/golden/peer.cbor"),
    include_bytes!("../../tests/fixtures/golden/remote-heads-changed-float-timestamp.cbor"),
    include_bytes!("../../tests/fixtures/golden/remote-heads-changed-small-timestamp.cbor"),
    include_bytes!("../../tests/fixtures/golden/remote-heads-changed.cbor"),
    include_bytes!("../../tests/fixtures/golden/remote-subscription-change-remove-undefined.cbor"),
    include_bytes!("../../tests/fixtures/golden/remote-subscription-change.cbor"),
    include_bytes!("../../tests/fixtures/golden/request.cbor"),
    include_bytes!("../../tests/fixtures/golden/sync-changes.cbor"),
    include_bytes!("../../tests/fixtures/golden/sync-extra-key.cbor"),
    include_bytes!("../../tests/fixtures/golden/sync-large.cbor"),
    include_bytes!("../../tests/fixtures/golden/sync.cbor"),
    include_bytes!("../../tests/fixtures/golden/unknown-type.cbor"),
];

/// The input, read one byte at a time; past its end every byte is 0.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    fn idx(&mut self, n: usize) -> usize {
        self.u8() as usize % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

fn doc_id(i: usize) -> DocumentId {
    DocumentId::from_bytes([0x10 + i as u8; 16])
}

fn slot_peer(i: usize) -> PeerId {
    PeerId::new(format!("peer{i}"))
}

fn slot_actor(i: usize) -> ActorId {
    ActorId::from([0xA0 + i as u8; 16].as_slice())
}

/// The documents a 4-bit mask names.
fn doc_set(mask: u8) -> DocSet {
    DocSet::of((0..DOCS).filter(|i| mask & (1 << i) != 0).map(doc_id))
}

/// The hashes of the changes in automerge bytes (change chunks, compressed
/// changes, documents, in sequence; a chunk that does not parse is loaded
/// on its own and what applies is counted).
fn hashes_of(bytes: &[u8]) -> Vec<ChangeHash> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let (len, used) = leb128(&rest[9..]);
        let end = 9usize.saturating_add(used).saturating_add(len);
        if rest[..4] != [0x85, 0x6f, 0x4a, 0x83] || used == 0 || end > rest.len() {
            break;
        }
        let chunk = &rest[..end];
        match rest[8] {
            1 | 2 => match Change::from_bytes(chunk.to_vec()) {
                Ok(c) => out.push(c.hash()),
                Err(_) => out.extend(loaded_hashes(chunk)),
            },
            _ => out.extend(loaded_hashes(chunk)),
        }
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        out.extend(loaded_hashes(rest));
    }
    out
}

/// A change hash's first 8 hex digits, for traces.
fn short(h: &ChangeHash) -> String {
    h.to_string()[..8].to_owned()
}

fn loaded_hashes(bytes: &[u8]) -> Vec<ChangeHash> {
    let mut d = Automerge::new();
    match d.load_incremental(bytes) {
        Ok(_) => d.get_changes(&[]).iter().map(Change::hash).collect(),
        Err(_) => Vec::new(),
    }
}

/// An unsigned LEB128 and how many bytes it took (0: malformed).
fn leb128(b: &[u8]) -> (usize, usize) {
    let mut v: usize = 0;
    for (i, byte) in b.iter().enumerate().take(9) {
        v |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (0, 0)
}

/// Ephemeral data tagged with the connection it is sent on (a CBOR byte
/// string, as the codec requires CBOR).
fn ephemeral_tag(conn: ConnId) -> Vec<u8> {
    let c = conn.0 as u16;
    vec![0x44, 0xEE, 0x5A, (c >> 8) as u8, c as u8]
}

fn tagged_conn(data: &[u8]) -> Option<ConnId> {
    match data {
        [0x44, 0xEE, 0x5A, hi, lo] => Some(ConnId(u64::from(*hi) << 8 | u64::from(*lo))),
        _ => None,
    }
}

#[derive(Debug)]
struct ConnInfo {
    slot: usize,
    access: Access,
    /// The peer id it joined as (from `PeerConnected`).
    joined_as: Option<PeerId>,
    /// A link to another edge (the only kind of connection the node
    /// runtime routes documents to).
    edge_peer: bool,
}

#[derive(Debug)]
struct Slot {
    conn: Option<ConnId>,
    /// Its replica of each document, with its own actor.
    replicas: Vec<Automerge>,
    states: Vec<sync::State>,
    /// The last sync frame it sent per document (resent by `Sync` mode 3).
    last_frame: Vec<Option<Vec<u8>>>,
}

/// Everything but the engine: what the driver owns and checks.
#[derive(Debug)]
struct World {
    now: Millis,
    store: MemoryStore,
    /// Storage tasks handed to us, not answered yet, in order.
    pending: VecDeque<(StorageTaskId, StorageTask)>,
    /// The driver contract after a failed write (`WriteFence`).
    fence: WriteFence,
    sync_store: bool,
    close_at_once: bool,
    conns: BTreeMap<ConnId, ConnInfo>,
    slots: Vec<Slot>,
    /// Changes a connection that may write the document offered, seeded or
    /// local ones: the only ones that may be stored.
    legit: BTreeMap<DocumentId, BTreeSet<ChangeHash>>,
    /// Of those, the ones from connections with the create right (or local).
    creatable: BTreeMap<DocumentId, BTreeSet<ChangeHash>>,
    /// Which connection offered a change first (for messages).
    offered_by: BTreeMap<ChangeHash, ConnId>,
    /// Ephemeral tags seen on a connection other than the one they name
    /// (a raw frame can copy one): not checked.
    ambiguous_tags: BTreeSet<ConnId>,
    /// Documents a connection with the create right said it has (heads
    /// in a sync message, even without changes): they exist somewhere, so
    /// invariant 4 does not apply to them.
    claimed: BTreeSet<DocumentId>,
    /// Documents a write was issued for, or stored at the start.
    written: BTreeSet<DocumentId>,
    /// The changes in the store, per document (recomputed after each write).
    durable: BTreeMap<DocumentId, BTreeSet<ChangeHash>>,
}

impl World {
    fn durable_has(&self, doc: &DocumentId, h: &ChangeHash) -> bool {
        self.durable.get(doc).is_some_and(|s| s.contains(h))
    }

    fn refresh_durable(&mut self, doc: DocumentId) {
        let hashes = match self.store.execute(&StorageTask::LoadDoc { doc }) {
            StorageResult::Loaded(Some(bytes)) => loaded_hashes(&bytes).into_iter().collect(),
            _ => BTreeSet::new(),
        };
        self.durable.insert(doc, hashes);
    }

    /// Runs a task against the store (in order, as a real store would),
    /// checking a compaction loses nothing.
    fn execute(&mut self, task: &StorageTask) -> StorageResult {
        if let StorageTask::Compact { doc, snapshot } = task {
            let kept: BTreeSet<ChangeHash> = loaded_hashes(snapshot).into_iter().collect();
            if let Some(lost) = self.durable.get(doc).and_then(|d| d.iter().find(|h| !kept.contains(h))) {
                panic!("invariant: compaction of {doc} drops stored change {lost}");
            }
        }
        let result = self.store.execute(task);
        if let StorageTask::AppendChunk { doc, .. }
        | StorageTask::Compact { doc, .. }
        | StorageTask::DeleteDoc { doc } = task
        {
            self.refresh_durable(*doc);
        }
        result
    }

    /// A message about to be fed to the engine on `conn`: changes it
    /// offers to a document it may write become legitimate.
    fn offered(&mut self, conn: ConnId, frame: &[u8]) {
        let Some(info) = self.conns.get(&conn) else { return };
        let (document_id, data) = match codec::decode(frame) {
            Ok(Decoded::Message(
                Message::Sync { document_id, data, .. } | Message::Request { document_id, data, .. },
            )) => (document_id, data),
            Ok(Decoded::Message(Message::Ephemeral { data, .. })) => {
                if let Some(tag) = tagged_conn(&data).filter(|c| *c != conn) {
                    self.ambiguous_tags.insert(tag);
                }
                return;
            }
            _ => return,
        };
        if !info.access.may_write(&document_id) {
            return;
        }
        let create = info.access.create;
        let Ok(m) = sync::Message::decode(&data) else { return };
        if create && !m.heads.is_empty() {
            self.claimed.insert(document_id);
        }
        for chunk in m.changes.iter() {
            for h in hashes_of(chunk) {
                self.legit.entry(document_id).or_default().insert(h);
                if create {
                    self.creatable.entry(document_id).or_default().insert(h);
                }
                self.offered_by.entry(h).or_insert(conn);
            }
        }
    }

    fn local(&mut self, doc: DocumentId, hashes: impl IntoIterator<Item = ChangeHash>) {
        for h in hashes {
            self.legit.entry(doc).or_default().insert(h);
            self.creatable.entry(doc).or_default().insert(h);
        }
    }

    /// Invariants 3 and 4, when a write is issued.
    fn check_write(&mut self, task: &StorageTask) {
        let (doc, data) = match task {
            StorageTask::AppendChunk { doc, data } => (*doc, data),
            StorageTask::Compact { doc, snapshot } => (*doc, snapshot),
            _ => return,
        };
        let hashes = hashes_of(data);
        let legit = self.legit.get(&doc);
        if let Some(h) = hashes.iter().find(|h| !legit.is_some_and(|l| l.contains(h))) {
            panic!(
                "invariant: the engine stores change {h} of {doc}, which no connection that may write it offered \
                 (first offered by {:?}; connections: {:?})",
                self.offered_by.get(h),
                self.conns
            );
        }
        if self.written.insert(doc) && !hashes.is_empty() && !self.claimed.contains(&doc) {
            let creatable = self.creatable.get(&doc);
            if !hashes.iter().any(|h| creatable.is_some_and(|c| c.contains(h))) {
                panic!(
                    "invariant: document {doc}, stored nowhere, is created by changes of peers without the create \
                     right: {:?}",
                    hashes.iter().map(|h| (h, self.offered_by.get(h))).collect::<Vec<_>>()
                );
            }
        }
    }

    /// Invariants 2 and 5 on a message the engine sends.
    fn check_send(&self, conn: ConnId, message: &Message) {
        let Some(info) = self.conns.get(&conn) else { return };
        if let Some(doc) = message.document_id()
            && !info.access.may_read(&doc)
            && !matches!(message, Message::DocUnavailable { .. })
        {
            panic!("invariant: {conn}, not granted {doc}, is sent `{}`: {message:?}", message.type_name());
        }
        match message {
            Message::Sync { document_id, data, .. } | Message::Request { document_id, data, .. } => {
                let m = match sync::Message::decode(data) {
                    Ok(m) => m,
                    Err(e) => panic!("the engine sent a sync message for {document_id} that does not decode: {e}"),
                };
                if let Some(h) = m.heads.iter().find(|h| !self.durable_has(document_id, h)) {
                    panic!(
                        "invariant (durable before advertised): {conn} is sent `{}` for {document_id} with head {h} \
                         not in the store",
                        message.type_name()
                    );
                }
                for chunk in m.changes.iter() {
                    if let Some(h) = hashes_of(chunk).iter().find(|h| !self.durable_has(document_id, h)) {
                        panic!(
                            "invariant (durable before advertised): {conn} is sent change {h} of {document_id} that \
                             is not in the store"
                        );
                    }
                }
            }
            Message::Ephemeral { document_id, data, sender_id, .. } => {
                let origin = tagged_conn(data).filter(|c| !self.ambiguous_tags.contains(c));
                if let Some(origin) = origin.and_then(|c| self.conns.get(&c).map(|i| (c, i))) {
                    let (c, i) = origin;
                    if !i.access.may_read(document_id) {
                        panic!(
                            "invariant: an ephemeral message about {document_id} from {c}, not granted it, is relayed to {conn}"
                        );
                    }
                    if !i.access.relay && i.joined_as.as_ref().is_some_and(|p| p != sender_id) {
                        panic!(
                            "invariant: {c}'s ephemeral message is relayed to {conn} as sent by {sender_id}, not as \
                             {:?}",
                            i.joined_as
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// A sync message the engine sends reaches the slot's replica.
    fn deliver(&mut self, conn: ConnId, message: &Message) {
        let Some(info) = self.conns.get(&conn) else { return };
        let slot = &mut self.slots[info.slot];
        if slot.conn != Some(conn) {
            return;
        }
        if let Message::Sync { document_id, data, .. } | Message::Request { document_id, data, .. } = message
            && let Some(i) = (0..DOCS).find(|i| doc_id(*i) == *document_id)
            && let Ok(m) = sync::Message::decode(data)
        {
            let _ = slot.replicas[i].receive_sync_message(&mut slot.states[i], m);
        }
    }
}

impl Driver for World {
    fn send(&mut self, conn: ConnId, message: Message) {
        if tracing() {
            let detail = match &message {
                Message::Sync { data, .. } | Message::Request { data, .. } => match sync::Message::decode(data) {
                    Ok(m) => format!(
                        " heads {:?} changes {:?}",
                        m.heads.iter().map(short).collect::<Vec<_>>(),
                        m.changes.iter().flat_map(hashes_of).map(|h| short(&h)).collect::<Vec<_>>()
                    ),
                    Err(_) => " (does not decode)".to_owned(),
                },
                _ => String::new(),
            };
            eprintln!(
                "  send {conn} {}{}{detail}",
                message.type_name(),
                message.document_id().map(|d| format!(" {d}")).unwrap_or_default()
            );
        }
        self.check_send(conn, &message);
        self.deliver(conn, &message);
    }

    fn close(&mut self, conn: ConnId, reason: String) -> bool {
        if tracing() {
            eprintln!("  close {conn}: {reason}");
        }
        if self.close_at_once
            && let Some(info) = self.conns.get_mut(&conn)
        {
            let slot = &mut self.slots[info.slot];
            if slot.conn == Some(conn) {
                slot.conn = None;
            }
            return true;
        }
        false
    }

    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        if tracing() {
            let hashes = match &task {
                StorageTask::AppendChunk { data, .. } | StorageTask::Compact { snapshot: data, .. } => {
                    hashes_of(data).iter().map(short).collect::<Vec<_>>()
                }
                _ => Vec::new(),
            };
            let (kind, doc) = match &task {
                StorageTask::LoadDoc { doc } => ("load", doc),
                StorageTask::AppendChunk { doc, .. } => ("append", doc),
                StorageTask::Compact { doc, .. } => ("compact", doc),
                StorageTask::DeleteDoc { doc } => ("delete", doc),
                StorageTask::LoadSyncState { doc, .. } => ("load-sync-state", doc),
                StorageTask::PutSyncState { doc, .. } => ("put-sync-state", doc),
            };
            eprintln!("  storage {id:?} {kind} {doc} (changes {hashes:?})");
        }
        self.check_write(&task);
        if self.sync_store {
            let result = self.fence.check(&task).unwrap_or_else(|| self.execute(&task));
            self.fence.record(&task, &result);
            return Some(result);
        }
        self.pending.push_back((id, task));
        None
    }

    fn event(&mut self, event: Event) {
        if tracing() {
            eprintln!("  event {event:?}");
        }
        if let Event::PeerConnected { conn, peer, .. } = &event
            && let Some(i) = self.conns.get_mut(conn)
        {
            i.joined_as = Some(peer.clone());
        }
        if let Event::DocChanged { doc, heads } = &event
            && let Some(h) = heads.iter().find(|h| !self.durable_has(doc, h))
        {
            panic!("invariant (durable before advertised): DocChanged for {doc} with head {h} not in the store");
        }
    }
}

/// Runs one input through an engine, panicking on any invariant broken.
pub fn run(data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    let setup = input.u8();
    let setup2 = input.u8();
    let mut config = EngineConfig::new(PeerId::new(ENGINE_PEER), Some(StorageId::new("edge-store")));
    config.rng_seed = u64::from(setup2);
    config.idle_evict_after_ms = [60_000, 2_000, 500, 10][(setup & 3) as usize];
    config.max_loaded_docs = [0, 1, 2, 0][((setup >> 2) & 3) as usize];
    config.expects_upstream = setup & 0x10 == 0;
    config.track_demand = setup & 0x20 != 0;
    config.track_home_lag = setup & 0x20 != 0;
    config.min_compact_bytes = if setup2 & 1 == 0 { 16 * 1024 } else { 64 };
    config.join_timeout_ms = if setup2 & 2 == 0 { 10_000 } else { 0 };
    config.ephemeral_max_bytes = 32;
    config.ephemeral_per_second = if setup2 & 4 == 0 { 50 } else { 2 };
    config.share_generated = setup2 & 8 == 0;
    config.coalesce_messages = setup2 & 16 == 0;
    config.answer_from_snapshot = setup2 & 32 == 0;
    let mut engine = Engine::new(config);

    // Documents 0 and 1 are stored at the start (one change by "seed").
    let mut world = World {
        now: Millis(0),
        store: MemoryStore::new(),
        pending: VecDeque::new(),
        fence: WriteFence::default(),
        sync_store: setup & 0x40 != 0,
        close_at_once: setup & 0x80 != 0,
        conns: BTreeMap::new(),
        slots: (0..SLOTS)
            .map(|i| Slot {
                conn: None,
                replicas: (0..DOCS).map(|_| Automerge::new().with_actor(slot_actor(i))).collect(),
                states: (0..DOCS).map(|_| sync::State::new()).collect(),
                last_frame: vec![None; DOCS],
            })
            .collect(),
        legit: BTreeMap::new(),
        creatable: BTreeMap::new(),
        offered_by: BTreeMap::new(),
        ambiguous_tags: BTreeSet::new(),
        claimed: BTreeSet::new(),
        written: BTreeSet::new(),
        durable: BTreeMap::new(),
    };
    let mut seeds: Vec<Automerge> = Vec::new();
    for i in 0..DOCS {
        let mut seed = Automerge::new().with_actor(ActorId::from([0x5E; 16].as_slice()));
        if i < 2 {
            let mut tx = seed.transaction();
            let _ = tx.put(ROOT, "seed", i as i64);
            tx.commit();
            let doc = doc_id(i);
            world.store.execute(&StorageTask::Compact { doc, snapshot: seed.save() });
            world.local(doc, seed.get_changes(&[]).iter().map(Change::hash));
            world.written.insert(doc);
            world.refresh_durable(doc);
        }
        seeds.push(seed);
    }
    // Replicas that start from the stored document (a peer that had it).
    for (s, slot) in world.slots.iter_mut().enumerate() {
        if setup2 & (0x40 << (s & 1)) != 0 {
            for (replica, seed) in slot.replicas.iter_mut().zip(&seeds).take(2) {
                let _ = replica.merge(&mut seed.clone());
            }
        }
    }
    let mut app: Vec<Automerge> = (0..DOCS).map(|_| Automerge::new().with_actor(slot_actor(0x0A))).collect();
    let mut batching = false;

    for _ in 0..MAX_OPS {
        if input.done() {
            break;
        }
        step(&mut engine, &mut world, &mut input, &mut app, &mut batching);
        let now = world.now;
        engine.drive(now, &mut world);
    }
    // The end: the batch closes, every storage task completes, time passes.
    if batching {
        engine.end_batch(world.now);
    }
    let now = world.now;
    engine.drive(now, &mut world);
    for _ in 0..256 {
        let Some((id, task)) = world.pending.pop_front() else { break };
        let result = world.fence.check(&task).unwrap_or_else(|| world.execute(&task));
        world.fence.record(&task, &result);
        engine.handle_storage_result(world.now, id, result);
        let now = world.now;
        engine.drive(now, &mut world);
    }
    world.now = Millis(world.now.0.saturating_add(120_000));
    engine.handle_timeout(world.now);
    let now = world.now;
    engine.drive(now, &mut world);
}

fn access_of(a: u8, b: u8, slot: usize, now: Millis) -> Access {
    let subject = format!("subj{}", (a >> 4) % 3);
    let mut access = match a % 8 {
        0 => Access::full(),
        1 => Access::client(&subject, doc_set(b), DocSet::none(), false),
        2 | 7 => Access::client(&subject, doc_set(b), doc_set(b >> 4), a & 8 != 0),
        3 => Access::client(&subject, DocSet::none(), DocSet::none(), false),
        4 => Access::client(&subject, DocSet::none(), DocSet::all(), true),
        5 => Access::client(&subject, DocSet::all(), DocSet::none(), a & 8 != 0),
        _ => Access::client(&subject, DocSet::none(), doc_set(b), false),
    };
    if a % 8 == 7 {
        access.expires_at = Some(Millis(now.0.saturating_add(u64::from(b) * 50)));
    }
    access.token_id = format!("tok{slot}");
    access.issued_at = Some(u64::from(a >> 6));
    access
}

fn frame(world: &mut World, engine: &mut Engine, conn: ConnId, bytes: &[u8]) {
    world.offered(conn, bytes);
    engine.handle_frame(world.now, conn, bytes);
}

fn join_frame(as_slot: usize, meta: u8) -> Vec<u8> {
    let storage_id = (meta & 1 == 0).then(|| StorageId::new(format!("store{as_slot}")));
    let join = Message::Join {
        sender_id: slot_peer(as_slot),
        peer_metadata: PeerMetadata { is_ephemeral: storage_id.is_none(), storage_id },
        supported_protocol_versions: match (meta >> 1) % 4 {
            0 | 1 => Some(vec![PROTOCOL_V1.to_owned()]),
            2 => None,
            _ => Some(vec!["2".to_owned()]),
        },
    };
    codec::encode(&join)
}

/// A conn chosen by a byte: mostly the slot's current one, sometimes any
/// ever opened (closed ones included).
fn pick_conn(world: &World, slot: usize, b: u8) -> Option<ConnId> {
    if b & 0xE0 == 0xE0 && !world.conns.is_empty() {
        let n = (b & 0x1F) as usize % world.conns.len();
        return world.conns.keys().nth(n).copied();
    }
    world.slots[slot].conn
}

fn step(engine: &mut Engine, world: &mut World, input: &mut Input<'_>, app: &mut [Automerge], batching: &mut bool) {
    let op = input.u8();
    let now = world.now;
    if tracing() {
        eprintln!(
            "op {} at {}: {:?}",
            op % 20,
            input.pos - 1,
            &input.data[input.pos.min(input.data.len())..][..input.data.len().saturating_sub(input.pos).min(5)]
        );
    }
    match op % 20 {
        // Connect: a slot opens a connection of some kind and access.
        0 | 1 => {
            let slot = input.idx(SLOTS);
            let (kind, a, b, join) = (input.u8(), input.u8(), input.u8(), input.u8());
            let access = access_of(a, b, slot, now);
            let edge_peer = matches!(kind % 6, 4 | 5);
            let (conn, access, outgoing) = match kind % 6 {
                3 => (engine.handle_connect(now, Direction::Outgoing), Access::full(), true),
                // Links to other edges have full access, as the node runtime gives them.
                4 | 5 => {
                    let direction = if kind % 6 == 4 { Direction::Incoming } else { Direction::Outgoing };
                    let access = Access { subject: format!("node:{slot}"), ..Access::full() };
                    (engine.handle_connect_edge_peer_with(now, direction, access.clone()), access, kind % 6 == 5)
                }
                _ => (engine.handle_connect_with(now, Direction::Incoming, access.clone()), access, false),
            };
            world.conns.insert(conn, ConnInfo { slot, access, joined_as: None, edge_peer });
            let s = &mut world.slots[slot];
            s.conn = Some(conn);
            s.states = (0..DOCS).map(|_| sync::State::new()).collect();
            if join & 0x80 == 0 {
                engine.drive(now, world);
                if outgoing {
                    let peer = Message::Peer {
                        sender_id: slot_peer(slot),
                        peer_metadata: PeerMetadata {
                            storage_id: Some(StorageId::new(format!("store{slot}"))),
                            is_ephemeral: false,
                        },
                        selected_protocol_version: PROTOCOL_V1.to_owned(),
                        target_id: PeerId::new(ENGINE_PEER),
                    };
                    frame(world, engine, conn, &codec::encode(&peer));
                } else {
                    let as_slot = if join & 0x40 == 0 { slot } else { (join as usize >> 2) % SLOTS };
                    frame(world, engine, conn, &join_frame(as_slot, join));
                }
            }
        }
        // Join (again, late, as another slot's peer id).
        2 => {
            let slot = input.idx(SLOTS);
            let (c, as_slot, meta) = (input.u8(), input.idx(SLOTS), input.u8());
            if let Some(conn) = pick_conn(world, slot, c) {
                frame(world, engine, conn, &join_frame(as_slot, meta));
            }
        }
        // Disconnect.
        3 => {
            let slot = input.idx(SLOTS);
            let c = input.u8();
            if let Some(conn) = pick_conn(world, slot, c) {
                engine.handle_disconnect(now, conn);
                if let Some(i) = world.conns.get(&conn) {
                    let s = &mut world.slots[i.slot];
                    if s.conn == Some(conn) {
                        s.conn = None;
                    }
                }
            }
        }
        // A slot edits its replica.
        4 | 5 => {
            let slot = input.idx(SLOTS);
            let (d, key, val) = (input.idx(DOCS), input.u8(), input.u8());
            let r = &mut world.slots[slot].replicas[d];
            let mut tx = r.transaction();
            let _ = if key & 0x80 != 0 {
                tx.put(ROOT, "text", "x".repeat(usize::from(val)))
            } else {
                tx.put(ROOT, format!("k{}", key % 4), i64::from(val))
            };
            tx.commit();
        }
        // A slot sends a sync message.
        6..=9 => {
            let slot = input.idx(SLOTS);
            let (d, mode, c) = (input.idx(DOCS), input.u8(), input.u8());
            let Some(conn) = pick_conn(world, slot, c) else { return };
            let s = &mut world.slots[slot];
            let msg = match mode % 4 {
                0 => s.replicas[d].generate_sync_message(&mut s.states[d]),
                1 => Some(sync::Message {
                    heads: s.replicas[d].get_heads(),
                    need: Vec::new(),
                    have: Vec::new(),
                    changes: s.replicas[d]
                        .get_changes(&[])
                        .iter()
                        .map(|c| c.raw_bytes().to_vec())
                        .collect::<Vec<_>>()
                        .into(),
                    flags: None,
                    version: sync::MessageVersion::V1,
                }),
                2 => {
                    s.states[d] = sync::State::new();
                    s.replicas[d].generate_sync_message(&mut s.states[d])
                }
                _ => None,
            };
            let bytes = match msg {
                Some(m) => {
                    let data = m.encode();
                    let (sender_id, target_id, document_id) = (slot_peer(slot), PeerId::new(ENGINE_PEER), doc_id(d));
                    let request = mode & 4 != 0 || (mode & 8 != 0 && s.replicas[d].get_heads().is_empty());
                    let message = if request {
                        Message::Request { sender_id, target_id, document_id, data }
                    } else {
                        Message::Sync { sender_id, target_id, document_id, data }
                    };
                    codec::encode(&message)
                }
                None => match &s.last_frame[d] {
                    Some(f) if mode % 4 == 3 => f.clone(),
                    _ => return,
                },
            };
            world.slots[slot].last_frame[d] = Some(bytes.clone());
            frame(world, engine, conn, &bytes);
        }
        // A raw frame.
        10 => {
            let slot = input.idx(SLOTS);
            let (c, lo, hi) = (input.u8(), input.u8(), input.u8());
            let bytes = input.bytes((usize::from(hi) << 8 | usize::from(lo)) % 1024);
            if let Some(conn) = pick_conn(world, slot, c) {
                frame(world, engine, conn, &bytes);
            }
        }
        // A golden frame, possibly with one byte changed.
        11 => {
            let slot = input.idx(SLOTS);
            let (g, at, x) = (input.idx(GOLDEN.len()), input.u8(), input.u8());
            let mut bytes = GOLDEN[g].to_vec();
            if x != 0 {
                let i = usize::from(at) % bytes.len();
                bytes[i] ^= x;
            }
            if let Some(conn) = world.slots[slot].conn {
                frame(world, engine, conn, &bytes);
            }
        }
        // An ephemeral message: own, spoofed or oversize.
        12 => {
            let slot = input.idx(SLOTS);
            let (d, v, count) = (input.idx(DOCS), input.u8(), input.u8());
            let Some(conn) = world.slots[slot].conn else { return };
            let sender = if v & 1 == 0 { slot_peer(slot) } else { slot_peer((v as usize >> 1) % SLOTS) };
            let data = if v & 0x80 == 0 {
                ephemeral_tag(conn)
            } else {
                let mut d = vec![0x58, 40];
                d.extend([0xEE; 40]);
                d
            };
            let m = Message::Ephemeral {
                sender_id: sender,
                target_id: PeerId::new(ENGINE_PEER),
                document_id: doc_id(d),
                session_id: format!("s{}", (v >> 4) & 3),
                count: u64::from(count),
                data,
            };
            frame(world, engine, conn, &codec::encode(&m));
        }
        // Other messages.
        13 => {
            let slot = input.idx(SLOTS);
            let (d, k) = (input.idx(DOCS), input.u8());
            let Some(conn) = world.slots[slot].conn else { return };
            let (sender_id, target_id, document_id) = (slot_peer(slot), PeerId::new(ENGINE_PEER), doc_id(d));
            let m = match k % 5 {
                0 => Message::DocUnavailable { sender_id, target_id, document_id },
                1 => Message::RemoteSubscriptionChange {
                    sender_id,
                    target_id,
                    add: vec![StorageId::new("edge-store"), StorageId::new(format!("store{}", k % 3))],
                    remove: Vec::new(),
                },
                2 => {
                    let heads = world.slots[slot].replicas[d].get_heads().iter().map(encode_head).collect();
                    let mut new_heads = BTreeMap::new();
                    new_heads.insert(StorageId::new(format!("store{slot}")), RemoteHeads { heads, timestamp: 1.0 });
                    Message::RemoteHeadsChanged { sender_id, target_id, document_id, new_heads }
                }
                3 => Message::Error { sender_id: Some(sender_id), message: "oops".into(), target_id: None },
                _ => Message::Peer {
                    sender_id,
                    peer_metadata: PeerMetadata::default(),
                    selected_protocol_version: PROTOCOL_V1.to_owned(),
                    target_id,
                },
            };
            frame(world, engine, conn, &codec::encode(&m));
        }
        // Storage completes, in order: done, failed or the wrong answer.
        14 | 15 => {
            let (k, n) = (input.u8(), input.u8());
            for _ in 0..=(n % 4) {
                let Some((id, task)) = world.pending.pop_front() else { break };
                let result = match (world.fence.check(&task), k % 8) {
                    (Some(fenced), _) => fenced,
                    (None, 5) => StorageResult::Failed("injected".into()),
                    (None, 6) => match &task {
                        StorageTask::LoadDoc { .. } | StorageTask::LoadSyncState { .. } => StorageResult::Done,
                        _ => StorageResult::Loaded(None),
                    },
                    (None, _) => world.execute(&task),
                };
                world.fence.record(&task, &result);
                engine.handle_storage_result(world.now, id, result);
                let now = world.now;
                engine.drive(now, world);
            }
        }
        // Time passes.
        16 => {
            let (t, unit) = (input.u8(), input.u8());
            let ms = u64::from(t) * [1, 50, 1000, 60_000][usize::from(unit % 4)];
            world.now = Millis(world.now.0.saturating_add(ms));
            engine.handle_timeout(world.now);
        }
        // The local application.
        17 => {
            let (k, d, x) = (input.u8(), input.idx(DOCS), input.u8());
            let doc = doc_id(d);
            match k % 9 {
                0 => engine.find(now, doc),
                1 => {
                    let before = engine.document(&doc).map(Automerge::get_heads);
                    if engine.change(now, doc, |tx| tx.put(ROOT, "local", i64::from(x)).map(|_| ())).is_ok()
                        && let (Some(before), Some(after)) = (before, engine.document(&doc))
                    {
                        let new: Vec<ChangeHash> = after.get_changes(&before).iter().map(Change::hash).collect();
                        world.local(doc, new);
                    }
                }
                2 => {
                    // Imports only into a loaded document, or one never
                    // stored (importing creates it).
                    if engine.document(&doc).is_some() || !world.written.contains(&doc) {
                        let mut tx = app[d].transaction();
                        let _ = tx.put(ROOT, "app", i64::from(x));
                        tx.commit();
                        world.local(doc, app[d].get_changes(&[]).iter().map(Change::hash));
                        let _ = engine.import(now, doc, &app[d].save());
                    }
                }
                3 => engine.offload(now, doc),
                4 => engine.open(now, doc),
                5 => engine.pin(doc, x & 1 == 0),
                6 => engine.backfill(now, (0..DOCS).filter(|i| x & (1 << i) != 0).map(doc_id).collect()),
                7 => {
                    // Routes go to links to other edges, as in the node runtime.
                    let conn = world.slots[usize::from(x) % SLOTS]
                        .conn
                        .filter(|c| x & 0x80 == 0 && world.conns.get(c).is_some_and(|i| i.edge_peer));
                    engine.set_route(now, doc, conn);
                }
                _ => engine.broadcast_ephemeral(doc, "local", u64::from(x), vec![0x41, x]),
            }
        }
        // A token is revoked.
        18 => {
            let x = input.u8();
            let (token, subject) = (format!("tok{}", x % 4), format!("subj{}", (x >> 2) % 3));
            let at = u64::from(x >> 6);
            if x & 0x80 == 0 {
                engine.revoke(|a| a.revoked_by(Some(&token), None));
            } else {
                engine.revoke(|a| a.revoked_by(None, Some((&subject, at))));
            }
        }
        // Batches, and the driver refusing a frame.
        _ => {
            let (k, slot) = (input.u8(), input.idx(SLOTS));
            match k % 3 {
                0 if *batching => {
                    engine.end_batch(now);
                    *batching = false;
                }
                0 => {
                    engine.begin_batch();
                    *batching = true;
                }
                1 => {
                    if let Some(conn) = world.slots[slot].conn {
                        engine.reject(conn, ErrorKind::Oversize, "frame too large");
                    }
                }
                _ => {
                    if let Some(conn) = world.slots[slot].conn {
                        engine.reject(conn, ErrorKind::TextFrame, "text frame");
                    }
                }
            }
        }
    }
}
