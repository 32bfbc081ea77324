//! The client's local replica: IndexedDB in browsers, memory where there is
//! no IndexedDB (Node) or when the application asks for an ephemeral client.
//!
//! The engine's [`StorageTask`]s run in the order they were emitted. An
//! [`IdbStore`] runs every task queued so far as one batch in one readwrite
//! transaction (`js/idb.js`) and reports the results only once it committed,
//! so a write is never reported done before it is durable.

use js_sys::{Array, Object, Reflect, Uint8Array};
use meridian_protocol::ids::StorageId;
use meridian_protocol::storage::{StorageResult, StorageTask};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/idb.js")]
extern "C" {
    #[wasm_bindgen(js_name = idbAvailable)]
    fn idb_available() -> bool;
    #[wasm_bindgen(js_name = idbOpen, catch)]
    async fn idb_open(name: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = idbClose)]
    fn idb_close(db: &JsValue);
    #[wasm_bindgen(js_name = idbStorageId, catch)]
    async fn idb_storage_id(db: &JsValue, fresh: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = idbRun, catch)]
    async fn idb_run(db: &JsValue, tasks: Array) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = idbDelete, catch)]
    async fn idb_delete(name: &str) -> Result<JsValue, JsValue>;
}

/// Whether this JavaScript environment has IndexedDB.
pub fn indexed_db_available() -> bool {
    idb_available()
}

/// Deletes a database (tests and "sign out" flows).
pub async fn delete_database(name: &str) -> Result<(), JsValue> {
    idb_delete(name).await.map(drop)
}

/// An open IndexedDB database holding one client's replica.
#[derive(Debug, Clone)]
pub struct IdbStore {
    db: JsValue,
    storage_id: StorageId,
}

impl IdbStore {
    /// Opens (or creates) the database. `fresh_id` becomes the storage id
    /// if the database has none yet.
    pub async fn open(name: &str, fresh_id: StorageId) -> Result<Self, JsValue> {
        let db = idb_open(name).await?;
        let id = idb_storage_id(&db, fresh_id.as_str()).await?;
        let id = id.as_string().ok_or_else(|| JsValue::from_str("stored storage id is not a string"))?;
        Ok(Self { db, storage_id: StorageId::new(id) })
    }

    pub fn storage_id(&self) -> &StorageId {
        &self.storage_id
    }

    pub fn close(&self) {
        idb_close(&self.db);
    }

    /// Runs `tasks` in order, in one transaction; one result per task.
    /// If the transaction fails, every task in it failed.
    pub async fn run(&self, tasks: &[StorageTask]) -> Vec<StorageResult> {
        let batch: Array = tasks.iter().map(task_to_js).collect();
        match idb_run(&self.db, batch).await {
            Ok(results) => {
                let results = Array::from(&results);
                tasks.iter().zip(results.iter()).map(|(task, r)| result_from_js(task, &r)).collect()
            }
            Err(e) => {
                let detail = format!("IndexedDB: {}", describe(&e));
                tasks.iter().map(|_| StorageResult::Failed(detail.clone())).collect()
            }
        }
    }
}

fn task_to_js(task: &StorageTask) -> JsValue {
    let o = Object::new();
    let set = |k: &str, v: JsValue| {
        let _ = Reflect::set(&o, &JsValue::from_str(k), &v);
    };
    let (op, doc) = match task {
        // A browser's store is its own: a refresh's read is a load.
        StorageTask::LoadDoc { doc } | StorageTask::ReadDoc { doc } => ("load", doc),
        StorageTask::AppendChunk { doc, data } => {
            set("data", Uint8Array::from(data.as_slice()).into());
            ("append", doc)
        }
        StorageTask::Compact { doc, snapshot } => {
            set("data", Uint8Array::from(snapshot.as_slice()).into());
            ("compact", doc)
        }
        StorageTask::DeleteDoc { doc } => ("delete", doc),
        // Not issued in a browser (its engine keeps its copy: no
        // `refetch_divergent`), but kept correct: old chunks are set aside.
        StorageTask::Quarantine { doc, snapshot, .. } => {
            set("data", Uint8Array::from(snapshot.as_slice()).into());
            ("quarantine", doc)
        }
        StorageTask::LoadSyncState { doc, peer } => {
            set("peer", JsValue::from_str(peer.as_str()));
            ("loadSync", doc)
        }
        StorageTask::PutSyncState { doc, peer, state } => {
            set("peer", JsValue::from_str(peer.as_str()));
            set("data", Uint8Array::from(state.as_slice()).into());
            ("putSync", doc)
        }
    };
    set("op", JsValue::from_str(op));
    set("doc", JsValue::from_str(&doc.to_string()));
    o.into()
}

fn result_from_js(task: &StorageTask, r: &JsValue) -> StorageResult {
    match task {
        StorageTask::LoadDoc { .. } | StorageTask::ReadDoc { .. } | StorageTask::LoadSyncState { .. } => {
            if r.is_null() || r.is_undefined() {
                StorageResult::Loaded(None)
            } else {
                StorageResult::Loaded(Some(Uint8Array::new(r).to_vec()))
            }
        }
        _ => StorageResult::Done,
    }
}

/// A readable message for a thrown JavaScript value.
pub(crate) fn describe(e: &JsValue) -> String {
    if let Some(s) = e.as_string() {
        return s;
    }
    Reflect::get(e, &JsValue::from_str("message")).ok().and_then(|m| m.as_string()).unwrap_or_else(|| format!("{e:?}"))
}
