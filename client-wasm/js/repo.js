// @meridian/client/repo: automerge-repo's API (`Repo`, `DocHandle`,
// `handle.change(d => { d.title = "x" })`) over Meridian's client, so an
// automerge-repo app moves over by changing its imports and the `new Repo`
// options. Differences from automerge-repo are listed in README.md.
import { init, Client, Counter, ImmutableString, parseAutomergeUrl as documentIdOf } from "./index.js";
import { recordChange, splice, updateText } from "./draft.js";

// `new Repo()` and `repo.create()` are synchronous, as in automerge-repo:
// the wasm module is loaded before this module finishes loading.
await init();

/** A small event emitter (the subset of eventemitter3 automerge-repo apps use). */
class Emitter {
  #listeners = new Map();
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return this;
  }
  addListener(event, fn) {
    return this.on(event, fn);
  }
  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    return this.on(event, wrapper);
  }
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
    return this;
  }
  removeListener(event, fn) {
    return this.off(event, fn);
  }
  removeAllListeners(event) {
    if (event === undefined) this.#listeners.clear();
    else this.#listeners.delete(event);
    return this;
  }
  listenerCount(event) {
    return this.#listeners.get(event)?.size ?? 0;
  }
  emit(event, payload) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`meridian: a "${event}" listener threw`, e);
      }
    }
    return true;
  }
}

/** `automerge:<id>` for an id or a URL (automerge-repo's `AnyDocumentId`, without legacy UUIDs). */
function toUrl(id) {
  if (id && typeof id === "object" && "url" in id) return id.url;
  if (typeof id !== "string") throw new TypeError(`not a document URL or id: ${String(id)}`);
  const url = id.startsWith("automerge:") ? id : `automerge:${id}`;
  documentIdOf(url); // throws with the reason if it is not valid
  return url.split("#")[0];
}

/** Whether `url` is a valid `automerge:` URL (as automerge-repo's). */
export function isValidAutomergeUrl(url) {
  try {
    return typeof url === "string" && url.startsWith("automerge:") && !!documentIdOf(url);
  } catch {
    return false;
  }
}

/** `{ documentId }` of an `automerge:` URL (as automerge-repo's; throws if invalid). */
export function parseAutomergeUrl(url) {
  return { documentId: documentIdOf(url) };
}

/** `automerge:<documentId>` (as automerge-repo's). */
export function stringifyAutomergeUrl(arg) {
  const documentId = typeof arg === "string" ? arg : arg.documentId;
  return toUrl(documentId);
}

/**
 * A document, as automerge-repo's `DocHandle`: `doc()`, `change(fn)`,
 * events. Obtained from `repo.create`, `repo.find`, `repo.import`,
 * `repo.clone`; one handle per document and repo.
 */
export class DocHandle extends Emitter {
  #repo;
  #doc;
  #last;
  #deleted = false;
  #unsubscribe = [];
  /** Fixed heads, for a handle from `view(heads)` (read-only). */
  #at;
  #atValue;
  #views;

