//! Test support for Meridian: the deterministic simulation harness and helpers to start real nodes.

pub mod clients;
pub mod fault_proxy;
pub mod js;
pub mod process;
pub mod raw;
pub mod sim;
