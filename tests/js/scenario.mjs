#!/usr/bin/env node
// Interop scenarios: real JS automerge-repo clients against a sync server
// (Meridian, or the reference server.mjs).
//
// Usage:
//   node scenario.mjs --url ws://127.0.0.1:P/ --case NAME [options]
//
// Cases:
//   create-find            A creates a doc, B (fresh peer) finds it by URL, same content.
//   concurrent             A creates, B finds; both edit concurrently (own map keys, a shared
//                          key, text splices) for --rounds rounds; wait for identical heads+JSON.
//   unavailable            B finds a never-created URL; find must reject within --max-ms.
//   unavailable-then-appears
//                          B finds a URL nobody has (unavailable); A then uploads a doc with
//                          that id; B's handle must become ready (server pushes it later).
//   ephemeral              A and B share a doc; A broadcasts {cursor:3}, B must receive it with
//                          senderId = A's peer id; and B -> A likewise.
//   big-doc                A makes --changes N (default 3000) separate changes, waits until the
//                          server has them, then --repeat R fresh repos find the URL; each timing
//                          is find() call -> doc.n === N. --warmup K does K untimed fetches
//                          first. Before timing, the process warms its own wasm/JIT with local
//                          automerge work (disable with --client-warmup=false), so the first
//                          timed fetch measures the server rather than client warm-up.
//   upload-then-fetch      Same as big-doc with a smaller default (--changes 10) and optional
//                          --content; B fetches from --url2 if given (reverse-direction tests).
//   upload                 A creates a doc (--content JSON, plus --changes N), waits until the
//                          server has it, prints {"ok":true,"url":...,"heads":[...]} and exits
//                          (or with --stay, stays connected until stdin closes).
//   fetch                  A fresh repo finds --doc URL, waits for --expect-json / --expect-count /
//                          --expect-heads, prints the doc JSON (or a summary if large) and
//                          timings; --repeat / --warmup / --client-warmup as for big-doc.
//
// Common options:
//   --url U          server for repo A (and B unless --url2)
//   --url2 U2        server for repo B / fresh fetchers (default: --url)
//   --timeout S      hard deadline for the whole script (default 60; big-doc default 180)
//   --trace          log every wire message of the JS repos on stderr
//   --server-check auto|fresh
//                    how to know the server has A's doc: "auto" uses the server's storageId
//                    (handle.getSyncInfo) when advertised, else fetches with fresh repos.
//
// Output: JSON lines on stdout; the last one is {"ok":true,"case":...} or
// {"ok":false,"error":...}. Exit code 0 on success, 1 on failure, 2 on timeout.

import { splice } from "@automerge/automerge-repo"
import {
  out, log, parseArgs, installGuards, sleep, waitUntil, newPeerId, clientRepo,
  waitForServerPeer, waitServerHas, fetchWithFreshRepo, headsEqual, docJson,
  deepEqual, withTimeout, shutdown, round, generateAutomergeUrl, Repo, docField, warmClient,
} from "./lib.mjs"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  url2: "string",
  case: "string",
  changes: "number",
  repeat: "number",
  warmup: "number",
  "client-warmup": "bool",
  rounds: "number",
  timeout: "number",
  "max-ms": "number",
  content: "string",
  doc: "string",
  "expect-json": "string",
  "expect-count": "number",
  "expect-heads": "string",
  "server-check": "string",
  stay: "bool",
  trace: "bool",
})

const caseName = opts.case
const defaultTimeout = ["big-doc", "upload-then-fetch", "upload"].includes(caseName) ? 180 : 60
const fail = installGuards(opts.timeout ?? defaultTimeout, `scenario ${caseName}`)
if (!opts.url || !caseName) fail("usage: scenario.mjs --url ws://HOST:PORT/ --case NAME [options]")

const urlA = opts.url
const urlB = opts.url2 ?? opts.url
const trace = !!opts.trace
const serverCheck = opts["server-check"] ?? "auto"
const repos = []

function repoOn(url, prefix, extra = {}) {
  const r = clientRepo(url, { peerId: newPeerId(prefix), trace, ...extra })
  repos.push(r)
  return r
}

