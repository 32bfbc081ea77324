//! `Doc`: a handle on one document for JavaScript. Reads come from the
//! engine's in-memory document; every edit is one engine change (so it is
//! stored, then synced, by the engine).

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{AutomergeError, ObjType, Prop, ReadDoc};
use js_sys::{Array, Function, Promise};
use meridian_protocol::ids::DocumentId;
use serde_json::{Value as Json, json};
use wasm_bindgen::prelude::*;

use crate::convert;
use crate::driver::{Driver, Settle, Shared, drive};
use crate::values::{self, Place, Val};

/// One edit, as `applyOps` takes it and `change(fn)` records it.
#[derive(Debug)]
enum Op {
    Put(Vec<Prop>, Val),
    Delete(Vec<Prop>),
    Insert(Vec<Prop>, usize, Val),
    Splice(Vec<Prop>, usize, isize, String),
    Increment(Vec<Prop>, i64),
    UpdateText(Vec<Prop>, String),
}

/// A document. Obtain one from `client.create()` or `client.find()`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Doc {
    shared: Shared,
    id: DocumentId,
    /// The last `value()` and the heads it was read at: the same object is
    /// returned until the document changes (React's `useSyncExternalStore`
    /// and memoisation compare by identity).
    value: std::cell::RefCell<Option<(Vec<automerge::ChangeHash>, JsValue)>>,
}

impl Doc {
    pub(crate) fn new(shared: Shared, id: DocumentId) -> Self {
        Self { shared, id, value: std::cell::RefCell::new(None) }
    }

    pub(crate) fn id(&self) -> DocumentId {
        self.id
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), JsError> {
        self.apply_with_message(ops, None)
    }

    fn apply_with_message(&self, ops: Vec<Op>, message: Option<String>) -> Result<(), JsError> {
        let id = self.id;
        // Wall-clock seconds, as `@automerge/automerge` records them.
        let mut options = CommitOptions::default().with_time((js_sys::Date::now() / 1000.0).floor() as i64);
        if let Some(m) = message {
            options.set_message(m);
        }
        drive(&self.shared, |d| {
            if d.closed {
                return Err(JsError::new("the client was closed"));
            }
            let now = d.now();
            d.engine
                .change_with(now, id, options, |tx| ops.iter().try_for_each(|op| apply_op(tx, op)))
                .map_err(|e| JsError::new(&e.to_string()))
        })
    }

    fn read<R>(&self, f: impl FnOnce(&automerge::Automerge) -> R) -> Result<R, JsError> {
        let d = self.shared.borrow();
        let am = d
            .engine
            .document(&self.id)
            .ok_or_else(|| JsError::new("the document is not loaded (was the client closed?)"))?;
        Ok(f(am))
    }

    /// A promise resolved through a driver method taking the resolve function.
    fn waiter(&self, register: fn(&mut Driver, DocumentId, Settle)) -> Promise {
        let (promise, settle) = crate::client::deferred();
        let id = self.id;
        drive(&self.shared, |d| register(d, id, settle));
        promise
    }
}

#[wasm_bindgen]
impl Doc {
    /// `automerge:<documentId>`.
    #[wasm_bindgen(getter)]
    pub fn url(&self) -> String {
        self.id.url().to_string()
    }

    #[wasm_bindgen(getter, js_name = documentId)]
    pub fn document_id(&self) -> String {
        self.id.to_string()
    }

    /// The document as JavaScript values (text as strings, `Counter`,
    /// `Date`, `Uint8Array`, `ImmutableString`): the same object until the
    /// document changes. Treat it as read-only.
    pub fn value(&self) -> Result<JsValue, JsError> {
        self.read(|am| {
            let heads = am.get_heads();
            let mut cached = self.value.borrow_mut();
            if let Some((at, value)) = cached.as_ref()
                && *at == heads
            {
                return value.clone();
            }
            let value = values::doc_to_js(am);
            *cached = Some((heads, value.clone()));
            value
        })
    }

    /// Sets `path` (a key, or an array of keys and list indexes) to a
    /// value. Strings become text that can be spliced.
    pub fn put(&self, path: JsValue, value: JsValue) -> Result<(), JsError> {
        self.apply(vec![Op::Put(convert::path_from_js(&path)?, values::val_from_js(&value)?)])
    }

    /// Removes a map key or a list element.
    pub fn delete(&self, path: JsValue) -> Result<(), JsError> {
        self.apply(vec![Op::Delete(convert::path_from_js(&path)?)])
    }

