// Proxy mutation for `handle.change(d => { ... })`: the callback edits a
// draft that looks like the document (assignments, `delete`, array methods,
// counters' `increment`); every edit is recorded as an op for
// `Doc.applyOps` (one Automerge change) and applied to the draft, so the
// callback reads what it wrote.
//
// Each object the callback touches gets a node: a shallow copy of the
// document's (frozen) object, wrapped in a Proxy. A node's path is worked
// out when an op is recorded (a list element's index from its position in
// the parent's copy), so an element moved by an earlier insert still gets
// the right index.
import { Counter } from "./index.js";

const NODE = Symbol("meridian.draft");
const COUNTER = Symbol.for("_am_counter");

/** A container the draft copies on access (not a Date, bytes, a Counter...). */
function isContainer(v) {
  if (v === null || typeof v !== "object") return false;
  if (Array.isArray(v)) return true;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** A value to store: draft proxies inside it become plain copies. */
function plain(v) {
  if (v === undefined) throw new TypeError("undefined cannot be stored in a document (use null, or delete the key)");
  if (v === null || typeof v !== "object") {
    if (typeof v === "function" || typeof v === "symbol") throw new TypeError(`a ${typeof v} cannot be stored in a document`);
    return v;
  }
  const node = v[NODE];
  if (node) return plain(node.copy);
  if (Array.isArray(v)) return v.map(plain);
  if (isContainer(v)) {
    const out = {};
    for (const [k, x] of Object.entries(v)) {
      if (k === "__proto__") throw new TypeError('the key "__proto__" cannot be stored in a document');
      out[k] = plain(x);
    }
    return out;
  }
  // A counter stored elsewhere is a new counter with the same value.
  if (v[COUNTER] === true) return new Counter(Number(v.value));
  return v;
}

/** A shallow copy of a document object (a `__proto__` key stays a key). */
function copyOf(source) {
  if (Array.isArray(source)) return source.slice();
  const out = {};
  for (const k of Object.keys(source)) {
    if (k === "__proto__") Object.defineProperty(out, k, { value: source[k], writable: true, enumerable: true, configurable: true });
    else out[k] = source[k];
  }
  return out;
}

/** The index a list op means: a whole number in range. */
function listIndex(key, length, what) {
  const i = typeof key === "number" ? key : Number(key);
  if (!Number.isInteger(i) || i < 0 || i > length) {
    throw new RangeError(`${what}: index ${String(key)} is outside the list (length ${length})`);
  }
  return i;
}

class Node {
  constructor(ctx, source, parent, key) {
    this.ctx = ctx;
    this.parent = parent;
    this.key = key;
    this.isList = Array.isArray(source);
    this.copy = copyOf(source);
    this.proxy = new Proxy(this.copy, this.isList ? listHandler(this) : mapHandler(this));
  }

  /** Keys and indexes from the root to this object, as they are now. */
  path() {
    this.ctx.check();
    if (!this.parent) return [];
    const up = this.parent.path();
    if (this.parent.isList) {
      const i = this.parent.copy.indexOf(this.proxy);
      if (i < 0) throw new Error("this object was removed from the document earlier in this change");
      return [...up, i];
    }
    if (this.parent.copy[this.key] !== this.proxy) {
      throw new Error("this object was replaced or removed earlier in this change");
    }
    return [...up, this.key];
  }

  record(op) {
    this.ctx.ops.push(op);
  }

  /**
   * What the draft hands out for `copy[key]`: nested objects as drafts,
   * counters that can be incremented. A counter's slot in the copy becomes
   * a counter of this draft's own (found again by identity, so a counter
   * in a list is still found after the list shifts).
   */
  read(key) {
    const v = this.copy[key];
    if (isContainer(v) && !v[NODE]) {
      const child = new Node(this.ctx, v, this, key);
      this.copy[key] = child.proxy;
      return child.proxy;
    }
    if (v !== null && typeof v === "object" && v[COUNTER] === true) {
      let slot = v;
      if (!this.ctx.slots.has(slot)) {
        slot = new Counter(Number(v.value));
        this.ctx.slots.add(slot);
        this.copy[key] = slot;
      }
      return new DraftCounter(this, key, slot);
    }
    return v;
  }

  /** Where `key` of this object is, for an op. */
  at(key) {
    return [...this.path(), this.isList ? Number(key) : key];
  }
}

/** A counter read inside a change: `d.likes.increment(2)`. */
class DraftCounter extends Counter {
  constructor(node, key, slot) {
    super(0);
    Object.defineProperty(this, "node", { value: node });
    Object.defineProperty(this, "key", { value: key });
    Object.defineProperty(this, "slot", { value: slot });
  }
  get value() {
    return this.slot?.value ?? 0;
  }
  set value(_) {
    // Counter's constructor assigns it; the value lives in the slot.
  }
  increment(by = 1) {
    if (!Number.isInteger(by)) throw new TypeError(`increment by a whole number, not ${by}`);
    const { node, key, slot } = this;
    const at = node.isList ? node.copy.indexOf(slot) : node.copy[key] === slot ? key : -1;
    if (at === -1) throw new Error("this counter was replaced or removed earlier in this change");
    node.record(["increment", node.at(at), by]);
    slot.value += by;
    return slot.value;
  }
  decrement(by = 1) {
    return this.increment(-by);
  }
}

function mapHandler(node) {
  return {
    get(target, key) {
      if (key === NODE) return node;
      if (typeof key === "symbol" || !Object.hasOwn(target, key)) return target[key];
      return node.read(key);
    },
    set(target, key, value) {
      if (typeof key === "symbol") throw new TypeError("symbol keys cannot be stored in a document");
      if (key === "__proto__") throw new TypeError('the key "__proto__" cannot be stored in a document');
      const v = plain(value);
      node.record(["put", node.at(key), v]);
      target[key] = v;
      return true;
    },
    deleteProperty(target, key) {
      if (typeof key === "symbol" || !Object.hasOwn(target, key)) return true;
      node.record(["delete", node.at(key)]);
      delete target[key];
      return true;
    },
    defineProperty() {
      throw new TypeError("Object.defineProperty is not supported on a document; assign instead");
    },
  };
}

function listHandler(node) {
  const a = node.copy;
  const insert = (index, values) => {
    values.forEach((value, k) => {
      const v = plain(value);
      node.record(["insert", node.path(), index + k, v]);
      a.splice(index + k, 0, v);
    });
  };
  const remove = (index, count) => {
    const removed = [];
    for (let k = 0; k < count; k++) {
      node.record(["delete", [...node.path(), index]]);
      removed.push(plain(a.splice(index, 1)[0]));
    }
    return removed;
  };
  const methods = {
    push: (...values) => (insert(a.length, values), a.length),
    unshift: (...values) => (insert(0, values), a.length),
    pop: () => (a.length === 0 ? undefined : remove(a.length - 1, 1)[0]),
    shift: () => (a.length === 0 ? undefined : remove(0, 1)[0]),
    splice(start, deleteCount, ...values) {
      const len = a.length;
      let s = start === undefined ? 0 : Math.trunc(Number(start)) || 0;
      s = s < 0 ? Math.max(len + s, 0) : Math.min(s, len);
      const dc = arguments.length < 2 ? len - s : Math.min(Math.max(Math.trunc(Number(deleteCount)) || 0, 0), len - s);
      const removed = remove(s, dc);
      insert(s, values);
      return removed;
    },
    /** automerge's: inserts `values` before `index`. */
    insertAt(index, ...values) {
      insert(listIndex(index, a.length, "insertAt"), values);
      return node.proxy;
    },
    /** automerge's: deletes `count` (1) elements from `index`. */
    deleteAt(index, count = 1) {
      const i = listIndex(index, a.length - 1, "deleteAt");
      remove(i, Math.min(count, a.length - i));
      return node.proxy;
    },
  };
  return {
    get(target, key) {
      if (key === NODE) return node;
      if (Object.hasOwn(methods, key)) return methods[key];
      if (typeof key === "symbol" || key === "length" || !Object.hasOwn(target, key)) return target[key];
      return node.read(key);
    },
    set(target, key, value) {
      if (key === "length") {
        const n = Number(value);
        if (!Number.isInteger(n) || n > target.length) {
          throw new RangeError("a document list cannot be lengthened by setting length (push instead)");
        }
        remove(n, target.length - n);
        return true;
      }
      const i = listIndex(key, target.length, "list assignment");
      if (i === target.length) {
        insert(i, [value]);
      } else {
        const v = plain(value);
        node.record(["put", node.at(i), v]);
        target[i] = v;
      }
      return true;
    },
    deleteProperty(target, key) {
      const i = listIndex(key, target.length - 1, "delete");
      remove(i, 1);
      return true;
    },
    defineProperty() {
      throw new TypeError("Object.defineProperty is not supported on a document list");
    },
  };
}

/**
 * Runs `fn` on a draft of `value` and returns the ops it recorded. Drafts
 * (and counters read from them) refuse to be used after `fn` returns.
 */
export function recordChange(value, fn) {
  const ctx = {
    ops: [],
    // Counters this draft put in its copies (see Node.read).
    slots: new WeakSet(),
    done: false,
    check() {
      if (this.done) throw new Error("a document draft was used after its change() returned");
    },
  };
  const root = new Node(ctx, value ?? {}, null, null);
  try {
    const result = fn(root.proxy);
    if (result && typeof result.then === "function") {
      throw new TypeError("a change callback must be synchronous (it returned a promise): await before change()");
    }
  } finally {
    ctx.done = true;
  }
  return ctx.ops;
}

/** The draft node behind `obj` (a draft proxy), or an error naming `fnName`. */
function draftOf(obj, fnName) {
  const node = obj && obj[NODE];
  if (!node) throw new TypeError(`${fnName}() takes the document inside a change: handle.change(d => ${fnName}(d, ...))`);
  node.ctx.check();
  return node;
}

/** The node holding the text at `path` (relative to `obj`), and its key. */
function textAt(obj, path, fnName) {
  const keys = Array.isArray(path) ? path : [path];
  if (keys.length === 0) throw new TypeError(`${fnName}(): the path names the text, it cannot be empty`);
  let node = draftOf(obj, fnName);
  for (const k of keys.slice(0, -1)) {
    const next = node.proxy[k];
    if (!next || !next[NODE]) throw new TypeError(`${fnName}(): no object at ${JSON.stringify(k)} of the path`);
    node = next[NODE];
  }
  const key = keys[keys.length - 1];
  if (typeof node.copy[key] !== "string") {
    throw new TypeError(`${fnName}(): ${JSON.stringify(keys)} is not text (${typeof node.copy[key]})`);
  }
  return { node, key };
}

/**
 * Edits the text at `path` in place (concurrent edits merge, unlike an
 * assignment): deletes `del` UTF-16 code units at `index` and inserts `text`.
 * As `@automerge/automerge`'s `splice(doc, path, index, del, text)`.
 */
export function splice(doc, path, index, del, text = "") {
  const { node, key } = textAt(doc, path, "splice");
  const s = node.copy[key];
  let i = listIndex(index, s.length, "splice");
  let d = Math.trunc(Number(del ?? 0)) || 0;
  // A negative count deletes backwards from `index`, as automerge's does.
  if (d < 0) {
    d = Math.min(-d, i);
    i -= d;
  }
  d = Math.min(d, s.length - i);
  node.record(["splice", node.at(key), i, d, String(text)]);
  node.copy[key] = s.slice(0, i) + text + s.slice(i + d);
}

/**
 * Makes the text at `path` read `text` with the smallest edit (common
 * prefix and suffix kept), so concurrent edits elsewhere in it merge. As
 * `@automerge/automerge`'s `updateText`.
 */
export function updateText(doc, path, text) {
  const { node, key } = textAt(doc, path, "updateText");
  const old = node.copy[key];
  text = String(text);
  if (old === text) return;
  let p = 0;
  const max = Math.min(old.length, text.length);
  while (p < max && old.charCodeAt(p) === text.charCodeAt(p)) p++;
  // Never split a surrogate pair.
  if (p > 0 && isHigh(old.charCodeAt(p - 1))) p--;
  let q = 0;
  while (q < max - p && old.charCodeAt(old.length - 1 - q) === text.charCodeAt(text.length - 1 - q)) q++;
  if (q > 0 && isLow(old.charCodeAt(old.length - q))) q--;
  splice(doc, path, p, old.length - p - q, text.slice(p, text.length - q));
}

const isHigh = (c) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c) => c >= 0xdc00 && c <= 0xdfff;
