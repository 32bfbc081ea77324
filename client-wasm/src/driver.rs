//! The driver: one [`Engine`] fed from JavaScript callbacks (socket
//! events, timers, storage completions, API calls), its outputs drained
//! after every input.
//!
//! Everything lives in one `Rc<RefCell<Driver>>`. Every input goes through
//! [`drive`], which borrows the driver, applies the input, drains the
//! engine, and only then — with the borrow released — calls back into
//! JavaScript (promise resolutions, subscribers), so application callbacks
//! may call the client again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use automerge::ChangeHash;
use js_sys::{Function, Object, Reflect};
use meridian_protocol::codec::Message;
use meridian_protocol::drive::Driver as Drive;
use meridian_protocol::engine::{Engine, Event, Millis};
use meridian_protocol::ids::{ConnId, DocumentId};
use meridian_protocol::storage::{MemoryStore, StorageResult, StorageTask, StorageTaskId, WriteFence};
use wasm_bindgen::prelude::*;

use crate::convert;
use crate::net::Net;
use crate::platform::{self, NetworkListener, Timer};
use crate::store::IdbStore;

pub(crate) type Shared = Rc<RefCell<Driver>>;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console)]
    pub(crate) fn warn(s: &str);
    #[wasm_bindgen(js_namespace = console)]
    pub(crate) fn error(s: &str);
}

/// A promise's two ends.
#[derive(Debug, Clone)]
pub(crate) struct Settle {
    pub resolve: Function,
    pub reject: Function,
}

/// Callbacks registered by the application, with ids for unsubscribing.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    next: u32,
    list: Vec<(u32, Function)>,
}

impl Listeners {
    pub fn add(&mut self, f: Function) -> u32 {
        self.next += 1;
        self.list.push((self.next, f));
        self.next
    }

    pub fn remove(&mut self, id: u32) {
        self.list.retain(|(i, _)| *i != id);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn functions(&self) -> impl Iterator<Item = &Function> {
        self.list.iter().map(|(_, f)| f)
    }
}

/// Change subscribers of one document and the heads they last saw.
#[derive(Debug, Default)]
pub(crate) struct DocListeners {
    pub last_heads: Vec<ChangeHash>,
    pub changes: Listeners,
    pub ephemeral: Listeners,
}

#[derive(Debug)]
pub(crate) struct Driver {
    pub engine: Engine,
    pub me: Weak<RefCell<Driver>>,
    origin: f64,
    /// IndexedDB, or `None` for a memory-only (ephemeral) client.
    pub idb: Option<IdbStore>,
    /// IndexedDB is being opened: storage tasks wait in `queue`.
    pub opening: bool,
    memory: MemoryStore,
    queue: Vec<(StorageTaskId, StorageTask)>,
    storage_busy: bool,
    /// Writes of a document whose earlier write failed are refused until it
    /// is loaded again (`WriteFence`).
    fence: WriteFence,
    idle_waiters: Vec<Function>,
    pub net: Net,
    /// The server answered our `join`: unavailability is final.
    pub ready: bool,
    pub closed: bool,
    finds: BTreeMap<DocumentId, Vec<Settle>>,
    saved_waiters: Vec<(DocumentId, Settle)>,
    synced_waiters: Vec<(DocumentId, Vec<ChangeHash>, Settle)>,
    pub docs: BTreeMap<DocumentId, DocListeners>,
    pub state_listeners: Listeners,
    pub session_id: String,
    pub ephemeral_count: u64,
    /// The wake-up for the engine's next deadline, and when it is.
    timer: Option<(Millis, Timer)>,
    pub network: Option<NetworkListener>,
    /// JavaScript calls to make once the borrow is released.
    calls: Vec<(Function, JsValue)>,
}

/// Applies `f` to the driver, drains the engine, then makes the
/// JavaScript calls that resulted.
pub(crate) fn drive<R>(shared: &Shared, f: impl FnOnce(&mut Driver) -> R) -> R {
    let (out, calls, start_storage) = {
        let mut d = shared.borrow_mut();
        let out = f(&mut d);
        d.pump();
        d.arm_timer();
        let start = d.claim_storage_worker();
        (out, std::mem::take(&mut d.calls), start)
    };
    if start_storage {
        wasm_bindgen_futures::spawn_local(storage_worker(shared.clone()));
    }
    for (f, arg) in calls {
        if let Err(e) = f.call1(&JsValue::NULL, &arg) {
            warn(&format!("meridian: a callback threw: {}", crate::store::describe(&e)));
        }
    }
    out
}

/// Runs queued storage tasks in batches, in order, until none are left.
async fn storage_worker(shared: Shared) {
    loop {
        let (idb, batch, fenced) = {
            let mut d = shared.borrow_mut();
            let Some(idb) = d.idb.clone().filter(|_| !d.queue.is_empty()) else {
                d.storage_busy = false;
                let waiters = std::mem::take(&mut d.idle_waiters);
                d.calls.extend(waiters.into_iter().map(|f| (f, JsValue::UNDEFINED)));
                break;
            };
            // Writes fenced after a failed one are answered without running.
            let mut fenced = Vec::new();
            let mut run = Vec::new();
            for (id, task) in std::mem::take(&mut d.queue) {
                match d.fence.check(&task) {
                    Some(result) => fenced.push((id, result)),
                    None => run.push((id, task)),
                }
            }
            (idb, run, fenced)
        };
        let (ids, tasks): (Vec<StorageTaskId>, Vec<StorageTask>) = batch.into_iter().unzip();
        let results = if tasks.is_empty() { Vec::new() } else { idb.run(&tasks).await };
        drive(&shared, |d| {
            let now = d.now();
            for (task, result) in tasks.iter().zip(&results) {
                d.fence.record(task, result);
            }
            let mut all: Vec<(StorageTaskId, StorageResult)> = ids.into_iter().zip(results).collect();
            all.extend(fenced);
            all.sort_by_key(|(id, _)| *id);
            for (id, result) in all {
                d.engine.handle_storage_result(now, id, result);
            }
        });
    }
    // Deliver the idle notifications queued above.
    drive(&shared, |_| ());
}

impl Driver {
    /// A driver; `opening`: IndexedDB is being opened (see [`Driver::store_opened`]).
    pub fn new(engine: Engine, opening: bool, net: Net, me: Weak<RefCell<Driver>>) -> Self {
        let session_id = format!("{:016x}", platform::random_u64());
        Self {
            engine,
            me,
            origin: platform::now_ms(),
            idb: None,
            opening,
            memory: MemoryStore::new(),
            queue: Vec::new(),
            storage_busy: false,
            fence: WriteFence::default(),
            idle_waiters: Vec::new(),
            net,
            ready: false,
            closed: false,
            finds: BTreeMap::new(),
            saved_waiters: Vec::new(),
            synced_waiters: Vec::new(),
            docs: BTreeMap::new(),
            state_listeners: Listeners::default(),
            session_id,
            ephemeral_count: 0,
            timer: None,
            network: None,
            calls: Vec::new(),
        }
    }

