// Shared helpers for the Meridian interop scripts (server.mjs, scenario.mjs, peer.mjs).
//
// Everything here uses the public API of @automerge/automerge-repo 2.5.6 and
// @automerge/automerge-repo-network-websocket 2.5.6. Output convention: one JSON
// object per line on stdout; diagnostics go to stderr.

import { Repo, generateAutomergeUrl } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { execFileSync } from "node:child_process"
import path from "node:path"

export { Repo, generateAutomergeUrl }

/**
 * `npm pack` of the package in `dir` into `dest`: the tarball's path, the
 * package's name, its sizes and the files it holds.
 */
export function npmPack(dir, dest) {
  const [p] = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", dest, dir], { encoding: "utf8" }))
  return { tarball: path.join(dest, p.filename), name: p.name, size: p.size, unpackedSize: p.unpackedSize, files: p.files.map((f) => f.path) }
}

/** Print one JSON line on stdout. */
export function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n")
}

/** Print a diagnostic line on stderr. */
export function log(...args) {
  process.stderr.write(
    `[${new Date().toISOString()}] ` +
      args.map(a => (typeof a === "string" ? a : JSON.stringify(a))).join(" ") +
      "\n"
  )
}

/**
 * Minimal `--key value` / `--flag` parser. Repeated keys keep the last value.
 * `spec` maps option names to "string" | "number" | "bool".
 */
export function parseArgs(argv, spec) {
  const opts = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${JSON.stringify(a)}`)
    let key = a.slice(2)
    let val
    const eq = key.indexOf("=")
    if (eq >= 0) {
      val = key.slice(eq + 1)
      key = key.slice(0, eq)
    }
    const type = spec[key]
    if (!type) throw new Error(`unknown option --${key}`)
    if (type === "bool") {
      opts[key] = val === undefined ? true : !["0", "false", "no"].includes(val)
      continue
    }
    if (val === undefined) {
      if (i + 1 >= argv.length) throw new Error(`option --${key} needs a value`)
      val = argv[++i]
    }
    if (type === "number") {
      const n = Number(val)
      if (!Number.isFinite(n)) throw new Error(`option --${key} needs a number, got ${val}`)
      opts[key] = n
    } else {
      opts[key] = val
    }
  }
  return opts
}

/**
 * Install a hard deadline: after `seconds`, print {"ok":false,"error":"timeout..."}
 * and exit with code 2. Also turns unhandled errors into a JSON failure line.
 * Returns a function that reports failure and exits.
 */
export function installGuards(seconds, label = "script") {
  const fail = (error, code = 1) => {
    out({ ok: false, error: String(error?.stack ?? error) })
    process.exit(code)
  }
  if (seconds > 0) {
    const t = setTimeout(
      () => fail(`timeout: ${label} did not finish within ${seconds} s`, 2),
      seconds * 1000
    )
    t.unref()
  }
  process.on("uncaughtException", e => {
    // WebSocketClientAdapter.onError rethrows every socket error except
    // ECONNREFUSED from inside an event listener (so it surfaces here). When the
    // server goes away abruptly that is ECONNRESET & co; the adapter reconnects
    // every 5 s by itself, so log and carry on instead of failing.
    if (NETWORK_ERRORS.has(e?.code)) {
      log(`ignoring network error ${e.code}: ${e.message}`)
      return
    }
    fail(`uncaught exception: ${e?.stack ?? e}`)
  })
  process.on("unhandledRejection", e => fail(`unhandled rejection: ${e?.stack ?? e}`))
  return fail
}

const NETWORK_ERRORS = new Set(["ECONNRESET", "EPIPE", "ECONNREFUSED", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH"])

/** Headless Chromium as the tests run it (Debian's, never a downloaded
 * one) with a fresh profile: `{ browser, close }`; `close` also removes the
 * profile. */
export async function launchChromium(executablePath = "/usr/bin/chromium", prefix = "meridian-chromium-") {
  const { chromium } = await import("playwright-core")
  const { mkdtemp, rm } = await import("node:fs/promises")
  const { tmpdir } = await import("node:os")
  const profile = await mkdtemp(path.join(tmpdir(), prefix))
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", `--disk-cache-dir=${profile}`],
  })
  const close = async () => {
    await browser.close().catch(() => {})
    await rm(profile, { recursive: true, force: true }).catch(() => {})
  }
  return { browser, close }
}

export const sleep = ms => new Promise(r => setTimeout(r, ms))

/** Poll `pred` every `intervalMs` until it returns truthy; throws after `timeoutMs`. */
export async function waitUntil(pred, { timeoutMs = 30000, intervalMs = 20, what = "condition" } = {}) {
  const start = performance.now()
  for (;;) {
    const v = await pred()
    if (v) return v
    if (performance.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

let peerCounter = 0
/** A unique peer id with a readable prefix. */
export function newPeerId(prefix) {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${++peerCounter}-${Math.random().toString(36).slice(2, 8)}`
}

