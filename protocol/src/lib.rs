//! # meridian-protocol
//!
//! Identifiers, the automerge-repo v1 wire codec, storage effects and the
//! sans-IO sync engine shared by every Meridian node: the browser client,
//! device clients, edges and the hub.
//!
//! **Invariant:** nothing in this crate does IO, reads a clock or uses a
//! global RNG. Time comes in as [`engine::Millis`], randomness from a seed
//! in [`engine::EngineConfig`], and every effect leaves as an
//! [`engine::Output`]. Outputs are produced in a deterministic order (no
//! `HashMap` iteration), so a simulation with the same inputs produces the
//! same trace. The crate builds for `wasm32-unknown-unknown`.
//!
//! ## Driving an engine
//! ```
//! use meridian_protocol::engine::{Engine, EngineConfig, Millis, Output, Direction};
//! use meridian_protocol::storage::MemoryStore;
//! use meridian_protocol::ids::PeerId;
//!
//! let mut engine = Engine::new(EngineConfig::new(PeerId::new("edge"), None));
//! let mut store = MemoryStore::new();
//! let conn = engine.handle_connect(Millis(0), Direction::Incoming);
//! // ... feed frames with `handle_frame(now, conn, &bytes)`, then:
//! while let Some(out) = engine.poll_output() {
//!     match out {
//!         Output::Storage { id, task } => {
//!             let result = store.execute(&task);
//!             engine.handle_storage_result(Millis(0), id, result);
//!         }
//!         Output::Send { conn, message } => { let _bytes = meridian_protocol::codec::encode(&message); }
//!         Output::Close { .. } | Output::Event(_) => {}
//!     }
//! }
//! # let _ = conn;
//! ```

pub mod backoff;
pub mod codec;
pub mod engine;
pub mod ids;
pub mod snapshot;
pub mod storage;

pub use automerge;
