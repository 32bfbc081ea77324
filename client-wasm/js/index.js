// @meridian/client: Automerge documents in IndexedDB, synced with a
// Meridian edge (or any automerge-repo sync server). The wasm module does
// the work; this file loads it (browser or Node) and adds `change(fn)`.
import initWasm, { initSync, Client, Doc, parseAutomergeUrl } from "./meridian_client_wasm.js";

let ready;

/** Loads the wasm module once; `Client.open` calls it for you. */
export function init() {
  ready ??= (async () => {
    const url = new URL("./meridian_client_wasm_bg.wasm", import.meta.url);
    if (typeof process !== "undefined" && process.versions?.node && url.protocol === "file:") {
      // Node reads the file itself (its fetch has no file: URLs). Through
      // `process.getBuiltinModule` (Node 20.16+), not an import a bundler
      // would try to resolve for the browser.
      const fs = process.getBuiltinModule?.("node:fs");
      if (!fs) throw new Error(`@meridian/client needs Node 20.16 or later (this is ${process.version})`);
      initSync({ module: fs.readFileSync(url) });
    } else {
      await initWasm({ module_or_path: url });
    }
  })();
  return ready;
}

const rawOpen = Client.open;
Client.open = async function open(options = {}) {
  await init();
  return rawOpen.call(Client, options);
};

/** A counter value: `doc.put("likes", new Counter(0))`, then `doc.increment("likes", 1)`. */
export class Counter {
  constructor(value = 0) {
    this.__counter = value;
  }
}

/**
 * Several edits as one change: `doc.change(d => { d.put("title", "x"); d.insert("items", 0, "y") }, "message")`.
 * `d.value` is the document as it was when the change began.
 */
Doc.prototype.change = function change(fn, message) {
  const ops = [];
  const draft = new Proxy(
    {
      value: this.value(),
      put: (path, value) => void ops.push(["put", path, value]),
      delete: (path) => void ops.push(["delete", path]),
      insert: (path, index, value) => void ops.push(["insert", path, index, value]),
      splice: (path, index, deleteCount, text) => void ops.push(["splice", path, index, deleteCount, text]),
      increment: (path, by = 1) => void ops.push(["increment", path, by]),
    },
    {
      // `d.title = "x"` (automerge-repo's style) would otherwise be lost
      // without a word.
      set(_, key) {
        throw new TypeError(
          `doc.change: assigning d.${String(key)} changes nothing here; use d.put(${JSON.stringify(String(key))}, value)`,
        );
      },
      deleteProperty(_, key) {
        throw new TypeError(`doc.change: use d.delete(${JSON.stringify(String(key))}), not the delete operator`);
      },
    },
  );
  fn(draft);
  this.applyOps(ops, message);
};

export { Client, Doc, parseAutomergeUrl };
