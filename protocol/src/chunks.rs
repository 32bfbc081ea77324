//! How many operations automerge chunks hold, read from their column
//! metadata and one or two columns, without loading them: what a message
//! would cost before the engine pays it. A saved document of 1.2 KB can
//! hold a million operations (run-length encoding) and take seconds to
//! load; a compressed change can inflate a thousandfold. The engine refuses
//! such messages from clients before anything is loaded
//! (`EngineConfig::max_ops_per_message`, `max_ops_per_byte`).
//!
//! The count is the length of the operation columns `insert` (booleans)
//! and `action` (run-length encoded integers), whichever is longer: every
//! operation has an action, and an encoder cannot hide operations from
//! both. Compressed columns and changes are inflated up to a limit.

use std::io::Read;

/// The four bytes every chunk starts with.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Column ids (spec >> 4) of the counted operation columns, and types.
const INSERT_COLUMN: (u32, u32) = (3, 4);
const ACTION_COLUMN: (u32, u32) = (4, 2);
const DEFLATE_BIT: u32 = 0b1000;

/// Why the operations of a chunk could not be counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CountError {
    #[error("truncated or malformed automerge chunk")]
    Malformed,
    #[error("not an automerge chunk (bad magic bytes)")]
    BadMagic,
    #[error("unknown automerge chunk type {0}")]
    UnknownType(u8),
    #[error("compressed data inflating past {0} bytes")]
    Inflates(usize),
}

/// The operations in every chunk of `chunks` (each element may hold
/// several chunks back to back). Compressed data may inflate to at most
/// `inflate_limit` bytes per column or change.
pub fn count_ops<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, inflate_limit: usize) -> Result<u64, CountError> {
    let mut total = 0u64;
    for bytes in chunks {
        let mut r = Reader(bytes);
        while !r.0.is_empty() {
            total = total.saturating_add(one_chunk(&mut r, inflate_limit)?);
        }
    }
    Ok(total)
}

/// Checks stored bytes (chunks back to back) as automerge will when it
/// loads them: magic bytes, lengths, and each chunk's checksum (the first
/// four bytes of the SHA-256 of its type, length and body; for a compressed
/// change, of the change inflated). A flipped bit anywhere in a chunk fails
/// it. `Ok`: how many chunks. Costs one SHA-256 pass (and an inflate of
/// compressed changes, at most `inflate_limit` bytes each); nothing is
/// parsed further.
pub fn verify(data: &[u8], inflate_limit: usize) -> Result<usize, VerifyError> {
    let mut r = Reader(data);
    let mut chunks = 0;
    while !r.0.is_empty() {
        let at = data.len() - r.0.len();
        let fail = |why: &'static str| VerifyError { at, why };
        if r.take(4).map_err(|_| fail("truncated"))? != MAGIC {
            return Err(fail("not an automerge chunk (bad magic bytes)"));
        }
        let checksum = r.take(4).map_err(|_| fail("truncated"))?;
        let kind = r.byte().map_err(|_| fail("truncated"))?;
        let len = r.len().map_err(|_| fail("truncated"))?;
        let body = r.take(len).map_err(|_| fail("shorter than its header says"))?;
        let sum = match kind {
            0 | 1 | 3 => chunk_checksum(kind, body),
            2 => chunk_checksum(1, &inflate(body, inflate_limit).map_err(|_| fail("compressed change unreadable"))?),
            _ => return Err(fail("unknown chunk type")),
        };
        if sum != checksum {
            return Err(fail("checksum mismatch"));
        }
        chunks += 1;
    }
    Ok(chunks)
}

/// Why stored bytes are not sound automerge chunks: where (the offset of the
/// chunk) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} (chunk at byte {at})")]
pub struct VerifyError {
    pub at: usize,
    pub why: &'static str,
}

fn chunk_checksum(kind: u8, body: &[u8]) -> [u8; 4] {
    use sha2::Digest;
    let mut header = vec![kind];
    let mut n = body.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            header.push(byte);
            break;
        }
        header.push(byte | 0x80);
    }
    let mut hasher = sha2::Sha256::new();
    hasher.update(&header);
    hasher.update(body);
    let hash = hasher.finalize();
    [hash[0], hash[1], hash[2], hash[3]]
}

