//! Property tests and negative cases for the wire codec.
//!
//! - every message the type can hold survives `encode` → `decode`;
//! - `decode` consumes exactly what `encode` wrote (strict prefixes are
//!   malformed CBOR, an extra byte is trailing);
//! - `decode` never panics, on random bytes, mutated frames or random maps
//!   built from the protocol's keys, and whatever it accepts re-encodes to
//!   something it accepts again;
//! - malformed frames fail with the specific `DecodeError`.

use std::collections::BTreeMap;

use meridian_protocol::codec::{self, DecodeError, Decoded, Message, PeerMetadata, RemoteHeads};
use meridian_protocol::ids::{DocumentId, IdError, PeerId, StorageId};
use minicbor::data::Tag;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

// ---- strategies --------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9-]{0,16}", 1 => any::<String>(), 1 => "\\PC{20,300}"]
}

/// Any text that fits an id field ([`codec::MAX_ID_BYTES`]).
fn id_text() -> impl Strategy<Value = String> {
    text().prop_filter("ids are at most MAX_ID_BYTES long", |s| s.len() <= codec::MAX_ID_BYTES)
}

fn peer_id() -> impl Strategy<Value = PeerId> {
    prop_oneof!["peer-[a-z0-9]{8,10}", any::<String>().prop_filter("short", |s| s.len() <= codec::MAX_ID_BYTES)]
        .prop_map(PeerId::new)
}

fn storage_id() -> impl Strategy<Value = StorageId> {
    prop_oneof!["[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", any::<String>()]
        .prop_map(StorageId::new)
}

fn document_id() -> impl Strategy<Value = DocumentId> {
    any::<[u8; 16]>().prop_map(DocumentId::from_bytes)
}

/// Sync payloads: mostly small, some crossing the 8-, 16- and 32-bit length
/// boundaries of a CBOR byte string.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..64),
        3 => vec(any::<u8>(), 200..300),
        1 => vec(any::<u8>(), 65_530..65_540),
    ]
}

/// A CBOR value, for ephemeral payloads and for random frames.
#[derive(Debug, Clone)]
enum Cbor {
    U(u64),
    N(i64),
    F(f64),
    Bytes(Vec<u8>),
    Text(String),
    Bool(bool),
    Null,
    Undefined,
    Array(Vec<Cbor>),
    IndefArray(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    Tagged(u64, Box<Cbor>),
}

impl Cbor {
    fn write(&self, e: &mut minicbor::Encoder<Vec<u8>>) {
        match self {
            Cbor::U(n) => {
                e.u64(*n).unwrap();
            }
            Cbor::N(n) => {
                e.i64(*n).unwrap();
            }
            Cbor::F(x) => {
                e.f64(*x).unwrap();
            }
            Cbor::Bytes(b) => {
                e.bytes(b).unwrap();
            }
            Cbor::Text(s) => {
                e.str(s).unwrap();
            }
            Cbor::Bool(b) => {
                e.bool(*b).unwrap();
            }
            Cbor::Null => {
                e.null().unwrap();
            }
            Cbor::Undefined => {
                e.undefined().unwrap();
            }
            Cbor::Array(items) => {
                e.array(items.len() as u64).unwrap();
                items.iter().for_each(|i| i.write(e));
            }
            Cbor::IndefArray(items) => {
                e.begin_array().unwrap();
                items.iter().for_each(|i| i.write(e));
                e.end().unwrap();
            }
            Cbor::Map(entries) => {
                e.map(entries.len() as u64).unwrap();
                for (k, v) in entries {
                    k.write(e);
                    v.write(e);
                }
            }
            Cbor::Tagged(t, v) => {
                e.tag(Tag::new(*t)).unwrap();
                v.write(e);
            }
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut e = minicbor::Encoder::new(Vec::new());
        self.write(&mut e);
        e.into_writer()
    }
}

fn cbor_leaf() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        any::<u64>().prop_map(Cbor::U),
        any::<i64>().prop_map(Cbor::N),
        any::<f64>().prop_map(Cbor::F),
        vec(any::<u8>(), 0..16).prop_map(Cbor::Bytes),
        text().prop_map(Cbor::Text),
        any::<bool>().prop_map(Cbor::Bool),
        Just(Cbor::Null),
        Just(Cbor::Undefined),
    ]
}

fn cbor_value() -> impl Strategy<Value = Cbor> {
    cbor_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Cbor::Array),
            vec(inner.clone(), 0..6).prop_map(Cbor::IndefArray),
            vec((text().prop_map(Cbor::Text), inner.clone()), 0..6).prop_map(Cbor::Map),
            (0u64..100, inner).prop_map(|(t, v)| Cbor::Tagged(t, Box::new(v))),
        ]
    })
}

