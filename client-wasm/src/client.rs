//! `Client`: opens the local store, starts the engine and the transport.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Promise, Reflect};
use meridian_protocol::engine::{Engine, EngineConfig};
use meridian_protocol::ids::{AutomergeUrl, PeerId, StorageId};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::doc::Doc;
use crate::driver::{Driver, Settle, Shared, drive};
use crate::net::Net;
use crate::platform::{self, NetworkListener};
use crate::store::{self, IdbStore};
use crate::values::{self, Place, Val};

/// Options of `Client.open`, read from a plain JavaScript object.
#[derive(Debug)]
struct Options {
    urls: Vec<String>,
    /// `None`: keep documents in memory only.
    db_name: Option<String>,
    peer_id: Option<String>,
    min_backoff_ms: f64,
    max_backoff_ms: f64,
    handshake_timeout_ms: f64,
    ws_ctor: JsValue,
    /// An access token, presented as `?token=` on every edge URL.
    token: Option<String>,
    /// `getToken`: a function returning a token (or a promise of one),
    /// called before every connection attempt.
    get_token: Option<Function>,
}

impl Options {
    fn from_js(o: &JsValue) -> Result<Self, JsError> {
        let get = |k: &str| {
            if o.is_object() { Reflect::get(o, &k.into()).unwrap_or(JsValue::UNDEFINED) } else { JsValue::UNDEFINED }
        };
        let urls = match get("urls") {
            v if v.is_undefined() || v.is_null() => Vec::new(),
            v if Array::is_array(&v) => Array::from(&v).iter().filter_map(|u| u.as_string()).collect(),
            v => v.as_string().map(|u| vec![u]).ok_or_else(|| JsError::new("`urls` is an array of ws:// URLs"))?,
        };
        let db = get("dbName");
        let db_name = if db.is_null() || !store::indexed_db_available() {
            None
        } else {
            Some(db.as_string().unwrap_or_else(|| "meridian".into()))
        };
        let ws_ctor = match get("WebSocket") {
            v if v.is_function() => v,
            _ => Reflect::get(&js_sys::global(), &"WebSocket".into()).unwrap_or(JsValue::UNDEFINED),
        };
        if !urls.is_empty() && !ws_ctor.is_function() {
            return Err(JsError::new(
                "no WebSocket in this runtime (Node before 22?): pass one as the `WebSocket` option, e.g. \
                 `import { WebSocket } from \"ws\"` then `Client.open({ urls, WebSocket })` or \
                 `new Repo({ network, WebSocket })`",
            ));
        }
        Ok(Self {
            urls,
            db_name,
            peer_id: get("peerId").as_string(),
            min_backoff_ms: get("minBackoffMs").as_f64().unwrap_or(100.0),
            max_backoff_ms: get("maxBackoffMs").as_f64().unwrap_or(10_000.0),
            handshake_timeout_ms: get("handshakeTimeoutMs").as_f64().unwrap_or(10_000.0),
            ws_ctor,
            token: get("token").as_string().filter(|t| !t.is_empty()),
            get_token: match get("getToken") {
                v if v.is_undefined() || v.is_null() => None,
                v => Some(v.dyn_into::<Function>().map_err(|_| JsError::new("`getToken` is a function"))?),
            },
        })
    }
}

/// A promise and its resolve function.
pub(crate) fn deferred_resolve() -> (Promise, Function) {
    let (p, s) = deferred();
    (p, s.resolve)
}

/// A promise and both of its functions.
pub(crate) fn deferred() -> (Promise, Settle) {
    let mut ends = None;
    let promise = Promise::new(&mut |resolve, reject| ends = Some(Settle { resolve, reject }));
    // The executor runs synchronously inside `new Promise`.
    let ends = ends.expect("Promise executor ran");
    (promise, ends)
}

/// A Meridian client: documents in IndexedDB, synced with an edge.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Client {
    shared: Shared,
}

#[wasm_bindgen]
impl Client {
    /// `await Client.open({ urls: ["ws://127.0.0.1:7300/sync"], dbName: "meridian" })`.
    /// `dbName: null` (or no IndexedDB, as in Node) keeps documents in
    /// memory. Resolves once the local store is open, before any network.
    pub async fn open(options: JsValue) -> Result<Client, JsError> {
        let (client, store) = Self::start(&options)?;
        if let Some(name) = store {
            let idb = IdbStore::open(&name, fresh_storage_id())
                .await
                .map_err(|e| JsError::new(&format!("IndexedDB: {}", store::describe(&e))))?;
            drive(&client.shared, |d| d.store_opened(Some(idb)));
        }
        Ok(client)
    }

