// @meridian/client: Automerge documents in IndexedDB, synced with a
// Meridian edge (or any automerge-repo sync server). The wasm module does
// the work; this file loads it (fetched next to this file: the browser
// entry point; `node.js` reads it from disk instead) and adds the value
// classes and `change(fn)`. `repo.js` is the automerge-repo-style layer.
import initWasm, { initSync, Client, Doc, parseAutomergeUrl, setValueTypes } from "./meridian_client_wasm.js";

let ready;
let load = async () => {
  await initWasm({ module_or_path: new URL("./meridian_client_wasm_bg.wasm", import.meta.url) });
};

/** How the wasm module is loaded: the Node entry point (`node.js`) reads the file instead of fetching it. */
export function setLoader(f) {
  load = f;
}

/** Loads the wasm module once; `Client.open` and `@meridian/client/repo` call it for you. */
export function init() {
  ready ??= (async () => {
    await load({ initSync });
    setValueTypes(Counter, ImmutableString);
  })();
  return ready;
}

const rawOpen = Client.open;
Client.open = async function open(options = {}) {
  await init();
  return rawOpen.call(Client, options);
};

// The symbols @automerge/automerge marks its value classes with, so that
// its Counter and ImmutableString and ours are interchangeable.
const COUNTER = Symbol.for("_am_counter");
const IMMUTABLE_STRING = Symbol.for("_am_immutableString");

/**
 * A counter value: `doc.put("likes", new Counter(0))`, then
 * `doc.increment("likes")`; in a `Repo` handle's change, `d.likes.increment()`.
 * Read back as a `Counter` (`Number(c)`, `c.value`, `${c}` all work).
 */
export class Counter {
  constructor(value = 0) {
    this.value = value;
    Object.defineProperty(this, COUNTER, { value: true });
  }
  valueOf() {
    return this.value;
  }
  toString() {
    return String(this.value);
  }
  toJSON() {
    return this.value;
  }
  increment() {
    throw new Error("Counters are incremented inside a change: handle.change(d => d.likes.increment())");
  }
  decrement() {
    throw new Error("Counters are decremented inside a change: handle.change(d => d.likes.decrement())");
  }
}

/**
 * A string stored as one value (not as text that can be spliced), as
 * `@automerge/automerge`'s `ImmutableString`: `d.id = new ImmutableString("a1")`.
 */
export class ImmutableString {
  constructor(val) {
    this.val = val;
    Object.defineProperty(this, IMMUTABLE_STRING, { value: true });
  }
  toString() {
    return this.val;
  }
  toJSON() {
    return this.val;
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
      updateText: (path, text) => void ops.push(["updateText", path, text]),
    },
    {
      // `d.title = "x"` (automerge-repo's style) would otherwise be lost
      // without a word.
      set(_, key) {
        throw new TypeError(
          `doc.change: assigning d.${String(key)} changes nothing here; use d.put(${JSON.stringify(String(key))}, value) ` +
            `(or @meridian/client/repo, whose handle.change takes assignments as automerge-repo does)`,
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
