//! The SQLite store: runs the sync engine's [`StorageTask`]s against one
//! database file and reports a write as done only once it is committed.
//!
//! # Schema
//! - `meta`: key/value pairs; holds this store's [`StorageId`], created on
//!   first open and kept forever after.
//! - `chunks`: the saved bytes of every document, one row per chunk. `seq`
//!   is an `AUTOINCREMENT` key, so it never goes backwards and orders chunks
//!   by insertion. `kind` is `snapshot` (written by compaction) or
//!   `incremental` (appended changes).
//! - `sync_states`: the persisted sync state per document and remote store.
//! - `creators`: who created each document (a token's `sub`), and when.
//! - `leases`, `homes`, `pins`, `edge_reports`, `revocations`: a hub's
//!   control state ([`ControlStore`]); empty on edges.
//!
//! The schema version lives in `PRAGMA user_version`; the migrations (`sqlite/schema.rs`) are
//! applied in order at open, and a database written by a newer build is
//! refused rather than misread.
//!
//! # Durability
//! The database runs in WAL mode. A commit appends its pages to the `-wal`
//! file with `write(2)` before `COMMIT` returns, so once a task is reported
//! [`StorageResult::Done`] its data is in the kernel's page cache and
//! survives the process being killed (`kill -9`, a panic, an abort), which
//! is what `kill -9` tests check. By default ([`StoreOptions::fsync`])
//! the store runs `synchronous=FULL`, which fsyncs the WAL on every commit,
//! so a commit also survives a power loss or kernel crash;
//! [`SqliteStore::execute_batch`] commits a whole batch at once, so that
//! cost is paid once per batch. Without it (`--unsafe-no-fsync`,
//! `synchronous=NORMAL`) a power loss may lose the most recent commits
//! (never corrupting the database).

use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_protocol::chunks;
use meridian_protocol::ids::{DocumentId, StorageId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    ControlStore, DocStore, LeaseFence, ScrubStep, StoreError, StoredHome, StoredKey, StoredPin, StoredReport,
    revocation_key,
};
use crate::auth::Revocation;

mod schema;
use schema::MIGRATIONS;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `meta` key under which the store's own storage id is kept.
const STORAGE_ID_KEY: &str = "storage_id";

/// The schema version this build creates and understands.
const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// How a [`SqliteStore`] trades commit latency for durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Fsync the WAL on every commit (`synchronous=FULL`) so that commits also
    /// survive power loss and kernel crashes, not only process crashes. On
    /// by default (`--unsafe-no-fsync` turns it off).
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}

/// A document store backed by one SQLite database file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    storage_id: StorageId,
    /// Chunks moved to the quarantine since the store was opened.
    quarantined: u64,
}

impl DocStore for SqliteStore {
    fn storage_id(&self) -> &StorageId {
        SqliteStore::storage_id(self)
    }

    fn execute_batch(&mut self, tasks: &[(StorageTaskId, StorageTask)]) -> Vec<(StorageTaskId, StorageResult)> {
        SqliteStore::execute_batch(self, tasks)
    }

    fn quarantined(&self) -> u64 {
        self.quarantined
    }

    fn scrub(&mut self, after: i64, max_bytes: u64) -> Result<Option<ScrubStep>, StoreError> {
        // A read; the corrupt chunks it found are moved in a write of their
        // own (a read upgraded to a write would fail if another connection,
        // the edge beside `meridian-edge scrub`, wrote meanwhile). Chunks
        // never change once written, so they are still corrupt then, or gone.
        let step = self.in_transaction(false, |tx| scrub_step(tx, after, max_bytes))?;
        if !step.corrupt.is_empty() {
            self.in_transaction(true, |tx| {
                step.corrupt.iter().try_for_each(|(doc, seq, why)| quarantine(tx, doc, *seq, why))
            })?;
            self.quarantined += step.corrupt.len() as u64;
        }
        Ok(Some(step))
    }

    fn document_ids(&self) -> Result<Vec<DocumentId>, StoreError> {
        Ok(self.list_documents()?.into_iter().map(|(id, ..)| id).collect())
    }

