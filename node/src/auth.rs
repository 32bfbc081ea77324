//! Access tokens: standard JWTs signed with EdDSA over Ed25519, so an
//! application's own backend can mint them with ordinary libraries, and
//! nodes verify them offline against the public keys they are given
//! (several at once, for rotation).
//!
//! A token's claims: `sub` (who), `exp`/`nbf`/`iat` (seconds since the Unix
//! epoch), `jti` (its id, for revocation), and the grants: `read` and
//! `write` (lists of document ids, or `"*"` for every document; write
//! implies read), `create` (may create documents) and `admin` (the admin
//! API). The header names the key: `{"alg":"EdDSA","typ":"JWT","kid":…}`,
//! where `kid` is [`key_id`] of the public key.
//!
//! Keys are PEM files: the private key as PKCS#8 (`PRIVATE KEY`), the
//! public key as SubjectPublicKeyInfo (`PUBLIC KEY`), as OpenSSL and
//! Node's `crypto` read and write them.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use meridian_protocol::engine::{Access, DocSet};
use meridian_protocol::ids::DocumentId;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw
/// 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The DER prefix of an Ed25519 private key as PKCS#8 v1 (RFC 8410, what
/// OpenSSL and Node's `crypto` write and read); the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Tokens longer than this are refused before they are decoded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} already exists; remove it first (keys are not overwritten)")]
    Exists { path: String },
    #[error("{path} is not a {what} PEM file")]
    NotPem { path: String, what: &'static str },
    #[error("{path} does not hold an Ed25519 {what}")]
    NotEd25519 { path: String, what: &'static str },
    #[error("could not generate a key")]
    Generate,
}

/// Why a token was refused (also the `reason` label of the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token revoked")]
    Revoked,
}

impl TokenError {
    pub const ALL: [TokenError; 7] = [
        TokenError::Missing,
        TokenError::Malformed,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::Revoked,
    ];

    /// Its label in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Revoked => "revoked",
        }
    }
}

/// Reads a claim's list of documents (`"*"`: every one).
fn parse_docs(items: &[String]) -> Result<DocSet, TokenError> {
    let mut set = DocSet::none();
    for item in items {
        if item == "*" {
            set.insert_all();
        } else {
            set.insert(parse_doc(item).ok_or(TokenError::Malformed)?);
        }
    }
    Ok(set)
}

/// A document id, or an `automerge:` URL naming one.
pub fn parse_doc(s: &str) -> Option<DocumentId> {
    s.strip_prefix("automerge:").unwrap_or(s).parse().ok()
}

/// What a token's claims say, as the wire carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// Documents it may read (`"*"`: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Documents it may read and write (`"*"`: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// A verified token: who it is for and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub sub: String,
    pub jti: String,
    /// Seconds since the Unix epoch at which it expires.
    pub expires: u64,
    /// When it was issued (`iat`), if it says.
    pub issued: Option<u64>,
    pub read: DocSet,
    pub write: DocSet,
    pub create: bool,
    pub admin: bool,
}

impl Grant {
    pub fn may_read(&self, doc: &DocumentId) -> bool {
        self.read.contains(doc) || self.write.contains(doc)
    }

    pub fn may_write(&self, doc: &DocumentId) -> bool {
        self.write.contains(doc)
    }

    /// What the engine lets a connection holding it do. A token without
    /// `sub` is a subject of its own (`jti:…`): tokens that name nobody
    /// cannot take over each other's connections.
    pub fn access(&self) -> Access {
        let subject = if self.sub.is_empty() { format!("jti:{}", self.jti) } else { self.sub.clone() };
        let mut access = Access::client(subject, self.read.clone(), self.write.clone(), self.create);
        access.token_id = self.jti.clone();
        access.issued_at = self.issued;
        access
    }

    /// How long from `now` (seconds since the Unix epoch) it stays valid.
    pub fn valid_for(&self, now: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.expires.saturating_sub(now))
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// A private key that mints tokens.
#[derive(Debug)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
    kid: String,
}