    /// `Client.open` without waiting: the client is usable at once (create,
    /// find, edit); IndexedDB opens in the background, storage work and the
    /// first connection wait for it. If the database cannot be opened the
    /// client warns and keeps documents in memory. The `Repo` layer uses
    /// this, as automerge-repo's `new Repo()` is synchronous.
    #[wasm_bindgen(js_name = openSync)]
    pub fn open_sync(options: JsValue) -> Result<Client, JsError> {
        let (client, store) = Self::start(&options)?;
        if let Some(name) = store {
            let shared = client.shared.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let idb = match IdbStore::open(&name, fresh_storage_id()).await {
                    Ok(idb) => Some(idb),
                    Err(e) => {
                        crate::driver::warn(&format!(
                            "meridian: IndexedDB {name:?} could not be opened ({}); documents stay in memory",
                            store::describe(&e)
                        ));
                        None
                    }
                };
                drive(&shared, |d| d.store_opened(idb));
            });
        }
        Ok(client)
    }

    /// The client, running, and the name of the database still to open.
    fn start(options: &JsValue) -> Result<(Client, Option<String>), JsError> {
        let options = Options::from_js(options)?;
        let seed = platform::random_u64();
        let peer_id = PeerId::new(options.peer_id.clone().unwrap_or_else(|| format!("meridian-{:08x}", seed as u32)));
        let mut config = EngineConfig::new(peer_id, None);
        config.rng_seed = platform::random_u64();
        // A tab holds what the application opened; nothing to evict.
        config.idle_evict_after_ms = u64::MAX;
        // A keystroke goes out while IndexedDB commits it; the edge's
        // acknowledgement (`whenSynced`) is what tells the user it is safe.
        config.send_before_durable = true;
        // Its own keystrokes are never spaced out; the edge folds what it
        // sends to busy co-writers.
        config.co_writer_spacing_ms = 0;
        let net = Net::new(
            options.urls,
            options.ws_ctor,
            options.min_backoff_ms,
            options.max_backoff_ms,
            options.handshake_timeout_ms,
            options.token,
            options.get_token,
        );
        let opening = options.db_name.is_some();
        let shared: Shared =
            Rc::new_cyclic(|me| RefCell::new(Driver::new(Engine::new(config), opening, net, me.clone())));
        Self::start_background(&shared);
        if !opening {
            drive(&shared, Driver::connect);
        }
        Ok((Client { shared }, options.db_name))
    }

    fn start_background(shared: &Shared) {
        let (on, off) = (Rc::downgrade(shared), Rc::downgrade(shared));
        let network = NetworkListener::install(
            move || {
                if let Some(s) = on.upgrade() {
                    drive(&s, Driver::went_online);
                }
            },
            move || {
                if let Some(s) = off.upgrade() {
                    drive(&s, Driver::went_offline);
                }
            },
        );
        let mut d = shared.borrow_mut();
        d.network = network;
    }

    /// Creates a document with `initial` (an object) as its first change;
    /// resolves once it is stored locally.
    pub async fn create(&self, initial: JsValue) -> Result<Doc, JsError> {
        let doc = self.create_sync(initial)?;
        let (promise, settle) = deferred();
        drive(&self.shared, |d| d.when_saved(doc.id(), settle));
        JsFuture::from(promise).await.map_err(|e| JsError::new(&store::describe(&e)))?;
        Ok(doc)
    }

    /// `create` without waiting for local storage (`doc.whenSaved()` tells
    /// when it is stored).
    #[wasm_bindgen(js_name = createSync)]
    pub fn create_sync(&self, initial: JsValue) -> Result<Doc, JsError> {
        // No initial value (or null): an empty document.
        let fields = if initial.is_undefined() || initial.is_null() {
            Vec::new()
        } else {
            match values::val_from_js(&initial)? {
                Val::Map(fields) => fields,
                _ => return Err(JsError::new("a document's initial value is an object")),
            }
        };
        let id = drive(&self.shared, |d| {
            if d.closed {
                return Err(JsError::new("the client was closed"));
            }
            let now = d.now();
            let options = automerge::transaction::CommitOptions::default()
                .with_time((js_sys::Date::now() / 1000.0).floor() as i64)
                .with_message("Created".to_owned());
            d.engine
                .create_with(now, options, |tx| {
                    fields
                        .iter()
                        .try_for_each(|(k, v)| values::write(tx, &automerge::ROOT, Place::Put(k.clone().into()), v))
                })
                .map_err(|e| JsError::new(&e.to_string()))
        })?;
        Ok(Doc::new(self.shared.clone(), id))
    }

    /// A new document holding everything in `bytes` (a saved document, as
    /// `doc.save()` or `Automerge.save` write it), under a new URL.
    #[wasm_bindgen(js_name = import)]
    pub fn import(&self, bytes: Vec<u8>) -> Result<Doc, JsError> {
        let id = drive(&self.shared, |d| {
            if d.closed {
                return Err(JsError::new("the client was closed"));
            }
            let now = d.now();
            d.engine.import_new(now, &bytes).map_err(|e| JsError::new(&format!("not an Automerge document: {e}")))
        })?;
        Ok(Doc::new(self.shared.clone(), id))
    }

    /// Removes a document from this client: from memory and from local
    /// storage. Peers keep their copies (as in automerge-repo, deleting is
    /// local); finding it again fetches it from the server if it has it.
    pub fn delete(&self, url: String) -> Result<(), JsError> {
        let parsed: AutomergeUrl = url.parse().map_err(|e| JsError::new(&format!("{e}")))?;
        drive(&self.shared, |d| d.delete(parsed.document_id));
        Ok(())
    }

    /// Opens a document by `automerge:` URL: from IndexedDB if it is
    /// stored here (no network needed), else from the server (waiting for
    /// a connection if there is none yet). Rejects if the server says no
    /// peer has it.
    pub async fn find(&self, url: String) -> Result<Doc, JsError> {
        let parsed: AutomergeUrl = url.parse().map_err(|e| JsError::new(&format!("{e}")))?;
        let (promise, settle) = deferred();
        drive(&self.shared, |d| d.find(parsed.document_id, settle));
        JsFuture::from(promise).await.map_err(|e| JsError::new(&store::describe(&e)))?;
        Ok(Doc::new(self.shared.clone(), parsed.document_id))
    }

    /// "connecting", "connected", "backoff", "offline", "local" or "closed".
    #[wasm_bindgen(getter, js_name = connectionState)]
    pub fn connection_state(&self) -> String {
        self.shared.borrow().net.state().as_str().to_owned()
    }

    /// Calls `cb(state)` whenever `connectionState` changes. Returns a
    /// function that unsubscribes.
    #[wasm_bindgen(js_name = onConnectionStateChange)]
    pub fn on_connection_state_change(&self, cb: Function) -> Function {
        let id = self.shared.borrow_mut().state_listeners.add(cb);
        let weak = Rc::downgrade(&self.shared);
        Closure::once_into_js(move || {
            if let Some(s) = weak.upgrade() {
                s.borrow_mut().state_listeners.remove(id);
            }
        })
        .into()
    }

    /// Cuts the connection and stays offline until `goOnline()`, whatever
    /// the browser's network state: edits keep working and are stored
    /// locally, then merge when the client is back online.
    #[wasm_bindgen(js_name = goOffline)]
    pub fn go_offline(&self) {
        drive(&self.shared, |d| d.set_paused(true));
    }

    /// Undoes `goOffline()`: connects right away (if the browser is online).
    #[wasm_bindgen(js_name = goOnline)]
    pub fn go_online(&self) {
        drive(&self.shared, |d| d.set_paused(false));
    }

    /// The URL of the edge in use, if connected.
    #[wasm_bindgen(getter)]
    pub fn url(&self) -> Option<String> {
        self.shared.borrow().net.url().map(str::to_owned)
    }

    /// Every edge URL with its last measured connect time in ms (`null`
    /// if never reached), fastest first.
    pub fn edges(&self) -> JsValue {
        let edges = self.shared.borrow().net.edges();
        let out = Array::new();
        for (url, rtt) in edges {
            let o = Object::new();
            let _ = Reflect::set(&o, &"url".into(), &url.into());
            let _ = Reflect::set(&o, &"rttMs".into(), &rtt.map_or(JsValue::NULL, JsValue::from_f64));
            out.push(&o);
        }
        out.into()
    }

    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.shared.borrow().engine.peer_id().to_string()
    }

    /// Our store's id (`null` for a memory-only client).
    #[wasm_bindgen(getter, js_name = storageId)]
    pub fn storage_id(&self) -> Option<String> {
        self.shared.borrow().idb.as_ref().map(|s| s.storage_id().to_string())
    }

    /// Disconnects, waits for pending local writes, closes the database.
    pub async fn close(&self) {
        let (idle, resolve) = deferred_resolve();
        drive(&self.shared, |d| {
            d.shut_down();
            d.when_storage_idle(resolve);
        });
        let _ = JsFuture::from(idle).await;
        if let Some(idb) = self.shared.borrow().idb.as_ref() {
            idb.close();
        }
    }
}

/// A random UUIDv4 string for a new store.
fn fresh_storage_id() -> StorageId {
    let (a, b) = (platform::random_u64(), platform::random_u64());
    let h = format!("{a:016x}{b:016x}");
    let v = |r: std::ops::Range<usize>| &h[r];
    StorageId::new(format!("{}-{}-4{}-{}-{}", v(0..8), v(8..12), v(13..16), v(16..20), v(20..32)))
}
