#!/usr/bin/env node
// Access tokens as an unmodified automerge-repo client presents them: on
// the WebSocket URL (`?token=…`), through the real npm packages.
//
// Usage: node auth.mjs --url ws://HOST:PORT/sync --case NAME [--token T] [--doc URL] [options]
//
// Cases:
//   refused       open a WebSocket with --token (none if absent); the upgrade must be
//                 refused with HTTP 401; prints {status, reason}.
//   read          find --doc, check --expect-json; with --try-write also change it
//                 (key "intruder") and stay connected a while; prints the JSON and the
//                 `error` messages the server sent.
//   write         find --doc, set key --key to --value, stay connected a while.
//   unavailable   find --doc must reject (the document is unavailable to us).
//   create        create a document ({made: "by js"}), stay connected a while (with
//                 --expect-error, until the server sent an `error`), print its URL and the
//                 `error` messages the server sent.
//
// Output: JSON lines; the last is {"ok":true,...} or {"ok":false,"error":...}.

import WebSocket from "ws"
import { decode } from "cbor-x"
import { out, parseArgs, installGuards, sleep, waitUntil, clientRepo, newPeerId, withTimeout, shutdown, docJson, deepEqual } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  case: "string",
  token: "string",
  doc: "string",
  "expect-json": "string",
  "try-write": "bool",
  key: "string",
  value: "string",
  "stay-ms": "number",
  "expect-error": "bool",
})
const fail = installGuards(60, `auth ${opts.case}`)
if (!opts.url || !opts.case) fail("usage: auth.mjs --url ws://HOST:PORT/sync --case NAME [--token T]")

const withToken = (url, token) => (token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url)
const url = withToken(opts.url, opts.token)
const stayMs = opts["stay-ms"] ?? 1500

/** The repo and the `error` messages its server sends (the adapter only logs them). */
function repoWithErrors() {
  const repo = clientRepo(url, { peerId: newPeerId("auth") })
  const errors = []
  for (const adapter of repo.networkSubsystem.adapters) {
    const receive = adapter.receiveMessage.bind(adapter)
    adapter.receiveMessage = bytes => {
      try {
        const m = decode(new Uint8Array(bytes))
        if (m?.type === "error") errors.push(m.message)
      } catch {}
      return receive(bytes)
    }
  }
  return { repo, errors }
}

async function refused() {
  const ws = new WebSocket(url)
  const result = await new Promise(resolve => {
    ws.on("unexpected-response", (_req, res) => {
      let body = ""
      res.on("data", c => (body += c))
      res.on("end", () => resolve({ status: res.statusCode, reason: body.trim() }))
    })
    ws.on("open", () => resolve({ status: 101 }))
    ws.on("error", e => resolve({ status: 0, reason: String(e) }))
  })
  ws.terminate()
  if (result.status !== 401) fail(`expected 401, got ${JSON.stringify(result)}`)
  out({ ok: true, case: "refused", ...result })
}

async function read() {
  const { repo, errors } = repoWithErrors()
  const handle = await withTimeout(repo.find(opts.doc), 20000, "find")
  const json = docJson(handle)
  if (opts["expect-json"] && !deepEqual(json, JSON.parse(opts["expect-json"]))) {
    fail(`expected ${opts["expect-json"]}, got ${JSON.stringify(json)}`)
  }
  if (opts["try-write"]) {
    handle.change(d => {
      d.intruder = "was here"
    })
    // The refusal comes once; wait for it, then a while for a second one.
    await waitUntil(() => errors.length > 0, { timeoutMs: 20000, intervalMs: 10, what: "the read-only error" })
    await sleep(stayMs)
  }
  await shutdown(repo)
  out({ ok: true, case: "read", json, errors })
}

async function write() {
  const { repo, errors } = repoWithErrors()
  const handle = await withTimeout(repo.find(opts.doc), 20000, "find")
  handle.change(d => {
    d[opts.key ?? "from_js"] = opts.value ?? "yes"
  })
  await sleep(stayMs)
  await shutdown(repo)
  out({ ok: true, case: "write", json: docJson(handle), errors })
}

async function unavailable() {
  const { repo } = repoWithErrors()
  let found = null
  try {
    const handle = await withTimeout(repo.find(opts.doc), 20000, "find")
    found = docJson(handle)
  } catch (e) {
    await shutdown(repo)
    out({ ok: true, case: "unavailable", error: String(e).slice(0, 200) })
    return
  }
  fail(`the document was readable: ${JSON.stringify(found)}`)
}

async function create() {
  const { repo, errors } = repoWithErrors()
  const handle = repo.create({ made: "by js" })
  if (opts["expect-error"]) {
    await waitUntil(() => errors.length > 0, { timeoutMs: 20000, intervalMs: 10, what: "the create error" })
  }
  await sleep(stayMs)
  await shutdown(repo)
  out({ ok: true, case: "create", url: handle.url, errors })
}

const cases = { refused, read, write, unavailable, create }
const run = cases[opts.case]
if (!run) fail(`unknown case ${opts.case}`)
run().then(() => process.exit(0), e => fail(e))