    fn usage(&self, oldest: usize) -> Result<(u64, Vec<DocumentId>), StoreError> {
        let bytes: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(length(data)), 0) FROM chunks")?
            .query_row([], |r| r.get(0))?;
        let mut stmt =
            self.conn.prepare_cached("SELECT doc_id FROM chunks GROUP BY doc_id ORDER BY MAX(seq) ASC LIMIT ?1")?;
        let rows = stmt.query_map([oldest as i64], |row| Ok(DocumentId::from_bytes(row.get(0)?)))?;
        Ok((bytes.max(0) as u64, rows.collect::<rusqlite::Result<Vec<_>>>()?))
    }

    fn record_creator(&mut self, doc: &DocumentId, subject: &str, at: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO creators (doc_id, subject, created_at) VALUES (?1, ?2, ?3)")?
            .execute(rusqlite::params![doc.as_bytes().as_slice(), subject, at as i64])?;
        Ok(())
    }
}

impl ControlStore for SqliteStore {
    fn take_lease(&mut self, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError> {
        let expires = now_ms.saturating_add(ttl_ms) as i64;
        let got: Option<String> = self
            .conn
            .prepare_cached(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
                 WHERE leases.holder = excluded.holder OR leases.expires_ms < ?4 RETURNING holder",
            )?
            .query_row(params![name, holder, expires, now_ms as i64], |r| r.get(0))
            .optional()?;
        Ok(got.as_deref() == Some(holder))
    }

    fn lease_holder(&mut self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        let row = self
            .conn
            .prepare_cached("SELECT holder, expires_ms FROM leases WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
            .optional()?;
        Ok(row)
    }

    fn homes(&mut self) -> Result<Vec<StoredHome>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT doc_id, edge, addr, fingerprint, since_ms FROM homes ORDER BY doc_id")?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredHome {
                doc: DocumentId::from_bytes(r.get(0)?),
                edge: r.get(1)?,
                addr: r.get(2)?,
                fingerprint: r.get(3)?,
                since_ms: r.get::<_, i64>(4)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_home(
        &mut self,
        doc: &DocumentId,
        home: Option<&StoredHome>,
        fence: &LeaseFence,
    ) -> Result<bool, StoreError> {
        let id = doc.as_bytes().as_slice();
        // IMMEDIATE: the write lock is taken before the lease is read, so
        // no other connection takes the lease over before this commits.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held = tx
            .prepare_cached("SELECT 1 FROM leases WHERE name = ?1 AND holder = ?2 AND expires_ms > ?3")?
            .exists(params![fence.name, fence.holder, fence.now_ms as i64])?;
        if !held {
            return Ok(false);
        }
        match home {
            Some(h) => tx
                .prepare_cached(
                    "INSERT INTO homes (doc_id, edge, addr, fingerprint, since_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (doc_id) DO UPDATE SET edge = excluded.edge, addr = excluded.addr, \
                 fingerprint = excluded.fingerprint, since_ms = excluded.since_ms",
                )?
                .execute(params![id, h.edge, h.addr, h.fingerprint, h.since_ms as i64])?,
            None => tx.prepare_cached("DELETE FROM homes WHERE doc_id = ?1")?.execute([id])?,
        };
        tx.commit()?;
        Ok(true)
    }

    fn pins(&mut self) -> Result<Vec<StoredPin>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT doc_id, edge, at_ms FROM pins ORDER BY doc_id")?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredPin {
                doc: DocumentId::from_bytes(r.get(0)?),
                edge: r.get(1)?,
                at_ms: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_pin(&mut self, doc: &DocumentId, pin: Option<&StoredPin>) -> Result<bool, StoreError> {
        let id = doc.as_bytes().as_slice();
        let changed = match pin {
            Some(p) => self
                .conn
                .prepare_cached(
                    "INSERT INTO pins (doc_id, edge, at_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (doc_id) DO UPDATE SET edge = excluded.edge, at_ms = excluded.at_ms",
                )?
                .execute(params![id, p.edge, p.at_ms as i64])?,
            None => self.conn.prepare_cached("DELETE FROM pins WHERE doc_id = ?1")?.execute([id])?,
        };
        Ok(changed > 0)
    }

    fn put_reports(&mut self, reports: &[StoredReport]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO edge_reports (edge, hub, at_ms, report) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (edge) DO UPDATE SET hub = excluded.hub, at_ms = excluded.at_ms, report = excluded.report",
            )?;
            for r in reports {
                stmt.execute(params![r.edge, r.hub, r.at_ms as i64, r.report])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn reports_since(&mut self, since_ms: u64) -> Result<Vec<StoredReport>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT edge, hub, at_ms, report FROM edge_reports WHERE at_ms >= ?1 ORDER BY edge")?;
        let rows = stmt.query_map([since_ms as i64], |r| {
            Ok(StoredReport {
                edge: r.get(0)?,
                hub: r.get(1)?,
                at_ms: r.get::<_, i64>(2)?.max(0) as u64,
                report: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revocations(&mut self) -> Result<Vec<Revocation>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT jti, sub, at FROM revocations ORDER BY at, key")?;
        let rows = stmt.query_map([], |r| {
            Ok(Revocation { jti: r.get(0)?, sub: r.get(1)?, at: r.get::<_, i64>(2)?.max(0) as u64 })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn auth_keys(&mut self) -> Result<Vec<StoredKey>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT key_id, pem, at_ms FROM auth_keys ORDER BY at_ms, key_id")?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredKey { key_id: r.get(0)?, pem: r.get(1)?, at_ms: r.get::<_, i64>(2)?.max(0) as u64 })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn add_auth_key(&mut self, key: &StoredKey) -> Result<bool, StoreError> {
        let added = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO auth_keys (key_id, pem, at_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![key.key_id, key.pem, key.at_ms as i64])?;
        Ok(added > 0)
    }

    fn remove_auth_key(&mut self, key_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.prepare_cached("DELETE FROM auth_keys WHERE key_id = ?1")?.execute([key_id])? > 0)
    }

    fn add_revocation(&mut self, r: &Revocation) -> Result<bool, StoreError> {
        let added = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO revocations (key, jti, sub, at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![revocation_key(r), r.jti, r.sub, r.at as i64])?;
        Ok(added > 0)
    }
}

/// Who created `doc` and when (Unix seconds), as recorded in the database
/// at `path` (read on a connection of its own; WAL lets it read while the
/// node writes). `None`: not recorded (created elsewhere, or before this
/// was recorded).
pub fn creator_of(path: &Path, doc: &DocumentId) -> Result<Option<(String, u64)>, StoreError> {
    use rusqlite::OptionalExtension;
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_error(path))?;
    let row = conn
        .query_row("SELECT subject, created_at FROM creators WHERE doc_id = ?1", [doc.as_bytes().as_slice()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    Ok(row.map(|(s, at)| (s, at.max(0) as u64)))
}

impl SqliteStore {
    /// Opens the database at `path` with default options, creating it and
    /// its parent directory if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens the database at `path`, creating it and its parent directory if
    /// needed, migrating its schema and creating its storage id on first use.
    ///
    /// # Errors
    /// Fails, naming the path, if the directory or file cannot be created or
    /// opened, if WAL mode is unavailable, or if the schema is newer than this
    /// build knows ([`StoreError::SchemaTooNew`]).
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        create_parent_dir(path)?;
        let mut conn = Connection::open(path).map_err(open_error(path))?;
        configure(&conn, path, options)?;
        let storage_id = init_schema(&mut conn, path)?;
        Ok(Self { conn, path: path.to_owned(), storage_id, quarantined: 0 })
    }

    /// Returns the id that identifies this store to remote peers.
    pub fn storage_id(&self) -> &StorageId {
        &self.storage_id
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one task in its own transaction and returns its result.
    pub fn execute(&mut self, task: &StorageTask) -> StorageResult {
        let mut quarantined = 0;
        let result = self.in_transaction(is_write(task), |tx| run_task(tx, task, &mut quarantined));
        self.quarantined += quarantined;
        result.unwrap_or_else(|error| {
            tracing::warn!(%error, path = %self.path.display(), "storage task rolled back");
            StorageResult::Failed(format!("SQLite store failed: {error}"))
        })
    }

    /// Runs the tasks in order inside one transaction (group commit).
    ///
    /// Either the whole batch commits and every result is returned, or
    /// nothing commits and every task, reads included, gets
    /// [`StorageResult::Failed`]: reads that ran after a write in the batch
    /// may have seen data that was rolled back.
    pub fn execute_batch(&mut self, tasks: &[(StorageTaskId, StorageTask)]) -> Vec<(StorageTaskId, StorageResult)> {
        if tasks.is_empty() {
            return Vec::new();
        }
        let write = tasks.iter().any(|(_, task)| is_write(task));
        let mut quarantined = 0;
        let outcome = self.in_transaction(write, |tx| {
            tasks.iter().map(|(_, task)| run_task(tx, task, &mut quarantined)).collect::<rusqlite::Result<Vec<_>>>()
        });
        if outcome.is_ok() {
            self.quarantined += quarantined;
        }
        match outcome {
            Ok(results) => tasks.iter().map(|(id, _)| *id).zip(results).collect(),
            Err(error) => {
                tracing::warn!(%error, tasks = tasks.len(), path = %self.path.display(), "storage batch rolled back");
                let message = format!("batch of {} tasks rolled back: {error}", tasks.len());
                tasks.iter().map(|(id, _)| (*id, StorageResult::Failed(message.clone()))).collect()
            }
        }
    }

    /// Lists every document that has chunks, with its total chunk size in
    /// bytes and its chunk count, ordered by document id bytes.
    pub fn list_documents(&self) -> Result<Vec<(DocumentId, usize, usize)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT doc_id, SUM(length(data)), COUNT(*) FROM chunks GROUP BY doc_id ORDER BY doc_id")?;
        let rows =
            stmt.query_map([], |row| Ok((DocumentId::from_bytes(row.get(0)?), count(row, 1)?, count(row, 2)?)))?;
        let documents = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(documents)
    }

    /// Counts the documents that have at least one chunk.
    pub fn document_count(&self) -> Result<usize, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT COUNT(DISTINCT doc_id) FROM chunks")?;
        Ok(stmt.query_row([], |row| count(row, 0))?)
    }

    /// Closes the database, reporting any error SQLite hits while doing so.
    ///
    /// Dropping the store also closes it; committed data is safe either way.
    pub fn close(self) -> Result<(), StoreError> {
        self.conn.close().map_err(|(_, error)| StoreError::Sqlite(error))
    }

    /// Runs `f` in a transaction and commits it; on any error the transaction
    /// is rolled back when dropped. Writers take the write lock up front so
    /// they never fail halfway on a lock upgrade.
    fn in_transaction<R>(
        &mut self,
        write: bool,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        let behavior = if write { TransactionBehavior::Immediate } else { TransactionBehavior::Deferred };
        let tx = self.conn.transaction_with_behavior(behavior)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

/// Returns a mapper from SQLite errors to [`StoreError::Open`] for `path`.
fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Open { path: path.to_owned(), source }
}

/// Creates the directory that will contain the database, if any.
fn create_parent_dir(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: path.to_owned(), source })
        }
        _ => Ok(()),
    }
}

/// Sets the connection pragmas: WAL, commit durability, busy timeout and
/// foreign keys.
fn configure(conn: &Connection, path: &Path, options: StoreOptions) -> Result<(), StoreError> {
    let err = open_error(path);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::JournalMode { path: path.to_owned(), mode });
    }
    // See the module documentation: NORMAL is durable against process
    // crashes in WAL mode; FULL adds durability against power loss.
    let synchronous = if options.fsync { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", synchronous).map_err(&err)?;
    conn.pragma_update(None, "foreign_keys", true).map_err(&err)?;
    Ok(())
}

/// Brings the schema up to date and returns the store's storage id,
/// creating it on first open, all in one transaction.
fn init_schema(conn: &mut Connection, path: &Path) -> Result<StorageId, StoreError> {
    let err = open_error(path);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
    migrate(&tx, path)?;
    let storage_id = load_or_create_storage_id(&tx).map_err(&err)?;
    tx.commit().map_err(&err)?;
    Ok(storage_id)
}

/// Applies the migrations the database has not seen yet, refusing a schema
/// newer than this build knows.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = open_error(path);
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(&err)?;
    let current = usize::try_from(found)
        .ok()
        .filter(|version| *version <= SCHEMA_VERSION)
        .ok_or_else(|| StoreError::SchemaTooNew { path: path.to_owned(), found, supported: SCHEMA_VERSION })?;
    for (version, sql) in (1_i64..).zip(MIGRATIONS).skip(current) {
        conn.execute_batch(sql).map_err(&err)?;
        conn.pragma_update(None, "user_version", version).map_err(&err)?;
    }
    Ok(())
}

/// Reads the persisted storage id, or creates and persists a random one.
fn load_or_create_storage_id(conn: &Connection) -> rusqlite::Result<StorageId> {
    let existing: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [STORAGE_ID_KEY], |row| row.get(0)).optional()?;
    if let Some(id) = existing {
        return Ok(StorageId::new(id));
    }
    let id = StorageId::random(&mut rand::rng());
    conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![STORAGE_ID_KEY, id.as_str()])?;
    Ok(id)
}

