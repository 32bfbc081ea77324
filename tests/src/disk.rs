//! A failing disk, for storage-integrity tests and the chaos campaign:
//! bytes flipped in a node's SQLite file behind its back.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use meridian_protocol::ids::DocumentId;

/// The database, opened as any tool would (waiting out the node's writes).
pub fn open(db: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// A chunk as it was left corrupt: its row and its bytes.
#[derive(Debug, Clone)]
pub struct Corrupted {
    pub seq: i64,
    pub data: Vec<u8>,
}

/// Flips a byte in the middle of `doc`'s first chunk (its snapshot, if it
/// has one).
pub fn flip_a_byte(db: &Path, doc: DocumentId) -> Result<Corrupted> {
    let conn = open(db)?;
    let (seq, mut data): (i64, Vec<u8>) = conn.query_row(
        "SELECT seq, data FROM chunks WHERE doc_id = ?1 ORDER BY kind <> 'snapshot', seq LIMIT 1",
        [doc.as_bytes().as_slice()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let middle = data.len() / 2;
    data[middle] ^= 0x40;
    conn.execute("UPDATE chunks SET data = ?1 WHERE seq = ?2", rusqlite::params![data, seq])?;
    Ok(Corrupted { seq, data })
}

/// Whether the corrupted chunk is still stored as it was left (not
/// quarantined, not replaced by a compaction).
pub fn still_there(db: &Path, corrupted: &Corrupted) -> Result<bool> {
    let stored: Option<Vec<u8>> =
        open(db)?.query_row("SELECT data FROM chunks WHERE seq = ?1", [corrupted.seq], |r| r.get(0)).ok();
    Ok(stored.as_ref() == Some(&corrupted.data))
}