  constructor(repo, doc, at) {
    super();
    this.#repo = repo;
    this.#doc = doc;
    this.#at = at;
    if (at) return;
    this.#last = doc.value();
    this.#unsubscribe.push(
      doc.subscribe(({ patches }) => {
        const before = this.#last;
        const after = doc.value();
        this.#last = after;
        this.emit("heads-changed", { handle: this, doc: after });
        this.emit("change", { handle: this, doc: after, patches, patchInfo: { before, after, source: "change" } });
      }),
      doc.onEphemeral(({ senderId, message }) => this.emit("ephemeral-message", { handle: this, senderId, message })),
    );
  }

  get url() {
    return this.#doc.url;
  }
  get documentId() {
    return this.#doc.documentId;
  }
  /** "ready", or "deleted" after `repo.delete`. */
  get state() {
    return this.#deleted ? "deleted" : "ready";
  }
  isReady() {
    return !this.#deleted;
  }
  isDeleted() {
    return this.#deleted;
  }
  isUnavailable() {
    return false;
  }
  /** Handles are ready when you get them (`find` resolves once the document is here). */
  whenReady() {
    return Promise.resolve();
  }

  /** The document: plain, frozen values, the same object until it changes; `undefined` once deleted. */
  doc() {
    if (this.#deleted) return undefined;
    if (this.#at) return (this.#atValue ??= this.#doc.valueAt(this.#at));
    return this.#doc.value();
  }
  /** automerge-repo's older name for `doc()`. */
  docSync() {
    return this.doc();
  }

  /**
   * Edits the document: `fn` gets a draft to mutate (assignments, `delete`,
   * `push`/`splice`/`insertAt`/`deleteAt`, nested objects, `d.n.increment()`,
   * and `splice`/`updateText` for text); everything it does is one change.
   */
  change(fn, options = {}) {
    this.#writable("change");
    if (typeof fn !== "function") throw new TypeError("change() takes a function: handle.change(d => { ... })");
    const ops = recordChange(this.#doc.value(), fn);
    if (ops.length > 0) this.#doc.applyOps(ops, options.message ?? undefined);
  }

  /** automerge-repo's `changeAt`: not supported (see README). */
  changeAt() {
    throw new Error("changeAt is not supported by @meridian/client/repo: change the current document instead");
  }

  /** The current heads (hex change hashes; automerge-repo returns base58 "URL heads"). */
  heads() {
    return this.#at ? [...this.#at] : this.#doc.heads();
  }

  /** Every change's heads, oldest first. */
  history() {
    return this.#doc.history().map((c) => [c.hash]);
  }

  /** A read-only handle on the document as it was at `heads` (the same handle for the same heads). */
  view(heads) {
    if (!Array.isArray(heads)) throw new TypeError("view() takes heads: an array of change hashes");
    const key = [...heads].sort().join(",");
    this.#views ??= new Map();
    let v = this.#views.get(key);
    if (!v) this.#views.set(key, (v = new DocHandle(this.#repo, this.#doc, [...heads])));
    return v;
  }

  /**
   * Patches between versions, as automerge-repo's: `diff(heads)` from now
   * to `heads`, `diff(a, b)` from `a` to `b`, `diff(otherHandle)` from this
   * document to the other's (merged into a copy, so the other may be
   * another document with shared history).
   */
  diff(first, second) {
    if (first instanceof DocHandle) return this.#doc.diffWith(first.#doc.save(), this.heads(), first.heads());
    return second === undefined ? this.#doc.diff(this.heads(), first) : this.#doc.diff(first, second);
  }

  /** Metadata of a change (the latest if no hash is given): `{ hash, actor, seq, time, message, deps }`. */
  metadata(change) {
    const history = this.#doc.history();
    return change === undefined ? history.at(-1) : history.find((c) => c.hash === change);
  }

  /** Merges another handle's document into this one. */
  merge(other) {
    this.#writable("merge");
    this.#doc.merge(other.#doc.save());
  }

  /** Sends an ephemeral message (presence) to everyone with this document open; JSON-serialisable. */
  broadcast(message) {
    this.#doc.broadcast(message);
  }

  /** Resolves once every change so far is stored locally (Meridian's addition). */
  whenSaved() {
    return this.#doc.whenSaved();
  }
  /** Resolves once the edge has every change so far (Meridian's addition). */
  whenSynced() {
    return this.#doc.whenSynced();
  }

  /** Deletes the document locally (`repo.delete(handle.url)`). */
  delete() {
    this.#repo.delete(this.url);
  }

  /** @internal: the `Doc` underneath. */
  get _doc() {
    return this.#doc;
  }

  /** @internal: `repo.delete` calls this. */
  _deleted() {
    if (this.#deleted) return;
    this.#deleted = true;
    for (const off of this.#unsubscribe.splice(0)) off();
    this.emit("delete", { handle: this });
  }

  #writable(what) {
    if (this.#deleted) throw new Error(`${what}(): document ${this.url} was deleted`);
    if (this.#at) throw new Error(`${what}(): a handle from view(heads) is read-only`);
  }
}

/**
 * automerge-repo's `Repo`, syncing with a Meridian edge (or any
 * automerge-repo sync server):
 *
 *   new Repo({ network: "wss://edge.example/sync", storage: "indexeddb" })
 *
 * `network`: a WebSocket URL or a list of them (raced; the others are
 * fallbacks), or none (local only). `storage`: "indexeddb" (keeps documents
 * across reloads; `dbName` names the database) or null (memory, the
 * default, as automerge-repo without a storage adapter). `token` /
 * `getToken`: access tokens for edges with auth on. `WebSocket`: a
 * constructor where there is no global one (Node 20: `ws`).
 */
export class Repo extends Emitter {
  #client;
  #handles = new Map();

  constructor(options = {}) {
    super();
    // The rest (token, getToken, peerId, WebSocket, backoff and handshake
    // timings) are Client.open's options, passed on as they are.
    const { network, storage = null, dbName, ...clientOptions } = options;
    if (storage !== null && storage !== "indexeddb" && storage !== "memory") {
      throw new TypeError(
        `storage: "indexeddb" or null, not ${typeof storage === "object" ? "an adapter object" : JSON.stringify(storage)} ` +
          "(Meridian stores documents itself; automerge-repo's storage adapters are not used)",
      );
    }
    const urls = network === undefined || network === null ? [] : [network].flat();
    if (urls.some((u) => typeof u !== "string")) {
      throw new TypeError(
        "network: a ws:// URL or a list of them (automerge-repo's network adapters are not used: pass the URL you gave the adapter)",
      );
    }
    this.#client = Client.openSync({
      ...clientOptions,
      urls,
      dbName: storage === "indexeddb" ? (dbName ?? "meridian") : null,
    });
  }

  /** The Meridian client underneath (connection state, edges, `goOffline`...). */
  get client() {
    return this.#client;
  }
  get peerId() {
    return this.#client.peerId;
  }
  /** Handles this repo has handed out, by document id. */
  get handles() {
    return Object.fromEntries(this.#handles);
  }

  #handle(doc) {
    let h = this.#handles.get(doc.documentId);
    if (!h) {
      h = new DocHandle(this, doc);
      this.#handles.set(doc.documentId, h);
      this.emit("document", { handle: h });
    }
    return h;
  }

  /** A new document, at once (stored and synced in the background). */
  create(initialValue = {}) {
    return this.#handle(this.#client.createSync(initialValue));
  }

  /** A document by URL: from local storage, else from the edge. Rejects if no peer has it. */
  async find(id) {
    const url = toUrl(id);
    const known = this.#handles.get(documentIdOf(url));
    if (known && !known.isDeleted()) return known;
    return this.#handle(await this.#client.find(url));
  }

  /** Deletes a document here (memory and storage); peers keep theirs. Its handle emits "delete". */
  delete(id) {
    const url = toUrl(id);
    const documentId = documentIdOf(url);
    this.#client.delete(url);
    const h = this.#handles.get(documentId);
    this.#handles.delete(documentId);
    h?._deleted();
    this.emit("delete-document", { documentId });
  }

  /** The document in Automerge's binary format (`Automerge.load` reads it), or undefined if no peer has it. */
  async export(id) {
    try {
      return (await this.find(id))._doc.save();
    } catch {
      return undefined;
    }
  }

  /** A new document (a new URL) holding a saved document's contents and history. */
  import(binary, options = {}) {
    if (options.docId !== undefined) {
      throw new Error("import(binary, { docId }) is not supported by @meridian/client/repo: the import gets a new URL");
    }
    return this.#handle(this.#client.import(binary));
  }

  /** A new document with the same contents and history as `handle`'s. */
  clone(handle) {
    return this.import(handle._doc.save());
  }

  /** Resolves once every change made here is stored locally. */
  async flush() {
    await Promise.all([...this.#handles.values()].filter((h) => !h.isDeleted()).map((h) => h.whenSaved()));
  }

  /** Disconnects and closes local storage (after pending writes). */
  async shutdown() {
    await this.#client.close();
  }
}

const PRESENCE = "__presence";

/**
 * Ephemeral presence on a handle, compatible on the wire with
 * automerge-repo's `Presence` (so Meridian and automerge-repo clients see
 * each other): `start({ initialState })`, `broadcast(channel, value)`,
 * `getPeerStates()`, `stop()`; events "update", "snapshot", "heartbeat",
 * "goodbye", "pruning".
 */
export class Presence extends Emitter {
  #handle;
  #peers = new Map();
  #local = {};
  #running = false;
  #heartbeat;
  #pruning;
  #onMessage;
  #onDelete;
  #heartbeatMs = 15_000;
  #peerTtlMs = 45_000;

  constructor({ handle }) {
    super();
    this.#handle = handle;
  }

  start({ initialState = {}, heartbeatMs, peerTtlMs } = {}) {
    if (this.#running) return;
    this.#running = true;
    this.#heartbeatMs = heartbeatMs ?? 15_000;
    this.#peerTtlMs = peerTtlMs ?? 3 * this.#heartbeatMs;
    this.#local = initialState;
    this.#onMessage = ({ senderId, message }) => {
      const m = message?.[PRESENCE];
      if (!m) return;
      if (!this.#peers.has(senderId)) this.#send("snapshot", { state: this.#local });
      const now = Date.now();
      const peer = this.#peers.get(senderId) ?? { peerId: senderId, lastActiveAt: 0, lastSeenAt: 0, value: {} };
      peer.lastSeenAt = now;
      switch (m.type) {
        case "heartbeat":
          this.#peers.set(senderId, peer);
          this.emit("heartbeat", { type: "heartbeat", peerId: senderId });
          break;
        case "goodbye":
          this.#peers.delete(senderId);
          this.emit("goodbye", { type: "goodbye", peerId: senderId });
          break;
        case "update":
          this.#peers.set(senderId, { ...peer, lastActiveAt: now, value: { ...peer.value, [m.channel]: m.value } });
          this.emit("update", { type: "update", peerId: senderId, channel: m.channel, value: m.value });
          break;
        case "snapshot":
          this.#peers.set(senderId, { ...peer, lastActiveAt: now, value: m.state ?? {} });
          this.emit("snapshot", { type: "snapshot", peerId: senderId, state: m.state });
          break;
      }
    };
    this.#handle.on("ephemeral-message", this.#onMessage);
    this.#onDelete = () => this.stop();
    this.#handle.on("delete", this.#onDelete);
    this.#send("snapshot", { state: this.#local });
    this.#pruning = setInterval(() => {
      const cutoff = Date.now() - this.#peerTtlMs;
      const pruned = [...this.#peers.values()].filter((p) => p.lastSeenAt < cutoff).map((p) => p.peerId);
      for (const id of pruned) this.#peers.delete(id);
      if (pruned.length > 0) this.emit("pruning", { pruned });
    }, this.#heartbeatMs);
  }

  /** Sets one channel of our state and tells every peer. */
  broadcast(channel, value) {
    this.#local = { ...this.#local, [channel]: value };
    this.#send("update", { channel, value });
  }

  getLocalState() {
    return this.#local;
  }

  /** Peers' states: `.value` by peer id, `.getStates()` as automerge-repo's `PeerStateView`. */
  getPeerStates() {
    const value = Object.fromEntries([...this.#peers].map(([id, p]) => [id, { ...p }]));
    return { value, getStates: () => value };
  }

  /** Says goodbye and stops listening (also when the document is deleted). */
  stop() {
    if (!this.#running) return;
    if (!this.#handle.isDeleted()) this.#send("goodbye", {});
    this.#running = false;
    clearInterval(this.#heartbeat);
    clearInterval(this.#pruning);
    this.#heartbeat = this.#pruning = undefined;
    this.#handle.off("ephemeral-message", this.#onMessage);
    this.#handle.off("delete", this.#onDelete);
    this.#peers.clear();
  }

  #send(type, extra) {
    if (!this.#running) return;
    this.#handle.broadcast({ [PRESENCE]: { type, ...extra } });
    // A message resets the heartbeat: heartbeats only fill silences.
    clearInterval(this.#heartbeat);
    this.#heartbeat = setInterval(() => this.#send("heartbeat", {}), this.#heartbeatMs);
  }
}

export { Counter, ImmutableString, splice, updateText };
