//! The PostgreSQL store: the same [`DocStore`] as SQLite, on a database
//! server several hubs share (DESIGN.md §8, docs/SCALING.md).
//!
//! # Schema
//! - `meta`: key/value pairs; the store's [`StorageId`] (one per database:
//!   every hub on it presents the same id, so an edge's persisted sync state
//!   with "the cloud" holds whichever hub it reaches).
//! - `chunks`: a document's saved bytes, one row per chunk, `seq` ordering a
//!   writer's chunks; `kind` is `snapshot` or `incremental`.
//! - `sync_states`, `creators`: as in SQLite.
//! - `leases`: named leases with a holder and an expiry (the placer's, one
//!   at a time across hubs): compare-and-set rows, no advisory locks.
//! - `homes`, `pins`, `edge_reports`, `revocations`: the tier's control
//!   state ([`ControlStore`]): announced homes, operators' pins, each edge's
//!   latest demand report, revoked tokens.
//! - `chunks.fed`, `feed_heads`: the change feed's outbox (chunks not on
//!   the NATS JetStream feed yet) and the heads it carried per document.
//!   With the feed on ([`PostgresStore::with_feed`]) a compaction never
//!   deletes a chunk the feed has not carried: the relay must see every
//!   change in the order it was committed (a snapshot replacing an unfed
//!   chunk could put a change's dependency out of its reach).
//! - `quarantine`: chunks that failed their check (corrupt: on load, or
//!   found by the background scrub), kept as found with why, never served;
//!   the load leaves them out and the document syncs what it lacks back
//!   from the edges.
//! - `schema_migrations`: the versions applied (`sql::MIGRATIONS`); a database
//!   written by a newer build is refused.
//!
//! # Portable SQL
//! Every statement is in `sql.rs` (`MIGRATIONS`, `STATEMENTS`) and keeps to SQL
//! that CockroachDB and YugabyteDB accept too: no `LISTEN`/`NOTIFY`, no
//! advisory locks, no functions, triggers or extensions, no system columns.
//! A test checks the list (`portable_sql`).
//!
//! # Compaction with several writers
//! A compaction deletes exactly the chunks its snapshot covers: those this
//! store handed to the engine when it loaded the document, and those it
//! appended for it since ([`PostgresStore::covered`]), never a chunk
//! another hub appended meanwhile. Two hubs compacting at once each delete
//! their own covered chunks and insert their own snapshot, in one
//! transaction each; a change stays in some row throughout.
//!
//! # Durability
//! A write is `Done` once its transaction committed on the server (with the
//! server's own `synchronous_commit`, on by default). A lost connection is
//! opened again before the next batch; until then batches fail, and the
//! engine treats a failed write as such (it never advertises it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_protocol::ids::{DocumentId, StorageId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use postgres::{Client, NoTls};

use super::{DocStore, ScrubStep, StoreError};

mod control;
mod sql;
mod tasks;
use sql::*;
use tasks::{Covering, run_task};

/// The `meta` key under which the store's own storage id is kept.
const STORAGE_ID_KEY: &str = "storage_id";
/// The `meta` key saying a hub keeps the change feed on this database.
const FEED_KEY: &str = "feed";

/// Documents whose covered chunks are remembered at most; past it, the
/// oldest entries are forgotten (a compaction of such a document then
/// deletes nothing: safe, only less compact).
const MAX_COVERED_DOCS: usize = 100_000;

/// Between attempts to open a lost connection again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// How long a batch waits for an unreachable database before it fails
/// (the default of [`PostgresStore::with_outage_wait`]).
pub const OUTAGE_WAIT: Duration = Duration::from_secs(30);

/// The schema version this build creates and understands.
const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A document store on a PostgreSQL-protocol database.
pub struct PostgresStore {
    client: Client,
    config: postgres::Config,
    /// The URL without its password, for messages.
    target: String,
    storage_id: StorageId,
    /// Per document, the chunks (by `seq`) the engine's copy holds: read by
    /// its load or appended by this store since. A compaction deletes
    /// exactly these.
    covered: HashMap<DocumentId, Vec<i64>>,
    /// When the connection was last found lost and tried again.
    last_reconnect: Option<Instant>,
    /// How long a batch waits for an unreachable database.
    outage_wait: Duration,
    /// The change feed's outbox is kept ([`Self::with_feed`]).
    feed: bool,
    /// Chunks moved to the quarantine since the store was opened.
    quarantined: u64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.target).field("storage_id", &self.storage_id).finish()
    }
}