fn count() -> impl Strategy<Value = u64> {
    let u32_max = u64::from(u32::MAX);
    prop_oneof![
        4 => 0u64..100,
        1 => any::<u64>(),
        1 => (u32_max - 2)..=(u32_max + 2),
        1 => ((1u64 << 53) - 2)..=((1u64 << 53) + 2),
    ]
}

/// Timestamps: any non-NaN double, plus integral values around the ranges
/// cbor-x writes as integers, plus `Date.now()`-like values.
fn timestamp() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN never equals itself", |x| !x.is_nan()),
        (-(1i64 << 34)..(1i64 << 34)).prop_map(|n| n as f64),
        (1_600_000_000_000u64..1_900_000_000_000).prop_map(|n| n as f64),
        (1_600_000_000_000u64..1_900_000_000_000, 1u32..1000).prop_map(|(n, f)| n as f64 + f64::from(f) / 1000.0),
        Just(-0.0),
    ]
}

fn peer_metadata() -> impl Strategy<Value = PeerMetadata> {
    (proptest::option::of(storage_id()), any::<bool>())
        .prop_map(|(storage_id, is_ephemeral)| PeerMetadata { storage_id, is_ephemeral })
}

fn heads() -> impl Strategy<Value = RemoteHeads> {
    (vec(prop_oneof!["[1-9A-HJ-NP-Za-km-z]{48,50}", text()], 0..3), timestamp())
        .prop_map(|(heads, timestamp)| RemoteHeads { heads, timestamp })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (peer_id(), peer_metadata(), proptest::option::of(vec(prop_oneof![Just("1".to_owned()), text()], 0..3)))
            .prop_map(|(sender_id, peer_metadata, supported_protocol_versions)| {
                Message::Join { sender_id, peer_metadata, supported_protocol_versions }
            }),
        (peer_id(), peer_metadata(), prop_oneof![Just("1".to_owned()), text()], peer_id()).prop_map(
            |(sender_id, peer_metadata, selected_protocol_version, target_id)| Message::Peer {
                sender_id,
                peer_metadata,
                selected_protocol_version,
                target_id
            }
        ),
        (proptest::option::of(peer_id()), text(), proptest::option::of(peer_id()))
            .prop_map(|(sender_id, message, target_id)| Message::Error { sender_id, message, target_id }),
        (peer_id(), peer_id(), document_id(), payload()).prop_map(|(sender_id, target_id, document_id, data)| {
            Message::Request { sender_id, target_id, document_id, data }
        }),
        (peer_id(), peer_id(), document_id(), payload()).prop_map(|(sender_id, target_id, document_id, data)| {
            Message::Sync { sender_id, target_id, document_id, data }
        }),
        (peer_id(), peer_id(), document_id()).prop_map(|(sender_id, target_id, document_id)| {
            Message::DocUnavailable { sender_id, target_id, document_id }
        }),
        (peer_id(), peer_id(), document_id(), id_text(), count(), cbor_value()).prop_map(
            |(sender_id, target_id, document_id, session_id, count, data)| Message::Ephemeral {
                sender_id,
                target_id,
                document_id,
                session_id,
                count,
                data: data.to_vec(),
            }
        ),
        (peer_id(), peer_id(), vec(storage_id(), 0..4), vec(storage_id(), 0..4)).prop_map(
            |(sender_id, target_id, add, remove)| {
                Message::RemoteSubscriptionChange { sender_id, target_id, add, remove }
            }
        ),
        (peer_id(), peer_id(), document_id(), btree_map(storage_id(), heads(), 0..4)).prop_map(
            |(sender_id, target_id, document_id, new_heads)| {
                Message::RemoteHeadsChanged { sender_id, target_id, document_id, new_heads }
            }
        ),
    ]
}

/// Keys the decoder knows, and a few it does not.
fn key() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "type", "senderId", "targetId", "documentId", "data", "sessionId", "count", "message",
            "peerMetadata", "supportedProtocolVersions", "selectedProtocolVersion", "add", "remove",
            "newHeads", "storageId", "isEphemeral", "heads", "timestamp", "extra",
        ])
        .prop_map(|k| Cbor::Text(k.to_owned())),
        1 => cbor_leaf(),
    ]
}

/// Values that are often right: real type names, real ids, CBOR payloads.
fn plausible_value() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "join", "peer", "error", "request", "sync", "doc-unavailable", "ephemeral",
            "remote-subscription-change", "remote-heads-changed", "other",
        ])
        .prop_map(|t| Cbor::Text(t.to_owned())),
        2 => document_id().prop_map(|d| Cbor::Text(d.to_string())),
        2 => cbor_value().prop_map(|v| Cbor::Bytes(v.to_vec())),
        4 => cbor_value(),
    ]
}

