// Types of @meridian/client.

/** A key, or keys and list indexes from the root: `"title"`, `["todos", 0, "done"]`. */
export type Path = string | (string | number)[];

export type ConnectionState = "connecting" | "connected" | "backoff" | "offline" | "local" | "closed";

export interface ClientOptions {
  /** Edge WebSocket URLs; the fastest to connect is used, the others are fallbacks. */
  urls?: string[];
  /** IndexedDB database name (default "meridian"); `null` keeps documents in memory. */
  dbName?: string | null;
  peerId?: string;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** An edge that accepts the socket but does not answer the handshake within this is dropped and retried (default 10000). */
  handshakeTimeoutMs?: number;
  /** A WebSocket constructor where there is no global one (Node 20: `ws`). */
  WebSocket?: unknown;
  /** An access token (a JWT from your backend, or `meridian-edge auth token`) for edges with auth on; sent as `?token=` on each edge URL. */
  token?: string;
  /**
   * Called before every connection attempt (the first, and each reconnect, e.g. after the edge closed an
   * expired or revoked token); returns a token or a promise of one. Documents and offline edits are kept
   * meanwhile. If it throws or rejects, the client retries with backoff. Takes precedence over `token`.
   */
  getToken?: () => string | Promise<string>;
}

/** A patch as @automerge/automerge produces them; text indexes are UTF-16 code units. */
export interface Patch {
  action: "put" | "insert" | "splice" | "inc" | "del" | "conflict" | "mark";
  path: (string | number)[];
  value?: unknown;
  values?: unknown[];
  length?: number;
  conflict?: boolean;
}

export interface Change {
  hash: string;
  actor: string;
  seq: number;
  time: number;
  message: string | null;
  deps: string[];
}

export interface Draft<T = any> {
  readonly value: T;
  put(path: Path, value: unknown): void;
  delete(path: Path): void;
  insert(path: Path, index: number, value: unknown): void;
  splice(path: Path, index: number, deleteCount: number, text: string): void;
  increment(path: Path, by?: number): void;
  /** Makes the text at `path` read `text` with the smallest edit. */
  updateText(path: Path, text: string): void;
}

export class Client {
  static open(options?: ClientOptions): Promise<Client>;
  /** `open` without waiting: usable at once, IndexedDB opens in the background (memory if it cannot). */
  static openSync(options?: ClientOptions): Client;
  create<T extends object = any>(initial?: T): Promise<Doc<T>>;
  /** `create` without waiting for local storage. */
  createSync<T extends object = any>(initial?: T): Doc<T>;
  /** A new document (new URL) holding a saved document's contents and history. */
  import<T = any>(bytes: Uint8Array): Doc<T>;
  /** Removes a document from this client (memory and local storage); peers keep theirs. */
  delete(url: string): void;
  find<T = any>(url: string): Promise<Doc<T>>;
  readonly connectionState: ConnectionState;
  onConnectionStateChange(cb: (state: ConnectionState) => void): () => void;
  /** Cuts the connection and stays offline (edits are kept locally) until `goOnline()`. */
  goOffline(): void;
  /** Reconnects after `goOffline()`. */
  goOnline(): void;
  /** The edge in use, if connected. */
  readonly url: string | undefined;
  /** Every edge with its last measured connect time, fastest first. */
  edges(): { url: string; rttMs: number | null }[];
  readonly peerId: string;
  readonly storageId: string | undefined;
  close(): Promise<void>;
}

export class Doc<T = any> {
  readonly url: string;
  readonly documentId: string;
  /**
   * The document as JavaScript values (text as strings, `Counter`, `Date`, `Uint8Array`,
   * `ImmutableString`): frozen, and the same object until the document changes.
   */
  value(): T;
  put(path: Path, value: unknown): void;
  delete(path: Path): void;
  insert(path: Path, index: number, value: unknown): void;
  splice(path: Path, index: number, deleteCount: number, text: string): void;
  /** Adds `by` (a whole number, 1 by default) to the counter at `path`. */
  increment(path: Path, by?: number): void;
  /** Makes the text at `path` read `text` with the smallest edit (concurrent edits elsewhere in it merge). */
  updateText(path: Path, text: string): void;
  /** Several edits as one change, with an optional commit message. */
  change(fn: (draft: Draft<T>) => void, message?: string): void;
  applyOps(ops: unknown[][], message?: string): void;
  heads(): string[];
  /** The whole document in Automerge's binary format (`Automerge.load` reads it). */
  save(): Uint8Array;
  /** Merges a saved document (or changes) into this one. */
  merge(bytes: Uint8Array): void;
  history(): Change[];
  /** The document as it was at `heads` (e.g. `[change.hash]` from `history()`). */
  valueAt(heads: string[]): T;
  /** Patches from `before` to `after` with a saved document (`other`) merged into a copy first. */
  diffWith(other: Uint8Array, before: string[], after: string[]): Patch[];
  /** Patches from the version at `before` to the version at `after` (UTF-16 text indexes). */
  diff(before: string[], after: string[]): Patch[];
  /** A stable position in the text or list at `path` that moves with concurrent edits. */
  cursor(path: Path, index: number): string;
  /** The current index of a `cursor()` position. */
  cursorIndex(path: Path, cursor: string): number;
  subscribe(cb: (e: { patches: Patch[]; heads: string[] }) => void): () => void;
  broadcast(message: unknown): void;
  onEphemeral(cb: (e: { senderId: string; message: any }) => void): () => void;
  whenSaved(): Promise<true>;
  whenSynced(): Promise<true>;
}

/** A counter (`new Counter(0)`); read back as a `Counter`: `c.value`, `Number(c)`. */
export class Counter {
  constructor(value?: number);
  value: number;
  valueOf(): number;
  toString(): string;
  toJSON(): number;
  /** Inside a `Repo` handle's change only. */
  increment(by?: number): number;
  /** Inside a `Repo` handle's change only. */
  decrement(by?: number): number;
}

/** A string stored as one value, not as spliceable text (as `@automerge/automerge`'s). */
export class ImmutableString {
  constructor(val: string);
  readonly val: string;
  toString(): string;
  toJSON(): string;
}

export function init(): Promise<void>;
/** How the wasm module is loaded (the Node entry point reads the file). */
export function setLoader(load: (wasm: { initSync: (options: { module: BufferSource }) => void }) => Promise<void>): void;
export function parseAutomergeUrl(url: string): string;
