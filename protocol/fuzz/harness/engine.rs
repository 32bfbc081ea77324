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
//!    there, as the store reads back), and every change it carries is in
//!    the store too, or waits in the engine's document for a dependency
//!    (automerge's queue: not applied, so not advertised; a whole-document
//!    message is the document saved, its queue after the document chunk)
//!    and was offered by a connection that may write the document; every
//!    `DocChanged` event's heads are in the store.
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
//!
//! What the store holds ("in the store" above) is what loading everything
//! it holds for the document applies. The harness keeps that read-back up
//! to date as the writes run (the document loaded from the store, with each
//! appended chunk loaded into it, as loading the whole again would), falls
//! back to loading the whole again when a write is not a clean run of
//! chunks, and compares the two for every document at the end of a run.
//! Automerge bytes are parsed once per content (a cache kept across runs).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, Change, ChangeHash, ROOT, ReadDoc};
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

/// What automerge bytes hold: the hashes of their changes, and whether
/// they are a clean run of chunks (each framed, each change chunk parsed,
/// each document chunk loaded; see [`parse`]).
#[derive(Clone, Debug)]
struct Parsed {
    hashes: Rc<[ChangeHash]>,
    clean: bool,
    /// Changes in change chunks that follow a document chunk and are not
    /// in it: the queue of the document that was saved (`save` writes the
    /// document chunk, with every change it applied, then the changes
    /// waiting in its queue for a dependency).
    queued: Rc<[ChangeHash]>,
}

/// Parsed bytes by content, across runs (parsing is a pure function of
/// the bytes; the same messages and writes come back in run after run).
/// Emptied when it holds more than [`PARSED_CACHE_BYTES`].
const PARSED_CACHE_BYTES: usize = 64 << 20;

thread_local! {
    static PARSED: RefCell<HashMap<Vec<u8>, Parsed>> = RefCell::new(HashMap::new());
    static PARSED_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn parsed(bytes: &[u8]) -> Parsed {
    if let Some(p) = PARSED.with(|c| c.borrow().get(bytes).cloned()) {
        return p;
    }
    let p = parse(bytes);
    PARSED.with(|c| {
        let mut c = c.borrow_mut();
        let held = PARSED_BYTES.get().saturating_add(bytes.len());
        if held > PARSED_CACHE_BYTES {
            c.clear();
            PARSED_BYTES.set(bytes.len());
        } else {
            PARSED_BYTES.set(held);
        }
        c.insert(bytes.to_vec(), p.clone());
    });
    p
}

/// The hashes of the changes in automerge bytes (change chunks, compressed
/// changes, documents, in sequence; a chunk that does not parse is loaded
/// on its own and what applies is counted).
fn hashes_of(bytes: &[u8]) -> Rc<[ChangeHash]> {
    parsed(bytes).hashes
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut out = Vec::new();
    let mut clean = true;
    let mut in_document: Option<HashSet<ChangeHash>> = None;
    let mut queued = Vec::new();
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
                Ok(c) => {
                    if in_document.as_ref().is_some_and(|d| !d.contains(&c.hash())) {
                        queued.push(c.hash());
                    }
                    out.push(c.hash());
                }
                Err(_) => {
                    clean = false;
                    out.extend(loaded_hashes(chunk));
                }
            },
            _ => match loaded(chunk) {
                Some(d) => {
                    let applied: Vec<ChangeHash> = applied_hashes(&d).collect();
                    in_document.get_or_insert_with(HashSet::new).extend(applied.iter().copied());
                    out.extend(applied);
                }
                None => clean = false,
            },
        }
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        clean = false;
        out.extend(loaded_hashes(rest));
    }
    Parsed { hashes: out.into(), clean, queued: queued.into() }
}

/// A change hash's first 8 hex digits, for traces.
fn short(h: &ChangeHash) -> String {
    h.to_string()[..8].to_owned()
}

