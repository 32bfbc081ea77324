//! Golden frames captured from the real JS implementation.
//!
//! `fixtures/golden/<name>.cbor` are frames written by `cbor.encode` from
//! `@automerge/automerge-repo` 2.5.6 (a few are hand-built, see their
//! `.json`); `<name>.json` holds what `codec::decode` must make of them and
//! whether `codec::encode` must reproduce them byte for byte. They were
//! generated once by `tests/js/capture-golden.mjs` and are checked in.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use meridian_protocol::codec::{self, Decoded, Message, PeerMetadata, RemoteHeads};
use meridian_protocol::ids::{DocumentId, PeerId, StorageId};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

struct Fixture {
    name: String,
    bytes: Vec<u8>,
    meta: Value,
}

fn load(name: &str) -> Fixture {
    let dir = fixture_dir();
    let bytes = fs::read(dir.join(format!("{name}.cbor"))).unwrap_or_else(|e| panic!("{name}.cbor: {e}"));
    let json = fs::read_to_string(dir.join(format!("{name}.json"))).unwrap_or_else(|e| panic!("{name}.json: {e}"));
    let meta: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}.json: {e}"));
    assert_eq!(meta["name"], name, "{name}.json names another fixture");
    Fixture { name: name.to_owned(), bytes, meta }
}

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_else(|| panic!("`{key}` is not a string in {v}")).to_owned()
}

fn opt_s(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("`{key}` is neither null nor a string: {other}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")).to_owned())
        .collect()
}

fn hex_bytes(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(s(v, key)).unwrap_or_else(|e| panic!("`{key}` is not hex: {e}"))
}

fn peer(v: &Value, key: &str) -> PeerId {
    PeerId::new(s(v, key))
}

fn doc(v: &Value) -> DocumentId {
    s(v, "documentId").parse().unwrap_or_else(|e| panic!("fixture documentId does not parse: {e}"))
}

fn metadata(v: &Value) -> PeerMetadata {
    let m = &v["peerMetadata"];
    PeerMetadata {
        storage_id: opt_s(m, "storageId").map(StorageId::new),
        is_ephemeral: m["isEphemeral"].as_bool().expect("isEphemeral is a bool"),
    }
}

/// The `Decoded` value a fixture's `expect` describes.
fn expected(e: &Value) -> Decoded {
    let ty = s(e, "type");
    match e["kind"].as_str() {
        Some("unknown") => return Decoded::Unknown { message_type: ty },
        Some("message") => {}
        other => panic!("unknown expectation kind {other:?}"),
    }
    let msg = match ty.as_str() {
        "join" => Message::Join {
            sender_id: peer(e, "senderId"),
            peer_metadata: metadata(e),
            supported_protocol_versions: match &e["supportedProtocolVersions"] {
                Value::Null => None,
                v => Some(strings(v)),
            },
        },
        "peer" => Message::Peer {
            sender_id: peer(e, "senderId"),
            peer_metadata: metadata(e),
            selected_protocol_version: s(e, "selectedProtocolVersion"),
            target_id: peer(e, "targetId"),
        },
        "error" => Message::Error {
            sender_id: opt_s(e, "senderId").map(PeerId::new),
            message: s(e, "message"),
            target_id: opt_s(e, "targetId").map(PeerId::new),
        },
        "request" => Message::Request {
            sender_id: peer(e, "senderId"),
            target_id: peer(e, "targetId"),
            document_id: doc(e),
            data: hex_bytes(e, "data"),
        },
        "sync" => Message::Sync {
            sender_id: peer(e, "senderId"),
            target_id: peer(e, "targetId"),
            document_id: doc(e),
            data: hex_bytes(e, "data"),
        },
        "doc-unavailable" => Message::DocUnavailable {
            sender_id: peer(e, "senderId"),
            target_id: peer(e, "targetId"),
            document_id: doc(e),
        },
        "ephemeral" => Message::Ephemeral {
            sender_id: peer(e, "senderId"),
            target_id: peer(e, "targetId"),
            document_id: doc(e),
            session_id: s(e, "sessionId"),
            count: e["count"].as_u64().expect("count is a non-negative integer"),
            data: hex_bytes(e, "data"),
        },
        "remote-subscription-change" => Message::RemoteSubscriptionChange {
            sender_id: peer(e, "senderId"),
            target_id: peer(e, "targetId"),
            add: strings(&e["add"]).into_iter().map(StorageId::new).collect(),
            remove: strings(&e["remove"]).into_iter().map(StorageId::new).collect(),
        },
        "remote-heads-changed" => Message::RemoteHeadsChanged {
            sender_id: peer(e, "senderId"),
            target_id: peer(e, "targetId"),
            document_id: doc(e),
            new_heads: e["newHeads"]
                .as_object()
                .expect("newHeads is an object")
                .iter()
                .map(|(storage, h)| {
                    let heads = RemoteHeads {
                        heads: strings(&h["heads"]),
                        timestamp: h["timestamp"].as_f64().expect("timestamp is a number"),
                    };
                    (StorageId::new(storage.clone()), heads)
                })
                .collect::<BTreeMap<_, _>>(),
        },
        other => panic!("fixture expects unknown message type {other}"),
    };
    Decoded::Message(msg)
}