/**
 * Wrap a network adapter so that every message it sends or receives is logged
 * (type, documentId, byte size) on stderr. Used by --trace; relies only on the
 * adapter's public `send` method and its "message" / "peer-candidate" events.
 */
export function traceAdapter(adapter, name) {
  const origSend = adapter.send.bind(adapter)
  adapter.send = msg => {
    log(`${name} >>`, summarize(msg))
    return origSend(msg)
  }
  adapter.on("message", msg => log(`${name} <<`, summarize(msg)))
  adapter.on("peer-candidate", ({ peerId, peerMetadata }) =>
    log(`${name} << peer`, { peerId, peerMetadata })
  )
  adapter.on("peer-disconnected", ({ peerId }) => log(`${name} -- peer-disconnected`, { peerId }))
  return adapter
}

function summarize(msg) {
  const s = { type: msg.type }
  for (const k of ["senderId", "targetId", "documentId", "sessionId", "count", "selectedProtocolVersion"]) {
    if (msg[k] !== undefined) s[k] = msg[k]
  }
  if (msg.data) s.bytes = msg.data.byteLength
  if (msg.peerMetadata) s.peerMetadata = msg.peerMetadata
  if (msg.supportedProtocolVersions) s.supportedProtocolVersions = msg.supportedProtocolVersions
  if (msg.message) s.message = msg.message
  return s
}

/**
 * A client repo connected to `url` over the real WebSocketClientAdapter.
 * In-memory storage unless `storageDir` is given.
 */
export function clientRepo(url, { peerId, storageDir, trace = false, retryInterval } = {}) {
  const adapter = new WebSocketClientAdapter(url, retryInterval)
  if (trace) traceAdapter(adapter, peerId ?? "client")
  const repo = new Repo({
    network: [adapter],
    storage: storageDir ? new NodeFSStorageAdapter(storageDir) : undefined,
    peerId,
  })
  return repo
}

/** Wait until the repo has at least one connected peer (the server); returns its peer id. */
export async function waitForServerPeer(repo, timeoutMs = 20000) {
  return waitUntil(() => repo.peers[0], { timeoutMs, what: "server peer handshake" })
}

/**
 * Waits until a fresh JS repo connected to `url` finds `docUrl` on the
 * server and `pred(doc)` holds: the server has the document.
 */
export async function waitUntilServerHas(url, docUrl, pred, what = "server to hold the document") {
  return waitUntil(async () => {
    const probe = clientRepo(url, { peerId: newPeerId("probe") })
    try {
      const h = await withTimeout(probe.find(docUrl), 3000, "probe find")
      return pred(h.doc())
    } catch {
      return false
    } finally {
      await shutdown(probe)
    }
  }, { timeoutMs: 20000, intervalMs: 100, what })
}

export function headsEqual(a, b) {
  if (!a || !b || a.length !== b.length) return false
  const sa = [...a].sort()
  const sb = [...b].sort()
  return sa.every((h, i) => h === sb[i])
}

/** Plain JSON copy of an Automerge doc. */
export function docJson(handle) {
  return JSON.parse(JSON.stringify(handle.doc()))
}

export function stableStringify(v) {
  if (Array.isArray(v)) return "[" + v.map(stableStringify).join(",") + "]"
  if (v && typeof v === "object") {
    return (
      "{" +
      Object.keys(v)
        .sort()
        .map(k => JSON.stringify(k) + ":" + stableStringify(v[k]))
        .join(",") +
      "}"
    )
  }
  return JSON.stringify(v)
}

export function deepEqual(a, b) {
  return stableStringify(a) === stableStringify(b)
}

/** Look up a dotted path ("a.b.0") in a JSON value. */
export function getPath(obj, path) {
  let cur = obj
  for (const part of path.split(".")) {
    if (cur === null || cur === undefined) return undefined
    cur = cur[part]
  }
  return cur
}