/// `url` without a password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`),
    /// migrates its schema and creates its storage id on first use.
    ///
    /// Call it off any async runtime's threads (the client runs its own).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let target = redact(url);
        let config: postgres::Config =
            url.parse().map_err(|source| StoreError::Postgres { target: target.clone(), source })?;
        let mut client =
            config.connect(NoTls).map_err(|source| StoreError::Postgres { target: target.clone(), source })?;
        let storage_id = init_schema_retrying(&mut client).map_err(|e| e.with_target(&target))?;
        // A database some hub keeps the feed on keeps its outbox whatever
        // this hub's flags say (its writes must not skip the feed).
        let feed = client
            .query_opt(GET_META, &[&FEED_KEY])
            .map_err(|source| StoreError::Postgres { target: target.clone(), source })?
            .is_some_and(|r| r.get::<_, String>(0) == "on");
        Ok(Self {
            client,
            config,
            target,
            storage_id,
            covered: HashMap::new(),
            last_reconnect: None,
            outage_wait: OUTAGE_WAIT,
            feed,
            quarantined: 0,
        })
    }

    /// Keeps the change feed's outbox: chunks are written not fed yet, and
    /// a compaction leaves the covered chunks the feed has not carried (the
    /// relay reads every chunk before it goes; the next compaction deletes
    /// them). `true` records it in the database (`meta.feed`), so every hub
    /// opening it later keeps the outbox too, with or without `--feed`;
    /// `false` changes nothing.
    pub fn with_feed(mut self, feed: bool) -> Result<Self, StoreError> {
        if feed && !self.feed {
            self.client.execute(PUT_META, &[&FEED_KEY, &"on"])?;
            self.feed = true;
        }
        Ok(self)
    }

    /// Whether this store keeps the change feed's outbox.
    pub fn keeps_feed(&self) -> bool {
        self.feed
    }

    pub fn storage_id(&self) -> &StorageId {
        &self.storage_id
    }

    /// How long a batch waits for an unreachable database before failing.
    pub fn with_outage_wait(mut self, wait: Duration) -> Self {
        self.outage_wait = wait;
        self
    }

    /// The database's URL without its password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The open connection, opened again if it was lost; an error while
    /// the server is unreachable (control calls do not wait it out).
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.connected() {
            Ok(&mut self.client)
        } else {
            Err(StoreError::Unreachable(format!("PostgreSQL at {}", self.target)))
        }
    }

    /// Who created `doc` and when (Unix seconds).
    pub fn creator(&mut self, doc: &DocumentId) -> Result<Option<(String, u64)>, StoreError> {
        let row = self.client.query_opt(CREATOR, &[&doc.as_bytes().as_slice()])?;
        Ok(row.map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64)))
    }

    /// Opens the connection again if it was lost (at most every
    /// [`RECONNECT_EVERY`]); `false`: still lost.
    fn connected(&mut self) -> bool {
        if !self.client.is_closed() {
            return true;
        }
        if self.last_reconnect.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
            return false;
        }
        self.last_reconnect = Some(Instant::now());
        match self.config.connect(NoTls) {
            Ok(client) => {
                tracing::info!(target = %self.target, "connected to PostgreSQL again");
                self.client = client;
                true
            }
            Err(error) => {
                tracing::debug!(target = %self.target, %error, "PostgreSQL still unreachable");
                false
            }
        }
    }

    /// Runs the tasks in order in one transaction (group commit); on any
    /// failure nothing commits and every task fails. While the database is
    /// unreachable (a restart, a fail-over) the batch waits and is tried
    /// again, up to [`OUTAGE_WAIT`] (see [`Self::with_outage_wait`]): the node's writes stay in flight
    /// (nothing is advertised before it is stored) instead of failing and
    /// closing every peer of the documents in them. A batch whose commit
    /// was lost with the connection may so be stored twice, which only
    /// repeats chunks (loading skips changes it has).
    pub fn execute_batch(&mut self, tasks: &[(StorageTaskId, StorageTask)]) -> Vec<(StorageTaskId, StorageResult)> {
        if tasks.is_empty() {
            return Vec::new();
        }
        let failed =
            |message: String| tasks.iter().map(|(id, _)| (*id, StorageResult::Failed(message.clone()))).collect();
        let since = Instant::now();
        let mut warned = false;
        loop {
            if self.connected() {
                match self.try_batch(tasks) {
                    Ok(results) => {
                        if warned {
                            tracing::info!(target = %self.target, waited = ?since.elapsed(), "PostgreSQL is back: writes go on");
                        }
                        return results;
                    }
                    Err(error) if !self.client.is_closed() => {
                        tracing::warn!(%error, tasks = tasks.len(), target = %self.target, "storage batch rolled back");
                        return failed(format!("batch of {} tasks rolled back: {error}", tasks.len()));
                    }
                    // The connection went down under the batch: wait for it.
                    Err(_) => {}
                }
            }
            if since.elapsed() >= self.outage_wait {
                return failed(format!("PostgreSQL at {} is unreachable", self.target));
            }
            if !warned {
                tracing::warn!(target = %self.target, "PostgreSQL is unreachable: writes wait for it (up to {:?})", self.outage_wait);
                warned = true;
            }
            std::thread::sleep(RECONNECT_EVERY / 5);
        }
    }

    /// One attempt at a batch, in one transaction.
    fn try_batch(
        &mut self,
        tasks: &[(StorageTaskId, StorageTask)],
    ) -> Result<Vec<(StorageTaskId, StorageResult)>, postgres::Error> {
        let mut covering = Covering::default();
        let mut quarantined = 0;
        let mut tx = self.client.transaction()?;
        let mut results = Vec::with_capacity(tasks.len());
        for (_, task) in tasks {
            results.push(run_task(&mut tx, task, &self.covered, &mut covering, self.feed, &mut quarantined)?);
        }
        tx.commit()?;
        self.quarantined += quarantined;
        covering.apply(&mut self.covered);
        Ok(tasks.iter().map(|(id, _)| *id).zip(results).collect())
    }
}