async function finish(result) {
  await Promise.all(repos.map(shutdown))
  out({ ok: true, case: caseName, ...result })
  process.exit(0)
}

function parseJsonOpt(name, dflt) {
  if (opts[name] === undefined) return dflt
  try {
    return JSON.parse(opts[name])
  } catch (e) {
    fail(`--${name} is not valid JSON: ${e}`)
  }
}

/** A creates a doc (initial content + `changes` separate changes) and waits until the server has it. */
async function uploadDoc(repoA, url, content, changes) {
  await waitForServerPeer(repoA)
  const handle = repoA.create(content)
  const t0 = performance.now()
  for (let i = 0; i < changes; i++) {
    handle.change(d => {
      d.n = (d.n ?? 0) + 1
      if (typeof d.text !== "string") d.text = ""
      splice(d, ["text"], d.text.length, 0, "x")
    })
  }
  const changeMs = performance.now() - t0
  const ack = await waitServerHas(repoA, handle, url, { timeoutMs: 120000, mode: serverCheck, trace })
  return { handle, changeMs, ack }
}

const cases = {
  async "create-find"() {
    const A = repoOn(urlA, "A")
    const content = parseJsonOpt("content", {
      title: "hello from A",
      n: 42,
      list: [1, 2, 3],
      nested: { ok: true, s: "ünïcødé 🎉" },
    })
    const { handle, ack } = await uploadDoc(A, urlA, content, 0)
    const B = repoOn(urlB, "B")
    const t0 = performance.now()
    const hb = await withTimeout(B.find(handle.url), 30000, "B.find")
    const findMs = performance.now() - t0
    const a = docJson(handle)
    const b = docJson(hb)
    if (!deepEqual(a, b)) throw new Error(`content differs: A=${JSON.stringify(a)} B=${JSON.stringify(b)}`)
    if (!deepEqual(b, content)) throw new Error(`content is not what A created: ${JSON.stringify(b)}`)
    if (!headsEqual(handle.heads(), hb.heads())) throw new Error("heads differ")
    await finish({ url: handle.url, doc: b, heads: hb.heads(), ackMs: round(ack.ms), ackMethod: ack.method, findMs: round(findMs) })
  },

  async concurrent() {
    const rounds = opts.rounds ?? 10
    const A = repoOn(urlA, "A")
    const { handle: ha } = await uploadDoc(A, urlA, { text: "start", a: {}, b: {}, shared: "init" }, 0)
    const B = repoOn(urlB, "B")
    const hb = await withTimeout(B.find(ha.url), 30000, "B.find")
    await waitForServerPeer(B)
    for (let i = 0; i < rounds; i++) {
      // Both sides edit in the same tick, before either sees the other's change.
      // Splice positions are always token boundaries, so every token must survive intact.
      ha.change(d => {
        d.a[`k${i}`] = i
        d.shared = `A${i}`
        splice(d, ["text"], 0, 0, `<A${i}>`)
        splice(d, ["text"], d.text.length, 0, `(a${i})`)
      })
      hb.change(d => {
        d.b[`k${i}`] = i * 10
        d.shared = `B${i}`
        // same position as A's second splice (end of text): concurrent inserts there
        splice(d, ["text"], d.text.length, 0, `<B${i}>`)
        // and just before "start", i.e. next to A's splice at 0 when nothing is between
        splice(d, ["text"], d.text.indexOf("start"), 0, `|m${i}|`)
      })
      await sleep(Math.floor(Math.random() * 40))
    }
    const t0 = performance.now()
    await waitUntil(
      () => headsEqual(ha.heads(), hb.heads()) && deepEqual(docJson(ha), docJson(hb)),
      { timeoutMs: 30000, what: "A and B to converge" }
    )
    const convergeMs = performance.now() - t0
    const doc = docJson(ha)
    for (let i = 0; i < rounds; i++) {
      if (doc.a[`k${i}`] !== i || doc.b[`k${i}`] !== i * 10) throw new Error(`missing key k${i}: ${JSON.stringify(doc)}`)
      for (const tok of [`<A${i}>`, `(a${i})`, `<B${i}>`, `|m${i}|`]) {
        if (!doc.text.includes(tok)) throw new Error(`text lacks ${tok}: ${doc.text}`)
      }
    }
    await finish({ url: ha.url, rounds, convergeMs: round(convergeMs), heads: ha.heads(), ...docField(doc) })
  },

  async unavailable() {
    const maxMs = opts["max-ms"] ?? 10000
    const B = repoOn(urlB, "B")
    await waitForServerPeer(B)
    const url = generateAutomergeUrl()
    const t0 = performance.now()
    let outcome
    try {
      const h = await withTimeout(B.find(url), maxMs, "find of a never-created doc")
      outcome = { resolved: true, state: h.state }
    } catch (e) {
      outcome = { resolved: false, error: String(e?.message ?? e) }
    }
    const ms = performance.now() - t0
    if (outcome.resolved) throw new Error(`find of never-created ${url} resolved (state ${outcome.state})`)
    if (!/unavailable/i.test(outcome.error)) throw new Error(`find failed, but not as unavailable: ${outcome.error}`)
    await finish({ url, ms: round(ms), error: outcome.error })
  },

  async "unavailable-then-appears"() {
    // A builds its doc offline (no network adapter yet) so we know the URL before
    // the server does.
    const A = new Repo({ network: [], peerId: newPeerId("A") })
    repos.push(A)
    const ha = A.create({ late: "arrival", n: 1 })
    const B = repoOn(urlB, "B")
    await waitForServerPeer(B)
    const t0 = performance.now()
    const hb = await withTimeout(
      B.find(ha.url, { allowableStates: ["ready", "unavailable"] }),
      30000,
      "B.find"
    )
    const unavailableMs = performance.now() - t0
    if (hb.state !== "unavailable") throw new Error(`expected unavailable, got ${hb.state}`)
    // Now connect A (networkSubsystem is a @hidden but public property of Repo).
    const t1 = performance.now()
    A.networkSubsystem.addNetworkAdapter(new WebSocketClientAdapter(urlA))
    await waitUntil(() => hb.isReady() && deepEqual(docJson(hb), docJson(ha)), {
      timeoutMs: 30000,
      what: "B's unavailable handle to become ready after A uploaded the doc",
    })
    const appearMs = performance.now() - t1
    await finish({ url: ha.url, unavailableMs: round(unavailableMs), appearMs: round(appearMs), doc: docJson(hb) })
  },

  async ephemeral() {
    const A = repoOn(urlA, "A")
    const { handle: ha } = await uploadDoc(A, urlA, { shared: true }, 0)
    const B = repoOn(urlB, "B")
    const hb = await withTimeout(B.find(ha.url), 30000, "B.find")
    const results = {}
    for (const [from, to, hFrom, hTo, value] of [
      [A, B, ha, hb, { cursor: 3 }],
      [B, A, hb, ha, { cursor: 7, who: "B", bytes: [1, 2, 3] }],
    ]) {
      const dir = from === A ? "A->B" : "B->A"
      const t0 = performance.now()
      let sends = 0
      let timer
      const got = await withTimeout(
        new Promise(resolve => {
          hTo.on("ephemeral-message", function listener({ senderId, message }) {
            if (!deepEqual(message, value)) {
              log(`${dir}: unexpected ephemeral`, { senderId, message })
              return
            }
            hTo.off("ephemeral-message", listener)
            resolve({ senderId, message, ms: performance.now() - t0 })
          })
          // Ephemeral messages have no delivery guarantee: resend until one arrives.
          const send = () => {
            sends++
            hFrom.broadcast(value)
          }
          send()
          timer = setInterval(send, 250)
        }),
        20000,
        `ephemeral message ${dir}`
      ).finally(() => clearInterval(timer))
      if (got.senderId !== from.peerId) throw new Error(`${dir}: senderId ${got.senderId}, expected ${from.peerId}`)
      results[dir] = { ms: round(got.ms), sends, senderId: got.senderId, message: got.message }
    }
    await finish({ url: ha.url, results })
  },

  async "big-doc"() {
    await uploadThenFetch(opts.changes ?? 3000, { n: 0, text: "" })
  },

  async "upload-then-fetch"() {
    await uploadThenFetch(opts.changes ?? 10, parseJsonOpt("content", { n: 0, text: "" }))
  },

  async upload() {
    const content = parseJsonOpt("content", { hello: "world" })
    const A = repoOn(urlA, "A")
    const { handle, changeMs, ack } = await uploadDoc(A, urlA, content, opts.changes ?? 0)
    const res = { url: handle.url, heads: handle.heads(), ...docField(docJson(handle)), changeMs: round(changeMs), ackMs: round(ack.ms), ackMethod: ack.method }
    if (!opts.stay) return finish(res)
    out({ ok: true, case: caseName, staying: true, ...res })
    await new Promise(resolve => {
      process.stdin.on("end", resolve)
      process.stdin.on("error", resolve)
      process.stdin.resume()
    })
    await Promise.all(repos.map(shutdown))
    out({ ok: true, case: caseName, exiting: "stdin closed" })
    process.exit(0)
  },

  async fetch() {
    if (!opts.doc) throw new Error("fetch needs --doc automerge:...")
    const expectJson = parseJsonOpt("expect-json", undefined)
    const expectCount = opts["expect-count"]
    const expectHeads = opts["expect-heads"]?.split(",").filter(Boolean)
    const { runs, last } = await timedFetches(opts.doc, h => {
      const j = docJson(h)
      if (expectJson !== undefined && !deepEqual(j, expectJson)) return false
      if (expectCount !== undefined && j.n !== expectCount) return false
      if (expectHeads && !headsEqual(h.heads(), expectHeads)) return false
      return true
    })
    await finish({ url: opts.doc, ...docField(last.json), heads: last.heads, ...stats(runs) })
  },
}

