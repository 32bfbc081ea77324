//! The change feed for stream consumers (issue 16): every change committed
//! to the shared store goes to the NATS JetStream stream [`STREAM`], one
//! message per change on `meridian.changes.<document id>` ([`FeedEntry`],
//! JSON). A consumer starts at any stream sequence and reads on (at least
//! once: a change may come twice, never not at all); `meridian-hub feed`
//! prints it.
//!
//! **The store is the outbox.** Hubs do not publish what they commit
//! themselves (a hub killed between its commit and the publish would drop
//! it): one relay at a time (the holder of the `feed` lease, on any hub)
//! reads the chunks not on the feed yet (`chunks.fed`), publishes their
//! changes, waits for JetStream's acknowledgements and only then marks the
//! chunks fed. A relay killed in between leaves them unmarked; the next
//! publishes them again (JetStream drops the repeats it still remembers,
//! by message id `DOC.HASH`; older ones reach consumers twice).
//!
//! Per document the feed is in causal order: a change is committed after
//! its dependencies (a hub only stores what it applied), in a chunk with a
//! greater `seq`, and the relay reads chunks by `seq`. With the feed on, a
//! compaction deletes only chunks already fed (`PostgresStore::with_feed`),
//! so no change reaches the relay only through a later snapshot; a snapshot
//! (a document's first write, or a compaction) is loaded and the changes
//! the feed has not carried are published (what it carried of each
//! document is kept as heads, `feed_heads`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use meridian_node::store::FeedChunk;
use meridian_protocol::automerge::{self, Automerge, Change, ChangeHash};
use meridian_protocol::ids::DocumentId;
use serde::{Deserialize, Serialize};

use crate::control::{ControlState, unix_ms};

/// The JetStream stream of the feed.
pub const STREAM: &str = "MERIDIAN_CHANGES";
/// Subjects of the feed: one per document.
pub const SUBJECT_PREFIX: &str = "meridian.changes.";
/// The relay's lease in the store.
const LEASE_NAME: &str = "feed";
/// Chunks read from the store at once.
const BATCH: usize = 256;
/// Between reads of the store when nothing was left to feed.
const IDLE: Duration = Duration::from_millis(200);
/// How long the stream keeps changes.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Documents whose fed heads the relay keeps in memory (read from the
/// store again when forgotten).
const HEADS_CACHE: usize = 10_000;

/// One change on the feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub doc: String,
    /// The change's hash (hex).
    pub hash: String,
    pub deps: Vec<String>,
    /// The document's heads as the feed carried it, with this change.
    pub heads: Vec<String>,
    /// The change's author (automerge actor id, hex) and its sequence number.
    pub actor: String,
    pub seq: u64,
    /// The author's timestamp (Unix milliseconds; 0 when unset).
    pub time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The change's bytes (base64): `Automerge::apply_changes` takes them.
    pub change: String,
}

impl FeedEntry {
    fn new(doc: DocumentId, change: &Change, heads: &BTreeSet<ChangeHash>) -> Self {
        Self {
            doc: doc.to_string(),
            hash: change.hash().to_string(),
            deps: change.deps().iter().map(ToString::to_string).collect(),
            heads: heads.iter().map(ToString::to_string).collect(),
            actor: change.actor_id().to_hex_string(),
            seq: change.seq(),
            time: change.timestamp(),
            message: change.message().map(str::to_owned),
            change: base64::engine::general_purpose::STANDARD.encode(change.raw_bytes()),
        }
    }

    /// The change, decoded.
    pub fn decode(&self) -> Option<Change> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.change).ok()?;
        Change::try_from(&bytes[..]).ok()
    }
}

/// The changes in an appended chunk (concatenated change chunks), in
/// order; `None` unless every byte of it is read as changes (then the chunk
/// is loaded whole instead).
pub(crate) fn split_changes(data: &[u8]) -> Option<Vec<Change>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() <= 9 || rest[..4] != MAGIC {
            return None;
        }
        // Magic, checksum, chunk type, then the body's length (ULEB128).
        let (mut len, mut shift, mut at) = (0usize, 0u32, 9usize);
        loop {
            let &b = rest.get(at)?;
            at += 1;
            len |= usize::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            shift += 7;
            if b & 0x80 == 0 || shift > 63 {
                break;
            }
        }
        let end = at.checked_add(len).filter(|e| *e <= rest.len())?;
        out.push(Change::try_from(&rest[..end]).ok()?);
        rest = &rest[end..];
    }
    (!out.is_empty()).then_some(out)
}

