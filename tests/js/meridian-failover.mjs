// Edge selection and fail-over of @meridian/client (in Node, memory store).
// Driven by tests/tests/browser_client.rs, which runs two edges:
//
//   1. open a client with --urls (a dead URL first, then the two edges): it
//      measures each edge, connects to the fastest, and the document it
//      creates is acknowledged there; prints {"step":"connected","url":...};
//   2. the Rust test stops that edge; the client fails over to the other
//      one and its document is acknowledged there too; prints
//      {"step":"failed-over","url":...,"doc":...}.
//
//   node meridian-failover.mjs --urls ws://dead,ws://edge1,ws://edge2

import { WebSocket } from "ws"
import { installGuards, out, parseArgs, waitUntil, withTimeout } from "./lib.mjs"

const { Client } = await import(new URL("../../client-wasm/pkg/node.js", import.meta.url))
const opts = parseArgs(process.argv.slice(2), { urls: "string", timeout: "number" })
installGuards(opts.timeout ?? 60, "meridian-failover")
const urls = opts.urls.split(",")

const client = await Client.open({ urls, dbName: null, WebSocket, minBackoffMs: 50, maxBackoffMs: 500 })
const states = []
client.onConnectionStateChange(s => states.push(s))
await waitUntil(() => client.connectionState === "connected", { timeoutMs: 20000, what: "first connection" })
const first = client.url
const doc = await client.create({ n: 1 })
await withTimeout(doc.whenSynced(), 20000, "acknowledged by the first edge")
// Give the slower edge's race a moment to be measured too.
await waitUntil(() => client.edges().filter(e => e.rttMs !== null).length >= 2, { timeoutMs: 5000, what: "both edges measured" })
out({ step: "connected", url: first, edges: client.edges() })

await waitUntil(() => client.connectionState === "connected" && client.url && client.url !== first, {
  timeoutMs: 30000,
  what: "fail-over to the other edge",
})
doc.put("n", 2)
await withTimeout(doc.whenSynced(), 20000, "acknowledged by the second edge")
out({ step: "failed-over", url: client.url, doc: doc.url, states })
await client.close()
out({ ok: true })
process.exit(0)