/** Median / min / max of the timed runs; `ms` is the median. */
function stats(runs) {
  const sorted = [...runs].sort((a, b) => a - b)
  return { ms: sorted[Math.floor(sorted.length / 2)], runs, min: sorted[0], max: sorted[sorted.length - 1] }
}

/**
 * --warmup K untimed + --repeat R timed fetches of docUrl, each with a fresh repo
 * (new peer id) on urlB; each run is find() call -> until(handle) holds.
 * Unless --client-warmup=false, local automerge work warms this process first.
 */
async function timedFetches(docUrl, until, check = () => {}) {
  if (opts["client-warmup"] ?? true) out({ clientWarmupMs: round(await warmClient()) })
  const repeat = opts.repeat ?? 1
  const warmup = opts.warmup ?? 0
  const runs = []
  let last
  for (let i = -warmup; i < repeat; i++) {
    const r = await fetchWithFreshRepo(urlB, docUrl, {
      timeoutMs: 120000,
      trace,
      peerPrefix: i < 0 ? `W${-i}` : `B${i}`,
      until,
    })
    check(r)
    last = r
    const run = i < 0 ? { warmup: warmup + i, ms: round(r.totalMs) } : { repeat: i, ms: round(r.totalMs), findMs: round(r.findMs) }
    out(run)
    if (i >= 0) runs.push(run.ms)
  }
  return { runs, last }
}

async function uploadThenFetch(changes, content) {
  const repeat = opts.repeat ?? 1
  const A = repoOn(urlA, "A")
  const base = content.n ?? 0
  const { handle, changeMs, ack } = await uploadDoc(A, urlA, content, changes)
  const expectN = base + changes
  if (handle.doc().n !== expectN) throw new Error(`A has n=${handle.doc().n}, expected ${expectN}`)
  out({ phase: "uploaded", url: handle.url, changes, changeMs: round(changeMs), ackMs: round(ack.ms), ackMethod: ack.method })
  const { runs } = await timedFetches(
    handle.url,
    h => h.doc()?.n === expectN,
    r => {
      if (!headsEqual(r.heads, handle.heads())) throw new Error("fetched heads differ from A's")
      if (typeof content.text === "string" && r.json.text.length !== content.text.length + changes) {
        throw new Error(`fetched text has length ${r.json.text.length}`)
      }
    }
  )
  await finish({ url: handle.url, changes, ...stats(runs), changeMs: round(changeMs), ackMs: round(ack.ms) })
}

const fn = cases[caseName]
if (!fn) fail(`unknown case ${caseName}; known: ${Object.keys(cases).join(", ")}`)
fn().catch(e => fail(e?.stack ?? e))