fn check(name: &str) {
    let f = load(name);
    let decoded = codec::decode(&f.bytes).unwrap_or_else(|e| panic!("{}: decode failed: {e}", f.name));
    let want = expected(&f.meta["expect"]);
    assert_eq!(decoded, want, "{}: decoded message differs from the JSON expectation", f.name);

    let Decoded::Message(msg) = decoded else {
        assert_eq!(f.meta["reencode"], false, "{}: an unknown message cannot be re-encoded", f.name);
        return;
    };
    assert_eq!(msg.type_name(), f.meta["expect"]["type"], "{}: type_name", f.name);

    let encoded = codec::encode(&msg);
    // Whatever the encoder writes must decode to the same message.
    assert_eq!(
        codec::decode(&encoded),
        Ok(Decoded::Message(msg.clone())),
        "{}: encode → decode does not round-trip",
        f.name
    );
    match f.meta["reencode"].as_bool() {
        Some(true) => assert!(
            encoded == f.bytes,
            "{}: encode(decode(frame)) differs from the JS bytes\n  js:   {}\n  rust: {}",
            f.name,
            hex::encode(&f.bytes),
            hex::encode(&encoded)
        ),
        Some(false) => {
            assert!(f.meta["reencode_note"].is_string(), "{}: reencode false needs a reencode_note", f.name);
            assert_ne!(encoded, f.bytes, "{}: re-encodes identically now; set `reencode: true`", f.name);
        }
        None => panic!("{}: `reencode` missing", f.name),
    }
}

macro_rules! golden {
    ($($test:ident => $name:literal,)*) => {
        /// One test per fixture, named after it.
        mod fixture {
            $(
                #[test]
                fn $test() {
                    super::check($name);
                }
            )*
        }

        const NAMES: &[&str] = &[$($name),*];
    };
}

golden! {
    join => "join",
    join_ephemeral => "join-ephemeral",
    join_no_versions => "join-no-versions",
    join_v2_only => "join-v2-only",
    peer => "peer",
    error => "error",
    error_unicode => "error-unicode",
    request => "request",
    sync => "sync",
    sync_changes => "sync-changes",
    sync_large => "sync-large",
    doc_unavailable => "doc-unavailable",
    ephemeral => "ephemeral",
    ephemeral_count_large => "ephemeral-count-large",
    ephemeral_count_float => "ephemeral-count-float",
    remote_subscription_change => "remote-subscription-change",
    remote_subscription_change_remove_undefined => "remote-subscription-change-remove-undefined",
    remote_heads_changed => "remote-heads-changed",
    remote_heads_changed_float_timestamp => "remote-heads-changed-float-timestamp",
    remote_heads_changed_small_timestamp => "remote-heads-changed-small-timestamp",
    sync_extra_key => "sync-extra-key",
    unknown_type => "unknown-type",
}

/// Every fixture on disk has a test above, and every test has its fixture.
#[test]
fn every_fixture_is_tested() {
    let mut on_disk: Vec<String> = fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    for name in NAMES {
        assert!(fixture_dir().join(format!("{name}.cbor")).exists(), "{name}.cbor missing");
    }
}

/// The fixtures exercise every message type the codec knows, and the
/// encoder is checked byte for byte against JS for each of them.
#[test]
fn every_message_type_has_a_byte_exact_fixture() {
    let mut byte_exact = std::collections::BTreeSet::new();
    for name in NAMES {
        let f = load(name);
        if f.meta["reencode"] == true {
            byte_exact.insert(s(&f.meta["expect"], "type"));
        }
    }
    let all = [
        "join",
        "peer",
        "error",
        "request",
        "sync",
        "doc-unavailable",
        "ephemeral",
        "remote-subscription-change",
        "remote-heads-changed",
    ];
    for ty in all {
        assert!(byte_exact.contains(ty), "no byte-exact golden fixture for `{ty}`");
    }
}

/// Key order on the wire is JS's, not ours, for the hand-checked list in
/// the capture script; decoding must not depend on it. Shuffle the
/// top-level entries of a fixture and decode again.
#[test]
fn decoding_does_not_depend_on_key_order() {
    for name in NAMES {
        let f = load(name);
        let entries = top_level_entries(&f.bytes);
        let mut reversed = vec![0xa0 | u8::try_from(entries.len()).expect("small map")];
        for e in entries.iter().rev() {
            reversed.extend_from_slice(e);
        }
        assert_eq!(codec::decode(&reversed), codec::decode(&f.bytes), "{name}: reversed key order");
    }
}

/// Splits a top-level map (as written by cbor-x: 0xb9 header, or a short
/// header) into its raw key+value entries.
fn top_level_entries(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (n, mut pos) = match bytes[0] {
        0xb9 => (u16::from_be_bytes([bytes[1], bytes[2]]) as usize, 3),
        b @ 0xa0..=0xb7 => ((b - 0xa0) as usize, 1),
        b => panic!("unexpected map header {b:#x}"),
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = pos;
        let mut d = minicbor::Decoder::new(bytes);
        d.set_position(pos);
        d.skip().unwrap();
        d.skip().unwrap();
        pos = d.position();
        out.push(bytes[start..pos].to_vec());
    }
    assert_eq!(pos, bytes.len());
    out
}
