// `getToken` of @meridian/client against an edge with auth on: the script
// plays the app's backend, minting tokens that live --ttl seconds with the
// private key (--key). The edge closes the connection when a token expires;
// the client asks getToken again and reconnects, and the edits made all the
// while (some while it was disconnected) reach the edge.
//
// Prints {"step":"done","url":…,"n":…,"calls":…} and {"ok":true}.
//   node meridian-gettoken.mjs --url ws://127.0.0.1:PORT/sync --key auth-private.pem [--ttl 2]

import { WebSocket } from "ws"
import { createPrivateKey, sign } from "node:crypto"
import { readFileSync } from "node:fs"
import { installGuards, out, parseArgs, sleep, waitUntil, withTimeout } from "./lib.mjs"

const { Client } = await import(new URL("../../client-wasm/pkg/node.js", import.meta.url))
const opts = parseArgs(process.argv.slice(2), { url: "string", key: "string", ttl: "number" })
installGuards(90, "meridian-gettoken")
const ttl = opts.ttl ?? 2
const key = createPrivateKey(readFileSync(opts.key))
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url")

let calls = 0
async function getToken() {
  calls += 1
  const now = Math.floor(Date.now() / 1000)
  const claims = { sub: "gettoken", jti: `t${calls}`, iat: now, exp: now + ttl, write: ["*"], create: true }
  const body = `${b64({ alg: "EdDSA", typ: "JWT" })}.${b64(claims)}`
  return `${body}.${sign(null, Buffer.from(body), key).toString("base64url")}`
}

const client = await Client.open({ urls: [opts.url], dbName: null, WebSocket, getToken, minBackoffMs: 50, maxBackoffMs: 200 })
const doc = await client.create({ n: 0 })
await withTimeout(doc.whenSynced(), 20000, "the first edit acknowledged")
// Edit every 100 ms through two expiries (three tokens).
let n = 0
await waitUntil(async () => {
  n += 1
  doc.change((d) => d.put("n", n))
  await sleep(100)
  return calls >= 3
}, { timeoutMs: (3 * ttl + 20) * 1000, intervalMs: 0, what: "getToken called again after each expiry" })
await withTimeout(doc.whenSynced(), 20000, "the last edit acknowledged after reconnecting")
out({ step: "done", url: doc.url, n, calls })
await client.close()
out({ ok: true })
process.exit(0)
