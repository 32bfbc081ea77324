#!/usr/bin/env node
// A small JS automerge-repo client for Rust tests to drive.
//
// Create mode:
//   node peer.mjs --url U --create '{"json":...}' [--no-wait-server]
//   Prints {"url":"automerge:...","heads":[...]} right after creating, then
//   {"synced":true,"url":...,"heads":[...],"method":...} once the server holds
//   the doc (unless --no-wait-server), then stays connected until stdin closes.
//   While connected, each stdin line that is a JSON object is merged into the
//   document's root (one handle.change per line); prints {"changed":true,"heads":[...]}
//   and, once the server has it, {"synced":true,...}. Remote changes are
//   reported as {"remote-change":true,"doc":...} lines. On stdin EOF:
//   {"ok":true,"exiting":"stdin closed"}, exit 0.
//
// Find mode:
//   node peer.mjs --url U --find automerge:... [--expect-key k --expect-value v]
//   Waits until the doc is ready and (if given) doc[k] deep-equals v (v is parsed
//   as JSON when possible, else taken as a string; k may be a dotted path a.b.0).
//   Prints {"ok":true,"url":...,"doc":{...},"heads":[...],"ms":...} and exits 0.
//   With --stay it then keeps running like create mode (stdin edits, EOF exit).
//
// Options: --peer-id ID, --storage DIR (NodeFS storage instead of memory),
//          --timeout S (find mode deadline, default 60; create mode default 600),
//          --trace (log wire messages on stderr).
// Failure: {"ok":false,"error":...}, exit 1 (2 on timeout).

import readline from "node:readline"
import {
  out, log, parseArgs, installGuards, newPeerId, clientRepo, waitUntil,
  waitServerHas, docJson, deepEqual, getPath, withTimeout, shutdown, round,
} from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  create: "string",
  find: "string",
  "expect-key": "string",
  "expect-value": "string",
  "peer-id": "string",
  storage: "string",
  timeout: "number",
  stay: "bool",
  "no-wait-server": "bool",
  trace: "bool",
})

const staysConnected = !!opts.create || !!opts.stay
const fail = installGuards(opts.timeout ?? (staysConnected ? 600 : 60), "peer")

if (!opts.url || (!opts.create === !opts.find)) {
  fail("usage: peer.mjs --url U (--create JSON | --find URL [--expect-key K --expect-value V])")
}

const repo = clientRepo(opts.url, {
  peerId: opts["peer-id"] ?? newPeerId("js-peer"),
  storageDir: opts.storage,
  trace: !!opts.trace,
})

function parseValue(s) {
  try {
    return JSON.parse(s)
  } catch {
    return s
  }
}

async function reportSynced(handle) {
  if (opts["no-wait-server"]) return
  try {
    const r = await waitServerHas(repo, handle, opts.url, { timeoutMs: 60000 })
    out({ synced: true, url: handle.url, heads: handle.heads(), method: r.method, ms: round(r.ms) })
  } catch (e) {
    out({ synced: false, url: handle.url, error: String(e?.message ?? e) })
  }
}

async function stayConnected(handle) {
  let localChange = false
  handle.on("change", ({ doc }) => {
    if (!localChange) out({ "remote-change": true, heads: handle.heads(), doc: JSON.parse(JSON.stringify(doc)) })
  })
  const rl = readline.createInterface({ input: process.stdin })
  rl.on("line", line => {
    line = line.trim()
    if (!line) return
    let obj
    try {
      obj = JSON.parse(line)
    } catch (e) {
      out({ changed: false, error: `stdin line is not JSON: ${e}` })
      return
    }
    if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
      out({ changed: false, error: "stdin line must be a JSON object" })
      return
    }
    localChange = true
    try {
      handle.change(d => {
        for (const [k, v] of Object.entries(obj)) d[k] = v
      })
    } finally {
      localChange = false
    }
    out({ changed: true, heads: handle.heads() })
    void reportSynced(handle)
  })
  await new Promise(resolve => rl.on("close", resolve))
  await shutdown(repo)
  out({ ok: true, exiting: "stdin closed" })
  process.exit(0)
}

async function main() {
  if (opts.create) {
    let content
    try {
      content = JSON.parse(opts.create)
    } catch (e) {
      throw new Error(`--create is not valid JSON: ${e}`)
    }
    const handle = repo.create(content)
    out({ url: handle.url, heads: handle.heads() })
    await reportSynced(handle)
    await stayConnected(handle)
    return
  }

  const t0 = performance.now()
  const handle = await withTimeout(repo.find(opts.find), (opts.timeout ?? 60) * 1000, "find")
  if (opts["expect-key"] !== undefined) {
    const key = opts["expect-key"]
    const want = parseValue(opts["expect-value"] ?? "null")
    await waitUntil(() => deepEqual(getPath(docJson(handle), key), want), {
      timeoutMs: (opts.timeout ?? 60) * 1000,
      what: `doc.${key} == ${JSON.stringify(want)}`,
    })
  }
  const ms = performance.now() - t0
  out({ ok: true, url: handle.url, doc: docJson(handle), heads: handle.heads(), ms: round(ms) })
  if (opts.stay) {
    await stayConnected(handle)
    return
  }
  await shutdown(repo)
  process.exit(0)
}

main().catch(e => fail(e?.stack ?? e))