/// A map of protocol keys to plausible values, nested once for
/// `peerMetadata` and `newHeads`.
fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    let inner = vec((key(), plausible_value()), 0..4).prop_map(Cbor::Map);
    let nested = vec((key(), prop_oneof![plausible_value(), inner]), 0..4).prop_map(Cbor::Map);
    vec((key(), prop_oneof![3 => plausible_value(), 1 => nested]), 0..9).prop_map(|entries| Cbor::Map(entries).to_vec())
}

/// If `decode` accepted `bytes`, its message re-encodes to a frame that
/// decodes to the same thing (compared as bytes, so a NaN timestamp read
/// from a frame does not spoil the comparison).
fn accepted_frames_re_encode(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(Decoded::Message(m)) = codec::decode(bytes) {
        let once = codec::encode(&m);
        match codec::decode(&once) {
            Ok(Decoded::Message(again)) => prop_assert_eq!(codec::encode(&again), once),
            other => prop_assert!(false, "re-encoded {m:?} does not decode: {other:?}"),
        }
    }
    Ok(())
}

// ---- properties --------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in message()) {
        let bytes = codec::encode(&m);
        prop_assert_eq!(codec::decode(&bytes), Ok(Decoded::Message(m)));
    }

    /// `decode` consumes exactly `encode(m).len()` bytes: one byte more is
    /// trailing, any strict prefix is malformed.
    #[test]
    fn decode_consumes_exactly_the_encoding(m in message(), extra in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&m);
        let mut longer = bytes.clone();
        longer.push(extra);
        prop_assert_eq!(codec::decode(&longer), Err(DecodeError::TrailingBytes));
        let prefix = &bytes[..cut.index(bytes.len())];
        let result = codec::decode(prefix);
        prop_assert!(matches!(result, Err(DecodeError::NotCbor(_))), "prefix of {} bytes: {result:?}", prefix.len());
    }

    #[test]
    fn decode_of_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..256)) {
        accepted_frames_re_encode(&bytes)?;
    }

    #[test]
    fn decode_of_mutated_frames_never_panics(
        m in message(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = codec::encode(&m);
        for (at, byte, op) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.push(byte),
            }
        }
        accepted_frames_re_encode(&bytes)?;
    }

    #[test]
    fn decode_of_random_protocol_maps_never_panics(bytes in random_frame()) {
        accepted_frames_re_encode(&bytes)?;
    }
}

// ---- frame building for the negative cases ----------------------------------

type Enc = minicbor::Encoder<Vec<u8>>;
type EncResult<'a> = Result<&'a mut Enc, minicbor::encode::Error<std::convert::Infallible>>;

/// One CBOR item written by `f`.
fn item(f: impl FnOnce(&mut Enc) -> EncResult<'_>) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    f(&mut e).unwrap();
    e.into_writer()
}

fn t(s: &str) -> Vec<u8> {
    item(|e| e.str(s))
}

fn b(bytes: &[u8]) -> Vec<u8> {
    item(|e| e.bytes(bytes))
}

fn u(n: u64) -> Vec<u8> {
    item(|e| e.u64(n))
}

/// A definite-length map with text keys and pre-encoded values.
fn frame(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = item(|e| e.map(entries.len() as u64));
    for (k, v) in entries {
        out.extend(t(k));
        out.extend_from_slice(v);
    }
    out
}

const DOC: &str = "DxtrkqpSm4nNZd5wkhmxqjMk34T"; // from automerge-repo 2.5.6 `repo.create()`

fn sync_entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("type", t("sync")),
        ("targetId", t("peer-b")),
        ("data", b(&[0x42, 0x00])),
        ("documentId", t(DOC)),
        ("senderId", t("peer-a")),
    ]
}

fn ephemeral_entries(data: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("type", t("ephemeral")),
        ("targetId", t("peer-b")),
        ("documentId", t(DOC)),
        ("data", b(data)),
        ("count", u(1)),
        ("sessionId", t("s1")),
        ("senderId", t("peer-a")),
    ]
}

