//! Identifiers as they appear on the wire: document ids, `automerge:` URLs,
//! peer ids, storage ids and per-engine connection ids.

use std::fmt;
use std::str::FromStr;

use automerge::ChangeHash;
use rand::{Rng, RngExt};

/// Why a string could not be parsed into an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("not a valid id (bs58check): {0}")]
    Bs58(String),
    #[error("document id must be 16 bytes, got {0}")]
    DocumentIdLength(usize),
    #[error("change hash must be 32 bytes, got {0}")]
    HashLength(usize),
    #[error("not an automerge URL (expected `automerge:<id>`): {0}")]
    NotAnAutomergeUrl(String),
}

/// A document id: 16 random bytes, written as bs58check (about 28 chars).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

impl DocumentId {
    /// A fresh UUIDv4-shaped id drawn from the caller's RNG (the engine never
    /// uses a global RNG, so simulations stay reproducible).
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut bytes: [u8; 16] = rng.random();
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(bytes)
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn url(&self) -> AutomergeUrl {
        AutomergeUrl { document_id: *self, heads: None }
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        id_cache::with_encoded(self, |s| f.write_str(s))
    }
}

/// bs58check costs two SHA-256 per document id written or read, and every
/// message names its document: it was a quarter of the edge's instructions
/// per change in a fan-out (`cargo xtask bench cost`). Each thread keeps the
/// ids it wrote and read last, both ways (bounded: emptied when full).
mod id_cache {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::DocumentId;

    const CAPACITY: usize = 4096;

    thread_local! {
        static ENCODED: RefCell<HashMap<DocumentId, Rc<str>>> = RefCell::new(HashMap::new());
        static DECODED: RefCell<HashMap<Rc<str>, DocumentId>> = RefCell::new(HashMap::new());
    }

    pub(super) fn with_encoded<R>(id: &DocumentId, f: impl FnOnce(&str) -> R) -> R {
        let cached = ENCODED.with(|c| c.borrow().get(id).cloned());
        let s = match cached {
            Some(s) => s,
            None => {
                let s: Rc<str> = bs58::encode(id.0).with_check().into_string().into();
                remember(*id, &s);
                s
            }
        };
        f(&s)
    }

    pub(super) fn decoded(s: &str) -> Option<DocumentId> {
        DECODED.with(|c| c.borrow().get(s).copied())
    }

    /// An id and the text it encodes to (both ways).
    pub(super) fn remember(id: DocumentId, s: &Rc<str>) {
        ENCODED.with(|c| insert(&mut c.borrow_mut(), id, s.clone()));
        remember_decoded(s, id);
    }

    /// A text that decoded to `id` (only valid ones are remembered).
    pub(super) fn remember_decoded(s: &Rc<str>, id: DocumentId) {
        DECODED.with(|c| insert(&mut c.borrow_mut(), s.clone(), id));
    }

    fn insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(k, v);
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

impl FromStr for DocumentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if let Some(id) = id_cache::decoded(s) {
            return Ok(id);
        }
        let bytes = decode_bs58check(s)?;
        let arr: [u8; 16] = bytes.as_slice().try_into().map_err(|_| IdError::DocumentIdLength(bytes.len()))?;
        let id = Self(arr);
        id_cache::remember_decoded(&std::rc::Rc::from(s), id);
        Ok(id)
    }
}

/// In words, never the checksum bytes: what a person fixes is a character
/// of the id.
fn decode_bs58check(s: &str) -> Result<Vec<u8>, IdError> {
    bs58::decode(s).with_check(None).into_vec().map_err(|e| {
        IdError::Bs58(match e {
            bs58::decode::Error::InvalidChecksum { .. } => {
                "its checksum does not match (a character is wrong, missing or extra)".to_owned()
            }
            bs58::decode::Error::InvalidCharacter { character, .. } => {
                format!("`{character}` is not a base58 character (no 0, O, I or l)")
            }
            bs58::decode::Error::NoChecksum => "it is too short".to_owned(),
            other => other.to_string(),
        })
    })
}

/// Encodes a change hash the way heads travel on the wire and in URLs.
pub fn encode_head(hash: &ChangeHash) -> String {
    bs58::encode(hash.0).with_check().into_string()
}

/// Decodes a bs58check head string into a change hash.
pub fn decode_head(s: &str) -> Result<ChangeHash, IdError> {
    let bytes = decode_bs58check(s)?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| IdError::HashLength(bytes.len()))?;
    Ok(ChangeHash(arr))
}