impl DocStore for PostgresStore {
    fn storage_id(&self) -> &StorageId {
        &self.storage_id
    }

    fn execute_batch(&mut self, tasks: &[(StorageTaskId, StorageTask)]) -> Vec<(StorageTaskId, StorageResult)> {
        PostgresStore::execute_batch(self, tasks)
    }

    fn quarantined(&self) -> u64 {
        self.quarantined
    }

    /// As on SQLite: a read of the next chunks (about `max_bytes`), then the
    /// corrupt ones moved to the quarantine table in a transaction of their
    /// own. Other hubs on the database may quarantine or compact the same
    /// chunks meanwhile: a chunk already gone is skipped.
    fn scrub(&mut self, after: i64, max_bytes: u64) -> Result<Option<ScrubStep>, StoreError> {
        // The rows that fit the budget (at least one), by their sizes.
        let sizes = self.client.query(SCRUB_SIZES, &[&after, &(super::SCRUB_ROWS as i64)])?;
        let (mut upto, mut budget, mut taken) = (after, 0u64, 0usize);
        for r in &sizes {
            if taken > 0 && budget >= max_bytes {
                break;
            }
            upto = r.get::<_, i64>(0);
            budget += r.get::<_, Option<i32>>(1).unwrap_or(0).max(0) as u64;
            taken += 1;
        }
        let mut step = ScrubStep::default();
        if taken > 0 {
            for r in &self.client.query(SCRUB, &[&after, &upto])? {
                let (seq, data) = (r.get::<_, i64>(0), r.get::<_, &[u8]>(2));
                step.chunks += 1;
                step.bytes += data.len() as u64;
                if let Err(error) = meridian_protocol::chunks::verify(data, 1 << 30)
                    && let Some(doc) = doc_id(r.get(1))
                {
                    step.corrupt.push((doc, seq, error.to_string()));
                }
            }
        }
        // More rows than were taken, or a full page: the pass goes on.
        step.next = (taken < sizes.len() || sizes.len() == super::SCRUB_ROWS).then_some(upto);
        if !step.corrupt.is_empty() {
            let at_ms = unix_ms();
            let mut tx = self.client.transaction()?;
            let mut moved = 0;
            for (doc, seq, why) in &step.corrupt {
                tracing::error!(
                    %doc, seq, error = %why,
                    "a stored chunk is corrupt: moved to the quarantine table and left out; the document is synced again from the edges"
                );
                // Another hub may have moved it already.
                moved += tx.execute(QUARANTINE, &[seq, why, &at_ms])?;
                tx.execute(DELETE_CHUNK, &[seq])?;
            }
            tx.commit()?;
            self.quarantined += moved;
        }
        Ok(Some(step))
    }