    pub fn now(&self) -> Millis {
        Millis((platform::now_ms() - self.origin).max(0.0) as u64)
    }

    fn claim_storage_worker(&mut self) -> bool {
        if self.storage_busy || self.queue.is_empty() || self.idb.is_none() {
            return false;
        }
        self.storage_busy = true;
        true
    }

    /// Calls `f` once every storage task issued so far is done.
    pub fn when_storage_idle(&mut self, f: Function) {
        if self.storage_busy || !self.queue.is_empty() {
            self.idle_waiters.push(f);
        } else {
            self.calls.push((f, JsValue::UNDEFINED));
        }
    }

    /// Sleeps until the engine's next deadline ([`Engine::poll_timeout`];
    /// a tab evicts nothing, so mostly the sweep of old ephemeral sessions),
    /// unless a wake-up as early is set.
    fn arm_timer(&mut self) {
        let Some(at) = self.engine.poll_timeout().filter(|_| !self.closed) else { return };
        if self.timer.as_ref().is_some_and(|(t, _)| *t <= at) {
            return;
        }
        // setTimeout takes a 32-bit delay: a later deadline wakes early and
        // sleeps again.
        let delay = at.0.saturating_sub(self.now().0).min(i32::MAX as u64);
        let me = self.me.clone();
        let timer = Timer::once(delay as f64, move || {
            if let Some(shared) = me.upgrade() {
                drive(&shared, |d| {
                    d.timer = None;
                    let now = d.now();
                    d.engine.handle_timeout(now);
                });
            }
        });
        self.timer = Some((at, timer));
    }