/// Reads a non-negative integer column as a `usize`.
///
/// rusqlite converts `usize` only with its `fallible_uint` feature, so the
/// range check is done here.
fn count(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<usize> {
    let value: i64 = row.get(idx)?;
    usize::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Tells whether a task modifies the database.
fn is_write(task: &StorageTask) -> bool {
    !matches!(task, StorageTask::LoadDoc { .. } | StorageTask::ReadDoc { .. } | StorageTask::LoadSyncState { .. })
}

/// Runs one task on a connection that is inside a transaction; counts the
/// chunks a load quarantined in `quarantined`.
fn run_task(conn: &Connection, task: &StorageTask, quarantined: &mut u64) -> rusqlite::Result<StorageResult> {
    use StorageResult::{Done, Loaded};
    Ok(match task {
        StorageTask::LoadDoc { doc } | StorageTask::ReadDoc { doc } => Loaded(load_doc(conn, doc, quarantined)?),
        StorageTask::AppendChunk { doc, data } => {
            insert_chunk(conn, doc, ChunkKind::Incremental, data)?;
            Done
        }
        StorageTask::Compact { doc, snapshot } => {
            delete_chunks(conn, doc)?;
            insert_chunk(conn, doc, ChunkKind::Snapshot, snapshot)?;
            Done
        }
        StorageTask::Quarantine { doc, snapshot, reason } => {
            *quarantined += quarantine_doc(conn, doc, reason)?;
            delete_sync_states(conn, doc)?;
            insert_chunk(conn, doc, ChunkKind::Snapshot, snapshot)?;
            Done
        }
        StorageTask::DeleteDoc { doc } => {
            delete_chunks(conn, doc)?;
            delete_sync_states(conn, doc)?;
            Done
        }
        StorageTask::LoadSyncState { doc, peer } => Loaded(load_sync_state(conn, doc, peer)?),
        StorageTask::PutSyncState { doc, peer, state } => {
            put_sync_state(conn, doc, peer, state)?;
            Done
        }
    })
}

/// The `kind` column of a chunk.
#[derive(Clone, Copy, Debug)]
enum ChunkKind {
    Snapshot,
    Incremental,
}

impl ChunkKind {
    /// Returns the value stored in the `kind` column.
    const fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Incremental => "incremental",
        }
    }
}

