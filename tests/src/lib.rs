//! Test support for Meridian: the deterministic simulation harness and helpers to start real nodes.

pub mod bench;
pub mod chaos;
pub mod clients;
pub mod disk;
pub mod edges;
pub mod http;
/// The fault proxy lives in its own crate (the demo cluster uses it too).
pub use meridian_netsim as fault_proxy;
pub mod js;
pub mod nats;
pub mod otlp;
pub mod pg;
pub mod process;
pub mod raw;
pub mod regions;
pub mod sim;
