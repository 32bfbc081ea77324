#!/usr/bin/env node
// A transparent WebSocket relay that logs every frame, for debugging interop.
//
// Usage:
//   node wiretap.mjs --upstream ws://127.0.0.1:P/ [--port L] [--host 127.0.0.1]
//                    [--hex N] [--timeout S]
//
// Clients connect to ws://HOST:L/ (L=0 picks a free port; printed as
// {"listening":L}); every client connection gets its own upstream connection.
// Each frame is forwarded unchanged and logged as one JSON line on stdout:
//   {"frame":{"conn":1,"dir":"c2s"|"s2c","binary":true,"len":123,
//             "msg":{...decoded CBOR, byte strings as {"bytes":n,"hex":"..."}...},
//             "hex":"first N bytes of the raw frame"}}
// Undecodable frames get "error" instead of "msg". Runs until SIGTERM/SIGINT.

import { WebSocketServer, WebSocket } from "ws"
import { cbor } from "@automerge/automerge-repo"
import { out, parseArgs, installGuards } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  upstream: "string",
  port: "number",
  host: "string",
  hex: "number",
  timeout: "number",
})
const fail = installGuards(opts.timeout ?? 0, "wiretap")
if (!opts.upstream) fail("usage: wiretap.mjs --upstream ws://HOST:PORT/ [--port L]")
const hexLen = opts.hex ?? 64
const maxPayload = 1024 * 1024 * 1024

function jsonable(v) {
  if (v instanceof Uint8Array) {
    return { bytes: v.byteLength, hex: Buffer.from(v.subarray(0, hexLen)).toString("hex") }
  }
  if (v === undefined) return "<undefined>"
  if (Array.isArray(v)) return v.map(jsonable)
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, jsonable(x)]))
  }
  return v
}

function logFrame(conn, dir, data, isBinary) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data)
  const frame = { conn, dir, binary: isBinary, len: buf.byteLength, hex: buf.subarray(0, hexLen).toString("hex") }
  try {
    frame.msg = jsonable(cbor.decode(new Uint8Array(buf)))
  } catch (e) {
    frame.error = String(e?.message ?? e)
  }
  out({ frame })
}

let nextConn = 0
const wss = new WebSocketServer({ host: opts.host ?? "127.0.0.1", port: opts.port ?? 0, maxPayload })
wss.on("listening", () => out({ listening: wss.address().port }))
wss.on("connection", client => {
  const conn = ++nextConn
  const upstream = new WebSocket(opts.upstream, { maxPayload })
  const pending = []
  out({ open: conn })
  upstream.on("open", () => {
    for (const [d, b] of pending) upstream.send(d, { binary: b })
    pending.length = 0
  })
  client.on("message", (data, isBinary) => {
    logFrame(conn, "c2s", data, isBinary)
    if (upstream.readyState === WebSocket.OPEN) upstream.send(data, { binary: isBinary })
    else pending.push([data, isBinary])
  })
  upstream.on("message", (data, isBinary) => {
    logFrame(conn, "s2c", data, isBinary)
    if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary })
  })
  const closeBoth = who => () => {
    out({ close: conn, by: who })
    if (client.readyState === WebSocket.OPEN) client.close()
    if (upstream.readyState === WebSocket.OPEN || upstream.readyState === WebSocket.CONNECTING) upstream.terminate()
  }
  client.on("close", closeBoth("client"))
  upstream.on("close", closeBoth("upstream"))
  client.on("error", closeBoth("client-error"))
  upstream.on("error", closeBoth("upstream-error"))
})

const stop = () => {
  wss.close()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
