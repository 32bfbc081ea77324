// Compatibility of @meridian/client (client-wasm/pkg, built by `cargo xtask
// build-js`) with the official @automerge/automerge-repo 2.5.6 client, both
// connected to the same sync server (--url, a Meridian edge):
//
//   1. a document created with @meridian/client is found and edited by the JS repo;
//   2. a document created by the JS repo is found and edited by @meridian/client;
//   3. ephemeral (presence) messages go both ways.
//
// Prints one JSON line per step and {"ok":true} at the end.
//   node meridian-compat.mjs --url ws://127.0.0.1:PORT/sync [--token JWT]

import { WebSocket } from "ws"
import { next as A } from "@automerge/automerge"
import { clientRepo, installGuards, log, newPeerId, out, parseArgs, shutdown, waitForServerPeer, waitUntil, waitUntilServerHas, withTimeout, docJson, deepEqual } from "./lib.mjs"

const { Client } = await import(new URL("../../client-wasm/pkg/node.js", import.meta.url))
const opts = parseArgs(process.argv.slice(2), { url: "string", timeout: "number", token: "string" })
installGuards(opts.timeout ?? 90, "meridian-compat")

// Node 20 has no global WebSocket: hand the client the `ws` one.
// With --token (an edge with auth on), both clients present it: ours as the
// `token` option, the JS repo on its URL.
const meridian = await Client.open({ urls: [opts.url], dbName: null, WebSocket, token: opts.token })
const jsUrl = opts.token ? `${opts.url}?token=${encodeURIComponent(opts.token)}` : opts.url
const repo = clientRepo(jsUrl, { peerId: newPeerId("js") })
await waitForServerPeer(repo)

// 1. Meridian creates, JS finds and edits.
const m1 = await meridian.create({ from: "meridian", text: "hello", list: [1] })
await withTimeout(m1.whenSynced(), 20000, "meridian create acknowledged by the edge")
const j1 = await withTimeout(repo.find(m1.url), 20000, "JS repo find")
if (!deepEqual(docJson(j1), { from: "meridian", text: "hello", list: [1] })) throw new Error(`JS sees ${JSON.stringify(docJson(j1))}`)
j1.change(d => {
  A.splice(d, ["text"], 5, 0, " world 🌍")
  d.list.push(2)
  d.js = "was here"
})
await waitUntil(() => m1.value().js === "was here", { timeoutMs: 20000, what: "JS edit to reach meridian" })
const v1 = m1.value()
if (v1.text !== "hello world 🌍" || !deepEqual(v1.list, [1, 2])) throw new Error(`meridian sees ${JSON.stringify(v1)}`)
out({ step: "meridian-created", value: v1 })

// 2. JS creates, Meridian finds and edits (UTF-16 positions on both sides).
const j2 = repo.create({ from: "js", title: "🎉 party" })
await waitUntilServerHas(jsUrl, j2.url, (d) => d?.from === "js", "edge to hold the JS document")
const m2 = await withTimeout(meridian.find(j2.url), 20000, "meridian find")
if (!deepEqual(m2.value(), { from: "js", title: "🎉 party" })) throw new Error(`meridian sees ${JSON.stringify(m2.value())}`)
m2.change(d => {
  d.splice("title", 2, 0, " big") // after the two UTF-16 units of 🎉
  d.put("meridian", true)
})
await waitUntil(() => j2.doc().meridian === true, { timeoutMs: 20000, what: "meridian edit to reach JS" })
if (j2.doc().title !== "🎉 big party") throw new Error(`JS sees title ${j2.doc().title}`)
out({ step: "js-created", value: docJson(j2) })

// 3. Presence both ways (no delivery guarantee: resend until received).
const gotAtJs = new Promise(resolve => j1.on("ephemeral-message", ({ message }) => message?.cursor === 5 && resolve(message)))
const gotAtMeridian = new Promise(resolve => m1.onEphemeral(({ message }) => message?.who === "js" && resolve(message)))
const timer = setInterval(() => {
  m1.broadcast({ cursor: 5, who: "meridian" })
  j1.broadcast({ cursor: 9, who: "js" })
}, 200)
const [atJs, atMeridian] = await withTimeout(Promise.all([gotAtJs, gotAtMeridian]), 20000, "ephemeral both ways")
clearInterval(timer)
out({ step: "ephemeral", atJs, atMeridian })

log("done")
await meridian.close()
await shutdown(repo)
out({ ok: true })
process.exit(0)