/**
 * Wait until the sync server confirms it holds `handle`'s current heads.
 *
 * Preferred signal: the server advertises a storageId in its `peer` message, and
 * the repo then records the server's heads per storage id (handle.getSyncInfo).
 * If the server advertises no storageId (or `mode === "fresh"`), fall back to
 * fetching the doc with a brand-new repo (new peer id) until its heads match.
 * Returns { method, ms, attempts }.
 */
export async function waitServerHas(repo, handle, url, { timeoutMs = 30000, mode = "auto", trace = false } = {}) {
  const start = performance.now()
  const serverPeer = await waitForServerPeer(repo, timeoutMs)
  const storageId = repo.getStorageIdOfPeer(serverPeer)
  if (storageId && mode !== "fresh") {
    await waitUntil(
      () => headsEqual(handle.getSyncInfo(storageId)?.lastHeads, handle.heads()),
      { timeoutMs, what: "server to acknowledge our heads (syncInfo)" }
    )
    return { method: "syncInfo", ms: performance.now() - start, attempts: 1 }
  }
  let attempts = 0
  for (;;) {
    attempts++
    const remaining = timeoutMs - (performance.now() - start)
    if (remaining <= 0) throw new Error(`server never had the doc after ${attempts - 1} fresh-repo fetches`)
    const r = await fetchWithFreshRepo(url, handle.url, {
      timeoutMs: Math.min(remaining, 15000),
      until: h => headsEqual(h.heads(), handle.heads()),
      trace,
    }).catch(e => ({ error: e }))
    if (!r.error) return { method: "fresh-repo", ms: performance.now() - start, attempts }
    await sleep(100)
  }
}

/**
 * Fetch `docUrl` from the server at `url` with a brand-new in-memory repo,
 * wait until `until(handle)` holds, return { json, heads, findMs, totalMs }.
 * The repo is shut down afterwards.
 */
export async function fetchWithFreshRepo(url, docUrl, { timeoutMs = 30000, until = () => true, trace = false, peerPrefix = "fetch" } = {}) {
  const repo = clientRepo(url, { peerId: newPeerId(peerPrefix), trace })
  try {
    const t0 = performance.now()
    const handle = await withTimeout(repo.find(docUrl), timeoutMs, "find")
    const findMs = performance.now() - t0
    await waitUntil(() => until(handle), { timeoutMs: Math.max(1, timeoutMs - findMs), intervalMs: 10, what: "fetched doc to reach expected state" })
    const totalMs = performance.now() - t0
    return { json: docJson(handle), heads: handle.heads(), findMs, totalMs }
  } finally {
    await shutdown(repo)
  }
}

export function withTimeout(p, ms, what) {
  let t
  return Promise.race([
    p,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what} timed out after ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(t))
}

/** repo.shutdown() with a bound, so a stuck flush cannot hang the script. */
export async function shutdown(repo) {
  try {
    await withTimeout(repo.shutdown(), 5000, "repo.shutdown")
  } catch (e) {
    log("shutdown:", String(e))
  }
}

export const round = ms => Math.round(ms * 10) / 10

/** The doc JSON if it is small, else a summary (keeps stdout lines short). */
export function docField(json, limit = 1024) {
  const s = JSON.stringify(json)
  if (s.length <= limit) return { doc: json }
  return { docChars: s.length, n: json?.n }
}

/**
 * Warm up the wasm/JIT paths of this process (local only, no network): build a
 * doc with `changes` changes and sync it into an empty doc in memory, so that
 * timings of the first network fetch measure the server, not client warm-up.
 */
export async function warmClient(changes = 3000) {
  const Am = (await import("@automerge/automerge")).next
  const t0 = performance.now()
  let a = Am.from({ n: 0, text: "" })
  for (let i = 0; i < changes; i++) {
    a = Am.change(a, d => {
      d.n += 1
      Am.splice(d, ["text"], d.text.length, 0, "x")
    })
  }
  let b = Am.init()
  let sa = Am.initSyncState()
  let sb = Am.initSyncState()
  for (let i = 0; i < 10; i++) {
    let msg
    ;[sb, msg] = Am.generateSyncMessage(b, sb)
    if (msg) [a, sa] = Am.receiveSyncMessage(a, sa, msg)
    ;[sa, msg] = Am.generateSyncMessage(a, sa)
    if (msg) [b, sb] = Am.receiveSyncMessage(b, sb, msg)
    else break
  }
  if (b.n !== changes) throw new Error(`warm-up sync failed: n=${b.n}`)
  Am.load(Am.save(b))
  return performance.now() - t0
}
