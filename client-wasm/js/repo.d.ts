// Types of @meridian/client/repo: automerge-repo's API over Meridian.
import type { Client, Patch, Change } from "./index.js";
import { Counter, ImmutableString } from "./index.js";

export { Counter, ImmutableString };

/** `automerge:<documentId>`. */
export type AutomergeUrl = `automerge:${string}`;
/** The part of an `AutomergeUrl` after `automerge:`. */
export type DocumentId = string;
/** A URL or a document id. */
export type AnyDocumentId = AutomergeUrl | DocumentId;
/** Change hashes (hex; automerge-repo's are base58 "URL heads"). */
export type Heads = string[];

/** The document as the application reads it: read-only at the top level, as `@automerge/automerge`'s `Doc<T>`. */
export type Doc<T> = { readonly [P in keyof T]: T[P] };
/** A change callback: mutate the draft (typed as `T`). */
export type ChangeFn<T> = (doc: T) => void;
export interface ChangeOptions {
  /** A commit message, shown in the history. */
  message?: string;
}

export interface DocHandleChangePayload<T> {
  handle: DocHandle<T>;
  doc: Doc<T>;
  patches: Patch[];
  patchInfo: { before: Doc<T>; after: Doc<T>; source: "change" };
}
export interface DocHandleEphemeralMessagePayload<T> {
  handle: DocHandle<T>;
  senderId: string;
  message: unknown;
}
export interface DocHandleEvents<T> {
  change: (payload: DocHandleChangePayload<T>) => void;
  "heads-changed": (payload: { handle: DocHandle<T>; doc: Doc<T> }) => void;
  delete: (payload: { handle: DocHandle<T> }) => void;
  "ephemeral-message": (payload: DocHandleEphemeralMessagePayload<T>) => void;
}

/** One document (automerge-repo's `DocHandle`). */
export class DocHandle<T> {
  readonly url: AutomergeUrl;
  readonly documentId: DocumentId;
  /** "ready", or "deleted" after `repo.delete`. */
  readonly state: "ready" | "deleted";
  isReady(): boolean;
  isDeleted(): boolean;
  isUnavailable(): boolean;
  whenReady(): Promise<void>;
  /** The document (plain, frozen values; the same object until it changes); `undefined` once deleted. */
  doc(): Doc<T> | undefined;
  /** @deprecated automerge-repo's older name for `doc()`. */
  docSync(): Doc<T> | undefined;
  /** Edits the document through a draft: assignments, `delete`, array methods, `counter.increment()`, `splice`/`updateText`. */
  change(fn: ChangeFn<T>, options?: ChangeOptions): void;
  /** Not supported: throws. */
  changeAt(heads: Heads, fn: ChangeFn<T>, options?: ChangeOptions): never;
  heads(): Heads;
  /** Every change's heads, oldest first. */
  history(): Heads[];
  /** A read-only handle on the document at `heads`. */
  view(heads: Heads): DocHandle<T>;
  /** As automerge-repo's: `diff(heads)` from now to `heads`; `diff(a, b)` from `a` to `b`; `diff(other)` from this document to the other's. */
  diff(first: Heads | DocHandle<T>, second?: Heads): Patch[];
  metadata(change?: string): Change | undefined;
  merge(other: DocHandle<T>): void;
  /** An ephemeral (presence) message to everyone with the document open; JSON-serialisable. */
  broadcast(message: unknown): void;
  /** Meridian: resolves once every change so far is stored locally. */
  whenSaved(): Promise<true>;
  /** Meridian: resolves once the edge has every change so far. */
  whenSynced(): Promise<true>;
  delete(): void;
  on<E extends keyof DocHandleEvents<T>>(event: E, fn: DocHandleEvents<T>[E]): this;
  once<E extends keyof DocHandleEvents<T>>(event: E, fn: DocHandleEvents<T>[E]): this;
  off<E extends keyof DocHandleEvents<T>>(event: E, fn: DocHandleEvents<T>[E]): this;
  addListener<E extends keyof DocHandleEvents<T>>(event: E, fn: DocHandleEvents<T>[E]): this;
  removeListener<E extends keyof DocHandleEvents<T>>(event: E, fn: DocHandleEvents<T>[E]): this;
  removeAllListeners(event?: keyof DocHandleEvents<T>): this;
  listenerCount(event: keyof DocHandleEvents<T>): number;
}

export interface RepoConfig {
  /** Edge WebSocket URL(s): raced, the others are fallbacks. None: local only. */
  network?: string | string[] | null;
  /** "indexeddb" keeps documents across reloads; null (the default) keeps them in memory. */
  storage?: "indexeddb" | "memory" | null;
  /** The IndexedDB database (default "meridian"). */
  dbName?: string;
  /** An access token for edges with auth on. */
  token?: string;
  /** Called before every connection attempt; returns a token. */
  getToken?: () => string | Promise<string>;
  peerId?: string;
  /** A WebSocket constructor where there is no global one (Node 20: `ws`). */
  WebSocket?: unknown;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  handshakeTimeoutMs?: number;
}

/** automerge-repo's `Repo`, syncing with a Meridian edge. */
export class Repo {
  constructor(config?: RepoConfig);
  /** The Meridian client underneath (connection state, edges, goOffline/goOnline). */
  readonly client: Client;
  readonly peerId: string;
  readonly handles: Record<DocumentId, DocHandle<any>>;
  create<T>(initialValue?: T): DocHandle<T>;
  find<T>(id: AnyDocumentId): Promise<DocHandle<T>>;
  delete(id: AnyDocumentId): void;
  export(id: AnyDocumentId): Promise<Uint8Array | undefined>;
  import<T>(binary: Uint8Array): DocHandle<T>;
  clone<T>(handle: DocHandle<T>): DocHandle<T>;
  flush(): Promise<void>;
  shutdown(): Promise<void>;
  on(event: "document", fn: (payload: { handle: DocHandle<any> }) => void): this;
  on(event: "delete-document", fn: (payload: { documentId: DocumentId }) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
}

export function isValidAutomergeUrl(url: unknown): url is AutomergeUrl;
export function parseAutomergeUrl(url: AutomergeUrl): { documentId: DocumentId };
export function stringifyAutomergeUrl(arg: DocumentId | { documentId: DocumentId }): AutomergeUrl;

/** Edits text at `path` in place inside a change (UTF-16 indexes). */
export function splice(doc: unknown, path: string | (string | number)[], index: number, del: number, text?: string): void;
/** Makes the text at `path` equal `text` with the smallest edit, inside a change. */
export function updateText(doc: unknown, path: string | (string | number)[], text: string): void;

export type PresenceState = Record<string, any>;
export interface PeerState<State extends PresenceState> {
  peerId: string;
  lastActiveAt: number;
  lastSeenAt: number;
  value: State;
}
export interface PeerStates<State extends PresenceState> {
  value: Record<string, PeerState<State>>;
  getStates(): Record<string, PeerState<State>>;
}
export interface PresenceConfig<State extends PresenceState> {
  initialState: State;
  heartbeatMs?: number;
  peerTtlMs?: number;
}

/** Presence on a handle, wire-compatible with automerge-repo's `Presence`. */
export class Presence<State extends PresenceState = PresenceState> {
  constructor(options: { handle: DocHandle<unknown> });
  start(config: PresenceConfig<State>): void;
  broadcast<Channel extends keyof State>(channel: Channel, value: State[Channel]): void;
  getLocalState(): State;
  getPeerStates(): PeerStates<State>;
  stop(): void;
  on(event: "update" | "snapshot" | "heartbeat" | "goodbye" | "pruning", fn: (e: any) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
}
