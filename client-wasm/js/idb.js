// IndexedDB for the Meridian browser client: runs the engine's storage
// tasks in order, one readwrite transaction per batch, and resolves only
// when the transaction has committed (durability "strict"), so the engine
// never advertises heads that are not on disk.
//
// Object stores:
//   chunks  key [docId, seq] -> Uint8Array: snapshots (seq < 0) then incremental changes (seq >= 0, in write order);
//           a replaced copy's chunks under [docId, "quarantine:<ms>:<seq>"] (never loaded)
//   sync    key [docId, storageId] -> Uint8Array (persisted automerge sync state)
//   meta    key "storageId" -> string

const VERSION = 1;

export function idbAvailable() {
  return typeof indexedDB !== "undefined" && indexedDB !== null;
}

export function idbOpen(name) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(name, VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      for (const store of ["chunks", "sync", "meta"]) {
        if (!db.objectStoreNames.contains(store)) db.createObjectStore(store);
      }
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new Error(`IndexedDB ${name} is blocked by another connection`));
  });
}

export function idbClose(db) {
  db.close();
}

// Returns the stored storage id, storing `fresh` first if there is none.
export function idbStorageId(db, fresh) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction("meta", "readwrite", { durability: "strict" });
    const meta = tx.objectStore("meta");
    let id = fresh;
    const get = meta.get("storageId");
    get.onsuccess = () => {
      if (typeof get.result === "string") id = get.result;
      else meta.put(fresh, "storageId");
    };
    tx.oncomplete = () => resolve(id);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

function docRange(doc) {
  return IDBKeyRange.bound([doc, -Infinity], [doc, Infinity]);
}

function syncRange(doc) {
  return IDBKeyRange.bound([doc, ""], [doc, "\uffff"]);
}

function concat(parts) {
  let len = 0;
  for (const p of parts) len += p.byteLength;
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

// The chunks of each document this connection has loaded or written. A
// compaction deletes only those: another tab may have appended chunks this
// one has never seen, and its snapshot does not cover them.
function knownChunks(db, doc) {
  db.meridianKnown ??= new Map();
  let known = db.meridianKnown.get(doc);
  if (!known) db.meridianKnown.set(doc, (known = new Set()));
  return known;
}

// Calls `then(seq)` with the next free incremental seq of `doc`.
// Incrementals have keys >= 0 in write order; snapshots have negative keys,
// so a load (in key order) reads every snapshot before any incremental, as
// the engine's storage contract requires.
function nextSeq(chunks, doc, then) {
  const req = chunks.openKeyCursor(IDBKeyRange.bound([doc, 0], [doc, Infinity]), "prev");
  req.onsuccess = () => then(req.result ? req.result.key[1] + 1 : 0);
}

// A key for a snapshot: negative, and unique even if two tabs compact at once.
function snapshotSeq() {
  return -(Date.now() * 1000 + Math.floor(Math.random() * 1000) + 1);
}

// Runs one task; calls `done(result)` when its requests have finished, so
// the next task is only issued then (an append must see the seq of the
// append before it).
function runTask(db, chunks, sync, task, done) {
  const known = knownChunks(db, task.doc);
  switch (task.op) {
    case "load": {
      const keys = chunks.getAllKeys(docRange(task.doc));
      const values = chunks.getAll(docRange(task.doc));
      values.onsuccess = () => {
        for (const key of keys.result) known.add(key[1]);
        done(values.result.length ? concat(values.result) : null);
      };
      return;
    }
    case "append": {
      nextSeq(chunks, task.doc, (seq) => {
        known.add(seq);
        chunks.put(task.data, [task.doc, seq]).onsuccess = () => done(true);
      });
      return;
    }
    case "compact": {
      const seq = snapshotSeq();
      for (const old of known) chunks.delete([task.doc, old]);
      known.clear();
      known.add(seq);
      chunks.put(task.data, [task.doc, seq]).onsuccess = () => done(true);
      return;
    }
    case "quarantine": {
      // The old chunks are kept under string keys, which sort after every
      // number: no load or delete of the document's range reads them.
      const keys = chunks.getAllKeys(docRange(task.doc));
      const values = chunks.getAll(docRange(task.doc));
      values.onsuccess = () => {
        const at = Date.now();
        keys.result.forEach((key, i) => chunks.put(values.result[i], [task.doc, `quarantine:${at}:${key[1]}`]));
        chunks.delete(docRange(task.doc));
        sync.delete(syncRange(task.doc));
        known.clear();
        const seq = snapshotSeq();
        known.add(seq);
        chunks.put(task.data, [task.doc, seq]).onsuccess = () => done(true);
      };
      return;
    }
    case "delete": {
      known.clear();
      chunks.delete(docRange(task.doc));
      sync.delete(syncRange(task.doc)).onsuccess = () => done(true);
      return;
    }
    case "loadSync": {
      const req = sync.get([task.doc, task.peer]);
      req.onsuccess = () => done(req.result ?? null);
      return;
    }
    case "putSync": {
      sync.put(task.data, [task.doc, task.peer]).onsuccess = () => done(true);
      return;
    }
    default:
      throw new Error(`unknown storage op ${task.op}`);
  }
}

// Runs `tasks` in order in one transaction. Resolves with one result per
// task (Uint8Array | null for loads, true for writes) once committed.
export function idbRun(db, tasks) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(["chunks", "sync"], "readwrite", { durability: "strict" });
    const chunks = tx.objectStore("chunks");
    const sync = tx.objectStore("sync");
    const results = [];
    const next = () => {
      if (results.length === tasks.length) return;
      runTask(db, chunks, sync, tasks[results.length], (r) => {
        results.push(r);
        next();
      });
    };
    tx.oncomplete = () => resolve(results);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
    try {
      next();
    } catch (e) {
      tx.abort();
      reject(e);
    }
  });
}

// Deletes a whole database (tests).
export function idbDelete(name) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.deleteDatabase(name);
    req.onsuccess = () => resolve();
    req.onerror = () => reject(req.error);
    req.onblocked = () => resolve();
  });
}