/// What the feed carried of one document, as far as this relay knows:
/// its heads, and the changes it saw (so that a change a chunk repeats, as
/// a hub's write may carry what it took from another hub, is neither
/// carried again nor made a head again). A relay that starts knows the
/// heads only (kept in the store): a change repeated after that may be
/// carried twice (at least once).
#[derive(Clone, Debug, Default)]
pub(crate) struct Fed {
    pub(crate) heads: BTreeSet<ChangeHash>,
    seen: std::collections::HashSet<ChangeHash>,
}

/// Changes remembered per document at most (past it, the set starts over).
const SEEN_PER_DOC: usize = 100_000;

impl Fed {
    fn from_heads(heads: BTreeSet<ChangeHash>) -> Self {
        Self { seen: heads.iter().copied().collect(), heads }
    }

    /// Takes `change` as carried; `false` if it was already.
    pub(crate) fn take(&mut self, change: &Change) -> bool {
        let hash = change.hash();
        if self.seen.contains(&hash) {
            return false;
        }
        if self.seen.len() >= SEEN_PER_DOC {
            self.seen.clear();
        }
        self.seen.insert(hash);
        advance(&mut self.heads, change);
        true
    }
}

/// The changes of a stored chunk the feed has not carried, given the heads
/// it carried of the document (`have`), in causal order.
pub(crate) fn new_changes(chunk: &FeedChunk, have: &BTreeSet<ChangeHash>) -> Vec<Change> {
    if !chunk.snapshot
        && let Some(changes) = split_changes(&chunk.data)
    {
        return changes.into_iter().filter(|c| !have.contains(&c.hash())).collect();
    }
    let options = automerge::LoadOptions::new().on_partial_load(automerge::OnPartialLoad::Ignore);
    match Automerge::load_with_options(&chunk.data, options) {
        Ok(doc) => {
            let known: Vec<ChangeHash> =
                have.iter().copied().filter(|h| doc.get_change_meta_by_hash(h).is_some()).collect();
            doc.get_changes(&known)
        }
        Err(error) => {
            tracing::warn!(doc = %chunk.doc, seq = chunk.seq, %error, "feed: a stored chunk does not load; skipped");
            Vec::new()
        }
    }
}

/// `heads` after `change`: it replaces its dependencies.
pub(crate) fn advance(heads: &mut BTreeSet<ChangeHash>, change: &Change) {
    for d in change.deps() {
        heads.remove(d);
    }
    heads.insert(change.hash());
}

fn heads_bytes(heads: &BTreeSet<ChangeHash>) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn heads_from(bytes: &[u8]) -> BTreeSet<ChangeHash> {
    bytes.chunks_exact(32).filter_map(|c| <[u8; 32]>::try_from(c).ok().map(ChangeHash)).collect()
}

/// The feed's stream, created if missing.
pub async fn stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{SUBJECT_PREFIX}>")],
        storage: jetstream::stream::StorageType::File,
        max_age: MAX_AGE,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating the JetStream stream {STREAM}: {e}"))
}