/// Concatenates a document's chunks, snapshots first and then incrementals,
/// each in insertion order; `None` if the document has no chunks. Every
/// chunk is checked first ([`chunks::verify`]: what automerge checks when
/// it loads): one that fails is moved to the `quarantine` table (kept for
/// inspection, never served) and left out, so the document loads without
/// it and syncing with the hub or peers brings its changes back.
fn load_doc(conn: &Connection, doc: &DocumentId, quarantined: &mut u64) -> rusqlite::Result<Option<Vec<u8>>> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, data FROM chunks WHERE doc_id = ?1 ORDER BY kind <> 'snapshot', seq")?;
    let mut rows = stmt.query([doc.as_bytes()])?;
    let mut loaded: Option<Vec<u8>> = None;
    let mut bad = Vec::new();
    while let Some(row) = rows.next()? {
        let data = row.get_ref(1)?.as_blob()?;
        match chunks::verify(data, VERIFY_INFLATE_LIMIT) {
            Ok(_) => loaded.get_or_insert_default().extend_from_slice(data),
            Err(error) => bad.push((row.get::<_, i64>(0)?, error)),
        }
    }
    drop(rows);
    for (seq, error) in bad {
        quarantine(conn, doc, seq, &error.to_string())?;
        *quarantined += 1;
    }
    Ok(loaded)
}