    /// Inserts `value` into the list at `path` before `index`.
    pub fn insert(&self, path: JsValue, index: u32, value: JsValue) -> Result<(), JsError> {
        self.apply(vec![Op::Insert(convert::path_from_js(&path)?, index as usize, values::val_from_js(&value)?)])
    }

    /// Deletes `delete_count` and inserts `text` at `index` of the text at
    /// `path`; positions are UTF-16 code units, as in JavaScript strings.
    pub fn splice(&self, path: JsValue, index: u32, delete_count: i32, text: String) -> Result<(), JsError> {
        self.apply(vec![Op::Splice(convert::path_from_js(&path)?, index as usize, delete_count as isize, text)])
    }

    /// Adds `by` (1 if not given) to the counter at `path` (create it with
    /// `new Counter(n)`).
    pub fn increment(&self, path: JsValue, by: Option<f64>) -> Result<(), JsError> {
        self.apply(vec![Op::Increment(convert::path_from_js(&path)?, step(by)?)])
    }

    /// Makes the text at `path` read `text` with the smallest edit (a
    /// diff against the current text), so concurrent edits elsewhere in it
    /// merge: what an editor or a "restore this version" does.
    #[wasm_bindgen(js_name = updateText)]
    pub fn update_text(&self, path: JsValue, text: String) -> Result<(), JsError> {
        self.apply(vec![Op::UpdateText(convert::path_from_js(&path)?, text)])
    }

    /// Applies several edits as one change: `[["put", path, value],
    /// ["delete", path], ["insert", path, index, value], ["splice", path,
    /// index, deleteCount, text], ["increment", path, by], ["updateText",
    /// path, text]]`, with an
    /// optional commit message. `change(fn, message)` in `index.js` records
    /// these.
    #[wasm_bindgen(js_name = applyOps)]
    pub fn apply_ops(&self, ops: Array, message: Option<String>) -> Result<(), JsError> {
        let ops = ops.iter().map(|op| op_from_js(&op)).collect::<Result<Vec<_>, _>>()?;
        if ops.is_empty() {
            return Ok(());
        }
        self.apply_with_message(ops, message)
    }

    /// The whole document in Automerge's binary format (what
    /// `Automerge.save` writes; `Automerge.load` and `client.import` read it).
    pub fn save(&self) -> Result<Vec<u8>, JsError> {
        self.read(|am| am.save())
    }

    /// Merges a saved document (or changes) into this one, as
    /// `Automerge.merge` does: their changes become part of this document.
    pub fn merge(&self, bytes: Vec<u8>) -> Result<(), JsError> {
        let id = self.id;
        drive(&self.shared, |d| {
            if d.closed {
                return Err(JsError::new("the client was closed"));
            }
            let now = d.now();
            d.engine.import(now, id, &bytes).map_err(|e| JsError::new(&format!("cannot merge: {e}")))
        })
    }

    /// Current heads (hex change hashes).
    pub fn heads(&self) -> Result<Vec<String>, JsError> {
        self.read(|am| am.get_heads().iter().map(|h| h.to_string()).collect())
    }

