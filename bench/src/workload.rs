//! Workload generation: document ids, automerge changes made by the
//! harness before a measurement starts, and the sync messages raw clients
//! replay.
//!
//! A raw client pushes changes as one sync message each: its heads are the
//! change's hash, and its `have` says it has everything up to those heads,
//! so the server neither asks for more nor echoes the change back. This is
//! what a real automerge peer sends once the two sides know each other.

use automerge::sync::{self, BloomFilter, Have, MessageFlags, MessageVersion, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT};
use meridian_protocol::ids::DocumentId;

/// A deterministic document id: `salt` separates runs, `i` documents.
pub fn doc_id(salt: u64, i: u64) -> DocumentId {
    let a = splitmix(salt ^ splitmix(i));
    let b = splitmix(a ^ i.rotate_left(17));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    // UUIDv4 shape, like the JS repo's ids.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    DocumentId::from_bytes(bytes)
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A salt that differs between runs, so documents never collide with a
/// previous run's.
pub fn run_salt() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    splitmix(t as u64 ^ u64::from(std::process::id()))
}

fn actor(salt: u64, i: u64) -> ActorId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix(salt.wrapping_add(i)).to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(i ^ 0xa5a5).to_le_bytes());
    ActorId::from(&bytes[..])
}

fn flags() -> Option<MessageFlags> {
    let mut f = MessageFlags::new();
    f.set(MessageFlags::SUPPORTS_SYNC_RESET);
    Some(f)
}

/// A sync message carrying `changes` and claiming exactly `heads`.
pub fn push(heads: Vec<ChangeHash>, changes: Vec<Vec<u8>>) -> Vec<u8> {
    sync::Message {
        heads: heads.clone(),
        need: Vec::new(),
        have: vec![Have { last_sync: heads, bloom: BloomFilter::default() }],
        changes: changes.into(),
        flags: flags(),
        version: MessageVersion::V1,
    }
    .encode()
}

/// The acknowledgement a peer sends after receiving `heads`.
pub fn ack(heads: Vec<ChangeHash>) -> Vec<u8> {
    push(heads, Vec::new())
}

/// The first sync message of a peer that has nothing (a `request`).
pub fn empty_request() -> Vec<u8> {
    let doc = Automerge::new();
    doc.generate_sync_message(&mut sync::State::new()).map(sync::Message::encode).unwrap_or_default()
}

/// A small document made of one change; what one client creates.
#[derive(Clone, Debug)]
pub struct SmallDoc {
    pub head: ChangeHash,
    pub change: Vec<u8>,
}

impl SmallDoc {
    pub fn new(salt: u64, i: u64) -> Self {
        let mut doc = Automerge::new().with_actor(actor(salt, i));
        let mut tx = doc.transaction();
        tx.put(ROOT, "title", format!("document {i}")).expect("put on a fresh doc");
        tx.put(ROOT, "n", i).expect("put on a fresh doc");
        tx.commit();
        let change = doc.get_last_local_change().expect("a change was made");
        Self { head: change.hash(), change: change.raw_bytes().to_vec() }
    }

    pub fn push_message(&self) -> Vec<u8> {
        push(vec![self.head], vec![self.change.clone()])
    }
}

/// A chain of changes to one text, each typing a few characters: what one
/// writer sends, one change per message.
#[derive(Debug)]
pub struct TextChain {
    pub changes: Vec<(ChangeHash, Vec<u8>)>,
}

impl TextChain {
    pub fn new(salt: u64, i: u64, len: usize) -> Self {
        let mut w = TextWriter::new(salt, i);
        let mut changes = vec![w.first_change()];
        changes.extend((1..len).map(|k| w.type_some(k as u64, None)));
        Self { changes }
    }
}

/// A live document one writer edits: each change types a few characters
/// into a text and may carry a commit message.
#[derive(Debug)]
pub struct TextWriter {
    pub doc: Automerge,
    text: ObjId,
    len: usize,
}

impl TextWriter {
    pub fn new(salt: u64, i: u64) -> Self {
        let mut doc = Automerge::new().with_actor(actor(salt, i));
        let mut tx = doc.transaction();
        let text = tx.put_object(ROOT, "text", ObjType::Text).expect("put on a fresh doc");
        tx.commit();
        Self { doc, text, len: 0 }
    }

    /// The change creating the text (the document's first).
    pub fn first_change(&self) -> (ChangeHash, Vec<u8>) {
        let c = self.doc.get_changes(&[]).into_iter().next().expect("the first change");
        (c.hash(), c.raw_bytes().to_vec())
    }

    /// Types a word; returns the new change.
    pub fn type_some(&mut self, k: u64, message: Option<String>) -> (ChangeHash, Vec<u8>) {
        let word = WORDS[(splitmix(k) % WORDS.len() as u64) as usize];
        let mut tx = self.doc.transaction();
        tx.splice_text(&self.text, self.len, 0, word).expect("splice in range");
        let opts = match message {
            Some(m) => CommitOptions::default().with_message(m),
            None => CommitOptions::default(),
        };
        tx.commit_with(opts);
        self.len += word.chars().count();
        let c = self.doc.get_last_local_change().expect("a change was made");
        (c.hash(), c.raw_bytes().to_vec())
    }
}

const WORDS: [&str; 8] = ["the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dogs. "];

/// A long text editing history: `ops` operations of typing, with some
/// deletions and moves of the cursor, in changes of about `ops_per_change`
/// operations each (one actor, like one author over many sessions).
pub fn text_history(salt: u64, ops: usize, ops_per_change: usize) -> Automerge {
    let mut doc = Automerge::new().with_actor(actor(salt, 0));
    let mut tx = doc.transaction();
    let text = tx.put_object(ROOT, "text", ObjType::Text).expect("put on a fresh doc");
    tx.commit();
    let (mut len, mut done, mut k) = (0usize, 0usize, 0u64);
    while done < ops {
        let mut tx = doc.transaction();
        let mut in_change = 0;
        while in_change < ops_per_change {
            k += 1;
            let r = splitmix(k);
            // Mostly typing at a cursor that wanders, sometimes deleting.
            let pos = if len == 0 { 0 } else { (r as usize >> 8) % (len + 1) };
            if r.is_multiple_of(10) && len > 10 {
                let del = ((r >> 4) % 4 + 1) as usize;
                let pos = pos.min(len - del);
                tx.splice_text(&text, pos, del as isize, "").expect("splice in range");
                len -= del;
                in_change += del;
            } else {
                let word = WORDS[(r % WORDS.len() as u64) as usize];
                tx.splice_text(&text, pos, 0, word).expect("splice in range");
                len += word.len();
                in_change += word.len();
            }
        }
        tx.commit();
        done += in_change;
    }
    doc
}