/// Automerge bytes loaded into a new document (as the engine loads what
/// the store holds); `None` if that fails.
fn loaded(bytes: &[u8]) -> Option<Automerge> {
    let mut d = Automerge::new();
    d.load_incremental(bytes).ok().map(|_| d)
}

/// The changes a document applied (its queue left out), read from the
/// change graph (`get_changes` would rebuild and compress every change).
fn applied_hashes(d: &Automerge) -> impl Iterator<Item = ChangeHash> + '_ {
    d.get_changes_meta(&[]).into_iter().map(|m| m.hash)
}

fn loaded_hashes(bytes: &[u8]) -> Vec<ChangeHash> {
    loaded(bytes).map(|d| applied_hashes(&d).collect()).unwrap_or_default()
}

/// Whether `d` holds `h`, applied or in its queue (waiting for a dependency).
fn holds(d: &Automerge, h: &ChangeHash) -> bool {
    d.get_change_meta_by_hash(h).is_some() || queued(d, h)
}

/// Whether `h` waits in `d`'s queue for a dependency: not applied, and not
/// missing (`get_missing_deps` walks through the queued changes' own
/// dependencies and names the first hash on each path it does not hold).
fn queued(d: &Automerge, h: &ChangeHash) -> bool {
    d.get_change_meta_by_hash(h).is_none() && !d.get_missing_deps(&[*h]).contains(h)
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
    /// Of those, the ones a connection offered (the only ones a message
    /// may carry from the engine's queue, not stored).
    writer_offered: BTreeMap<DocumentId, BTreeSet<ChangeHash>>,
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
    /// What the store holds, per document, kept up to date as writes run.
    durable: BTreeMap<DocumentId, Durable>,
}

/// One document's read-back of the store: what loading everything the
/// store holds for it gives.
#[derive(Debug, Default)]
struct Durable {
    /// The store's chunks loaded, the first into a new document and each
    /// later one into it (as loading them all at once does).
    doc: Automerge,
    /// The changes `doc` applied: the ones "in the store".
    hashes: HashSet<ChangeHash>,
    /// A write since the last compaction was not a clean run of chunks:
    /// the store is loaded whole after each write (how loading everything
    /// at once treats a bad chunk is not modelled).
    reload: bool,
    /// A chunk was loaded into `doc` (rather than `doc` loaded from all
    /// the store holds): compared with loading the store whole at the end.
    appended: bool,
}

impl World {
    fn durable_has(&self, doc: &DocumentId, h: &ChangeHash) -> bool {
        self.durable.get(doc).is_some_and(|d| d.hashes.contains(h))
    }

    /// Loading everything the store holds for `doc`.
    fn read_back(&mut self, doc: DocumentId) -> Durable {
        let d = match self.store.execute(&StorageTask::LoadDoc { doc }) {
            StorageResult::Loaded(Some(bytes)) => loaded(&bytes),
            _ => None,
        }
        .unwrap_or_default();
        let hashes = applied_hashes(&d).collect();
        Durable { doc: d, hashes, reload: false, appended: false }
    }

