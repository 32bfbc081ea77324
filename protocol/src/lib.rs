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
//! Feed it input through the `handle_*` methods, then hand its outputs to
//! a [`drive::Driver`] with [`engine::Engine::drive`], and sleep until the
//! deadline that returns (see [`drive`] for a whole driver).
//! [`testing`] is the harness the engine tests drive it with.

pub mod backoff;
pub mod chunks;
pub mod codec;
pub mod drive;
pub mod engine;
pub mod ids;
pub mod log;
pub mod snapshot;
pub mod storage;
pub mod testing;

pub use automerge;
