//! The SQLite store's schema, as its migrations.

/// Schema migrations: entry `i` upgrades a database from version `i` to
/// version `i + 1`. Append new entries; never edit a released one.
pub(super) const MIGRATIONS: &[&str] = &[
    // Version 1: the initial schema.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) STRICT;
     CREATE TABLE chunks (
         seq    INTEGER PRIMARY KEY AUTOINCREMENT,
         doc_id BLOB NOT NULL CHECK (length(doc_id) = 16),
         kind   TEXT NOT NULL CHECK (kind IN ('snapshot', 'incremental')),
         data   BLOB NOT NULL
     ) STRICT;
     CREATE INDEX chunks_by_doc ON chunks (doc_id, seq);
     CREATE TABLE sync_states (
         doc_id          BLOB NOT NULL CHECK (length(doc_id) = 16),
         peer_storage_id TEXT NOT NULL,
         state           BLOB NOT NULL,
         PRIMARY KEY (doc_id, peer_storage_id)
     ) STRICT;",
    // Version 2: who created each document (a token's `sub`), and when.
    "CREATE TABLE creators (
         doc_id     BLOB PRIMARY KEY CHECK (length(doc_id) = 16),
         subject    TEXT NOT NULL,
         created_at INTEGER NOT NULL
     ) STRICT;",
    // Version 3: a hub's control state (ControlStore).
    "CREATE TABLE leases (
         name       TEXT PRIMARY KEY,
         holder     TEXT NOT NULL,
         expires_ms INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE homes (
         doc_id      BLOB PRIMARY KEY CHECK (length(doc_id) = 16),
         edge        TEXT NOT NULL,
         addr        TEXT,
         fingerprint TEXT,
         since_ms    INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE pins (
         doc_id BLOB PRIMARY KEY CHECK (length(doc_id) = 16),
         edge   TEXT,
         at_ms  INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE edge_reports (
         edge   TEXT PRIMARY KEY,
         hub    TEXT NOT NULL,
         at_ms  INTEGER NOT NULL,
         report TEXT NOT NULL
     ) STRICT;
     CREATE TABLE revocations (
         key TEXT PRIMARY KEY,
         jti TEXT,
         sub TEXT,
         at  INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE auth_keys (
         key_id TEXT PRIMARY KEY,
         pem    TEXT NOT NULL,
         at_ms  INTEGER NOT NULL
     ) STRICT;",
    // Version 5: chunks that failed their check on load, kept for
    // inspection and never served.
    "CREATE TABLE quarantine (
         seq    INTEGER PRIMARY KEY,
         doc_id BLOB NOT NULL,
         kind   TEXT NOT NULL,
         data   BLOB NOT NULL,
         reason TEXT NOT NULL,
         at     INTEGER NOT NULL
     ) STRICT;",
];
