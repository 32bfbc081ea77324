//! Document stores behind one trait: [`DocStore`] is what the node runtime
//! needs; [`SqliteStore`] is the embedded backend edges, the hub and device
//! clients use by default; [`PostgresStore`] is the hub's shared store on a
//! PostgreSQL-protocol database (`meridian-hub serve --store postgres://…`).

mod postgres;
mod sqlite;

use meridian_protocol::ids::{DocumentId, StorageId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use std::path::PathBuf;

pub use postgres::{OUTAGE_WAIT, PostgresStore, redact};
pub use sqlite::{SqliteStore, StoreOptions, creator_of};

/// What the node runtime needs from a document store. SQLite is the
/// embedded default; a server-grade backend (e.g. a distributed SQL engine
/// behind several hub processes, DESIGN.md §8) implements the same trait.
///
/// Contract: `execute_batch` runs the tasks in order and reports a write
/// `Done` only once it is durable; a failed batch fails every write in it.
pub trait DocStore: Send + 'static {
    /// The id of this store, created once and kept.
    fn storage_id(&self) -> &StorageId;
    /// Runs storage tasks in order, as one unit where the backend can.
    fn execute_batch(&mut self, tasks: &[(StorageTaskId, StorageTask)]) -> Vec<(StorageTaskId, StorageResult)>;
    /// Chunks that failed their check on load and were quarantined since
    /// the store was opened (a store that checks none: 0).
    fn quarantined(&self) -> u64 {
        0
    }
    /// Checks stored chunks after `after` (a chunk sequence number; 0 at
    /// the start of a pass), about `max_bytes` of them, as a load would
    /// ([`meridian_protocol::chunks::verify`]), quarantining those that fail.
    /// `None`: this store does not scrub.
    fn scrub(&mut self, _after: i64, _max_bytes: u64) -> Result<Option<ScrubStep>, StoreError> {
        Ok(None)
    }
    /// Every stored document id.
    fn document_ids(&self) -> Result<Vec<DocumentId>, StoreError>;
    /// Bytes of document data stored, and up to `oldest` documents, least
    /// recently written first (candidates for a disk budget).
    fn usage(&self, oldest: usize) -> Result<(u64, Vec<DocumentId>), StoreError>;
    /// Records who created a document (a token's `sub`) and when (Unix
    /// seconds); a document's first record stands.
    fn record_creator(&mut self, doc: &DocumentId, subject: &str, at: u64) -> Result<(), StoreError>;
}
/// The cloud tier's control state, kept in the hub's store so that every
/// hub on one database shares it and a restarted hub finds it again:
/// named leases (one placer at a time), the homes the placer announced,
/// operators' pins, the edges' latest demand reports (so the placer sees
/// edges connected to any hub), and revoked tokens. Every method is one
/// statement or one transaction; callers run them off async threads.
pub trait ControlStore: Send + 'static {
    /// Takes or renews the lease `name` for `holder` until `now_ms + ttl_ms`
    /// (Unix milliseconds): granted when nobody holds it, `holder` already
    /// does, or the holder's has expired. `true`: `holder` holds it now.
    fn take_lease(&mut self, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Who holds the lease `name`, until when (Unix milliseconds).
    fn lease_holder(&mut self, name: &str) -> Result<Option<(String, u64)>, StoreError>;
    /// Every announced home on an edge (a document absent is homed at the hub).
    fn homes(&mut self) -> Result<Vec<StoredHome>, StoreError>;
    /// Records an announced home: on an edge (`Some`), or back at the hub;
    /// only while `fence`'s lease is held, checked in the same transaction
    /// (the lease row is locked throughout, so nobody takes it over
    /// meanwhile). `false`: not held, nothing written.
    fn set_home(&mut self, doc: &DocumentId, home: Option<&StoredHome>, fence: &LeaseFence)
    -> Result<bool, StoreError>;
    /// Every operator's pin.
    fn pins(&mut self) -> Result<Vec<StoredPin>, StoreError>;
    /// Pins a document (`Some`) or removes its pin; `true` if that changed anything.
    fn set_pin(&mut self, doc: &DocumentId, pin: Option<&StoredPin>) -> Result<bool, StoreError>;
    /// Records the latest report of each edge (one row per edge).
    fn put_reports(&mut self, reports: &[StoredReport]) -> Result<(), StoreError>;
    /// Reports recorded at or after `since_ms`.
    fn reports_since(&mut self, since_ms: u64) -> Result<Vec<StoredReport>, StoreError>;
    /// Every revoked token, oldest first.
    fn revocations(&mut self) -> Result<Vec<crate::auth::Revocation>, StoreError>;
    /// Adds a revocation; `false` if it was there already.
    fn add_revocation(&mut self, r: &crate::auth::Revocation) -> Result<bool, StoreError>;
    /// The tier's token-signing public keys, oldest first.
    fn auth_keys(&mut self) -> Result<Vec<StoredKey>, StoreError>;
    /// Adds a key; `false` if one with its id was there already.
    fn add_auth_key(&mut self, key: &StoredKey) -> Result<bool, StoreError>;
    /// Removes a key by id; `false` if there was none.
    fn remove_auth_key(&mut self, key_id: &str) -> Result<bool, StoreError>;
    /// Up to `limit` stored chunks not yet put on the change feed, in the
    /// order they were written (the feed relay's outbox: the chunks table
    /// itself). Only a shared store keeps the feed.
    fn unfed_chunks(&mut self, _limit: usize) -> Result<Vec<FeedChunk>, StoreError> {
        Err(StoreError::Unsupported("the change feed (it needs the PostgreSQL store)"))
    }
    /// Marks chunks as on the feed, and records each document's fed heads.
    fn mark_fed(&mut self, _seqs: &[i64], _heads: &[(DocumentId, Vec<u8>)]) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("the change feed (it needs the PostgreSQL store)"))
    }
    /// The heads (concatenated 32-byte hashes) of what the feed carried of `doc`.
    fn fed_heads(&mut self, _doc: &DocumentId) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Unsupported("the change feed (it needs the PostgreSQL store)"))
    }
}