/// Checks the chunks after `after`, in order, until `max_bytes` were read
/// or [`super::SCRUB_ROWS`] rows; lists those that fail.
fn scrub_step(conn: &Connection, after: i64, max_bytes: u64) -> rusqlite::Result<ScrubStep> {
    let mut stmt = conn.prepare_cached("SELECT seq, doc_id, data FROM chunks WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let mut rows = stmt.query(params![after, super::SCRUB_ROWS as i64])?;
    let mut step = ScrubStep::default();
    let (mut last, mut read, mut bad) = (after, 0, Vec::new());
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let doc = DocumentId::from_bytes(row.get(1)?);
        let data = row.get_ref(2)?.as_blob()?;
        (last, read) = (seq, read + 1);
        step.chunks += 1;
        step.bytes += data.len() as u64;
        if let Err(error) = chunks::verify(data, VERIFY_INFLATE_LIMIT) {
            bad.push((doc, seq, error.to_string()));
        }
        if step.bytes >= max_bytes {
            break;
        }
    }
    drop(rows);
    // Fewer rows than asked for, within the budget: the end of the table.
    step.next = (read == super::SCRUB_ROWS || step.bytes >= max_bytes).then_some(last);
    step.corrupt = bad;
    Ok(step)
}

/// Moves chunk `seq` of `doc` to the quarantine table (kept as found, with
/// why), out of what the document loads from.
fn quarantine(conn: &Connection, doc: &DocumentId, seq: i64, why: &str) -> rusqlite::Result<()> {
    tracing::error!(
        %doc, seq, error = why,
        "a stored chunk is corrupt: moved to the quarantine table and left out; the document is synced again from the hub or peers"
    );
    conn.prepare_cached(
        "INSERT INTO quarantine (seq, doc_id, kind, data, reason, at) \
         SELECT seq, doc_id, kind, data, ?2, unixepoch() FROM chunks WHERE seq = ?1",
    )?
    .execute(params![seq, why])?;
    conn.prepare_cached("DELETE FROM chunks WHERE seq = ?1")?.execute([seq])?;
    Ok(())
}

