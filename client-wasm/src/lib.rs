//! `@meridian/client`: the browser binding of the Meridian sync engine.
//!
//! **Invariant:** no sync logic lives here. This crate binds
//! `meridian-protocol`'s [`Engine`](meridian_protocol::engine::Engine) to
//! IndexedDB ([`store`]), WebSocket ([`net`]) and JavaScript ([`client`],
//! [`doc`]); the engine decides what to store, what to send and when.
//!
//! ```js
//! import { Client } from "@meridian/client";
//! const client = await Client.open({ urls: ["ws://127.0.0.1:7300/sync"] });
//! const doc = await client.create({ title: "hello" });
//! doc.splice("title", 5, 0, ", world");
//! doc.subscribe(({ patches }) => console.log(patches));
//! console.log(doc.url, doc.value());
//! ```
//!
//! How it is driven: every input (a socket event, a timer, a finished
//! IndexedDB transaction, an API call) goes through [`driver::drive`],
//! which feeds the engine and drains its outputs: frames to the socket,
//! storage tasks to the IndexedDB queue (run in order, reported done only
//! once committed), events to promises and subscribers.

pub mod client;
pub mod convert;
pub mod doc;
pub mod driver;
pub mod net;
pub mod platform;
pub mod store;
pub mod values;

pub use client::Client;
pub use doc::Doc;

use wasm_bindgen::prelude::*;

/// Reports a panic on the console with its message (the module cannot go
/// on after one: wasm aborts, so the message is all there is to debug).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        driver::error(&format!("meridian: internal error (please report): {info}"));
    }));
}

/// Checks an `automerge:` URL and returns its document id, or throws.
#[wasm_bindgen(js_name = parseAutomergeUrl)]
pub fn parse_automerge_url(url: &str) -> Result<String, JsError> {
    let parsed: meridian_protocol::ids::AutomergeUrl = url.parse().map_err(|e| JsError::new(&format!("{e}")))?;
    Ok(parsed.document_id.to_string())
}