    fn document_ids(&self) -> Result<Vec<DocumentId>, StoreError> {
        // `&self`: a second connection for this rare listing (a backfill).
        let mut client = self.config.connect(NoTls)?;
        let rows = client.query(DOCUMENT_IDS, &[])?;
        Ok(rows.iter().filter_map(|r| doc_id(r.get(0))).collect())
    }

    fn usage(&self, oldest: usize) -> Result<(u64, Vec<DocumentId>), StoreError> {
        let mut client = self.config.connect(NoTls)?;
        let bytes: i64 = client.query_one(BYTES_STORED, &[])?.get(0);
        let rows = client.query(OLDEST_WRITTEN, &[&(oldest as i64)])?;
        Ok((bytes.max(0) as u64, rows.iter().filter_map(|r| doc_id(r.get(0))).collect()))
    }

    fn record_creator(&mut self, doc: &DocumentId, subject: &str, at: u64) -> Result<(), StoreError> {
        self.client.execute(RECORD_CREATOR, &[&doc.as_bytes().as_slice(), &subject, &(at as i64)])?;
        Ok(())
    }
}

fn doc_id(bytes: &[u8]) -> Option<DocumentId> {
    <[u8; 16]>::try_from(bytes).ok().map(DocumentId::from_bytes)
}

/// Milliseconds since the Unix epoch (the quarantine's `at_ms`).
fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A failure while opening, with what it was about.
#[derive(Debug)]
enum InitError {
    Query(postgres::Error),
    TooNew(i64),
}

impl From<postgres::Error> for InitError {
    fn from(e: postgres::Error) -> Self {
        InitError::Query(e)
    }
}

impl InitError {
    fn with_target(self, target: &str) -> StoreError {
        match self {
            InitError::Query(source) => StoreError::Postgres { target: target.to_owned(), source },
            InitError::TooNew(found) => {
                StoreError::SchemaTooNew { path: target.into(), found, supported: SCHEMA_VERSION }
            }
        }
    }
}

/// Applies the migrations not applied yet and returns the storage id,
/// creating it on first use (whichever hub gets there first wins).
/// [`init_schema`], tried again when another hub migrating the same fresh
/// database at the same moment made it fail: DDL racing in two
/// transactions fails in the second one with a duplicate key, table or
/// object, a deadlock, a serialization failure or "tuple concurrently
/// updated", and the next attempt finds the work done.
fn init_schema_retrying(client: &mut Client) -> Result<StorageId, InitError> {
    use postgres::error::SqlState;
    let raced = |e: &InitError| match e {
        InitError::Query(e) => e.code().is_some_and(|c| {
            [
                SqlState::UNIQUE_VIOLATION,
                SqlState::DUPLICATE_TABLE,
                SqlState::DUPLICATE_OBJECT,
                SqlState::DUPLICATE_COLUMN,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::INTERNAL_ERROR,
            ]
            .contains(c)
        }),
        InitError::TooNew(_) => false,
    };
    let mut attempt = 0;
    loop {
        match init_schema(client) {
            Err(e) if raced(&e) && attempt < 10 => {
                attempt += 1;
                let code = match &e {
                    InitError::Query(q) => q.code().map(|c| c.code().to_owned()),
                    InitError::TooNew(_) => None,
                };
                tracing::info!(?code, "another hub is migrating the database too; trying again");
                std::thread::sleep(Duration::from_millis(50 * attempt));
            }
            other => return other,
        }
    }
}

