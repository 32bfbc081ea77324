// A JS automerge-repo writer for the chaos campaign (tests/src/chaos.rs):
// a Repo (no storage) connected to one edge over WebSocket creates a
// document and keeps writing `{prefix}-{n} = n` into it. A key counts as
// acknowledged once the edge's heads (handle.getSyncInfo of the edge's
// storage id, which the edge advertises only once durable) cover it.
//
//   node chaos-writer.mjs --url ws://127.0.0.1:P/sync --prefix js [--pause-ms 20]
//
// Prints {"doc": URL}, then {"acked": KEY} per acknowledged key; a line on
// stdin (or its end) stops it: it prints {"ok": true, "written": N, "acked": M}.

import readline from "node:readline"
import { clientRepo, headsEqual, installGuards, log, out, parseArgs, shutdown, sleep } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), { url: "string", prefix: "string", "pause-ms": "number", timeout: "number" })
installGuards(opts.timeout ?? 0, "chaos-writer")
const prefix = opts.prefix ?? "js"
const pause = opts["pause-ms"] ?? 20

let stopping = false
const stdin = readline.createInterface({ input: process.stdin })
stdin.on("line", () => (stopping = true))
stdin.on("close", () => (stopping = true))

// Reconnects every 500 ms while its edge is down (the adapter default is 5 s).
const repo = clientRepo(opts.url, { peerId: `chaos-${prefix}-${Math.random().toString(36).slice(2, 8)}`, retryInterval: 500 })
const handle = repo.create({})
out({ doc: handle.url })

/** The edge's storage id, once its `peer` message told it. */
function edgeStorage() {
  for (const peer of repo.peers) {
    const id = repo.getStorageIdOfPeer(peer)
    if (id) return id
  }
  return undefined
}

/** Waits until the edge holds `heads` (or we stop); true if it does. */
async function acked(heads) {
  for (;;) {
    const storage = edgeStorage()
    const theirs = storage ? handle.getSyncInfo(storage)?.lastHeads : undefined
    if (theirs && heads.every((h) => theirs.includes(h))) return true
    if (theirs && headsEqual(theirs, handle.heads())) return true
    if (stopping) return false
    await sleep(10)
  }
}

let written = 0
let ackedCount = 0
for (let n = 0; !stopping; n++) {
  const key = `${prefix}-${n}`
  handle.change((d) => {
    d[key] = n
  })
  written++
  if (!(await acked(handle.heads()))) break
  ackedCount++
  out({ acked: key })
  await sleep(pause)
}
log(`chaos-writer: stopping after ${written} written, ${ackedCount} acknowledged`)
await shutdown(repo)
out({ ok: true, written, acked: ackedCount })
process.exit(0)