    /// Runs a task against the store (in order, as a real store would),
    /// checking a compaction loses nothing, and keeps the read-back of the
    /// store up to date.
    fn execute(&mut self, task: &StorageTask) -> StorageResult {
        match task {
            StorageTask::Compact { doc, snapshot } => {
                // The store will hold the snapshot alone: its read-back is
                // the snapshot loaded.
                let p = parsed(snapshot);
                let d = loaded(snapshot);
                let reload = d.is_none() || !p.clean;
                let d = d.unwrap_or_default();
                let kept: HashSet<ChangeHash> = applied_hashes(&d).collect();
                if let Some(lost) = self.durable.get(doc).and_then(|d| d.hashes.iter().find(|h| !kept.contains(h))) {
                    panic!("invariant: compaction of {doc} drops stored change {lost}");
                }
                let result = self.store.execute(task);
                self.durable.insert(*doc, Durable { doc: d, hashes: kept, reload, appended: false });
                result
            }
            StorageTask::AppendChunk { doc, data } => {
                let result = self.store.execute(task);
                let p = parsed(data);
                let d = self.durable.entry(*doc).or_default();
                let mut fast = !d.reload && p.clean;
                if fast {
                    let before = d.doc.get_heads();
                    fast = d.doc.load_incremental(data).is_ok() && p.hashes.iter().all(|h| holds(&d.doc, h));
                    if fast {
                        d.hashes.extend(d.doc.get_changes_meta(&before).into_iter().map(|m| m.hash));
                        d.appended = true;
                    }
                }
                if !fast {
                    let mut fresh = self.read_back(*doc);
                    fresh.reload = true;
                    self.durable.insert(*doc, fresh);
                }
                result
            }
            StorageTask::DeleteDoc { doc } => {
                let result = self.store.execute(task);
                self.durable.remove(doc);
                result
            }
            // A replaced copy (divergence repair, not driven here): what
            // it drops goes to the quarantine, so no loss is checked.
            StorageTask::Quarantine { doc, snapshot, .. } => {
                let result = self.store.execute(task);
                let d = loaded(snapshot).unwrap_or_default();
                let hashes = applied_hashes(&d).collect();
                self.durable.insert(*doc, Durable { doc: d, hashes, reload: true, appended: false });
                result
            }
            _ => self.store.execute(task),
        }
    }

