// @meridian/client (the wasm package in Node) presenting an access token,
// for the token matrix of tests/tests/token_matrix.rs.
//
//   node meridian-auth.mjs --url ws://HOST:PORT/sync --case CASE [--token T] [--doc URL] [--key K --value V]
//
// Cases:
//   refused      the edge must never serve us: not connected after 2 s, and --doc not found.
//   read         find --doc and print its value; with --try-write also change it (key
//                "intruder") and wait a while.
//   write        find --doc, set --key to --value, wait until the edge acknowledged it.
//   unavailable  find --doc must fail (or find nothing in 5 s).
//   create       create a document; print its URL and whether the edge acknowledged it in 3 s.
// Prints JSON lines; the last is {"ok":true,...}.

import { WebSocket } from "ws"
import { installGuards, out, parseArgs, sleep, withTimeout } from "./lib.mjs"

const { Client } = await import(new URL("../../client-wasm/pkg/node.js", import.meta.url))
const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  case: "string",
  token: "string",
  doc: "string",
  key: "string",
  value: "string",
  "try-write": "bool",
})
const fail = installGuards(60, `meridian-auth ${opts.case}`)
const client = await Client.open({
  urls: [opts.url],
  dbName: null,
  WebSocket,
  token: opts.token || undefined,
  minBackoffMs: 50,
  maxBackoffMs: 200,
})

async function found(ms) {
  try {
    const doc = await withTimeout(client.find(opts.doc), ms, "find")
    return doc.value()
  } catch {
    return null
  }
}

const cases = {
  async refused() {
    await sleep(2000)
    const state = client.connectionState
    const value = await found(2000)
    if (state === "connected" || value) fail(`served: state ${state}, value ${JSON.stringify(value)}`)
    out({ ok: true, case: "refused", state })
  },
  async read() {
    const doc = await withTimeout(client.find(opts.doc), 20000, "find")
    const value = doc.value()
    if (opts["try-write"]) {
      doc.change((d) => d.put("intruder", "was here"))
      await sleep(1500)
    }
    out({ ok: true, case: "read", value })
  },
  async write() {
    const doc = await withTimeout(client.find(opts.doc), 20000, "find")
    doc.change((d) => d.put(opts.key, opts.value))
    await withTimeout(doc.whenSynced(), 20000, "the edge acknowledging the write")
    out({ ok: true, case: "write", value: doc.value() })
  },
  async unavailable() {
    const value = await found(5000)
    if (value) fail(`the document was readable: ${JSON.stringify(value)}`)
    out({ ok: true, case: "unavailable" })
  },
  async create() {
    const doc = await client.create({ made: "by meridian" })
    const synced = await Promise.race([doc.whenSynced().then(() => true), sleep(3000).then(() => false)])
    out({ ok: true, case: "create", url: doc.url, synced })
  },
}
const run = cases[opts.case]
if (!run) fail(`unknown case ${opts.case}`)
run().then(
  async () => {
    await client.close()
    process.exit(0)
  },
  (e) => fail(e),
)