    /// Drains the engine's outputs.
    pub fn pump(&mut self) {
        loop {
            let now = self.now();
            let mut io = Io {
                net: &mut self.net,
                memory: &mut self.memory,
                queue: (self.idb.is_some() || self.opening).then_some(&mut self.queue),
                lost: false,
            };
            let event = self.engine.drive_to_event(now, &mut io);
            if io.lost {
                self.connection_lost();
            }
            match event {
                Some(e) => self.event(e),
                None => break,
            }
        }
        self.check_synced();
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::DocReady { doc } => self.doc_ready(doc),
            // Before the server answered our `join` there was nobody to
            // ask: keep waiting, `find` is asked again once it has. A
            // client without URLs has nobody to wait for.
            Event::DocUnavailable { doc } if self.ready || self.net.is_local() => {
                let err = js_sys::Error::new(&format!("document automerge:{doc} is unavailable: no peer has it"));
                for s in self.finds.remove(&doc).unwrap_or_default() {
                    self.calls.push((s.reject, err.clone().into()));
                }
            }
            Event::DocUnavailable { .. } => {}
            // Subscribers see every change at once (remote edits need not
            // wait for our storage); `whenSaved` waits for durability.
            Event::DocUpdated { doc } => self.notify_subscribers(doc),
            Event::DocChanged { doc, .. } => self.doc_changed(doc),
            Event::PeerConnected { .. } => {
                self.ready = true;
                self.net.handshake_done();
                self.notify_state();
                let now = self.now();
                let waiting: Vec<DocumentId> = self.finds.keys().copied().collect();
                for doc in waiting {
                    self.engine.find(now, doc);
                }
            }
            Event::Ephemeral { doc, sender, data } => self.ephemeral(doc, sender.as_str(), &data),
            Event::ProtocolError { detail, .. } => warn(&format!("meridian: the server rejected our input: {detail}")),
            Event::StorageFailed { detail, .. } => warn(&format!("meridian: storage failed: {detail}")),
            Event::Unapplicable { doc, detail, .. } => {
                warn(&format!("meridian: the server's changes to {doc} do not apply to this copy: {detail}"))
            }
            Event::PeerDisconnected { .. }
            | Event::Evicted { .. }
            | Event::HomeConfirmed { .. }
            | Event::ReplicaConfirmed { .. }
            | Event::Refused { .. }
            | Event::Created { .. }
            | Event::Refetched { .. } => {}
        }
    }

    /// IndexedDB is open (`Some`), or could not be opened (`None`: the
    /// client keeps documents in memory): run what waited, then connect.
    ///
    /// Closed meanwhile: what was queued is still written (the storage
    /// worker runs it, then `close` closes the database), nothing connects.
    pub fn store_opened(&mut self, idb: Option<IdbStore>) {
        self.opening = false;
        if self.closed && self.queue.is_empty() {
            if let Some(idb) = idb {
                idb.close();
            }
            return;
        }
        match idb {
            Some(idb) => {
                self.engine.set_storage_id(Some(idb.storage_id().clone()));
                self.idb = Some(idb);
            }
            None => {
                let now = self.now();
                for (id, task) in std::mem::take(&mut self.queue) {
                    let result = self.memory.execute(&task);
                    self.engine.handle_storage_result(now, id, result);
                }
            }
        }
        if !self.closed {
            self.connect();
        }
    }

    /// Forgets a document here, in memory and in local storage.
    pub fn delete(&mut self, doc: DocumentId) {
        self.engine.delete_local(doc);
        self.docs.remove(&doc);
        let err: JsValue = js_sys::Error::new(&format!("document automerge:{doc} was deleted")).into();
        for s in self.finds.remove(&doc).unwrap_or_default() {
            self.calls.push((s.reject, err.clone()));
        }
        // Nothing more of it will be saved or synced: whoever waits for that
        // hears it was deleted.
        let (saved, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.saved_waiters).into_iter().partition(|(d, _)| *d == doc);
        self.saved_waiters = others;
        let (synced, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.synced_waiters).into_iter().partition(|(d, _, _)| *d == doc);
        self.synced_waiters = others;
        for s in saved.into_iter().map(|(_, s)| s).chain(synced.into_iter().map(|(_, _, s)| s)) {
            self.calls.push((s.reject, err.clone()));
        }
    }

    pub fn find(&mut self, doc: DocumentId, settle: Settle) {
        self.finds.entry(doc).or_default().push(settle);
        let now = self.now();
        self.engine.find(now, doc);
    }

    fn doc_ready(&mut self, doc: DocumentId) {
        for s in self.finds.remove(&doc).unwrap_or_default() {
            self.calls.push((s.resolve, JsValue::TRUE));
        }
    }

    fn doc_changed(&mut self, doc: DocumentId) {
        let durable = self.engine.durable_heads(&doc).is_some();
        if durable {
            let (done, waiting) = std::mem::take(&mut self.saved_waiters).into_iter().partition(|(d, _)| *d == doc);
            self.saved_waiters = waiting;
            self.calls.extend(done.into_iter().map(|(_, s): (DocumentId, Settle)| (s.resolve, JsValue::TRUE)));
        }
        self.notify_subscribers(doc);
    }