    /// The end of a run: the read-back kept up to date is what loading
    /// the store whole gives, for every document.
    fn check_read_back(&mut self) {
        let docs: Vec<DocumentId> = self.durable.iter().filter(|(_, d)| d.appended).map(|(doc, _)| *doc).collect();
        for doc in docs {
            let whole = self.read_back(doc).hashes;
            let kept = &self.durable[&doc].hashes;
            assert!(
                *kept == whole,
                "harness: the read-back of the store for {doc} kept up to date ({} changes) differs from loading it \
                 whole ({} changes)",
                kept.len(),
                whole.len()
            );
        }
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
            for &h in hashes_of(chunk).iter() {
                self.legit.entry(document_id).or_default().insert(h);
                self.writer_offered.entry(document_id).or_default().insert(h);
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
            StorageTask::Compact { doc, snapshot } | StorageTask::Quarantine { doc, snapshot, .. } => (*doc, snapshot),
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

    /// Invariants 2 and 5 on a message the engine sends (`sync` is its
    /// sync message, decoded).
    fn check_send(&self, conn: ConnId, message: &Message, sync: Option<&sync::Message>) {
        let Some(info) = self.conns.get(&conn) else { return };
        if let Some(doc) = message.document_id()
            && !info.access.may_read(&doc)
            && !matches!(message, Message::DocUnavailable { .. })
        {
            panic!("invariant: {conn}, not granted {doc}, is sent `{}`: {message:?}", message.type_name());
        }
        match message {
            Message::Sync { document_id, .. } | Message::Request { document_id, .. } => {
                let Some(m) = sync else {
                    panic!("the engine sent a sync message for {document_id} that does not decode");
                };
                if let Some(h) = m.heads.iter().find(|h| !self.durable_has(document_id, h)) {
                    panic!(
                        "invariant (durable before advertised): {conn} is sent `{}` for {document_id} with head {h} \
                         not in the store",
                        message.type_name()
                    );
                }
                // A change not in the store may only be one waiting in the
                // queue of the engine's document the message was made from
                // (not applied, so in no heads): automerge's whole-document
                // message is that document saved, its queue after the
                // document chunk. And a connection that may write the
                // document offered it: nothing unstored of the engine's own
                // leaves, nothing from a read-only or ungranted peer.
                for chunk in m.changes.iter() {
                    let p = parsed(chunk);
                    for h in p.hashes.iter().filter(|h| !self.durable_has(document_id, h)) {
                        let waiting = p.queued.contains(h);
                        let by_writer = self.writer_offered.get(document_id).is_some_and(|s| s.contains(h));
                        if !(waiting && by_writer) {
                            panic!(
                                "invariant (durable before advertised): {conn} is sent change {h} of {document_id} \
                                 that is not in the store (carried as waiting in the queue of the document sent: \
                                 {waiting}; offered by a connection that may write it: {by_writer}, first offered \
                                 by {:?})",
                                self.offered_by.get(h)
                            );
                        }
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
    fn deliver(&mut self, conn: ConnId, message: &Message, sync: Option<sync::Message>) {
        let Some(info) = self.conns.get(&conn) else { return };
        let slot = &mut self.slots[info.slot];
        if slot.conn != Some(conn) {
            return;
        }
        if let Some(document_id) = message.document_id()
            && let Some(i) = (0..DOCS).find(|i| doc_id(*i) == document_id)
            && let Some(m) = sync
        {
            let _ = slot.replicas[i].receive_sync_message(&mut slot.states[i], m);
        }
    }
}

/// Hands the engine's outputs to the world ([`Engine::drive`]).
fn drive(engine: &mut Engine, world: &mut World) {
    let now = world.now;
    engine.drive(now, world);
}

impl Driver for World {
    fn send(&mut self, conn: ConnId, message: Message) {
        let sync = match &message {
            Message::Sync { data, .. } | Message::Request { data, .. } => sync::Message::decode(data).ok(),
            _ => None,
        };
        if tracing() {
            let detail = match &message {
                Message::Sync { .. } | Message::Request { .. } => match &sync {
                    Some(m) => format!(
                        " heads {:?} changes {:?}",
                        m.heads.iter().map(short).collect::<Vec<_>>(),
                        m.changes.iter().flat_map(|c| hashes_of(c).to_vec()).map(|h| short(&h)).collect::<Vec<_>>()
                    ),
                    None => " (does not decode)".to_owned(),
                },
                _ => String::new(),
            };
            eprintln!(
                "  send {conn} {}{}{detail}",
                message.type_name(),
                message.document_id().map(|d| format!(" {d}")).unwrap_or_default()
            );
        }
        self.check_send(conn, &message, sync.as_ref());
        self.deliver(conn, &message, sync);
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
                StorageTask::AppendChunk { data, .. }
                | StorageTask::Compact { snapshot: data, .. }
                | StorageTask::Quarantine { snapshot: data, .. } => {
                    hashes_of(data).iter().map(short).collect::<Vec<_>>()
                }
                _ => Vec::new(),
            };
            let (kind, doc) = match &task {
                StorageTask::LoadDoc { doc } => ("load", doc),
                StorageTask::ReadDoc { doc } => ("read", doc),
                StorageTask::AppendChunk { doc, .. } => ("append", doc),
                StorageTask::Compact { doc, .. } => ("compact", doc),
                StorageTask::DeleteDoc { doc } => ("delete", doc),
                StorageTask::Quarantine { doc, .. } => ("quarantine", doc),
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
    config.refetch_divergent = setup2 & 64 == 0;
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
        writer_offered: BTreeMap::new(),
        offered_by: BTreeMap::new(),
        ambiguous_tags: BTreeSet::new(),
        claimed: BTreeSet::new(),
        written: BTreeSet::new(),
        durable: BTreeMap::new(),
    };
    SEEDS.with(|seeds| {
        for (i, seed) in seeds.iter().enumerate() {
            let doc = doc_id(i);
            world.store.execute(&StorageTask::Compact { doc, snapshot: seed.saved.clone() });
            world.local(doc, seed.hashes.iter().copied());
            world.written.insert(doc);
            let hashes = seed.hashes.iter().copied().collect();
            world.durable.insert(doc, Durable { doc: seed.read_back.clone(), hashes, reload: false, appended: false });
        }
        // Replicas that start from the stored document (a peer that had it).
        for (s, slot) in world.slots.iter_mut().enumerate() {
            if setup2 & (0x40 << (s & 1)) != 0 {
                for (replica, seed) in slot.replicas.iter_mut().zip(seeds) {
                    *replica = seed.replicas[s].clone();
                }
            }
        }
    });
    let mut app: Vec<Automerge> = (0..DOCS).map(|_| Automerge::new().with_actor(slot_actor(0x0A))).collect();
    let mut batching = false;

    for _ in 0..MAX_OPS {
        if input.done() {
            break;
        }
        step(&mut engine, &mut world, &mut input, &mut app, &mut batching);
        drive(&mut engine, &mut world);
    }
    // The end: the batch closes, every storage task completes, time passes.
    if batching {
        engine.end_batch(world.now);
    }
    drive(&mut engine, &mut world);
    for _ in 0..256 {
        let Some((id, task)) = world.pending.pop_front() else { break };
        let result = world.fence.check(&task).unwrap_or_else(|| world.execute(&task));
        world.fence.record(&task, &result);
        engine.handle_storage_result(world.now, id, result);
        drive(&mut engine, &mut world);
    }
    world.now = Millis(world.now.0.saturating_add(120_000));
    engine.handle_timeout(world.now);
    drive(&mut engine, &mut world);
    world.check_read_back();
}

/// Documents 0 and 1 as stored at the start: one change by "seed".
struct Seed {
    /// What the store holds (`save`).
    saved: Vec<u8>,
    hashes: Vec<ChangeHash>,
    /// `saved` loaded, as the store reads back.
    read_back: Automerge,
    /// Each slot's replica after merging it.
    replicas: Vec<Automerge>,
}

thread_local! {
    /// The same in every run: made once.
    static SEEDS: Vec<Seed> = (0..2)
        .map(|i| {
            let mut seed = Automerge::new().with_actor(ActorId::from([0x5E; 16].as_slice()));
            let mut tx = seed.transaction();
            let _ = tx.put(ROOT, "seed", i as i64);
            tx.commit();
            let saved = seed.save();
            let hashes = applied_hashes(&seed).collect();
            let read_back = loaded(&saved).unwrap_or_default();
            let replicas = (0..SLOTS)
                .map(|s| {
                    let mut replica = Automerge::new().with_actor(slot_actor(s));
                    let _ = replica.merge(&mut seed.clone());
                    replica
                })
                .collect();
            Seed { saved, hashes, read_back, replicas }
        })
        .collect();
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
                    let access = Access::node(&slot.to_string());
                    (engine.handle_connect_edge_peer_with(now, direction, access.clone()), access, kind % 6 == 5)
                }
                _ => (engine.handle_connect_with(now, Direction::Incoming, access.clone()), access, false),
            };
            world.conns.insert(conn, ConnInfo { slot, access, joined_as: None, edge_peer });
            let s = &mut world.slots[slot];
            s.conn = Some(conn);
            s.states = (0..DOCS).map(|_| sync::State::new()).collect();
            if join & 0x80 == 0 {
                drive(engine, world);
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
                        StorageTask::LoadDoc { .. }
                        | StorageTask::ReadDoc { .. }
                        | StorageTask::LoadSyncState { .. } => StorageResult::Done,
                        _ => StorageResult::Loaded(None),
                    },
                    (None, _) => world.execute(&task),
                };
                world.fence.record(&task, &result);
                engine.handle_storage_result(world.now, id, result);
                drive(engine, world);
            }
        }
        // Time passes.
        16 => {
            let (t, unit) = (input.u8(), input.u8());
            let ms = u64::from(t) * [1, 50, 1000, 60_000][usize::from(unit % 4)];
            world.now = Millis(world.now.0.saturating_add(ms));
            engine.handle_timeout(world.now);
            // The driver's housekeeping: divergence, resyncs, refetches.
            if unit & 0x10 != 0 {
                engine.check_divergence(world.now, 1_000);
            }
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
                        let new: Vec<ChangeHash> =
                            after.get_changes_meta(&before).into_iter().map(|m| m.hash).collect();
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
                        world.local(doc, applied_hashes(&app[d]).collect::<Vec<_>>());
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