fn with(mut entries: Vec<(&'static str, Vec<u8>)>, key: &'static str, value: Vec<u8>) -> Vec<u8> {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
    frame(&entries)
}

fn without(entries: Vec<(&'static str, Vec<u8>)>, key: &str) -> Vec<u8> {
    frame(&entries.into_iter().filter(|(k, _)| *k != key).collect::<Vec<_>>())
}

fn expected_sync() -> Message {
    Message::Sync {
        sender_id: PeerId::new("peer-a"),
        target_id: PeerId::new("peer-b"),
        document_id: DOC.parse().unwrap(),
        data: vec![0x42, 0x00],
    }
}

fn wrong_type(field: &str, expected: &'static str) -> Result<Decoded, DecodeError> {
    Err(DecodeError::WrongType { field: field.to_owned(), expected })
}

// ---- negative cases ----------------------------------------------------------

#[test]
fn the_frame_builder_makes_valid_frames() {
    assert_eq!(codec::decode(&frame(&sync_entries())), Ok(Decoded::Message(expected_sync())));
    assert!(matches!(
        codec::decode(&frame(&ephemeral_entries(&u(5)))),
        Ok(Decoded::Message(Message::Ephemeral { .. }))
    ));
}

#[test]
fn not_cbor() {
    for bytes in [
        &[][..],                   // nothing
        &[0xff],                   // a lone break
        &[0x1c],                   // reserved additional information
        &[0xb9, 0x00],             // truncated map header
        &[0xa1, 0x61, 0xff, 0x01], // key that is not UTF-8
        &[0x5f, 0x61, 0x41, 0xff], // indefinite byte string with a text chunk
    ] {
        assert!(
            matches!(codec::decode(bytes), Err(DecodeError::NotCbor(_))),
            "{bytes:02x?}: {:?}",
            codec::decode(bytes)
        );
    }
    // Truncated inside a value, and inside a list of strings.
    let full = frame(&sync_entries());
    assert!(matches!(codec::decode(&full[..full.len() - 3]), Err(DecodeError::NotCbor(_))));
    let subs = frame(&[
        ("type", t("remote-subscription-change")),
        ("targetId", t("b")),
        ("senderId", t("a")),
        ("add", item(|e| e.array(2)?.str("s1"))),
    ]);
    assert!(matches!(codec::decode(&subs), Err(DecodeError::NotCbor(_))), "{:?}", codec::decode(&subs));
    // A stray break as the value of an unknown key is malformed too.
    let mut entries = sync_entries();
    entries.push(("extra", vec![0xff]));
    assert!(matches!(codec::decode(&frame(&entries)), Err(DecodeError::NotCbor(_))));
}

#[test]
fn cbor_that_is_not_a_map() {
    let array = item(|e| e.array(2)?.u8(1)?.u8(2));
    assert_eq!(codec::decode(&array), Err(DecodeError::NotAMap));
    assert_eq!(codec::decode(&t("sync")), Err(DecodeError::NotAMap));
    assert_eq!(codec::decode(&u(7)), Err(DecodeError::NotAMap));
    assert_eq!(codec::decode(&b(&[0xa0])), Err(DecodeError::NotAMap));
    // An array holding a valid message is still not a message.
    let wrapped = [&[0x81][..], &frame(&sync_entries())].concat();
    assert_eq!(codec::decode(&wrapped), Err(DecodeError::NotAMap));
}

#[test]
fn missing_type() {
    assert_eq!(codec::decode(&without(sync_entries(), "type")), Err(DecodeError::MissingType));
    assert_eq!(codec::decode(&[0xa0]), Err(DecodeError::MissingType));
    assert_eq!(codec::decode(&with(sync_entries(), "type", vec![0xf7])), Err(DecodeError::MissingType));
    assert_eq!(codec::decode(&with(sync_entries(), "type", vec![0xf6])), Err(DecodeError::MissingType));
    assert_eq!(codec::decode(&with(sync_entries(), "type", u(1))), wrong_type("type", "a text string"));
}

#[test]
fn missing_fields() {
    let missing =
        |message_type: &str, field| Err(DecodeError::MissingField { message_type: message_type.to_owned(), field });
    assert_eq!(codec::decode(&without(sync_entries(), "data")), missing("sync", "data"));
    assert_eq!(codec::decode(&without(sync_entries(), "senderId")), missing("sync", "senderId"));
    assert_eq!(codec::decode(&without(sync_entries(), "documentId")), missing("sync", "documentId"));
    assert_eq!(codec::decode(&with(sync_entries(), "targetId", vec![0xf7])), missing("sync", "targetId"));
    assert_eq!(codec::decode(&without(ephemeral_entries(&u(1)), "count")), missing("ephemeral", "count"));
    assert_eq!(codec::decode(&without(ephemeral_entries(&u(1)), "sessionId")), missing("ephemeral", "sessionId"));
    let heads = frame(&[
        ("type", t("remote-heads-changed")),
        ("senderId", t("a")),
        ("targetId", t("b")),
        ("documentId", t(DOC)),
    ]);
    assert_eq!(codec::decode(&heads), missing("remote-heads-changed", "newHeads"));
    let peer = frame(&[("type", t("peer")), ("senderId", t("a"))]);
    assert_eq!(codec::decode(&peer), missing("peer", "targetId"));
}

#[test]
fn wrong_field_types() {
    assert_eq!(codec::decode(&with(sync_entries(), "documentId", u(42))), wrong_type("documentId", "a text string"));
    assert_eq!(codec::decode(&with(sync_entries(), "data", t("QgA="))), wrong_type("data", "a byte string"));
    assert_eq!(codec::decode(&with(sync_entries(), "senderId", b(b"peer-a"))), wrong_type("senderId", "a text string"));
    let eph = ephemeral_entries(&u(1));
    assert_eq!(codec::decode(&with(eph.clone(), "count", t("1"))), wrong_type("count", "a non-negative integer"));
    assert_eq!(
        codec::decode(&with(eph.clone(), "count", item(|e| e.i64(-1)))),
        wrong_type("count", "a non-negative integer")
    );
    assert_eq!(codec::decode(&with(eph, "count", item(|e| e.f64(2.5)))), wrong_type("count", "a non-negative integer"));

    let join = |key: &'static str, value: Vec<u8>| with(vec![("type", t("join")), ("senderId", t("a"))], key, value);
    assert_eq!(
        codec::decode(&join("supportedProtocolVersions", t("1"))),
        wrong_type("supportedProtocolVersions", "an array of strings")
    );
    assert_eq!(
        codec::decode(&join("supportedProtocolVersions", item(|e| e.array(1)?.u8(1)))),
        wrong_type("supportedProtocolVersions", "an array of strings")
    );
    assert_eq!(codec::decode(&join("peerMetadata", t("{}"))), wrong_type("peerMetadata", "a map"));
    let meta = frame(&[("isEphemeral", t("yes"))]);
    assert_eq!(codec::decode(&join("peerMetadata", meta)), wrong_type("peerMetadata.isEphemeral", "a boolean"));

    let subs = |value| {
        frame(&[("type", t("remote-subscription-change")), ("senderId", t("a")), ("targetId", t("b")), ("add", value)])
    };
    assert_eq!(codec::decode(&subs(t("s1"))), wrong_type("add", "an array of strings"));

    let rhc = |entry: Vec<u8>| {
        let new_heads = [item(|e| e.map(1)?.str("s1")), entry].concat();
        frame(&[
            ("type", t("remote-heads-changed")),
            ("senderId", t("a")),
            ("targetId", t("b")),
            ("documentId", t(DOC)),
            ("newHeads", new_heads),
        ])
    };
    assert_eq!(
        codec::decode(&rhc(frame(&[("timestamp", u(1))]))),
        wrong_type("newHeads[].heads", "an array of strings")
    );
    let empty_heads = item(|e| e.array(0));
    assert_eq!(
        codec::decode(&rhc(frame(&[("heads", empty_heads.clone()), ("timestamp", t("now"))]))),
        wrong_type("newHeads[].timestamp", "a number")
    );
    assert_eq!(codec::decode(&rhc(u(3))), wrong_type("newHeads[]", "a map"));
}

#[test]
fn invalid_document_ids() {
    // Last character changed: the bs58check checksum no longer matches.
    let bad_checksum = with(sync_entries(), "documentId", t("DxtrkqpSm4nNZd5wkhmxqjMk34U"));
    assert!(
        matches!(
            codec::decode(&bad_checksum),
            Err(DecodeError::BadId { field: "documentId", source: IdError::Bs58(_) })
        ),
        "{:?}",
        codec::decode(&bad_checksum)
    );
    // Not base58 at all (0, O, I and l are not in the alphabet).
    let not_base58 = with(sync_entries(), "documentId", t("0OIl"));
    assert!(matches!(
        codec::decode(&not_base58),
        Err(DecodeError::BadId { field: "documentId", source: IdError::Bs58(_) })
    ));
    // Valid bs58check of the wrong length.
    let short = bs58::encode([7u8; 15]).with_check().into_string();
    assert_eq!(
        codec::decode(&with(sync_entries(), "documentId", t(&short))),
        Err(DecodeError::BadId { field: "documentId", source: IdError::DocumentIdLength(15) })
    );
    // The same checks apply to every message carrying a document id.
    let eph = with(ephemeral_entries(&u(1)), "documentId", t("DxtrkqpSm4nNZd5wkhmxqjMk34U"));
    assert!(matches!(codec::decode(&eph), Err(DecodeError::BadId { field: "documentId", .. })));
}

#[test]
fn ephemeral_data_must_be_one_cbor_item() {
    for data in [
        &[][..],       // empty
        &[0xff],       // a lone break
        &[0x82, 0x01], // truncated array
        &[0x01, 0x02], // two items: cbor-x's decode throws on trailing bytes
        &[0x81, 0xff], // break where an element is expected
        &[0x61, 0xff], // text that is not UTF-8
        &[0x1c],       // reserved
    ] {
        assert_eq!(
            codec::decode(&frame(&ephemeral_entries(data))),
            Err(DecodeError::EphemeralDataNotCbor),
            "data {data:02x?}"
        );
    }
    for data in [&u(0)[..], &[0xf6], &[0x9f, 0x01, 0xff], &frame(&[("x", t("y"))])] {
        assert!(matches!(codec::decode(&frame(&ephemeral_entries(data))), Ok(Decoded::Message(_))), "data {data:02x?}");
    }
}

#[test]
fn trailing_bytes() {
    let one = frame(&sync_entries());
    assert_eq!(codec::decode(&[&one[..], &[0x00]].concat()), Err(DecodeError::TrailingBytes));
    assert_eq!(codec::decode(&[&one[..], &one[..]].concat()), Err(DecodeError::TrailingBytes));
    // Even a trailing break.
    assert_eq!(codec::decode(&[&one[..], &[0xff]].concat()), Err(DecodeError::TrailingBytes));
}

// ---- tolerance ---------------------------------------------------------------

#[test]
fn unknown_types_are_reported_not_rejected() {
    let f = with(sync_entries(), "type", t("frobnicate"));
    assert_eq!(codec::decode(&f), Ok(Decoded::Unknown { message_type: "frobnicate".to_owned() }));
    // Even without any of the usual fields.
    assert_eq!(codec::decode(&frame(&[("type", t("x"))])), Ok(Decoded::Unknown { message_type: "x".to_owned() }));
}

#[test]
fn unknown_and_non_text_keys_are_skipped() {
    let mut bytes = item(|e| e.map(7));
    bytes.extend(u(1)); // integer key
    bytes.extend(t("ignored"));
    bytes.extend(t("nested"));
    bytes.extend(Cbor::Map(vec![(Cbor::Text("a".into()), Cbor::IndefArray(vec![Cbor::U(1), Cbor::Null]))]).to_vec());
    for (k, v) in sync_entries() {
        bytes.extend(t(k));
        bytes.extend(v);
    }
    assert_eq!(codec::decode(&bytes), Ok(Decoded::Message(expected_sync())));
}

#[test]
fn indefinite_lengths_and_tags_are_accepted() {
    // Indefinite map, chunked text and chunked, tagged (64) bytes.
    let mut bytes = vec![0xbf];
    bytes.extend(t("type"));
    bytes.extend([0x7f, 0x62, b's', b'y', 0x62, b'n', b'c', 0xff]);
    bytes.extend(t("data"));
    bytes.extend([0xd8, 0x40, 0x5f, 0x41, 0x42, 0x41, 0x00, 0xff]);
    for (k, v) in sync_entries().into_iter().filter(|(k, _)| !matches!(*k, "type" | "data")) {
        bytes.extend(t(k));
        bytes.extend(v);
    }
    bytes.push(0xff);
    assert_eq!(codec::decode(&bytes), Ok(Decoded::Message(expected_sync())));
}

#[test]
fn floats_of_every_width_are_accepted_for_integers_and_timestamps() {
    let eph = |count: Vec<u8>| codec::decode(&with(ephemeral_entries(&u(1)), "count", count));
    let count_of = |r: Result<Decoded, DecodeError>| match r {
        Ok(Decoded::Message(Message::Ephemeral { count, .. })) => count,
        other => panic!("{other:?}"),
    };
    assert_eq!(count_of(eph(vec![0xf9, 0x40, 0x00])), 2); // f16 2.0
    assert_eq!(count_of(eph(vec![0xfa, 0x40, 0x40, 0x00, 0x00])), 3); // f32 3.0
    assert_eq!(count_of(eph(item(|e| e.f64(4.0)))), 4);
    assert_eq!(eph(vec![0xf9, 0x7c, 0x00]), wrong_type("count", "a non-negative integer")); // f16 +inf
    assert_eq!(eph(vec![0xf9, 0x7e, 0x00]), wrong_type("count", "a non-negative integer")); // f16 NaN

    let ts = |timestamp: Vec<u8>| {
        let mut heads = item(|e| e.map(1)?.str("s1")?.map(2)?.str("heads")?.array(0));
        heads.extend(t("timestamp"));
        heads.extend(timestamp);
        let f = frame(&[
            ("type", t("remote-heads-changed")),
            ("senderId", t("a")),
            ("targetId", t("b")),
            ("documentId", t(DOC)),
            ("newHeads", heads),
        ]);
        match codec::decode(&f) {
            Ok(Decoded::Message(Message::RemoteHeadsChanged { new_heads, .. })) => {
                new_heads[&StorageId::new("s1")].timestamp
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ts(vec![0xf9, 0x3e, 0x00]), 1.5);
    assert_eq!(ts(vec![0xf9, 0x00, 0x01]), 2f64.powi(-24)); // smallest subnormal half
    assert_eq!(ts(vec![0xf9, 0xc4, 0x00]), -4.0);
    assert_eq!(ts(vec![0xfa, 0x3f, 0xc0, 0x00, 0x00]), 1.5);
    assert_eq!(ts(u(1234)), 1234.0);
    assert_eq!(ts(item(|e| e.i64(-5))), -5.0);
    // A half float cut short at the end of the frame.
    let mut truncated = ephemeral_entries(&u(1));
    truncated.retain(|(k, _)| *k != "count");
    truncated.push(("count", vec![0xf9, 0x40]));
    assert!(matches!(codec::decode(&frame(&truncated)), Err(DecodeError::NotCbor(_))));
}

#[test]
fn optional_fields_may_be_undefined_or_null() {
    for absent in [vec![0xf7], vec![0xf6]] {
        let join = frame(&[
            ("type", t("join")),
            ("senderId", t("a")),
            ("peerMetadata", frame(&[("storageId", absent.clone()), ("isEphemeral", absent.clone())])),
            ("supportedProtocolVersions", absent.clone()),
        ]);
        assert_eq!(
            codec::decode(&join),
            Ok(Decoded::Message(Message::Join {
                sender_id: PeerId::new("a"),
                peer_metadata: PeerMetadata::default(),
                supported_protocol_versions: None
            }))
        );
        let subs = frame(&[
            ("type", t("remote-subscription-change")),
            ("senderId", t("a")),
            ("targetId", t("b")),
            ("add", absent.clone()),
            ("remove", absent),
        ]);
        assert_eq!(
            codec::decode(&subs),
            Ok(Decoded::Message(Message::RemoteSubscriptionChange {
                sender_id: PeerId::new("a"),
                target_id: PeerId::new("b"),
                add: vec![],
                remove: vec![]
            }))
        );
    }
}

/// Deep nesting neither overflows the stack nor costs memory in proportion
/// to the input: past [`codec::MAX_DEPTH`] levels of containers a message is
/// refused (16 MB of nested arrays cost +275 MB before the limit), and up to
/// it everything is accepted as before.
#[test]
fn nesting_past_the_depth_limit_is_refused() {
    const DEPTH: usize = 1_000_000;
    // A million tags in front of the sync payload (a tag is no container).
    let mut tagged = vec![0xc6; DEPTH];
    tagged.extend(b(&[0x42, 0x00]));
    assert_eq!(codec::decode(&with(sync_entries(), "data", tagged)), Ok(Decoded::Message(expected_sync())));
    // Nested arrays under an unknown key: up to the limit skipped, past it refused.
    for (depth, ok) in [(codec::MAX_DEPTH, true), (codec::MAX_DEPTH + 1, false), (DEPTH, false)] {
        let mut entries = sync_entries();
        let mut deep = vec![0x81; depth];
        deep.push(0x00);
        entries.push(("deep", deep));
        let decoded = codec::decode(&frame(&entries));
        if ok {
            assert_eq!(decoded, Ok(Decoded::Message(expected_sync())), "depth {depth}");
        } else {
            assert!(
                matches!(decoded, Err(DecodeError::NotCbor(ref e)) if e.contains("nested too deeply")),
                "depth {depth}: {decoded:?}"
            );
        }
    }
    // And as ephemeral data: indefinite arrays, properly closed.
    for (depth, ok) in [(codec::MAX_DEPTH, true), (DEPTH, false)] {
        let mut data = vec![0x9f; depth];
        data.extend(vec![0xff; depth]);
        let decoded = codec::decode(&frame(&ephemeral_entries(&data)));
        assert_eq!(decoded.is_ok(), ok, "depth {depth}: {decoded:?}");
        if !ok {
            assert_eq!(decoded, Err(DecodeError::EphemeralDataNotCbor));
        }
    }
}

/// Ids longer than [`codec::MAX_ID_BYTES`] are refused (a `senderId` of
/// 1 MB was accepted and kept for the connection's life).
#[test]
fn over_long_ids_are_refused() {
    let long = "p".repeat(codec::MAX_ID_BYTES + 1);
    let fits = "p".repeat(codec::MAX_ID_BYTES);
    for field in ["senderId", "targetId"] {
        assert_eq!(
            codec::decode(&with(sync_entries(), field, t(&long))),
            Err(DecodeError::TooLong { field: field.into(), max: codec::MAX_ID_BYTES })
        );
        assert!(codec::decode(&with(sync_entries(), field, t(&fits))).is_ok());
    }
    assert_eq!(
        codec::decode(&with(ephemeral_entries(&u(1)), "sessionId", t(&long))),
        Err(DecodeError::TooLong { field: "sessionId".into(), max: codec::MAX_ID_BYTES })
    );
}

// ---- encoder details that match cbor-x -----------------------------------------

fn ephemeral_with_count(count: u64) -> Message {
    Message::Ephemeral {
        sender_id: PeerId::new("a"),
        target_id: PeerId::new("b"),
        document_id: DocumentId::from_bytes([1; 16]),
        session_id: "s".to_owned(),
        count,
        data: vec![0xf6],
    }
}

fn encoded_count(count: u64) -> Vec<u8> {
    let bytes = codec::encode(&ephemeral_with_count(count));
    let key = t("count");
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).unwrap() + key.len();
    let end = bytes[at..].windows(t("sessionId").len()).position(|w| w == t("sessionId").as_slice()).unwrap() + at;
    bytes[at..end].to_vec()
}

#[test]
fn count_is_written_as_cbor_x_writes_a_js_number() {
    assert_eq!(encoded_count(23), [0x17]);
    assert_eq!(encoded_count(24), [0x18, 24]);
    assert_eq!(encoded_count(u64::from(u32::MAX)), [0x1a, 0xff, 0xff, 0xff, 0xff]);
    // Above 32 bits cbor-x writes a float64 (exact up to 2^53).
    assert_eq!(encoded_count(1 << 32), [&[0xfb][..], &(2f64.powi(32)).to_be_bytes()].concat());
    assert_eq!(encoded_count(1 << 53), [&[0xfb][..], &(2f64.powi(53)).to_be_bytes()].concat());
    // JS cannot hold more; stay exact.
    assert_eq!(encoded_count((1 << 53) + 1), [&[0x1b][..], &((1u64 << 53) + 1).to_be_bytes()].concat());
    for c in [0, 1 << 32, 1 << 53, (1 << 53) + 1, u64::MAX] {
        assert_eq!(
            codec::decode(&codec::encode(&ephemeral_with_count(c))),
            Ok(Decoded::Message(ephemeral_with_count(c)))
        );
    }
}

fn encoded_timestamp(timestamp: f64) -> Vec<u8> {
    let m = Message::RemoteHeadsChanged {
        sender_id: PeerId::new("a"),
        target_id: PeerId::new("b"),
        document_id: DocumentId::from_bytes([1; 16]),
        new_heads: BTreeMap::from([(StorageId::new("s"), RemoteHeads { heads: vec![], timestamp })]),
    };
    let bytes = codec::encode(&m);
    let key = t("timestamp");
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).unwrap() + key.len();
    let end = bytes.len() - t("senderId").len() - t("a").len();
    bytes[at..end].to_vec()
}

#[test]
fn timestamps_are_written_as_cbor_x_writes_a_js_number() {
    let f64_bytes = |x: f64| [&[0xfb][..], &x.to_be_bytes()].concat();
    assert_eq!(encoded_timestamp(0.0), [0x00]);
    assert_eq!(encoded_timestamp(-0.0), [0x00]);
    assert_eq!(encoded_timestamp(1234.0), [0x19, 0x04, 0xd2]);
    assert_eq!(encoded_timestamp(4_294_967_295.0), [0x1a, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(encoded_timestamp(4_294_967_296.0), f64_bytes(4_294_967_296.0));
    assert_eq!(encoded_timestamp(-1.0), [0x20]);
    assert_eq!(encoded_timestamp(-25.0), [0x38, 24]);
    assert_eq!(encoded_timestamp(-4_294_967_296.0), [0x3a, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(encoded_timestamp(-4_294_967_297.0), f64_bytes(-4_294_967_297.0));
    assert_eq!(encoded_timestamp(1.5), f64_bytes(1.5));
    assert_eq!(encoded_timestamp(1_760_000_000_000.0), f64_bytes(1_760_000_000_000.0));
    assert_eq!(encoded_timestamp(f64::INFINITY), f64_bytes(f64::INFINITY));
}

#[test]
fn maps_beyond_65535_entries_use_a_32_bit_header() {
    let new_heads: BTreeMap<_, _> = (0..70_000)
        .map(|i| (StorageId::new(format!("{i:05}")), RemoteHeads { heads: vec![], timestamp: 1.0 }))
        .collect();
    let m = Message::RemoteHeadsChanged {
        sender_id: PeerId::new("a"),
        target_id: PeerId::new("b"),
        document_id: DocumentId::from_bytes([1; 16]),
        new_heads,
    };
    let bytes = codec::encode(&m);
    let key = t("newHeads");
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).unwrap() + key.len();
    assert_eq!(bytes[at..at + 5], [0xba, 0x00, 0x01, 0x11, 0x70]);
    assert_eq!(codec::decode(&bytes), Ok(Decoded::Message(m)));
}
