//! `@meridian/client`: the browser binding of the Meridian sync engine.
//!
//! **Invariant:** no sync logic lives here; this crate binds
//! `meridian-protocol` to IndexedDB, WebSocket and JavaScript. The full
//! binding (store, transport, document API) is tracked by issue 4; for now
//! it exposes the identifier helpers so the package builds end to end.

use wasm_bindgen::prelude::*;

/// Checks an `automerge:` URL and returns its document id, or throws.
#[wasm_bindgen(js_name = parseAutomergeUrl)]
pub fn parse_automerge_url(url: &str) -> Result<String, JsError> {
    let parsed: meridian_protocol::ids::AutomergeUrl = url.parse().map_err(|e| JsError::new(&format!("{e}")))?;
    Ok(parsed.document_id.to_string())
}
