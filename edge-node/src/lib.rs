//! # meridian-edge
//!
//! The edge node: an automerge-repo compatible sync server that keeps its
//! documents in SQLite. Browsers and the JS automerge-repo connect over
//! WebSocket at `/sync` (or `/`). The runtime, store, QUIC plumbing,
//! WebSocket server and metrics come from `meridian_node`, shared with the
//! hub; this crate adds what only an edge does.
//!
//! - [`config`]: [`config::EdgeConfig`] and [`config::UplinkConfig`], built
//!   by the binary from flags and env vars, or directly by tests.
//! - [`node`]: [`node::EdgeNode`] starts an edge (what tests run in-process);
//!   [`error::EdgeError`] says why it could not.
//! - [`uplink`]: the QUIC link to the hub, with reconnect; [`report`] sends
//!   demand and latency reports beside it.
//! - [`peers`]: homes announced by the hub and direct links to home edges.
//! - [`info`]: `GET /info`. The operator's document routes, the native
//!   [`client`] and the document operations behind `meridian-edge client`
//!   are `meridian_node`'s (`doc_api`, `client`, `document`), shared with
//!   the hub.
//!
//! Modules depend on each other in one direction only: `node` assembles
//! `uplink`, `peers` and `info`; `uplink` uses `report` and `peers`;
//! `error` uses only `config`, which uses nothing else here.
//!
//! **Invariant:** protocol decisions are made by `meridian_protocol::engine`;
//! this crate only moves bytes, runs storage tasks in order, and reports a
//! write as done only after its transaction committed.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
pub mod info;
pub mod node;
pub mod peers;
pub mod report;
pub mod uplink;

pub use config::EdgeConfig;
/// The native client (device apps, tests): `meridian_node::client`.
pub use meridian_node::client;
pub use node::EdgeNode;
