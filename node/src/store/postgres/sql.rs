//! Every SQL statement of the PostgreSQL store: the schema migrations and
//! the statements the store runs, kept to portable SQL (the parent's
//! `portable_sql` test checks each against PostgreSQL-only features).

/// Schema migrations: entry `i` brings a database from version `i` to
/// `i + 1`. Append new entries; never edit a released one. Each is applied
/// in a transaction and is idempotent (`IF NOT EXISTS`), so hubs starting
/// at once may both run it.
pub(crate) const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE IF NOT EXISTS meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS chunks (
         seq    BIGSERIAL PRIMARY KEY,
         doc_id BYTEA NOT NULL CHECK (length(doc_id) = 16),
         kind   TEXT NOT NULL CHECK (kind IN ('snapshot', 'incremental')),
         data   BYTEA NOT NULL
     );
     CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id, seq);
     CREATE TABLE IF NOT EXISTS sync_states (
         doc_id          BYTEA NOT NULL CHECK (length(doc_id) = 16),
         peer_storage_id TEXT NOT NULL,
         state           BYTEA NOT NULL,
         PRIMARY KEY (doc_id, peer_storage_id)
     );
     CREATE TABLE IF NOT EXISTS creators (
         doc_id     BYTEA PRIMARY KEY CHECK (length(doc_id) = 16),
         subject    TEXT NOT NULL,
         created_at BIGINT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS leases (
         name       TEXT PRIMARY KEY,
         holder     TEXT NOT NULL,
         expires_ms BIGINT NOT NULL
     );",
    // Version 2: the control state (ControlStore).
    "CREATE TABLE IF NOT EXISTS homes (
         doc_id      BYTEA PRIMARY KEY CHECK (length(doc_id) = 16),
         edge        TEXT NOT NULL,
         addr        TEXT,
         fingerprint TEXT,
         since_ms    BIGINT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS pins (
         doc_id BYTEA PRIMARY KEY CHECK (length(doc_id) = 16),
         edge   TEXT,
         at_ms  BIGINT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS edge_reports (
         edge   TEXT PRIMARY KEY,
         hub    TEXT NOT NULL,
         at_ms  BIGINT NOT NULL,
         report TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS revocations (
         key TEXT PRIMARY KEY,
         jti TEXT,
         sub TEXT,
         at  BIGINT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS auth_keys (
         key_id TEXT PRIMARY KEY,
         pem    TEXT NOT NULL,
         at_ms  BIGINT NOT NULL
     );",
    // Version 3: the change feed's outbox is the chunks table (rows not on
    // the feed yet), and the heads it carried of each document.
    "ALTER TABLE chunks ADD COLUMN IF NOT EXISTS fed BOOLEAN NOT NULL DEFAULT FALSE;
     CREATE INDEX IF NOT EXISTS chunks_unfed ON chunks (fed, seq);
     CREATE TABLE IF NOT EXISTS feed_heads (
         doc_id BYTEA PRIMARY KEY CHECK (length(doc_id) = 16),
         heads  BYTEA NOT NULL
     );",
    // Version 4: chunks that failed their check on load, kept for
    // inspection and never served.
    "CREATE TABLE IF NOT EXISTS quarantine (
         seq    BIGINT PRIMARY KEY,
         doc_id BYTEA NOT NULL,
         kind   TEXT NOT NULL,
         data   BYTEA NOT NULL,
         reason TEXT NOT NULL,
         at_ms  BIGINT NOT NULL
     );",
];

pub(super) const QUARANTINE: &str = "INSERT INTO quarantine (seq, doc_id, kind, data, reason, at_ms) \
     SELECT seq, doc_id, kind, data, $2, $3 FROM chunks WHERE seq = $1 ON CONFLICT (seq) DO NOTHING";
pub(super) const DELETE_CHUNK: &str = "DELETE FROM chunks WHERE seq = $1";
/// Every chunk of a document to the quarantine (a replaced copy).
pub(super) const QUARANTINE_DOC: &str = "INSERT INTO quarantine (seq, doc_id, kind, data, reason, at_ms) \
     SELECT seq, doc_id, kind, data, $2, $3 FROM chunks WHERE doc_id = $1 ON CONFLICT (seq) DO NOTHING";
/// The next chunks' sizes (a scrub step keeps to its byte budget before
/// reading any data), then the data of those that fit.
pub(super) const SCRUB_SIZES: &str = "SELECT seq, octet_length(data) FROM chunks WHERE seq > $1 ORDER BY seq LIMIT $2";
pub(super) const SCRUB: &str = "SELECT seq, doc_id, data FROM chunks WHERE seq > $1 AND seq <= $2 ORDER BY seq";
pub(super) const CREATE_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY)";
pub(super) const MAX_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations";
pub(super) const RECORD_VERSION: &str =
    "INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT (version) DO NOTHING";
pub(super) const GET_META: &str = "SELECT value FROM meta WHERE key = $1";
pub(super) const PUT_META: &str =
    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";
pub(super) const PUT_META_ONCE: &str = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
pub(super) const LOAD_DOC: &str = "SELECT seq, data FROM chunks WHERE doc_id = $1 \
     ORDER BY CASE WHEN kind = 'snapshot' THEN 0 ELSE 1 END, seq";
pub(super) const INSERT_CHUNK: &str =
    "INSERT INTO chunks (doc_id, kind, data, fed) VALUES ($1, $2, $3, $4) RETURNING seq";
pub(super) const DELETE_COVERED: &str = "DELETE FROM chunks WHERE doc_id = $1 AND seq = ANY($2)";
pub(super) const DELETE_COVERED_FED: &str =
    "DELETE FROM chunks WHERE doc_id = $1 AND seq = ANY($2) AND fed = TRUE RETURNING seq";
pub(super) const DELETE_CHUNKS: &str = "DELETE FROM chunks WHERE doc_id = $1";
pub(super) const DELETE_SYNC_STATES: &str = "DELETE FROM sync_states WHERE doc_id = $1";
pub(super) const LOAD_SYNC_STATE: &str = "SELECT state FROM sync_states WHERE doc_id = $1 AND peer_storage_id = $2";
pub(super) const PUT_SYNC_STATE: &str = "INSERT INTO sync_states (doc_id, peer_storage_id, state) VALUES ($1, $2, $3) \
     ON CONFLICT (doc_id, peer_storage_id) DO UPDATE SET state = excluded.state";
pub(super) const DOCUMENT_IDS: &str = "SELECT DISTINCT doc_id FROM chunks ORDER BY doc_id";
pub(super) const BYTES_STORED: &str = "SELECT CAST(COALESCE(SUM(octet_length(data)), 0) AS BIGINT) FROM chunks";
pub(super) const OLDEST_WRITTEN: &str = "SELECT doc_id FROM chunks GROUP BY doc_id ORDER BY MAX(seq) ASC LIMIT $1";
pub(super) const RECORD_CREATOR: &str = "INSERT INTO creators (doc_id, subject, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT (doc_id) DO NOTHING";
pub(super) const CREATOR: &str = "SELECT subject, created_at FROM creators WHERE doc_id = $1";
pub(super) const TAKE_LEASE: &str = "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
     WHERE leases.holder = excluded.holder OR leases.expires_ms < $4 \
     RETURNING holder";
pub(super) const LEASE_HOLDER: &str = "SELECT holder, expires_ms FROM leases WHERE name = $1";
/// The lease row, locked until the transaction ends (a fenced write).
pub(super) const LOCK_LEASE: &str = "SELECT holder, expires_ms FROM leases WHERE name = $1 FOR UPDATE";
pub(super) const HOMES: &str = "SELECT doc_id, edge, addr, fingerprint, since_ms FROM homes ORDER BY doc_id";
pub(super) const PUT_HOME: &str = "INSERT INTO homes (doc_id, edge, addr, fingerprint, since_ms) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (doc_id) DO UPDATE SET edge = excluded.edge, addr = excluded.addr, \
     fingerprint = excluded.fingerprint, since_ms = excluded.since_ms";
pub(super) const DELETE_HOME: &str = "DELETE FROM homes WHERE doc_id = $1";
pub(super) const PINS: &str = "SELECT doc_id, edge, at_ms FROM pins ORDER BY doc_id";
pub(super) const PUT_PIN: &str = "INSERT INTO pins (doc_id, edge, at_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (doc_id) DO UPDATE SET edge = excluded.edge, at_ms = excluded.at_ms";
pub(super) const DELETE_PIN: &str = "DELETE FROM pins WHERE doc_id = $1";
pub(super) const PUT_REPORT: &str = "INSERT INTO edge_reports (edge, hub, at_ms, report) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (edge) DO UPDATE SET hub = excluded.hub, at_ms = excluded.at_ms, report = excluded.report";
pub(super) const REPORTS_SINCE: &str =
    "SELECT edge, hub, at_ms, report FROM edge_reports WHERE at_ms >= $1 ORDER BY edge";
pub(super) const AUTH_KEYS: &str = "SELECT key_id, pem, at_ms FROM auth_keys ORDER BY at_ms, key_id";
pub(super) const ADD_AUTH_KEY: &str =
    "INSERT INTO auth_keys (key_id, pem, at_ms) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING";
pub(super) const REMOVE_AUTH_KEY: &str = "DELETE FROM auth_keys WHERE key_id = $1";
pub(super) const UNFED_CHUNKS: &str =
    "SELECT seq, doc_id, kind, data FROM chunks WHERE fed = FALSE ORDER BY seq LIMIT $1";
pub(super) const MARK_FED: &str = "UPDATE chunks SET fed = TRUE WHERE seq = ANY($1)";
pub(super) const FED_HEADS: &str = "SELECT heads FROM feed_heads WHERE doc_id = $1";
pub(super) const PUT_FED_HEADS: &str = "INSERT INTO feed_heads (doc_id, heads) VALUES ($1, $2) \
     ON CONFLICT (doc_id) DO UPDATE SET heads = excluded.heads";
pub(super) const REVOCATIONS: &str = "SELECT jti, sub, at FROM revocations ORDER BY at, key";
pub(super) const ADD_REVOCATION: &str = "INSERT INTO revocations (key, jti, sub, at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (key) DO NOTHING";

/// Every statement the store runs besides [`MIGRATIONS`] (checked by the
/// portability test).
#[cfg(test)]
pub(super) const STATEMENTS: &[&str] = &[
    SCRUB_SIZES,
    SCRUB,
    CREATE_MIGRATIONS,
    MAX_VERSION,
    RECORD_VERSION,
    GET_META,
    PUT_META_ONCE,
    PUT_META,
    LOAD_DOC,
    QUARANTINE,
    DELETE_CHUNK,
    QUARANTINE_DOC,
    INSERT_CHUNK,
    DELETE_COVERED,
    DELETE_COVERED_FED,
    DELETE_CHUNKS,
    DELETE_SYNC_STATES,
    LOAD_SYNC_STATE,
    PUT_SYNC_STATE,
    DOCUMENT_IDS,
    BYTES_STORED,
    OLDEST_WRITTEN,
    RECORD_CREATOR,
    CREATOR,
    TAKE_LEASE,
    LOCK_LEASE,
    LEASE_HOLDER,
    HOMES,
    PUT_HOME,
    DELETE_HOME,
    PINS,
    PUT_PIN,
    DELETE_PIN,
    PUT_REPORT,
    REPORTS_SINCE,
    REVOCATIONS,
    ADD_REVOCATION,
    AUTH_KEYS,
    ADD_AUTH_KEY,
    REMOVE_AUTH_KEY,
    UNFED_CHUNKS,
    MARK_FED,
    FED_HEADS,
    PUT_FED_HEADS,
];
