// IndexedDB for the Meridian browser client: runs the engine's storage
// tasks in order, one readwrite transaction per batch, and resolves only
// when the transaction has committed (durability "strict"), so the engine
// never advertises heads that are not on disk.
//
// Object stores:
//   chunks  key [docId, seq] -> Uint8Array (snapshot at seq 0 after a compaction, then incrementals)
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

// Runs one task; calls `done(result)` when its requests have finished, so
// the next task is only issued then (an append must see the seq of the
// append before it).
function runTask(chunks, sync, task, done) {
  switch (task.op) {
    case "load": {
      const req = chunks.getAll(docRange(task.doc));
      req.onsuccess = () => done(req.result.length ? concat(req.result) : null);
      return;
    }
    case "append": {
      const req = chunks.openKeyCursor(docRange(task.doc), "prev");
      req.onsuccess = () => {
        const seq = req.result ? req.result.key[1] + 1 : 0;
        chunks.put(task.data, [task.doc, seq]).onsuccess = () => done(true);
      };
      return;
    }
    case "compact": {
      chunks.delete(docRange(task.doc));
      chunks.put(task.data, [task.doc, 0]).onsuccess = () => done(true);
      return;
    }
    case "delete": {
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
      runTask(chunks, sync, tasks[results.length], (r) => {
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