impl SigningKey {
    pub fn from_pem(pem: &str, path: &str) -> Result<Self, KeyError> {
        let der = pem_body(pem, "PRIVATE KEY").ok_or(KeyError::NotPem { path: path.into(), what: "private key" })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| KeyError::NotEd25519 { path: path.into(), what: "private key" })?;
        let kid = key_id(pair.public_key().as_ref());
        Ok(Self { pair, kid })
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        Self::from_pem(&pem, &shown)
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The public key's SubjectPublicKeyInfo PEM.
    pub fn public_pem(&self) -> String {
        public_pem(self.pair.public_key().as_ref())
    }

    /// A signed token with these claims.
    pub fn mint(&self, claims: &Claims) -> String {
        let header = Header { alg: "EdDSA".into(), typ: Some("JWT".into()), kid: Some(self.kid.clone()) };
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(self.pair.sign(signing_input.as_bytes()).as_ref());
        format!("{signing_input}.{signature}")
    }
}

/// A new key pair, written as `auth-private.pem` and `auth-public.pem` in
/// `dir` (created if needed; existing keys are never overwritten).
pub fn keygen(dir: &Path) -> Result<SigningKey, KeyError> {
    let private = dir.join("auth-private.pem");
    let public = dir.join("auth-public.pem");
    for path in [&private, &public] {
        if path.exists() {
            return Err(KeyError::Exists { path: path.display().to_string() });
        }
    }
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeyError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut seed = [0u8; 32];
    SystemRandom::new().fill(&mut seed).map_err(|_| KeyError::Generate)?;
    let mut pkcs8 = PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&seed);
    let pem = pem_wrap("PRIVATE KEY", &pkcs8);
    write_private(&private, &pem).map_err(write_err(&private))?;
    let key = SigningKey::from_pem(&pem, &private.display().to_string())?;
    std::fs::write(&public, key.public_pem()).map_err(write_err(&public))?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(pem.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    std::fs::write(path, pem)
}

/// The public keys a node accepts tokens from, by key id.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    keys: BTreeMap<String, Vec<u8>>,
}

impl Verifier {
    /// Loads `PUBLIC KEY` PEM files (several: key rotation).
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, KeyError> {
        let mut verifier = Verifier::default();
        for path in paths {
            let shown = path.as_ref().display().to_string();
            let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
            verifier.add_pem(&pem, &shown)?;
        }
        Ok(verifier)
    }

    pub fn add_pem(&mut self, pem: &str, path: &str) -> Result<String, KeyError> {
        let der = pem_body(pem, "PUBLIC KEY").ok_or(KeyError::NotPem { path: path.into(), what: "public key" })?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or(KeyError::NotEd25519 { path: path.into(), what: "public key" })?;
        let kid = key_id(raw);
        self.keys.insert(kid.clone(), raw.to_vec());
        Ok(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys it accepts, as `PUBLIC KEY` PEMs (what the hub hands its
    /// edges).
    pub fn public_pems(&self) -> Vec<String> {
        self.keys.values().map(|raw| public_pem(raw)).collect()
    }

    /// Checks `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(h)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Malformed);
        }
        let key = match &header.kid {
            Some(kid) => self.keys.get(kid).ok_or(TokenError::UnknownKey)?,
            None if self.keys.len() == 1 => self.keys.values().next().ok_or(TokenError::UnknownKey)?,
            None => return Err(TokenError::UnknownKey),
        };
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = decode_json(p)?;
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::NotYetValid);
        }
        Ok(Grant {
            read: parse_docs(&claims.read)?,
            write: parse_docs(&claims.write)?,
            sub: claims.sub,
            jti: claims.jti,
            expires: claims.exp,
            issued: claims.iat,
            create: claims.create,
            admin: claims.admin,
        })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// The id of a public key (the `kid` tokens carry): the first 8 bytes of
/// the SHA-256 of its raw 32 bytes, in hex.
pub fn key_id(raw_public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(raw_public_key)[..8])
}