    /// Every change: `{ hash, actor, seq, time, message, deps }`.
    pub fn history(&self) -> Result<JsValue, JsError> {
        self.read(|am| {
            let changes: Vec<Json> = am
                .get_changes(&[])
                .iter()
                .map(|c| {
                    json!({
                        "hash": c.hash().to_string(),
                        "actor": c.actor_id().to_hex_string(),
                        "seq": c.seq(),
                        "time": c.timestamp(),
                        "message": c.message(),
                        "deps": c.deps().iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            convert::js_from_json(&Json::Array(changes))
        })
    }

    /// The document as it was at `heads` (from `heads()` or a change's
    /// `hash` in `history()`): an earlier version, read-only.
    #[wasm_bindgen(js_name = valueAt)]
    pub fn value_at(&self, heads: Vec<String>) -> Result<JsValue, JsError> {
        let heads = parse_heads(&heads)?;
        self.read(|am| am.fork_at(&heads).map(|old| values::doc_to_js(&old)))?
            .map_err(|e| JsError::new(&format!("no such version: {e}")))
    }

    /// The patches that turn the document at `before` into the document at
    /// `after` (both lists of change hashes), in order; text indexes are
    /// UTF-16 code units. An editor keeps the heads its view shows and
    /// applies `diff(viewHeads, heads())` to follow remote edits precisely.
    pub fn diff(&self, before: Vec<String>, after: Vec<String>) -> Result<JsValue, JsError> {
        let (before, after) = (parse_heads(&before)?, parse_heads(&after)?);
        self.read(|am| {
            known(am, before.iter().chain(&after))?;
            Ok(values::patches_to_js(&am.diff(&before, &after)))
        })?
    }

    /// [`Doc::diff`] in this document with `other` (a saved document
    /// sharing history with it, or changes) merged into a copy first: the
    /// patches from `before` to `after`, where either may be heads only the
    /// other has. The document itself is not changed.
    #[wasm_bindgen(js_name = diffWith)]
    pub fn diff_with(&self, other: Vec<u8>, before: Vec<String>, after: Vec<String>) -> Result<JsValue, JsError> {
        let (before, after) = (parse_heads(&before)?, parse_heads(&after)?);
        self.read(|am| {
            let mut merged = am.fork();
            merged.load_incremental(&other).map_err(|e| JsError::new(&format!("cannot merge: {e}")))?;
            known(&merged, before.iter().chain(&after))?;
            Ok(values::patches_to_js(&merged.diff(&before, &after)))
        })?
    }

    /// A stable position in the text (or list) at `path`: it stays next to
    /// the same character while others edit. For presence cursors.
    pub fn cursor(&self, path: JsValue, index: u32) -> Result<String, JsError> {
        let path = convert::path_from_js(&path)?;
        self.read(|am| {
            let obj = convert::resolve_obj(am, &path)?;
            am.get_cursor(&obj, index as usize, None).map(|c| c.to_string())
        })?
        .map_err(|e| JsError::new(&e.to_string()))
    }

    /// The current index of a `cursor()` position in the text at `path`.
    #[wasm_bindgen(js_name = cursorIndex)]
    pub fn cursor_index(&self, path: JsValue, cursor: String) -> Result<u32, JsError> {
        let path = convert::path_from_js(&path)?;
        let cursor =
            automerge::Cursor::try_from(cursor.as_str()).map_err(|e| JsError::new(&format!("bad cursor: {e}")))?;
        self.read(|am| {
            let obj = convert::resolve_obj(am, &path)?;
            am.get_cursor_position(&obj, &cursor, None).map(|i| i as u32)
        })?
        .map_err(|e| JsError::new(&e.to_string()))
    }

    /// Calls `cb({ patches, heads })` after every change, local or remote,
    /// as soon as it is applied (`whenSaved()` tells when it is durable
    /// here). Returns a function that unsubscribes.
    pub fn subscribe(&self, cb: Function) -> Result<Function, JsError> {
        let heads = self.read(|am| am.get_heads())?;
        let id = self.id;
        let sub = drive(&self.shared, |d| {
            let l = d.docs.entry(id).or_default();
            if l.changes.is_empty() {
                l.last_heads = heads;
            }
            l.changes.add(cb)
        });
        Ok(self.unsubscriber(move |d| {
            if let Some(l) = d.docs.get_mut(&id) {
                l.changes.remove(sub);
            }
        }))
    }

    /// Sends an ephemeral (presence) message about this document to every
    /// peer that has it open; `value` must be JSON-serialisable.
    pub fn broadcast(&self, value: JsValue) -> Result<(), JsError> {
        let data = convert::cbor_from_json(&convert::json_from_js(&value)?);
        let id = self.id;
        drive(&self.shared, |d| {
            d.ephemeral_count += 1;
            let (session, count) = (d.session_id.clone(), d.ephemeral_count);
            d.engine.broadcast_ephemeral(id, &session, count, data);
        });
        Ok(())
    }

    /// Calls `cb({ senderId, message })` for every ephemeral message about
    /// this document. Returns a function that unsubscribes.
    #[wasm_bindgen(js_name = onEphemeral)]
    pub fn on_ephemeral(&self, cb: Function) -> Function {
        let id = self.id;
        let sub = drive(&self.shared, |d| d.docs.entry(id).or_default().ephemeral.add(cb));
        self.unsubscriber(move |d| {
            if let Some(l) = d.docs.get_mut(&id) {
                l.ephemeral.remove(sub);
            }
        })
    }

    /// Resolves once every change made so far is durable in local storage.
    #[wasm_bindgen(js_name = whenSaved)]
    pub fn when_saved(&self) -> Promise {
        self.waiter(Driver::when_saved)
    }

    /// Resolves once the server has acknowledged every change made so far
    /// (its heads cover ours; an edge only advertises committed heads).
    #[wasm_bindgen(js_name = whenSynced)]
    pub fn when_synced(&self) -> Promise {
        self.waiter(Driver::when_synced)
    }
}

impl Doc {
    fn unsubscriber(&self, f: impl FnOnce(&mut Driver) + 'static) -> Function {
        let weak = std::rc::Rc::downgrade(&self.shared);
        let closure = Closure::once_into_js(move || {
            if let Some(shared) = weak.upgrade() {
                drive(&shared, f);
            }
        });
        closure.into()
    }
}

/// Refuses heads the document does not hold (automerge's diff would panic).
fn known<'a>(
    am: &automerge::Automerge,
    mut heads: impl Iterator<Item = &'a automerge::ChangeHash>,
) -> Result<(), JsError> {
    match heads.find(|h| am.get_change_by_hash(h).is_none()) {
        Some(h) => Err(JsError::new(&format!("unknown change {h}"))),
        None => Ok(()),
    }
}

fn parse_heads(heads: &[String]) -> Result<Vec<automerge::ChangeHash>, JsError> {
    heads.iter().map(|h| h.parse().map_err(|_| JsError::new(&format!("`{h}` is not a change hash")))).collect()
}

fn op_from_js(op: &JsValue) -> Result<Op, JsError> {
    let a = Array::from(op);
    let kind = a.get(0).as_string().unwrap_or_default();
    let path = convert::path_from_js(&a.get(1))?;
    let num =
        |i: u32| a.get(i).as_f64().ok_or_else(|| JsError::new(&format!("`{kind}` op: argument {i} must be a number")));
    Ok(match kind.as_str() {
        "put" => Op::Put(path, values::val_from_js(&a.get(2))?),
        "delete" => Op::Delete(path),
        "insert" => Op::Insert(path, num(2)? as usize, values::val_from_js(&a.get(3))?),
        "splice" => Op::Splice(path, num(2)? as usize, num(3)? as isize, a.get(4).as_string().unwrap_or_default()),
        "increment" => Op::Increment(path, step(a.get(2).as_f64())?),
        "updateText" => Op::UpdateText(path, a.get(2).as_string().unwrap_or_default()),
        other => return Err(JsError::new(&format!("unknown op `{other}`"))),
    })
}

/// A counter's step: a whole number, 1 if not given.
fn step(by: Option<f64>) -> Result<i64, JsError> {
    match by {
        None => Ok(1),
        Some(by) if by.is_finite() && by.fract() == 0.0 && by.abs() < 2f64.powi(53) => Ok(by as i64),
        Some(by) => Err(JsError::new(&format!("increment by a whole number, not {by}"))),
    }
}

fn apply_op(tx: &mut Transaction<'_>, op: &Op) -> Result<(), AutomergeError> {
    match op {
        Op::Put(path, v) => {
            let (obj, prop) = convert::resolve_parent(tx, path)?;
            values::write(tx, &obj, Place::Put(prop), v)
        }
        Op::Delete(path) => {
            let (obj, prop) = convert::resolve_parent(tx, path)?;
            tx.delete(&obj, prop)
        }
        Op::Insert(path, index, v) => {
            let obj = convert::resolve_obj(tx, path)?;
            expect_type(tx, &obj, ObjType::List)?;
            values::write(tx, &obj, Place::Insert(*index), v)
        }
        Op::Splice(path, index, delete, text) => {
            let obj = convert::resolve_obj(tx, path)?;
            expect_type(tx, &obj, ObjType::Text)?;
            tx.splice_text(&obj, *index, *delete, text)
        }
        Op::Increment(path, by) => {
            let (obj, prop) = convert::resolve_parent(tx, path)?;
            tx.increment(&obj, prop, *by)
        }
        Op::UpdateText(path, text) => {
            let obj = convert::resolve_obj(tx, path)?;
            expect_type(tx, &obj, ObjType::Text)?;
            tx.update_text(&obj, text)
        }
    }
}

fn expect_type(tx: &Transaction<'_>, obj: &automerge::ObjId, ty: ObjType) -> Result<(), AutomergeError> {
    let actual = tx.object_type(obj)?;
    if actual != ty {
        return Err(AutomergeError::InvalidOp(actual));
    }
    Ok(())
}
