// Memory an edge returns after a flood (issue 15): one client creates N
// documents and asks for N random ids; the script prints the edge's RSS
// (from /proc, --pid) before, right after, and once every document was
// evicted (start the edge with a short --idle-evict-secs).
//   node flood-memory.mjs --url ws://127.0.0.1:PORT/sync --pid PID --n 2000 --wait-ms 8000
import WebSocket from "ws"
import { encode, decode } from "cbor-x"
import { next as A } from "@automerge/automerge"
import { readFileSync } from "node:fs"
import { parseArgs, out, sleep } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), { url: "string", pid: "number", n: "number", "wait-ms": "number" })
const rss = () => Number(readFileSync(`/proc/${opts.pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1])
const n = opts.n ?? 2000
const ws = new WebSocket(opts.url)
ws.binaryType = "arraybuffer"
let received = 0
ws.on("message", () => received++)
await new Promise((r) => ws.on("open", r))
const send = (m) => ws.send(encode(m))
send({ type: "join", senderId: "flood", supportedProtocolVersions: ["1"], peerMetadata: {} })
await sleep(200)
const before = rss()
const id = () => {
  const bytes = new Uint8Array(16)
  for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256)
  return bytes
}
// bs58check document ids, as automerge-repo makes them
const { default: bs58check } = await import("bs58check")
const docId = () => bs58check.encode(id())
let state = A.initSyncState()
const empty = A.init()
const [, request] = A.generateSyncMessage(empty, state)
for (let i = 0; i < n; i++) {
  send({ type: "request", senderId: "flood", targetId: "edge", documentId: docId(), data: request })
  const doc = A.change(A.init(), (d) => { d.n = i; d.text = "flood ".repeat(20) })
  // A sync message carrying the changes outright (as a client pushing a new document).
  const m = A.encodeSyncMessage({ heads: A.getHeads(doc), need: [], have: [{ lastSync: [], bloom: new Uint8Array() }], changes: A.getAllChanges(doc) })
  send({ type: "sync", senderId: "flood", targetId: "edge", documentId: docId(), data: m })
  if (i % 200 === 0) await sleep(20)
}
await sleep(1500)
const after = rss()
ws.close()
await sleep(opts["wait-ms"] ?? 8000)
const evicted = rss()
out({ ok: true, n, received, rssKiB: { before, after, evicted }, returnedKiB: after - evicted, keptKiB: evicted - before })
process.exit(0)
