//! # meridian-edge
//!
//! The edge node: an automerge-repo compatible sync server that keeps its
//! documents in SQLite. Browsers and the JS automerge-repo connect over
//! WebSocket at `/sync` (or `/`).
//!
//! - [`config`]: [`config::EdgeConfig`], built by the binary from flags and
//!   env vars, or directly by tests.
//! - [`runtime`]: the event loop that owns the sync engine and the SQLite
//!   thread; shared with the hub.
//! - [`node`]: [`node::EdgeNode`] starts an edge (what tests run in-process).
//! - [`uplink`]: the QUIC link to the hub, with reconnect; [`quic`] holds
//!   the TLS and framing plumbing shared with the hub.
//! - [`peers`]: homes announced by the hub and direct links to home edges.
//! - [`server`]: HTTP and WebSocket glue.
//! - [`store`]: the SQLite store (also used by the hub and device clients).
//! - [`metrics`]: Prometheus metrics with documented names.
//!
//! **Invariant:** protocol decisions are made by `meridian_protocol::engine`;
//! this crate only moves bytes, runs storage tasks in order, and reports a
//! write as done only after its transaction committed.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod link;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod quic;
pub mod report;
pub mod runtime;
pub mod server;
pub mod store;
pub mod uplink;

pub use config::EdgeConfig;
pub use node::EdgeNode;