fn init_schema(client: &mut Client) -> Result<StorageId, InitError> {
    client.batch_execute(CREATE_MIGRATIONS)?;
    let found: i32 = client.query_one(MAX_VERSION, &[])?.get(0);
    if found < 0 || found as usize > SCHEMA_VERSION {
        return Err(InitError::TooNew(i64::from(found)));
    }
    for (version, sql) in (1_i32..).zip(MIGRATIONS).skip(found as usize) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(RECORD_VERSION, &[&version])?;
        tx.commit()?;
    }
    let fresh = StorageId::random(&mut rand::rng());
    client.execute(PUT_META_ONCE, &[&STORAGE_ID_KEY, &fresh.as_str()])?;
    let id: String = client.query_one(GET_META, &[&STORAGE_ID_KEY])?.get(0);
    Ok(StorageId::new(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Features of PostgreSQL that CockroachDB or YugabyteDB lack (or that
    /// would tie the schema to one server): none may appear in a statement.
    const NOT_PORTABLE: &[&str] = &[
        "LISTEN",
        "NOTIFY",
        "PG_ADVISORY",
        "PG_TRY_ADVISORY",
        "LOCK TABLE",
        "CREATE EXTENSION",
        "CREATE FUNCTION",
        "CREATE OR REPLACE",
        "CREATE TRIGGER",
        "CREATE RULE",
        "DO $$",
        "LANGUAGE",
        "UNLOGGED",
        "INHERITS",
        "MATERIALIZED",
        "EXCLUDE USING",
        "TABLESPACE",
        "CTID",
        "XMIN",
        "OID",
        "::REGCLASS",
        "PG_CATALOG",
        "SKIP LOCKED",
        "TSVECTOR",
        "GENERATED ALWAYS",
    ];

    /// Names that begin a family of PostgreSQL-only functions or catalogs.
    const NOT_PORTABLE_PREFIXES: &[&str] = &["PG_ADVISORY", "PG_TRY_ADVISORY", "PG_CATALOG", "PG_"];

    /// The first feature of `sql` that is not portable, if any.
    fn not_portable(sql: &str) -> Option<&'static str> {
        let upper = sql.to_uppercase();
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let starts_word = |at: usize| upper[..at].chars().next_back().is_none_or(|c| !ident(c));
        let ends_word = |end: usize| upper[end..].chars().next().is_none_or(|c| !ident(c));
        let word = NOT_PORTABLE
            .iter()
            .find(|f| upper.match_indices(*f).any(|(at, _)| starts_word(at) && ends_word(at + f.len())));
        let prefix = NOT_PORTABLE_PREFIXES.iter().find(|f| upper.match_indices(*f).any(|(at, _)| starts_word(at)));
        word.or(prefix).copied()
    }

    #[test]
    fn portable_sql() {
        for sql in MIGRATIONS.iter().chain(STATEMENTS) {
            assert_eq!(not_portable(sql), None, "not portable SQL: {sql}");
        }
    }

    #[test]
    fn the_portability_check_finds_what_it_looks_for() {
        assert_eq!(not_portable("SELECT pg_advisory_lock(1)"), Some("PG_ADVISORY"));
        assert_eq!(not_portable("LISTEN changes"), Some("LISTEN"));
        assert_eq!(not_portable("SELECT * FROM t FOR UPDATE SKIP LOCKED"), Some("SKIP LOCKED"));
        assert_eq!(not_portable("CREATE UNLOGGED TABLE t (a INT)"), Some("UNLOGGED"));
        assert_eq!(not_portable("SELECT xmin FROM t"), Some("XMIN"));
        assert_eq!(not_portable("CREATE TABLE t (listener TEXT PRIMARY KEY, oidc TEXT)"), None);
    }

    #[test]
    fn the_password_is_not_shown() {
        assert_eq!(redact("postgres://meridian:s3cret@db:5432/m"), "postgres://meridian@db:5432/m");
        assert_eq!(redact("postgres://meridian@db/m"), "postgres://meridian@db/m");
        assert_eq!(redact("host=db user=x"), "host=db user=x");
    }
}
