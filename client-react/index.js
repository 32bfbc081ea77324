// @meridian/react: React hooks for @meridian/client/repo, with the names
// and shapes of @automerge/automerge-repo-react-hooks (so an app moves over
// by changing imports).
import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useReducer, useSyncExternalStore } from "react";
import { Presence } from "@meridian/client/repo";

/** The repo the hooks below use: `<RepoContext.Provider value={repo}>`. */
export const RepoContext = createContext(null);

/** A provider component, for those who prefer it to `RepoContext.Provider`. */
export function RepoProvider({ repo, children }) {
  return createElement(RepoContext.Provider, { value: repo }, children);
}

/** The repo from the nearest `RepoContext`. */
export function useRepo() {
  const repo = useContext(RepoContext);
  if (!repo) throw new Error("useRepo: no <RepoContext.Provider value={repo}> above this component");
  return repo;
}

// Lookups in flight or done, per repo and URL: a re-render (or a suspended
// render) finds the same one.
const lookups = new WeakMap();

function lookup(repo, id) {
  let byUrl = lookups.get(repo);
  if (!byUrl) lookups.set(repo, (byUrl = new Map()));
  let l = byUrl.get(id);
  if (l && l.handle?.isDeleted()) {
    byUrl.delete(id);
    l = undefined;
  }
  if (!l) {
    l = { handle: undefined, error: undefined, done: false };
    const documentId = String(id).replace(/^automerge:/, "").split("#")[0];
    const known = repo.handles?.[documentId];
    if (known) {
      Object.assign(l, { handle: known, done: true });
      l.promise = Promise.resolve(known);
    } else {
      l.promise = repo.find(id).then(
        (h) => void Object.assign(l, { handle: h, done: true }),
        (e) => void Object.assign(l, { error: e, done: true }),
      );
    }
    byUrl.set(id, l);
  }
  return l;
}

/**
 * The handle of a document (`undefined` while it is being found, or if no
 * peer has it). With `{ suspense: true }` the component suspends until it is
 * found, and an unavailable document throws to the nearest error boundary.
 */
export function useDocHandle(id, { suspense = false } = {}) {
  const repo = useRepo();
  const l = id ? lookup(repo, id) : undefined;
  const [, rerender] = useReducer((n) => n + 1, 0);
  const seen = l?.handle;
  useEffect(() => {
    // Also when the lookup finished before this effect ran: a render that
    // saw no handle must be followed by one that sees it.
    if (!l || seen) return;
    let live = true;
    l.promise.then(() => live && rerender());
    return () => {
      live = false;
    };
  }, [l, seen]);
  if (!l) return undefined;
  if (l.handle) return l.handle;
  if (suspense) throw l.error ?? l.promise;
  return undefined;
}

/** The handle of a document; the and Meridian's name for `useDocHandle`. */
export const useHandle = useDocHandle;

/**
 * `[doc, changeDoc]`: the document (re-rendered on every local or remote
 * change; the same object until it changes) and a function that changes it
 * (`changeDoc(d => { d.title = "x" })`). `[undefined, () => {}]` while it is
 * being found.
 */
export function useDocument(id, options) {
  const handle = useDocHandle(id, options);
  const subscribe = useCallback(
    (onChange) => {
      if (!handle) return () => {};
      handle.on("change", onChange);
      handle.on("delete", onChange);
      return () => {
        handle.off("change", onChange);
        handle.off("delete", onChange);
      };
    },
    [handle],
  );
  const read = () => handle?.doc();
  const doc = useSyncExternalStore(subscribe, read, read);
  const changeDoc = useCallback((fn, changeOptions) => handle?.change(fn, changeOptions), [handle]);
  return handle ? [doc, changeDoc] : [undefined, () => {}];
}

/** Several documents at once: a `Map` from URL to document (those found so far). */
export function useDocuments(ids = []) {
  const repo = useRepo();
  const key = ids.join(",");
  const [, rerender] = useReducer((n) => n + 1, 0);
  const ls = useMemo(() => ids.map((id) => [id, lookup(repo, id)]), [repo, key]);
  useEffect(() => {
    let live = true;
    const offs = [];
    for (const [, l] of ls) {
      l.promise.then(() => {
        if (!live || !l.handle) return;
        rerender();
        l.handle.on("change", rerender);
        l.handle.on("delete", rerender);
        offs.push(() => {
          l.handle.off("change", rerender);
          l.handle.off("delete", rerender);
        });
      });
    }
    return () => {
      live = false;
      offs.forEach((off) => off());
    };
  }, [ls]);
  return new Map(ls.filter(([, l]) => l.handle && !l.handle.isDeleted()).map(([id, l]) => [id, l.handle.doc()]));
}

const NO_PEERS = Object.freeze({ value: Object.freeze({}), getStates: () => ({}) });

/**
 * Presence on a document (automerge-repo's `usePresence`, compatible on the
 * wire with its clients): `{ peerStates, localState, update, start, stop }`.
 * Re-renders when a peer's state changes or a peer leaves.
 */
export function usePresence({ handle, initialState, heartbeatMs, peerTtlMs }) {
  const [, rerender] = useReducer((n) => n + 1, 0);
  const presence = useMemo(() => (handle ? new Presence({ handle }) : null), [handle]);
  const config = { initialState, heartbeatMs, peerTtlMs };
  useEffect(() => {
    if (!presence) return;
    const events = ["update", "snapshot", "goodbye", "pruning"];
    events.forEach((e) => presence.on(e, rerender));
    presence.start(config);
    rerender();
    return () => {
      events.forEach((e) => presence.off(e, rerender));
      presence.stop();
    };
  }, [presence]);
  return {
    peerStates: presence?.getPeerStates() ?? NO_PEERS,
    localState: presence?.getLocalState() ?? initialState,
    update: (channel, value) => {
      presence?.broadcast(channel, value);
      rerender();
    },
    start: (overrides) => presence?.start({ ...config, ...overrides }),
    stop: () => presence?.stop(),
  };
}
