//! The decode check: arbitrary bytes fed to `codec::decode` must never
//! panic, and whatever it accepts must re-encode to a frame that decodes to
//! the same message (compared as bytes when a NaN timestamp makes `==`
//! useless). Shared by the `decode` fuzz target and the regression test
//! (`protocol/tests/fuzz_regressions.rs`).

use meridian_protocol::codec::{self, Decoded, Message};

pub fn run(data: &[u8]) {
    let Ok(Decoded::Message(msg)) = codec::decode(data) else { return };
    let bytes = codec::encode(&msg);
    let again = match codec::decode(&bytes) {
        Ok(Decoded::Message(again)) => again,
        other => panic!("encode({msg:?}) does not decode: {other:?}"),
    };
    assert_eq!(codec::encode(&again), bytes, "re-encoding is not stable for {msg:?}");
    if !has_nan(&msg) {
        assert_eq!(again, msg, "encode → decode changed the message");
    }
}

fn has_nan(msg: &Message) -> bool {
    match msg {
        Message::RemoteHeadsChanged { new_heads, .. } => new_heads.values().any(|h| h.timestamp.is_nan()),
        _ => false,
    }
}