    /// Calls the document's subscribers with the patches since they last saw it.
    fn notify_subscribers(&mut self, doc: DocumentId) {
        let Some(am) = self.engine.document(&doc) else { return };
        let Some(listeners) = self.docs.get_mut(&doc).filter(|l| !l.changes.is_empty()) else { return };
        let heads = am.get_heads();
        if heads == listeners.last_heads {
            return;
        }
        let patches = am.diff(&listeners.last_heads, &heads);
        listeners.last_heads = heads.clone();
        let payload = Object::new();
        let _ = Reflect::set(&payload, &"patches".into(), &crate::values::patches_to_js(&patches));
        let heads: Vec<JsValue> = heads.iter().map(|h| JsValue::from_str(&h.to_string())).collect();
        let _ = Reflect::set(&payload, &"heads".into(), &js_sys::Array::from_iter(heads));
        let payload: JsValue = payload.into();
        let fs: Vec<Function> = listeners.changes.functions().cloned().collect();
        self.calls.extend(fs.into_iter().map(|f| (f, payload.clone())));
    }

    fn ephemeral(&mut self, doc: DocumentId, sender: &str, data: &[u8]) {
        let Some(listeners) = self.docs.get(&doc).filter(|l| !l.ephemeral.is_empty()) else { return };
        let message = match convert::json_from_cbor(data) {
            Ok(m) => convert::js_from_json(&m),
            Err(e) => {
                warn(&format!("meridian: ephemeral message from {sender} is not CBOR we understand: {e}"));
                return;
            }
        };
        let payload = Object::new();
        let _ = Reflect::set(&payload, &"senderId".into(), &sender.into());
        let _ = Reflect::set(&payload, &"message".into(), &message);
        let payload: JsValue = payload.into();
        let fs: Vec<Function> = listeners.ephemeral.functions().cloned().collect();
        self.calls.extend(fs.into_iter().map(|f| (f, payload.clone())));
    }

    /// Settles `s` once every local change of `doc` is durable locally
    /// (rejects it if the document is not here, e.g. deleted).
    pub fn when_saved(&mut self, doc: DocumentId, s: Settle) {
        if self.engine.document(&doc).is_none() {
            self.calls.push((s.reject, not_here(doc)));
        } else if self.engine.durable_heads(&doc).is_some() {
            self.calls.push((s.resolve, JsValue::TRUE));
        } else {
            self.saved_waiters.push((doc, s));
        }
    }

    /// Settles `s` once the server's heads cover ours as they are now.
    pub fn when_synced(&mut self, doc: DocumentId, s: Settle) {
        let Some(heads) = self.engine.document(&doc).map(|d| d.get_heads()) else {
            self.calls.push((s.reject, not_here(doc)));
            return;
        };
        self.synced_waiters.push((doc, heads, s));
        self.check_synced();
    }

    fn check_synced(&mut self) {
        let Some(conn) = self.net.conn() else { return };
        if self.synced_waiters.is_empty() {
            return;
        }
        let engine = &self.engine;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.synced_waiters)
            .into_iter()
            .partition(|(doc, heads, _)| engine.peer_covers(doc, conn, heads));
        self.synced_waiters = waiting;
        self.calls.extend(done.into_iter().map(|(_, _, s)| (s.resolve, JsValue::TRUE)));
    }

    pub fn notify_state(&mut self) {
        let state = JsValue::from_str(self.net.state().as_str());
        let fs: Vec<Function> = self.state_listeners.functions().cloned().collect();
        self.calls.extend(fs.into_iter().map(|f| (f, state.clone())));
    }

    /// Stops networking and rejects whoever is still waiting.
    pub fn shut_down(&mut self) {
        self.closed = true;
        self.timer = None;
        self.network = None;
        if let Some(conn) = self.net.shut_down() {
            let now = self.now();
            self.engine.handle_disconnect(now, conn);
        }
        self.ready = false;
        let err: JsValue = js_sys::Error::new("the client was closed").into();
        for s in std::mem::take(&mut self.finds).into_values().flatten() {
            self.calls.push((s.reject, err.clone()));
        }
        self.notify_state();
    }
}

fn not_here(doc: DocumentId) -> JsValue {
    js_sys::Error::new(&format!("document automerge:{doc} is not open here (deleted, or the client was closed)")).into()
}

/// The binding's side of the engine's outputs: the WebSocket, and storage
/// (queued for IndexedDB, or answered at once from memory).
struct Io<'a> {
    net: &'a mut Net,
    memory: &'a mut MemoryStore,
    /// The IndexedDB queue, when there is a database.
    queue: Option<&'a mut Vec<(StorageTaskId, StorageTask)>>,
    /// The engine closed our connection.
    lost: bool,
}

impl Drive for Io<'_> {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.net.send(conn, &meridian_protocol::codec::encode(&message));
    }

    fn close(&mut self, conn: ConnId, reason: String) -> bool {
        let closed = self.net.close_conn(conn, &reason);
        self.lost |= closed;
        closed
    }

    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        match &mut self.queue {
            Some(queue) => {
                queue.push((id, task));
                None
            }
            None => Some(self.memory.execute(&task)),
        }
    }
}