fn one_chunk(r: &mut Reader<'_>, inflate_limit: usize) -> Result<u64, CountError> {
    if r.take(4)? != MAGIC {
        return Err(CountError::BadMagic);
    }
    r.take(4)?; // checksum
    let kind = r.byte()?;
    let len = r.len()?;
    let mut body = Reader(r.take(len)?);
    match kind {
        0 => document(&mut body, inflate_limit),
        1 => change(&mut body, inflate_limit),
        2 => {
            let inflated = inflate(body.0, inflate_limit)?;
            change(&mut Reader(&inflated), inflate_limit)
        }
        3 => bundle(&mut body, inflate_limit),
        other => Err(CountError::UnknownType(other)),
    }
}

fn document(r: &mut Reader<'_>, limit: usize) -> Result<u64, CountError> {
    r.actors()?;
    r.hashes()?;
    let change_columns = r.columns()?;
    let op_columns = r.columns()?;
    r.take(total_len(&change_columns)?)?;
    let data = r.take(total_len(&op_columns)?)?;
    ops(&op_columns, data, limit)
}

fn change(r: &mut Reader<'_>, limit: usize) -> Result<u64, CountError> {
    r.hashes()?; // dependencies
    r.bytes()?; // actor
    r.uleb()?; // seq
    r.uleb()?; // start op
    r.uleb()?; // time (signed, same length)
    r.bytes()?; // message
    r.actors()?;
    let op_columns = r.columns()?;
    let data = r.take(total_len(&op_columns)?)?;
    ops(&op_columns, data, limit)
}

fn bundle(r: &mut Reader<'_>, limit: usize) -> Result<u64, CountError> {
    r.hashes()?;
    r.actors()?;
    let change_columns = r.columns()?;
    r.take(total_len(&change_columns)?)?;
    let op_columns = r.columns()?;
    let data = r.take(total_len(&op_columns)?)?;
    ops(&op_columns, data, limit)
}

fn total_len(columns: &[(u32, usize)]) -> Result<usize, CountError> {
    columns.iter().try_fold(0usize, |sum, (_, len)| sum.checked_add(*len)).ok_or(CountError::Malformed)
}

/// The length of the longest counted operation column.
fn ops(columns: &[(u32, usize)], data: &[u8], limit: usize) -> Result<u64, CountError> {
    let mut at = 0;
    let mut count = 0u64;
    for &(spec, len) in columns {
        let column = data.get(at..at + len).ok_or(CountError::Malformed)?;
        at += len;
        let kind = (spec >> 4, spec & 0b111);
        if kind != INSERT_COLUMN && kind != ACTION_COLUMN {
            continue;
        }
        let inflated;
        let column = if spec & DEFLATE_BIT != 0 {
            inflated = inflate(column, limit)?;
            &inflated[..]
        } else {
            column
        };
        let n = if kind == INSERT_COLUMN { booleans(column)? } else { run_length(column)? };
        count = count.max(n);
    }
    Ok(count)
}

/// A boolean column: alternating run lengths (false first).
fn booleans(column: &[u8]) -> Result<u64, CountError> {
    let mut r = Reader(column);
    let mut n = 0u64;
    while !r.0.is_empty() {
        n = n.saturating_add(r.uleb()?);
    }
    Ok(n)
}

/// A run-length encoded integer column: a run of one repeated value
/// (positive count), literal values (negative count), or nulls (zero, then
/// their count).
fn run_length(column: &[u8]) -> Result<u64, CountError> {
    let mut r = Reader(column);
    let mut n = 0u64;
    while !r.0.is_empty() {
        let run = r.sleb()?;
        if run > 0 {
            r.uleb()?;
            n = n.saturating_add(run as u64);
        } else if run < 0 {
            let literals = run.unsigned_abs();
            for _ in 0..literals {
                r.uleb()?;
            }
            n = n.saturating_add(literals);
        } else {
            n = n.saturating_add(r.uleb()?);
        }
    }
    Ok(n)
}

fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, CountError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::DeflateDecoder::new(data).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|_| CountError::Malformed)?;
    if out.len() > limit {
        return Err(CountError::Inflates(limit));
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CountError> {
        if n > self.0.len() {
            return Err(CountError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, CountError> {
        Ok(self.take(1)?[0])
    }

    fn uleb(&mut self) -> Result<u64, CountError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f).checked_shl(shift).ok_or(CountError::Malformed)?;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CountError::Malformed)
    }

    fn sleb(&mut self) -> Result<i64, CountError> {
        let mut value = 0i64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift >= 64 {
                return Err(CountError::Malformed);
            }
            value |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Ok(value);
            }
        }
    }

    fn len(&mut self) -> Result<usize, CountError> {
        usize::try_from(self.uleb()?).map_err(|_| CountError::Malformed)
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self) -> Result<&'a [u8], CountError> {
        let n = self.len()?;
        self.take(n)
    }

    /// A count of length-prefixed actor ids.
    fn actors(&mut self) -> Result<(), CountError> {
        for _ in 0..self.uleb()? {
            self.bytes()?;
        }
        Ok(())
    }

    /// A count of 32-byte change hashes.
    fn hashes(&mut self) -> Result<(), CountError> {
        let n = self.len()?;
        self.take(n.checked_mul(32).ok_or(CountError::Malformed)?)?;
        Ok(())
    }

    /// Column metadata: a count of (spec, length) pairs.
    fn columns(&mut self) -> Result<Vec<(u32, usize)>, CountError> {
        let n = self.len()?;
        let mut columns = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let spec = u32::try_from(self.uleb()?).map_err(|_| CountError::Malformed)?;
            columns.push((spec, self.len()?));
        }
        Ok(columns)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn verify_finds_every_flipped_byte() {
        use automerge::transaction::Transactable;
        let mut doc = automerge::AutoCommit::new();
        for i in 0..50 {
            doc.put(automerge::ROOT, format!("k{i}"), "x".repeat(i * 40)).unwrap();
            doc.commit();
        }
        let snapshot = doc.save();
        doc.put(automerge::ROOT, "big", "y".repeat(5000)).unwrap();
        doc.commit();
        doc.put(automerge::ROOT, "small", 1).unwrap();
        let changes = doc.save_incremental();
        assert!(changes.len() > 256, "a compressed change among them");
        for bytes in [&snapshot, &changes] {
            let n = verify(bytes, 1 << 20).unwrap();
            assert!(n >= 1);
            let mut both = snapshot.clone();
            both.extend_from_slice(bytes);
            assert_eq!(verify(&both, 1 << 20), Ok(n + 1));
            for at in (0..bytes.len()).step_by(7) {
                let mut bad = bytes.clone();
                bad[at] ^= 0x10;
                assert!(verify(&bad, 1 << 20).is_err(), "a flipped byte at {at} of {} went unseen", bytes.len());
            }
            assert!(verify(&bytes[..bytes.len() - 1], 1 << 20).is_err(), "cut short");
        }
        assert_eq!(verify(&[], 1 << 20), Ok(0));
    }

    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    use super::*;

    const LIMIT: usize = 64 << 20;

    #[test]
    fn a_saved_document_and_its_changes_count_their_operations() {
        let mut doc = AutoCommit::new();
        let text = doc.put_object(ROOT, "text", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, "hello world").unwrap();
        doc.commit();
        doc.put(ROOT, "n", 1).unwrap();
        doc.put(ROOT, "m", 2).unwrap();
        doc.commit();
        // 1 object, 11 characters, 2 puts.
        assert_eq!(count_ops([&doc.save()[..]], LIMIT), Ok(14));
        let changes: Vec<Vec<u8>> = doc.get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()).collect();
        assert_eq!(count_ops(changes.iter().map(Vec::as_slice), LIMIT), Ok(14));
        let incremental = doc.save_incremental();
        assert!(count_ops([&incremental[..]], LIMIT).is_ok());
        assert_eq!(count_ops([&[][..]], LIMIT), Ok(0));
    }

    #[test]
    fn a_small_saved_document_of_a_million_operations_is_seen_as_such() {
        let mut doc = AutoCommit::new();
        let text = doc.put_object(ROOT, "t", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, &"a".repeat(1_000_000)).unwrap();
        let saved = doc.save();
        assert!(saved.len() < 4096, "{} bytes", saved.len());
        assert_eq!(count_ops([&saved[..]], LIMIT), Ok(1_000_001));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "k", "v").unwrap();
        let saved = doc.save();
        for cut in 0..saved.len() {
            let _ = count_ops([&saved[..cut]], LIMIT);
        }
        let mut flipped = saved.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = count_ops([&flipped[..]], LIMIT);
            flipped[i] ^= 0xff;
        }
        assert_eq!(count_ops([&b"not a chunk"[..]], LIMIT), Err(CountError::BadMagic));
    }
}