/// `automerge:<documentId>` with optional `#head|head` pinning a version.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AutomergeUrl {
    pub document_id: DocumentId,
    pub heads: Option<Vec<ChangeHash>>,
}

impl fmt::Display for AutomergeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "automerge:{}", self.document_id)?;
        if let Some(heads) = &self.heads {
            let heads: Vec<String> = heads.iter().map(encode_head).collect();
            write!(f, "#{}", heads.join("|"))?;
        }
        Ok(())
    }
}

impl FromStr for AutomergeUrl {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let rest = s.strip_prefix("automerge:").ok_or_else(|| IdError::NotAnAutomergeUrl(s.to_owned()))?;
        let (id, heads) = match rest.split_once('#') {
            Some((id, heads)) => (id, Some(heads)),
            None => (rest, None),
        };
        let heads = match heads {
            Some(h) if !h.is_empty() => Some(h.split('|').map(decode_head).collect::<Result<Vec<_>, _>>()?),
            _ => None,
        };
        Ok(Self { document_id: id.parse()?, heads })
    }
}

/// A peer's self-chosen name (JS uses `peer-xxxxxxxx`); any string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// A random `peer-xxxxxxxx`-style id from the caller's RNG.
    pub fn random(rng: &mut impl Rng) -> Self {
        let n: u32 = rng.random();
        Self(format!("peer-{n:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

/// Identifies one persistent store (a UUID string, created once and kept).
/// Sync states are persisted per remote storage id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageId(String);

impl StorageId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// A random UUIDv4 string from the caller's RNG.
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut b: [u8; 16] = rng.random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        Self(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageId({})", self.0)
    }
}

/// A connection as the engine knows it; allocated by the engine from a
/// per-instance counter, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mistyped_id_is_explained_in_words_without_checksum_bytes() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(20);
        let url = super::DocumentId::random(&mut rng).url().to_string();
        // One character changed (to another base58 one).
        let last = url.chars().last().unwrap_or('1');
        let typo = format!("{}{}", &url[..url.len() - 1], if last == '2' { '3' } else { '2' });
        let e = typo.parse::<super::AutomergeUrl>().unwrap_err().to_string();
        assert!(e.contains("checksum does not match") && !e.contains('['), "{e}");
        let e = format!("{}0", &url[..url.len() - 1]).parse::<super::AutomergeUrl>().unwrap_err().to_string();
        assert!(e.contains("`0` is not a base58 character"), "{e}");
    }

    #[test]
    fn cached_document_ids_read_and_write_as_uncached_ones() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(19);
        // More ids than the cache holds, each written and read twice.
        let ids: Vec<DocumentId> = (0..10_000).map(|_| DocumentId::random(&mut rng)).collect();
        for _ in 0..2 {
            for id in &ids {
                let text = id.to_string();
                assert_eq!(text, bs58::encode(id.0).with_check().into_string());
                assert_eq!(text.parse::<DocumentId>().expect("valid"), *id);
            }
        }
        // A bad checksum is refused even right after the good text was cached.
        let text = ids[0].to_string();
        let mut bad = text.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'2' { b'3' } else { b'2' };
        assert!(String::from_utf8(bad).unwrap().parse::<DocumentId>().is_err());
    }

    use super::*;

    #[test]
    fn document_id_round_trips_through_bs58check() {
        let id = DocumentId::from_bytes([7; 16]);
        let s = id.to_string();
        assert_eq!(s.parse::<DocumentId>().unwrap(), id);
    }

    #[test]
    fn js_document_id_parses() {
        // Generated by @automerge/automerge-repo 2.5.6 `repo.create()`.
        let id: DocumentId = "DxtrkqpSm4nNZd5wkhmxqjMk34T".parse().unwrap();
        assert_eq!(id.to_string(), "DxtrkqpSm4nNZd5wkhmxqjMk34T");
    }

    #[test]
    fn bad_checksum_is_rejected() {
        assert!("DxtrkqpSm4nNZd5wkhmxqjMk34U".parse::<DocumentId>().is_err());
        assert!("".parse::<DocumentId>().is_err());
    }

    #[test]
    fn url_with_heads_round_trips() {
        let url = AutomergeUrl { document_id: DocumentId::from_bytes([1; 16]), heads: Some(vec![ChangeHash([9; 32])]) };
        let s = url.to_string();
        assert!(s.starts_with("automerge:"));
        assert_eq!(s.parse::<AutomergeUrl>().unwrap(), url);
        assert!("automerge".parse::<AutomergeUrl>().is_err());
    }
}
