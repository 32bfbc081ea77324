#!/usr/bin/env node
// Reference JS sync server, mirroring automerge/automerge-repo-sync-server:
//   a Repo with a WebSocketServerAdapter (ws, noServer + HTTP upgrade),
//   NodeFSStorageAdapter, and sharePolicy `async () => false` (only sync
//   documents a peer asks for by id, never announce).
//
// Usage:
//   node server.mjs --port P --dir D [--host 127.0.0.1] [--peer-id js-sync-server]
//                   [--max-payload BYTES] [--stdin-exit] [--trace] [--timeout S]
//
// --port 0 picks a free port. Prints {"listening":P,"peerId":...} when ready.
// SIGTERM / SIGINT (or stdin EOF with --stdin-exit): closes sockets, flushes
// storage, prints {"shutdown":true} and exits 0.

import fs from "node:fs"
import http from "node:http"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { out, log, parseArgs, installGuards, traceAdapter, withTimeout, sleep } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  port: "number",
  dir: "string",
  host: "string",
  "peer-id": "string",
  "max-payload": "number",
  "stdin-exit": "bool",
  trace: "bool",
  timeout: "number",
})
// The server normally runs until it is told to stop; --timeout is an optional
// safety net for callers that cannot guarantee to kill it.
const fail = installGuards(opts.timeout ?? 0, "server")

if (opts.port === undefined || !opts.dir) {
  fail("usage: server.mjs --port P --dir D")
}
const host = opts.host ?? "127.0.0.1"
const peerId = opts["peer-id"] ?? "js-sync-server"
// ws defaults to 100 MiB; the initial sync of a big document is one message, so
// allow much more (the official sync server keeps the ws default).
const maxPayload = opts["max-payload"] ?? 1024 * 1024 * 1024

fs.mkdirSync(opts.dir, { recursive: true })

// Make sure the storage id exists before the Repo starts: StorageSubsystem.id()
// is not cached and not race-free (load, then generate+save if missing), so on a
// fresh directory two concurrent callers (the Repo's peer metadata and our
// repo.storageId() below) would each generate a different id.
const storage = new NodeFSStorageAdapter(opts.dir)
if (!(await storage.load(["storage-adapter-id"]))) {
  await storage.save(["storage-adapter-id"], new TextEncoder().encode(crypto.randomUUID()))
}

const wss = new WebSocketServer({ noServer: true, maxPayload })
const adapter = new WebSocketServerAdapter(wss)
if (opts.trace) traceAdapter(adapter, peerId)

const repo = new Repo({
  network: [adapter],
  storage,
  peerId,
  // As in automerge-repo-sync-server: don't share generously, only sync
  // documents that peers explicitly request by id.
  sharePolicy: async () => false,
})

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" })
  res.end("👍 meridian reference JS sync server is running\n")
})
server.on("upgrade", (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, ws => {
    wss.emit("connection", ws, request)
  })
})
server.on("error", e => fail(`http server error: ${e?.stack ?? e}`))

server.listen(opts.port, host, async () => {
  const port = server.address().port
  const storageId = await repo.storageId()
  out({ listening: port, host, peerId, storageId, url: `ws://${host}:${port}/` })
})

let stopping = false
async function stop(reason) {
  if (stopping) return
  stopping = true
  log(`server stopping (${reason})`)
  // Never hang on shutdown: force the exit if draining takes too long.
  setTimeout(() => {
    log("forced exit: shutdown did not drain within 10 s")
    process.exit(0)
  }, 10000).unref()
  try {
    // Closing the WebSocketServer makes the adapter terminate all client sockets
    // (and clears its keep-alive timer).
    wss.close()
    server.close()
    server.closeAllConnections?.()
    // Let the repo's throttled saves (100 ms after the last change) start.
    await sleep(300)
    // Repo.flush() (called by shutdown) throws on handles that are not ready
    // (e.g. a doc someone asked for that we don't have), so flush the ready
    // ones explicitly first and tolerate the error from shutdown().
    const ready = Object.values(repo.handles).filter(h => h.isReady()).map(h => h.documentId)
    await withTimeout(repo.flush(ready), 8000, "repo.flush")
    await withTimeout(repo.shutdown(), 8000, "repo.shutdown").catch(() => {})
  } catch (e) {
    log("error during shutdown:", String(e?.stack ?? e))
  }
  out({ shutdown: true, reason })
  // No process.exit() here: NodeFSStorageAdapter writes are not atomic
  // (writeFile truncates, then writes) and a throttled save may still be in
  // flight; exiting now can leave a 0-byte snapshot. Let the event loop drain.
  process.exitCode = 0
  process.stdin.pause()
}

process.on("SIGTERM", () => void stop("SIGTERM"))
process.on("SIGINT", () => void stop("SIGINT"))
if (opts["stdin-exit"]) {
  process.stdin.on("end", () => void stop("stdin closed"))
  process.stdin.on("error", () => void stop("stdin error"))
  process.stdin.resume()
}
