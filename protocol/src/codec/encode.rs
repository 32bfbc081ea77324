//! Encoding a [`Message`] to the bytes `cbor-x` writes for it.

use super::{Message, PeerMetadata};
use crate::ids::StorageId;

/// Encodes a message as the JS implementation would.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + data_len(msg)));
    match msg {
        Message::Join { sender_id, peer_metadata, supported_protocol_versions } => {
            w.map(if supported_protocol_versions.is_some() { 4 } else { 3 });
            w.kv_str("type", "join");
            w.kv_str("senderId", sender_id.as_str());
            w.str("peerMetadata");
            w.peer_metadata(peer_metadata);
            if let Some(versions) = supported_protocol_versions {
                w.str("supportedProtocolVersions");
                w.array(versions.len());
                versions.iter().for_each(|v| w.str(v));
            }
        }
        Message::Peer { sender_id, peer_metadata, selected_protocol_version, target_id } => {
            w.map(5);
            w.kv_str("type", "peer");
            w.kv_str("senderId", sender_id.as_str());
            w.str("peerMetadata");
            w.peer_metadata(peer_metadata);
            w.kv_str("selectedProtocolVersion", selected_protocol_version);
            w.kv_str("targetId", target_id.as_str());
        }
        Message::Error { sender_id, message, target_id } => {
            w.map(2 + usize::from(sender_id.is_some()) + usize::from(target_id.is_some()));
            w.kv_str("type", "error");
            if let Some(s) = sender_id {
                w.kv_str("senderId", s.as_str());
            }
            w.kv_str("message", message);
            if let Some(t) = target_id {
                w.kv_str("targetId", t.as_str());
            }
        }
        Message::Request { sender_id, target_id, document_id, data } => {
            w.map(5);
            w.kv_str("type", "request");
            w.kv_str("targetId", target_id.as_str());
            w.kv_str("documentId", &document_id.to_string());
            w.str("data");
            w.bytes(data);
            w.kv_str("senderId", sender_id.as_str());
        }
        Message::Sync { sender_id, target_id, document_id, data } => {
            w.map(5);
            w.kv_str("type", "sync");
            w.kv_str("targetId", target_id.as_str());
            w.str("data");
            w.bytes(data);
            w.kv_str("documentId", &document_id.to_string());
            w.kv_str("senderId", sender_id.as_str());
        }
        Message::DocUnavailable { sender_id, target_id, document_id } => {
            w.map(4);
            w.kv_str("type", "doc-unavailable");
            w.kv_str("documentId", &document_id.to_string());
            w.kv_str("targetId", target_id.as_str());
            w.kv_str("senderId", sender_id.as_str());
        }
        Message::Ephemeral { sender_id, target_id, document_id, session_id, count, data } => {
            w.map(7);
            w.kv_str("type", "ephemeral");
            w.kv_str("targetId", target_id.as_str());
            w.kv_str("documentId", &document_id.to_string());
            w.str("data");
            w.bytes(data);
            w.str("count");
            w.count(*count);
            w.kv_str("sessionId", session_id);
            w.kv_str("senderId", sender_id.as_str());
        }
        Message::RemoteSubscriptionChange { sender_id, target_id, add, remove } => {
            w.map(5);
            w.kv_str("type", "remote-subscription-change");
            w.kv_str("targetId", target_id.as_str());
            w.str("add");
            w.storage_ids(add);
            w.str("remove");
            w.storage_ids(remove);
            w.kv_str("senderId", sender_id.as_str());
        }
        Message::RemoteHeadsChanged { sender_id, target_id, document_id, new_heads } => {
            w.map(5);
            w.kv_str("type", "remote-heads-changed");
            w.kv_str("targetId", target_id.as_str());
            w.kv_str("documentId", &document_id.to_string());
            w.str("newHeads");
            w.map(new_heads.len());
            for (storage, heads) in new_heads {
                w.str(storage.as_str());
                w.map(2);
                w.str("heads");
                w.array(heads.heads.len());
                heads.heads.iter().for_each(|h| w.str(h));
                w.str("timestamp");
                w.number(heads.timestamp);
            }
            w.kv_str("senderId", sender_id.as_str());
        }
    }
    w.0
}

fn data_len(msg: &Message) -> usize {
    match msg {
        Message::Request { data, .. } | Message::Sync { data, .. } | Message::Ephemeral { data, .. } => data.len(),
        _ => 0,
    }
}

/// A minimal CBOR writer that produces what cbor-x produces for plain JS
/// objects: 16-bit map headers (32-bit beyond 65535 entries), shortest-form
/// strings, byte strings and arrays, and JS numbers as cbor-x writes them
/// (integers within 32 bits as CBOR integers, everything else as float64).
struct Writer(Vec<u8>);

impl Writer {
    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => self.0.push(m | n as u8),
            24..=0xff => self.0.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                self.0.push(m | 25);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(m | 26);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.0.push(m | 27);
                self.0.extend_from_slice(&n.to_be_bytes());
            }
        }
    }
    fn map(&mut self, n: usize) {
        // cbor-x always reserves a 16-bit length for objects and widens it
        // to 32 bits when there are more entries than that holds.
        match u16::try_from(n) {
            Ok(n) => {
                self.0.push(0xb9);
                self.0.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                self.0.push(0xba);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }
    fn array(&mut self, n: usize) {
        self.head(4, n as u64);
    }
    fn str(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn uint(&mut self, n: u64) {
        self.head(0, n);
    }
    fn f64(&mut self, x: f64) {
        self.0.push(0xfb);
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    /// A JS number the way cbor-x writes it: an integral value in
    /// `0..=u32::MAX` (including -0) as an unsigned integer, an integral
    /// value in `-2^32..0` as a negative integer, anything else as float64.
    fn number(&mut self, x: f64) {
        if x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x) {
            self.uint(x as u64);
        } else if x.fract() == 0.0 && x < 0.0 && x >= -(2f64.powi(32)) {
            self.head(1, (-1.0 - x) as u64);
        } else {
            self.f64(x);
        }
    }
    /// `count` as the JS number cbor-x writes: an integer up to `u32::MAX`,
    /// float64 above. Counts beyond 2^53 cannot come from JS (they are not
    /// exact doubles); they stay 64-bit integers so they round-trip.
    fn count(&mut self, n: u64) {
        if n <= u64::from(u32::MAX) || n > 1 << 53 {
            self.uint(n);
        } else {
            self.f64(n as f64);
        }
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        self.str(k);
        self.str(v);
    }
    fn storage_ids(&mut self, ids: &[StorageId]) {
        self.array(ids.len());
        ids.iter().for_each(|s| self.str(s.as_str()));
    }
    fn peer_metadata(&mut self, m: &PeerMetadata) {
        self.map(2);
        self.str("storageId");
        match &m.storage_id {
            Some(s) => self.str(s.as_str()),
            None => self.0.push(0xf7),
        }
        self.str("isEphemeral");
        self.0.push(if m.is_ephemeral { 0xf5 } else { 0xf4 });
    }
}
