//! # meridian-hub
//!
//! The cloud hub: QUIC federation endpoint for edges, durable store of every
//! document, placement engine, token issuing. Not built yet (issue 3); it
//! will reuse `meridian_protocol::engine` and `meridian_edge::store`.
