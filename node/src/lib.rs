//! # meridian-node
//!
//! The machinery every Meridian node runs, shared by the edge
//! (`meridian-edge`) and the hub (`meridian-hub`): neither depends on the
//! other, both assemble a node from these parts.
//!
//! - [`runtime`]: [`runtime::NodeRuntime`], the event loop that owns the
//!   sync engine, and its storage thread. Transports register a connection
//!   ([`runtime::register`]), send [`runtime::NodeEvent`]s and drain a queue
//!   of [`runtime::Outbound`] frames.
//! - [`store`]: the [`store::DocStore`] trait the runtime needs, and
//!   [`store::SqliteStore`], the embedded backend (also used by device
//!   clients).
//! - [`quic`]: TLS identities (dev CA) and trust, QUIC endpoint configs,
//!   frame IO, and [`quic::pump`], which moves one QUIC stream pair to and
//!   from the runtime.
//! - [`server`]: the automerge-repo WebSocket endpoint and `/healthz`,
//!   `/metrics`; one task per socket.
//! - [`admin`]: who may call operator endpoints ([`admin::protect`]);
//!   [`doc_api`]: the operator's document routes (value now or at earlier
//!   heads, history, rollback, export) of edges and hubs, through an
//!   in-process [`client`].
//! - [`client`]: the native client (device apps, tests, the document
//!   routes) over WebSocket, QUIC or in-process; [`document`]: operations
//!   on one document (JSON at paths, history, versions, rollback);
//!   [`backoff`]: reconnect delays with jitter.
//! - [`telemetry`]: logs, and traces over OTLP.
//! - [`http`]: the HTTP server of every listener ([`http::serve`]: header
//!   read timeout, connection cap, peer address), and a one-shot client.
//! - [`metrics`]: [`metrics::NodeMetrics`], with documented names.
//! - [`throttle`]: a client connection's rate of messages and bytes
//!   (backpressure: past it, its task stops reading).
//! - [`task`]: [`task::AbortOnDrop`], the owner of every spawned task.
//! - [`shutdown`]: the signal the binaries wait for.
//!
//! Driving a node: open a store, start a runtime on it, and hand its
//! [`runtime::NodeRuntime::events`] sender to the transports:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use meridian_node::metrics::{NodeMetrics, Role};
//! use meridian_node::runtime::NodeRuntime;
//! use meridian_node::server::{self, AppState};
//! use meridian_node::store::SqliteStore;
//! use meridian_protocol::engine::EngineConfig;
//! use meridian_protocol::ids::PeerId;
//!
//! let store = SqliteStore::open(std::path::Path::new("data/node.sqlite3"))?;
//! let metrics = Arc::new(NodeMetrics::new(Role::Edge));
//! let config = EngineConfig::new(PeerId::new("my-node".to_owned()), None);
//! let runtime = NodeRuntime::start(Box::new(store), config, Duration::from_secs(1), metrics.clone())?;
//! let app = server::router(AppState {
//!     events: runtime.events(),
//!     metrics: metrics.clone(),
//!     max_message_bytes: meridian_node::DEFAULT_MAX_MESSAGE_BYTES,
//!     ping_interval: Duration::from_secs(10),
//!     auth: None, // open dev mode: bind loopback only
//!     limits: server::ConnLimiter::new(10_000, 256),
//!     rates: Default::default(),
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7300").await?;
//! let served = meridian_node::http::serve(listener, app, meridian_node::http::HttpOptions::default(), metrics)?;
//! meridian_node::shutdown::shutdown_signal().await;
//! let _ = served.stop.send(()); // stop accepting
//! runtime.shutdown().await; // saves sync states, flushes the store
//! # Ok(()) }
//! ```
//!
//! **Invariant:** protocol decisions are made by `meridian_protocol::engine`;
//! this crate only moves bytes, runs storage tasks in order, and reports a
//! write as done only after its transaction committed.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod client;
pub mod config_file;
pub mod doc_api;
pub mod document;
pub mod http;
pub mod metrics;
pub mod quic;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod throttle;

/// Default limit of one protocol message (WebSocket message or QUIC frame).
/// The first sync of a large document is a single message holding the
/// whole document (compressed) and a bloom filter of its history: a
/// 300,000-operation text is about 1 MB, so 64 MiB leaves room for very
/// large documents while bounding what one frame can cost.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