/// A write allowed only to a lease's holder: `holder` must hold the lease
/// `name` past `now_ms` (Unix milliseconds) when the write commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    pub name: String,
    pub holder: String,
    pub now_ms: u64,
}

/// Chunks one step of a scrub reads at most, besides its byte budget
/// ([`DocStore::scrub`]).
pub(crate) const SCRUB_ROWS: usize = 256;

/// What one step of a scrub checked ([`DocStore::scrub`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubStep {
    /// Where the next step starts; `None`: the pass is complete.
    pub next: Option<i64>,
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks that failed and were quarantined: document, sequence number, why.
    pub corrupt: Vec<(DocumentId, i64, String)>,
}

/// A token-signing public key the tier trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// `auth::key_id` of the key.
    pub key_id: String,
    pub pem: String,
    /// When it was added (Unix milliseconds).
    pub at_ms: u64,
}

/// A stored chunk on its way to the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedChunk {
    pub seq: i64,
    pub doc: DocumentId,
    /// A snapshot (compaction, or a document's first write) or appended changes.
    pub snapshot: bool,
    pub data: Vec<u8>,
}

/// A document's home on an edge, as the placer announced it: the edge, and
/// where other edges reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHome {
    pub edge: String,
    pub addr: Option<String>,
    pub fingerprint: Option<String>,
    /// When it was announced (Unix milliseconds).
    pub since_ms: u64,
    pub doc: DocumentId,
}

/// An operator's pin of a document's home: to an edge, or to the hub (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPin {
    pub doc: DocumentId,
    pub edge: Option<String>,
    /// When it was set (Unix milliseconds).
    pub at_ms: u64,
}

/// An edge's latest demand report, as the hub it is connected to saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    pub edge: String,
    pub hub: String,
    /// When the hub recorded it (Unix milliseconds).
    pub at_ms: u64,
    /// The report, in the placer's JSON form.
    pub report: String,
}

/// The key a revocation is stored under (the same revocation twice is one row).
pub(crate) fn revocation_key(r: &crate::auth::Revocation) -> String {
    serde_json::json!([r.jti, r.sub, r.at]).to_string()
}

/// Why the store could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should contain the database could not be created.
    #[error("cannot create the directory for database {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// SQLite failed while opening, configuring or migrating the database.
    #[error("cannot open database {}: {source}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    /// The database refused write-ahead logging, which durability relies on.
    #[error("database {} cannot use WAL mode (journal mode is {mode:?})", path.display())]
    JournalMode { path: PathBuf, mode: String },
    /// The database was written by a newer build with an unknown schema.
    #[error(
        "database {} has schema version {found}, but this build only knows versions up to \
         {supported}; upgrade meridian-edge to open it",
        path.display()
    )]
    SchemaTooNew { path: PathBuf, found: i64, supported: usize },
    /// A query failed on an open database.
    #[error("SQLite query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL could not be reached, or refused to open the store.
    #[error("cannot open the PostgreSQL store at {target}: {source}")]
    Postgres { target: String, source: ::postgres::Error },
    /// A query failed on PostgreSQL.
    #[error("PostgreSQL query failed: {0}")]
    PostgresQuery(#[from] ::postgres::Error),
    /// The database server cannot be reached right now.
    #[error("{0} is unreachable")]
    Unreachable(String),
    /// This store does not keep that.
    #[error("this store does not keep {0}")]
    Unsupported(&'static str),
}
