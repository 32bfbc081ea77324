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
    /// Every stored document id.
    fn document_ids(&self) -> Result<Vec<DocumentId>, StoreError>;
    /// Bytes of document data stored, and up to `oldest` documents, least
    /// recently written first (candidates for a disk budget).
    fn usage(&self, oldest: usize) -> Result<(u64, Vec<DocumentId>), StoreError>;
    /// Records who created a document (a token's `sub`) and when (Unix
    /// seconds); a document's first record stands.
    fn record_creator(&mut self, doc: &DocumentId, subject: &str, at: u64) -> Result<(), StoreError>;
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
}