/// The relay: while this hub holds the `feed` lease, publishes what the
/// store has not fed yet. Runs until aborted.
pub async fn relay(control: ControlState, client: async_nats::Client, hub_id: String, lease_ttl: Duration) {
    let js = jetstream::new(client);
    let holder = format!("{hub_id}#{:08x}", rand::random::<u32>());
    let mut heads: HashMap<DocumentId, Fed> = HashMap::new();
    let mut stream_ready = false;
    let mut warned = false;
    let mut lease_until: Option<std::time::Instant> = None;
    let mut renewed = std::time::Instant::now() - lease_ttl;
    loop {
        if renewed.elapsed() >= lease_ttl / 3 {
            let (h, ttl) = (holder.clone(), lease_ttl.as_millis() as u64);
            let asked = std::time::Instant::now();
            match control.call(move |s| s.take_lease(LEASE_NAME, &h, unix_ms(), ttl)).await {
                Ok(true) => {
                    // Not held throughout: another relay may have run.
                    if lease_until.is_none_or(|t| asked >= t) {
                        tracing::info!(hub = %hub_id, "feed: this hub relays the change feed now");
                        heads.clear();
                    }
                    lease_until = Some(asked + lease_ttl * 2 / 3);
                    renewed = asked;
                }
                Ok(false) => lease_until = None,
                Err(error) => tracing::warn!(%error, "feed: cannot renew the relay's lease"),
            }
        }
        if lease_until.is_none_or(|t| std::time::Instant::now() >= t) {
            tokio::time::sleep(lease_ttl / 3).await;
            continue;
        }
        if !stream_ready {
            match stream(&js).await {
                Ok(_) => stream_ready = true,
                Err(error) if !warned => {
                    warned = true;
                    tracing::warn!(%error, "feed: cannot create the stream (do the NATS servers run JetStream, -js?); trying again every second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "feed: the stream is not there yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        match relay_batch(&control, &js, &mut heads, lease_until).await {
            Ok(n) if n == BATCH => {}
            Ok(_) => tokio::time::sleep(IDLE).await,
            Err(error) => {
                tracing::warn!(%error, "feed: a batch was not relayed; trying again");
                heads.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Relays one batch of chunks; how many were read.
async fn relay_batch(
    control: &ControlState,
    js: &jetstream::Context,
    heads: &mut HashMap<DocumentId, Fed>,
    lease_until: Option<std::time::Instant>,
) -> Result<usize, String> {
    let chunks = control.call(|s| s.unfed_chunks(BATCH)).await.map_err(|e| e.to_string())?;
    if chunks.is_empty() {
        return Ok(0);
    }
    if heads.len() > HEADS_CACHE {
        heads.clear();
    }
    let missing: Vec<DocumentId> =
        chunks.iter().map(|c| c.doc).filter(|d| !heads.contains_key(d)).collect::<BTreeSet<_>>().into_iter().collect();
    if !missing.is_empty() {
        let loaded = control
            .call(move |s| missing.into_iter().map(|d| Ok((d, s.fed_heads(&d)?))).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| e.to_string())?;
        heads.extend(loaded.into_iter().map(|(d, h)| (d, Fed::from_heads(heads_from(&h)))));
    }
    // Decoding and loading snapshots is CPU work: off the async threads.
    let mut work_heads: HashMap<DocumentId, Fed> =
        chunks.iter().map(|c| (c.doc, heads.get(&c.doc).cloned().unwrap_or_default())).collect();
    let (entries, work_heads, seqs) = tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        for chunk in &chunks {
            let fed = work_heads.entry(chunk.doc).or_default();
            for change in new_changes(chunk, &fed.heads) {
                if fed.take(&change) {
                    entries.push(FeedEntry::new(chunk.doc, &change, &fed.heads));
                }
            }
        }
        let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
        (entries, work_heads, seqs)
    })
    .await
    .map_err(|e| format!("decoding the chunks: {e}"))?;
    // One at a time, each acknowledged before the next goes: a change whose
    // publish failed is never behind one that depends on it.
    for e in &entries {
        let payload = serde_json::to_vec(e).map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}.{}", e.doc, e.hash).as_str());
        let subject = format!("{SUBJECT_PREFIX}{}", e.doc);
        let ack =
            js.publish_with_headers(subject, headers, payload.into()).await.map_err(|e| format!("publishing: {e}"))?;
        ack.await.map_err(|e| format!("JetStream did not acknowledge a change: {e}"))?;
    }
    // The lease must still hold: another relay may have started otherwise
    // (it then publishes these again; nothing is lost).
    if lease_until.is_none_or(|t| std::time::Instant::now() >= t) {
        return Err("the relay's lease ran out during the batch".into());
    }
    let n = seqs.len();
    let fed: Vec<(DocumentId, Vec<u8>)> = work_heads.iter().map(|(d, f)| (*d, heads_bytes(&f.heads))).collect();
    control.call(move |s| s.mark_fed(&seqs, &fed)).await.map_err(|e| e.to_string())?;
    heads.extend(work_heads);
    tracing::debug!(chunks = n, changes = entries.len(), "feed: relayed");
    Ok(n)
}

/// What `meridian-hub feed` reads.
#[derive(Clone, Debug, Default)]
pub struct Consume {
    /// Only this document's changes.
    pub doc: Option<DocumentId>,
    /// The first stream sequence to read (1: the oldest kept; none: all).
    pub from: Option<u64>,
    /// Add each change's patches (what it did to the document as the
    /// reader has it: changes whose dependencies it did not read get `null`).
    pub patches: bool,
    /// Keep reading new changes; otherwise stop once caught up.
    pub follow: bool,
}

/// [`consume`], started again after any error (NATS unreachable, the
/// stream not created yet) half a second later, from where it stopped.
/// Runs until aborted.
pub async fn consume_retrying(urls: Vec<String>, mut what: Consume, mut out: impl std::io::Write) {
    loop {
        if let Err(error) = consume(&urls, &mut what, &mut out).await {
            tracing::debug!(%error, "feed: reading again");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the feed from the NATS servers `urls`, one JSON line per change
/// (the [`FeedEntry`] with its `stream_seq`, and `patches` if asked) to
/// `out`; `what.from` follows what was printed (so a call after an error
/// resumes). Returns how many changes it printed.
pub async fn consume(urls: &[String], what: &mut Consume, out: &mut impl std::io::Write) -> Result<u64, String> {
    use futures_util::StreamExt;
    use jetstream::consumer::DeliverPolicy;
    let client =
        async_nats::connect(urls).await.map_err(|e| format!("connecting to NATS at {}: {e}", urls.join(",")))?;
    let js = jetstream::new(client);
    let stream = js.get_stream(STREAM).await.map_err(|e| {
        format!("the feed's stream {STREAM} (is a hub running with --store postgres://, --bus and --feed?): {e}")
    })?;
    let deliver_policy = match what.from {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence: start_sequence.max(1) },
        None => DeliverPolicy::All,
    };
    let filter_subject = what.doc.map(|d| format!("{SUBJECT_PREFIX}{d}")).unwrap_or_default();
    let config = jetstream::consumer::pull::OrderedConfig { filter_subject, deliver_policy, ..Default::default() };
    let consumer = stream.create_consumer(config).await.map_err(|e| format!("reading the feed: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| format!("reading the feed: {e}"))?;
    let mut docs: HashMap<String, Automerge> = HashMap::new();
    let mut printed = 0u64;
    loop {
        let next = if what.follow {
            messages.next().await
        } else {
            // Caught up when nothing more comes.
            match tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| format!("reading the feed: {e}"))?;
        let (stream_seq, pending) = message.info().map(|i| (i.stream_sequence, i.pending)).unwrap_or((0, 1));
        let Ok(entry) = serde_json::from_slice::<FeedEntry>(&message.payload) else {
            tracing::warn!(stream_seq, "feed: a message that is not a change; skipped");
            continue;
        };
        let mut line = serde_json::to_value(&entry).map_err(|e| e.to_string())?;
        line["stream_seq"] = stream_seq.into();
        if what.patches {
            let doc = docs.entry(entry.doc.clone()).or_default();
            line["patches"] = entry.decode().map_or(serde_json::Value::Null, |c| patches_of(doc, c));
        }
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
        printed += 1;
        what.from = Some(stream_seq + 1);
        if !what.follow && pending == 0 {
            break;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(printed)
}

/// Applies `change` to `doc`; what it did, as JSON (`null` when its
/// dependencies are missing, so it could not be applied).
fn patches_of(doc: &mut Automerge, change: Change) -> serde_json::Value {
    use serde_json::json;
    let missing = change.deps().iter().any(|d| doc.get_change_meta_by_hash(d).is_none());
    let before = doc.get_heads();
    if missing || doc.apply_changes([change]).is_err() {
        return serde_json::Value::Null;
    }
    let after = doc.get_heads();
    let patches = doc.diff(&before, &after);
    serde_json::Value::Array(
        patches
            .into_iter()
            .map(|p| {
                let mut path: Vec<serde_json::Value> = p.path.iter().map(|(_, prop)| prop_json(prop)).collect();
                use automerge::PatchAction as A;
                let action = match p.action {
                    A::PutMap { key, value, .. } => {
                        json!({ "action": "put", "key": key, "value": value_json(&value.0) })
                    }
                    A::PutSeq { index, value, .. } => {
                        json!({ "action": "put", "index": index, "value": value_json(&value.0) })
                    }
                    A::Insert { index, values } => json!({
                        "action": "insert",
                        "index": index,
                        "values": values.iter().map(|(v, _, _)| value_json(v)).collect::<Vec<_>>(),
                    }),
                    A::SpliceText { index, value, .. } => {
                        json!({ "action": "splice", "index": index, "text": value.make_string() })
                    }
                    A::Increment { prop, value } => {
                        path.push(prop_json(&prop));
                        json!({ "action": "increment", "by": value })
                    }
                    A::Conflict { prop } => json!({ "action": "conflict", "prop": prop_json(&prop) }),
                    A::DeleteMap { key } => json!({ "action": "delete", "key": key }),
                    A::DeleteSeq { index, length } => json!({ "action": "delete", "index": index, "length": length }),
                    A::Mark { marks } => json!({
                        "action": "mark",
                        "marks": marks.iter().map(|m| json!({
                            "name": m.name(), "start": m.start, "end": m.end, "value": scalar_json(m.value()),
                        })).collect::<Vec<_>>(),
                    }),
                };
                json!({ "path": path, "patch": action })
            })
            .collect(),
    )
}

fn prop_json(prop: &automerge::Prop) -> serde_json::Value {
    match prop {
        automerge::Prop::Map(k) => k.as_str().into(),
        automerge::Prop::Seq(i) => (*i).into(),
    }
}

fn value_json(value: &automerge::Value<'_>) -> serde_json::Value {
    match value {
        automerge::Value::Object(kind) => serde_json::json!({ "object": kind.to_string() }),
        automerge::Value::Scalar(s) => scalar_json(s),
    }
}

fn scalar_json(s: &automerge::ScalarValue) -> serde_json::Value {
    use automerge::ScalarValue as S;
    use serde_json::json;
    match s {
        S::Str(s) => s.as_str().into(),
        S::Int(i) => (*i).into(),
        S::Uint(u) => (*u).into(),
        S::F64(f) => (*f).into(),
        S::Counter(c) => json!({ "counter": i64::from(c) }),
        S::Timestamp(t) => json!({ "timestamp": t }),
        S::Boolean(b) => (*b).into(),
        S::Null => serde_json::Value::Null,
        S::Bytes(b) => json!({ "bytes": base64::engine::general_purpose::STANDARD.encode(b) }),
        S::Unknown { type_code, bytes } => {
            json!({ "unknown": type_code, "bytes": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_protocol::automerge::transaction::Transactable;
    use meridian_protocol::automerge::{AutoCommit, ROOT};

    use super::*;

    fn chunk(seq: i64, snapshot: bool, data: Vec<u8>) -> FeedChunk {
        FeedChunk { seq, doc: DocumentId::from_bytes([1; 16]), snapshot, data }
    }

    #[test]
    fn appended_chunks_split_into_their_changes_and_snapshots_give_what_is_new() {
        let mut doc = AutoCommit::new();
        let mut have = BTreeSet::new();
        doc.put(ROOT, "a", 1).unwrap();
        doc.commit();
        doc.put(ROOT, "b", 2).unwrap();
        doc.commit();
        let appended = doc.save_incremental();
        let changes = new_changes(&chunk(1, false, appended), &have);
        assert_eq!(changes.len(), 2);
        for c in &changes {
            advance(&mut have, c);
        }
        assert_eq!(have.iter().copied().collect::<Vec<_>>(), doc.get_heads());
        // A compaction's snapshot: only the change the feed has not carried.
        doc.put(ROOT, "c", 3).unwrap();
        doc.commit();
        let snapshot = new_changes(&chunk(2, true, doc.save()), &have);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].hash(), doc.get_heads()[0]);
        // Heads the snapshot does not know (another hub's changes) are ignored.
        let mut foreign = have.clone();
        foreign.insert(ChangeHash([9; 32]));
        assert_eq!(new_changes(&chunk(3, true, doc.save()), &foreign).len(), 1);
        // Round trip of the stored heads, and of an entry's change.
        assert_eq!(heads_from(&heads_bytes(&have)), have);
        let e = FeedEntry::new(DocumentId::from_bytes([1; 16]), &snapshot[0], &have);
        assert_eq!(e.decode().map(|c| c.hash()), Some(snapshot[0].hash()));
        assert!(split_changes(b"not a chunk").is_none());
        assert!(split_changes(&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff, 0xff]).is_none(), "a cut chunk");
        // A change repeated by a later chunk is carried once, and stays no head.
        let mut fed = Fed::default();
        let all = doc.get_changes(&[]);
        assert!(all.iter().all(|c| fed.take(c)));
        let heads = fed.heads.clone();
        assert!(!fed.take(&all[0]), "taken before");
        assert_eq!(fed.heads, heads);
    }
}