/// Moves every chunk of `doc` to the quarantine table (a copy replaced
/// by the upstream's, see `StorageTask::Quarantine`); how many.
fn quarantine_doc(conn: &Connection, doc: &DocumentId, why: &str) -> rusqlite::Result<u64> {
    let moved = conn
        .prepare_cached(
            "INSERT INTO quarantine (seq, doc_id, kind, data, reason, at) \
             SELECT seq, doc_id, kind, data, ?2, unixepoch() FROM chunks WHERE doc_id = ?1",
        )?
        .execute(params![doc.as_bytes(), why])?;
    delete_chunks(conn, doc)?;
    Ok(moved as u64)
}

/// How far a compressed change may inflate when a chunk is checked.
const VERIFY_INFLATE_LIMIT: usize = 1 << 30;

/// Stores one chunk after every existing chunk of the document.
fn insert_chunk(conn: &Connection, doc: &DocumentId, kind: ChunkKind, data: &[u8]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("INSERT INTO chunks (doc_id, kind, data) VALUES (?1, ?2, ?3)")?;
    stmt.execute(params![doc.as_bytes(), kind.as_str(), data])?;
    Ok(())
}

/// Removes every chunk of the document.
fn delete_chunks(conn: &Connection, doc: &DocumentId) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("DELETE FROM chunks WHERE doc_id = ?1")?;
    stmt.execute([doc.as_bytes()])?;
    Ok(())
}

/// Removes every sync state of the document.
fn delete_sync_states(conn: &Connection, doc: &DocumentId) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("DELETE FROM sync_states WHERE doc_id = ?1")?;
    stmt.execute([doc.as_bytes()])?;
    Ok(())
}

/// Reads the sync state shared with `peer` for the document, if any.
fn load_sync_state(conn: &Connection, doc: &DocumentId, peer: &StorageId) -> rusqlite::Result<Option<Vec<u8>>> {
    let mut stmt = conn.prepare_cached("SELECT state FROM sync_states WHERE doc_id = ?1 AND peer_storage_id = ?2")?;
    stmt.query_row(params![doc.as_bytes(), peer.as_str()], |row| row.get(0)).optional()
}

/// Inserts or replaces the sync state shared with `peer` for the document.
fn put_sync_state(conn: &Connection, doc: &DocumentId, peer: &StorageId, state: &[u8]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO sync_states (doc_id, peer_storage_id, state) VALUES (?1, ?2, ?3)
         ON CONFLICT (doc_id, peer_storage_id) DO UPDATE SET state = excluded.state",
    )?;
    stmt.execute(params![doc.as_bytes(), peer.as_str(), state])?;
    Ok(())
}

#[cfg(test)]
mod tests;