/// A revocation: one token (`jti`), or every token of a subject issued at
/// or before `at` (seconds since the Unix epoch; tokens minted later hold).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Revocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub at: u64,
}

impl Revocation {
    /// It covers the token behind `access` (the engine's rule,
    /// [`Access::revoked_by`], which closes live connections by it too).
    pub fn covers(&self, access: &Access) -> bool {
        access.revoked_by(self.jti.as_deref(), self.sub.as_deref().map(|s| (s, self.at)))
    }
}

/// The public keys a node accepts and the revocations it knows, shared by
/// its listeners and changed while it runs (keys and revocations pushed by
/// the hub).
#[derive(Debug, Default)]
pub struct Keyring {
    inner: std::sync::RwLock<(Verifier, Vec<Revocation>)>,
    /// Ids of the node's own keys (`--auth-public-key`): the hub's list
    /// never removes them.
    own: std::collections::BTreeSet<String>,
}

impl Keyring {
    pub fn new(verifier: Verifier) -> Self {
        let own = verifier.keys.keys().cloned().collect();
        Self { inner: std::sync::RwLock::new((verifier, Vec::new())), own }
    }

    /// [`Verifier::verify`], and refused if revoked.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        let guard = self.inner.read().map_err(|_| TokenError::Malformed)?;
        let grant = guard.0.verify(token, now)?;
        let access = grant.access();
        if guard.1.iter().any(|r| r.covers(&access)) {
            return Err(TokenError::Revoked);
        }
        Ok(grant)
    }

    /// Those of `revocations` it does not know yet.
    pub fn unknown(&self, revocations: &[Revocation]) -> Vec<Revocation> {
        let Ok(guard) = self.inner.read() else { return Vec::new() };
        revocations.iter().filter(|r| !guard.1.contains(r)).cloned().collect()
    }

    /// Adds revocations; returns those it did not know.
    pub fn revoke(&self, revocations: &[Revocation]) -> Vec<Revocation> {
        let Ok(mut guard) = self.inner.write() else { return Vec::new() };
        let new: Vec<Revocation> = revocations.iter().filter(|r| !guard.1.contains(r)).cloned().collect();
        guard.1.extend(new.iter().cloned());
        new
    }

    /// Every revocation it knows.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.inner.read().map(|g| g.1.clone()).unwrap_or_default()
    }

    /// The hub's keys (PEM), the whole list it accepts now: tokens they
    /// signed are accepted besides the node's own keys, and a key the hub
    /// no longer lists (rotated out) is no longer accepted.
    pub fn set_hub_keys(&self, pems: &[String]) -> Result<(), KeyError> {
        let mut hub = Verifier::default();
        for pem in pems {
            hub.add_pem(pem, "a key from the hub")?;
        }
        let Ok(mut guard) = self.inner.write() else { return Ok(()) };
        guard.0.keys.retain(|kid, _| self.own.contains(kid));
        guard.0.keys.extend(hub.keys);
        Ok(())
    }
}

/// Revocations kept in a JSON file (the hub's `revocations.json`, an
/// edge's copy of what its hub told it): `[]` if the file does not exist.
pub fn load_revocations(path: &Path) -> std::io::Result<Vec<Revocation>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes revocations to `path` (a temporary file renamed over it, so a
/// crash leaves the old list or the new one).
pub fn save_revocations(path: &Path, list: &[Revocation]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(list).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Tells the node loop to close live connections of these revocations.
pub async fn close_revoked(events: &crate::runtime::NodeEvents, revoked: &[Revocation]) {
    let _ = events.send(crate::runtime::NodeEvent::Revoke(revoked.to_vec())).await;
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds in a duration written `30s`, `10m`, `1h` or `7d`.
pub fn parse_ttl(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale).filter(|&secs| secs > 0)
}

/// A raw Ed25519 public key as a `PUBLIC KEY` PEM (SubjectPublicKeyInfo).
fn public_pem(raw: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    pem_wrap("PUBLIC KEY", &der)
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).ok()
}

pub mod cli;

#[cfg(test)]
mod tests;
