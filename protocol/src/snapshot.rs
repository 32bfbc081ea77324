//! Reading a stored snapshot without loading it.
//!
//! Loading a large document costs automerge far more than reading its bytes
//! (about 0.5 s for a 300,000-operation text, against milliseconds to read
//! 800 KiB from SQLite). A peer that has nothing of the document needs only
//! those bytes and their heads: the engine sends it the stored snapshot
//! before it loads the document itself (`Engine`, "a fresh peer gets the
//! stored snapshot first"). [`document_heads`] finds the heads.
//!
//! The layout is automerge's binary format: a chunk is the magic bytes, a
//! checksum (the first 4 bytes of the SHA-256 of the chunk type, the
//! length and the contents), the chunk type (0: a whole document), the
//! contents' length (unsigned LEB128) and the contents. A document chunk's
//! contents start with its actors (a count, then each as a length and the
//! bytes) and its heads (a count, then 32 bytes each).

use automerge::ChangeHash;
use sha2::{Digest, Sha256};

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const DOCUMENT_CHUNK: u8 = 0;
const HASH_LEN: usize = 32;

/// The heads of `bytes` when they are exactly one whole-document chunk
/// with a valid checksum (what `Automerge::save` writes, and what a
/// compacted document is stored as); `None` for anything else (changes,
/// a snapshot followed by incremental chunks, damaged bytes).
pub fn document_heads(bytes: &[u8]) -> Option<Vec<ChangeHash>> {
    let rest = bytes.strip_prefix(&MAGIC)?;
    let (checksum, rest) = rest.split_first_chunk::<4>()?;
    let (&chunk_type, rest) = rest.split_first()?;
    if chunk_type != DOCUMENT_CHUNK {
        return None;
    }
    let (len, contents) = uleb128(rest)?;
    if usize::try_from(len).ok()? != contents.len() {
        return None;
    }
    let mut hasher = Sha256::new();
    hasher.update([chunk_type]);
    hasher.update(&rest[..rest.len() - contents.len()]);
    hasher.update(contents);
    if hasher.finalize()[..4] != checksum[..] {
        return None;
    }
    let (actors, mut at) = uleb128(contents)?;
    for _ in 0..actors {
        let (len, rest) = uleb128(at)?;
        at = rest.get(usize::try_from(len).ok()?..)?;
    }
    let (count, mut at) = uleb128(at)?;
    let mut heads = Vec::new();
    for _ in 0..count {
        let (hash, rest) = at.split_first_chunk::<HASH_LEN>()?;
        heads.push(ChangeHash(*hash));
        at = rest;
    }
    heads.sort();
    Some(heads)
}

/// An unsigned LEB128 number and the bytes after it; `None` when it is cut
/// short or does not fit in 64 bits.
fn uleb128(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && part > 1 {
            return None;
        }
        value |= part << shift;
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ObjType, ROOT};

    /// Two authors editing concurrently: a document with two heads.
    fn forked() -> Automerge {
        let mut a = Automerge::new().with_actor(ActorId::from(b"alice".as_slice()));
        let mut tx = a.transaction();
        let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
        tx.splice_text(&text, 0, 0, "hello").unwrap();
        tx.commit();
        let mut b = a.fork().with_actor(ActorId::from(b"bob".as_slice()));
        let mut tx = a.transaction();
        tx.splice_text(&text, 5, 0, " world").unwrap();
        tx.commit();
        let mut tx = b.transaction();
        tx.put(ROOT, "title", "greeting").unwrap();
        tx.commit();
        a.merge(&mut b).unwrap();
        a
    }

    #[test]
    fn heads_of_saved_documents_are_automerges() {
        let doc = forked();
        assert_eq!(doc.get_heads().len(), 2);
        let mut one = Automerge::new();
        let mut tx = one.transaction();
        tx.put(ROOT, "k", 1).unwrap();
        tx.commit();
        for doc in [doc, one, Automerge::new()] {
            let saved = doc.save();
            assert_eq!(document_heads(&saved), Some(doc.get_heads()));
            assert_eq!(document_heads(&saved), Some(Automerge::load(&saved).unwrap().get_heads()));
        }
    }

    #[test]
    fn anything_but_one_whole_document_is_refused() {
        let mut doc = forked();
        let saved = doc.save();
        // A snapshot followed by an incremental chunk.
        let before = doc.get_heads();
        let mut tx = doc.transaction();
        tx.put(ROOT, "more", true).unwrap();
        tx.commit();
        let mut with_more = saved.clone();
        with_more.extend(doc.save_after(&before));
        assert_eq!(document_heads(&with_more), None);
        // Changes alone.
        assert_eq!(document_heads(&doc.save_after(&[])), None);
        // Cut short, or one byte flipped anywhere: the checksum or the layout fails.
        for cut in [0, 3, 8, 9, saved.len() / 2, saved.len() - 1] {
            assert_eq!(document_heads(&saved[..cut]), None, "cut at {cut}");
        }
        for i in 0..saved.len() {
            let mut damaged = saved.clone();
            damaged[i] ^= 0x10;
            assert_eq!(document_heads(&damaged), None, "byte {i} flipped");
        }
        assert_eq!(document_heads(&[]), None);
    }

    #[test]
    fn leb128_edges() {
        assert_eq!(uleb128(&[0x00]), Some((0, &[][..])));
        assert_eq!(uleb128(&[0xe5, 0x8e, 0x26, 7]), Some((624_485, &[7][..])));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(uleb128(&max), Some((u64::MAX, &[][..])));
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(uleb128(&too_big), None);
        assert_eq!(uleb128(&[0x80]), None);
    }
}
