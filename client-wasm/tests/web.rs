//! wasm-bindgen tests in headless Chromium: the IndexedDB store, the
//! offline queue (edits made with no reachable edge survive a reopen), and
//! the JavaScript-facing conversions (UTF-16 text, patches, CBOR).
//!
//! Run by `cargo xtask test` (wasm-bindgen-test-runner + chromedriver).
#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Function, Promise, Reflect};
use meridian_client_wasm::Client;
use meridian_client_wasm::convert;
use meridian_client_wasm::store::{self, IdbStore};
use meridian_protocol::ids::{DocumentId, StorageId};
use meridian_protocol::storage::{StorageResult, StorageTask};
use serde_json::json;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn ok<T>(r: Result<T, JsError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{}", store_describe(&JsValue::from(e))),
    }
}

fn store_describe(v: &JsValue) -> String {
    Reflect::get(v, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_else(|| format!("{v:?}"))
}

fn obj(v: serde_json::Value) -> JsValue {
    convert::js_from_json(&v)
}

fn json_of(v: &JsValue) -> serde_json::Value {
    ok(convert::json_from_js(v))
}

fn doc_id(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

#[wasm_bindgen_test]
async fn idb_store_runs_tasks_in_order_and_persists() {
    let name = "meridian-test-store";
    store::delete_database(name).await.unwrap();
    let db = IdbStore::open(name, StorageId::new("sid-1")).await.unwrap();
    assert_eq!(db.storage_id().as_str(), "sid-1");
    let d = doc_id(1);
    let results = db
        .run(&[
            StorageTask::AppendChunk { doc: d, data: vec![1, 2] },
            StorageTask::AppendChunk { doc: d, data: vec![3] },
            StorageTask::LoadDoc { doc: d },
            StorageTask::LoadDoc { doc: doc_id(2) },
        ])
        .await;
    assert_eq!(
        results,
        vec![
            StorageResult::Done,
            StorageResult::Done,
            StorageResult::Loaded(Some(vec![1, 2, 3])),
            StorageResult::Loaded(None)
        ]
    );
    // A compaction replaces the chunks written before it; appends follow it.
    let results = db
        .run(&[
            StorageTask::Compact { doc: d, snapshot: vec![9] },
            StorageTask::AppendChunk { doc: d, data: vec![4] },
            StorageTask::PutSyncState { doc: d, peer: StorageId::new("edge"), state: vec![7, 7] },
        ])
        .await;
    assert!(results.iter().all(|r| *r == StorageResult::Done));
    db.close();

    // Reopened: same storage id (the fresh one is ignored), same data.
    let db = IdbStore::open(name, StorageId::new("sid-2")).await.unwrap();
    assert_eq!(db.storage_id().as_str(), "sid-1");
    let results = db
        .run(&[
            StorageTask::LoadDoc { doc: d },
            StorageTask::LoadSyncState { doc: d, peer: StorageId::new("edge") },
            StorageTask::DeleteDoc { doc: d },
            StorageTask::LoadDoc { doc: d },
            StorageTask::LoadSyncState { doc: d, peer: StorageId::new("edge") },
        ])
        .await;
    assert_eq!(
        results,
        vec![
            StorageResult::Loaded(Some(vec![9, 4])),
            StorageResult::Loaded(Some(vec![7, 7])),
            StorageResult::Done,
            StorageResult::Loaded(None),
            StorageResult::Loaded(None),
        ]
    );
    db.close();
}

/// Two tabs share one database: a compaction in one must not delete
/// chunks the other wrote (its snapshot does not contain them).
#[wasm_bindgen_test]
async fn compaction_keeps_chunks_written_by_another_tab() {
    let name = "meridian-test-tabs";
    store::delete_database(name).await.unwrap();
    let tab_a = IdbStore::open(name, StorageId::new("s")).await.unwrap();
    let tab_b = IdbStore::open(name, StorageId::new("s")).await.unwrap();
    let d = doc_id(3);
    assert_eq!(tab_a.run(&[StorageTask::AppendChunk { doc: d, data: vec![1] }]).await, vec![StorageResult::Done]);
    assert_eq!(tab_b.run(&[StorageTask::AppendChunk { doc: d, data: vec![2] }]).await, vec![StorageResult::Done]);
    let results = tab_a
        .run(&[
            StorageTask::Compact { doc: d, snapshot: vec![10] },
            StorageTask::AppendChunk { doc: d, data: vec![3] },
            StorageTask::LoadDoc { doc: d },
        ])
        .await;
    // The snapshot loads first, then tab B's chunk and the later append.
    assert_eq!(results[2], StorageResult::Loaded(Some(vec![10, 2, 3])));
    tab_a.close();
    tab_b.close();
}

#[wasm_bindgen_test]
async fn offline_edits_persist_and_reopen_without_network() {
    let name = "meridian-test-offline";
    store::delete_database(name).await.unwrap();
    // Nothing listens on port 9: the client keeps retrying in the background.
    let options =
        obj(json!({"urls": ["ws://127.0.0.1:9/sync"], "dbName": name, "minBackoffMs": 20, "maxBackoffMs": 200}));
    let client = ok(Client::open(options.clone()).await);
    let doc = ok(client.create(obj(json!({"title": "draft", "items": []}))).await);
    ok(doc.splice("title".into(), 5, 0, " one".into()));
    ok(doc.insert(obj(json!(["items"])), 0, "first".into()));
    ok(doc.put("done".into(), JsValue::FALSE));
    JsFuture::from(doc.when_saved()).await.unwrap();
    assert_ne!(client.connection_state(), "connected");
    let url = doc.url();
    client.close().await;

    let client = ok(Client::open(options).await);
    let doc = ok(client.find(url).await);
    assert_eq!(json_of(&ok(doc.value())), json!({"title": "draft one", "items": ["first"], "done": false}));
    assert_eq!(js_sys::Array::from(&ok(doc.history())).length(), 4);
    client.close().await;
}

#[wasm_bindgen_test]
async fn text_positions_are_utf16_code_units() {
    let client = ok(Client::open(obj(json!({"dbName": null}))).await);
    assert_eq!(client.connection_state(), "local");
    let doc = ok(client.create(obj(json!({"t": "a😀b"}))).await);
    // "😀" is two UTF-16 code units: index 3 is just before "b".
    ok(doc.splice("t".into(), 3, 0, "X".into()));
    ok(doc.splice("t".into(), 1, 2, "é".into()));
    assert_eq!(json_of(&ok(doc.value())), json!({"t": "aéXb"}));
    client.close().await;
}

/// A promise resolved with the first value `subscribe` delivers.
fn first_event() -> (Promise, Function) {
    let mut resolve = None;
    let promise = Promise::new(&mut |r, _| resolve = Some(r));
    (promise, resolve.unwrap())
}

#[wasm_bindgen_test]
async fn subscribers_get_patches_and_counters_increment() {
    let client = ok(Client::open(obj(json!({"dbName": null}))).await);
    let init = obj(json!({"list": [1]}));
    Reflect::set(&init, &"likes".into(), &counter(1.0)).unwrap();
    let doc = ok(client.create(init).await);
    let (promise, resolve) = first_event();
    let _unsubscribe = ok(doc.subscribe(resolve));
    let ops: Array = [
        obj(json!(["increment", "likes", 2])),
        obj(json!(["insert", ["list"], 1, "two"])),
        obj(json!(["delete", "likes"])),
    ]
    .into_iter()
    .collect();
    ok(doc.apply_ops(ops, Some("ops".into())));
    let event = JsFuture::from(promise).await.unwrap();
    let patches = json_of(&Reflect::get(&event, &"patches".into()).unwrap());
    let actions: Vec<&str> = patches.as_array().unwrap().iter().map(|p| p["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"insert"), "{patches}");
    assert!(actions.contains(&"del"), "{patches}");
    assert_eq!(json_of(&ok(doc.value())), json!({"list": [1, "two"]}));
    client.close().await;
}

/// An object marked as `@automerge/automerge`'s (and the package's) counter.
fn counter(n: f64) -> JsValue {
    let c = js_sys::Object::new();
    Reflect::set(&c, &js_sys::Symbol::for_("_am_counter"), &JsValue::TRUE).unwrap();
    Reflect::set(&c, &"value".into(), &n.into()).unwrap();
    c.into()
}

#[wasm_bindgen_test]
async fn values_round_trip_losslessly() {
    let client = ok(Client::open(obj(json!({"dbName": null}))).await);
    let init = obj(json!({"n": 1, "f": 0.5, "nil": null}));
    let bytes = js_sys::Uint8Array::from(&[1u8, 2, 255][..]);
    Reflect::set(&init, &"bytes".into(), &bytes).unwrap();
    Reflect::set(&init, &"when".into(), &js_sys::Date::new(&1_234_567.0.into())).unwrap();
    Reflect::set(&init, &"likes".into(), &counter(3.0)).unwrap();
    let doc = ok(client.create(init).await);
    ok(doc.increment("likes".into(), None));
    let v = ok(doc.value());
    let get = |k: &str| Reflect::get(&v, &k.into()).unwrap();
    assert_eq!(js_sys::Uint8Array::from(get("bytes")).to_vec(), vec![1, 2, 255]);
    assert!(get("when").is_instance_of::<js_sys::Date>());
    assert_eq!(js_sys::Date::from(get("when")).get_time(), 1_234_567.0);
    // Without the package's classes registered (index.js does it), a counter reads as its number.
    assert_eq!(get("likes").as_f64(), Some(4.0));
    assert_eq!(get("f").as_f64(), Some(0.5));
    assert!(get("nil").is_null());
    assert!(js_sys::Object::is_frozen(&v.clone().into()), "the value is frozen");
    assert!(ok(doc.value()) == v, "the same object until the document changes");
    let undefined = obj(json!({}));
    Reflect::set(&undefined, &"x".into(), &JsValue::UNDEFINED).unwrap();
    assert!(doc.put("bad".into(), undefined).is_err(), "undefined is refused");
    client.close().await;
}

#[wasm_bindgen_test]
fn cbor_round_trips_json_values() {
    let v = json!({"cursor": 3, "name": "ana", "neg": -5, "f": 1.5, "list": [true, null]});
    assert_eq!(convert::json_from_cbor(&convert::cbor_from_json(&v)).unwrap(), v);
}

#[wasm_bindgen_test]
async fn versions_diffs_and_cursors_follow_the_text() {
    let client = ok(Client::open(obj(json!({"dbName": null}))).await);
    let doc = ok(client.create(obj(json!({"text": "hello world"}))).await);
    let v1 = ok(doc.heads());
    // A cursor just before "world" (index 6) stays before it while text is
    // inserted before it and deleted after it.
    let cursor = ok(doc.cursor("text".into(), 6));
    ok(doc.splice("text".into(), 0, 0, "😀 ".into()));
    ok(doc.splice("text".into(), 14, 0, "!".into()));
    assert_eq!(json_of(&ok(doc.value())), json!({"text": "😀 hello world!"}));
    assert_eq!(ok(doc.cursor_index("text".into(), cursor.clone())), 9);
    let v3 = ok(doc.heads());
    // Earlier versions read back, and the diff replays the edits in order
    // with UTF-16 indexes.
    assert_eq!(json_of(&ok(doc.value_at(v1.clone()))), json!({"text": "hello world"}));
    let patches = json_of(&ok(doc.diff(v1.clone(), v3.clone())));
    let splices: Vec<(u64, &str)> = patches
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"][1].as_u64().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    assert_eq!(splices, vec![(0, "😀 "), (14, "!")], "{patches}");
    assert!(doc.value_at(vec!["00".repeat(32)]).is_err(), "an unknown version is an error");
    assert!(doc.diff(vec!["nonsense".into()], v3).is_err());
    assert!(doc.cursor_index("text".into(), "not-a-cursor".into()).is_err());
    client.close().await;
}

#[wasm_bindgen_test]
async fn go_offline_stays_offline_until_go_online() {
    // Nothing listens on port 9; the state machine is what is tested here
    // (the demo's end-to-end test covers a real edge).
    let options = obj(json!({"urls": ["ws://127.0.0.1:9/sync"], "dbName": null, "minBackoffMs": 10}));
    let client = ok(Client::open(options).await);
    client.go_offline();
    assert_eq!(client.connection_state(), "offline");
    // Backoff timers must not reconnect while offline was asked for.
    let sleep = Promise::new(&mut |r, _| {
        let set_timeout: Function = Reflect::get(&js_sys::global(), &"setTimeout".into()).unwrap().into();
        set_timeout.call2(&JsValue::NULL, &r, &100.into()).unwrap();
    });
    JsFuture::from(sleep).await.unwrap();
    assert_eq!(client.connection_state(), "offline");
    client.go_online();
    assert_ne!(client.connection_state(), "offline");
    client.close().await;
}
