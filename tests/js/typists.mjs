// Real automerge-repo clients typing into one text, for the `typing`
// scenario of `cargo xtask bench` (bench/src/scenario/typing.rs): the
// scenario of automerge-repo#207. One process runs `--clients` Repos, each
// with its own WebSocket to the server; the first `--typists` of them type.
//
//   node typists.mjs --url ws://127.0.0.1:P/sync --name p0 --clients 2 --typists 2
//                    [--doc automerge:…] [--rate 6] [--seconds 20] [--settle-ms 3000]
//
// Without --doc the first client creates the document and prints
// {"doc": URL} once the server has it. Every client then finds it; the process prints
// {"ready": true} and waits for a line on stdin ("go"). Each typist then
// types --rate characters a second (at random moments, Poisson-like) at a
// random place in `text`, and sets `typed[ID] = n` (its keystroke count) in
// the same change. Every client notes, at each change event, how far it
// has seen each other typist (`typed`), with the time (Date.now(): every
// process on one machine shares the clock). After --seconds of typing and
// --settle-ms of quiet it prints {"sent": {ID: [t1, t2, …]}, "seen":
// [[observer, typist, n, t], …], "messages": {ID: sync messages received},
// "text": length} and exits. The bench turns sent/seen into lags.

import readline from "node:readline"
import { next as A } from "@automerge/automerge"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { Repo, installGuards, newPeerId, out, parseArgs, shutdown, sleep, waitForServerPeer, waitServerHas } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  name: "string",
  doc: "string",
  clients: "number",
  typists: "number",
  rate: "number",
  seconds: "number",
  "settle-ms": "number",
  timeout: "number",
})
installGuards(opts.timeout ?? 300, "typists")
if (!opts.url) throw new Error("--url is required")
const name = opts.name ?? "p"
const count = opts.clients ?? 1
const typing = Math.min(opts.typists ?? count, count)
const rate = opts.rate ?? 6
const seconds = opts.seconds ?? 20
const settleMs = opts["settle-ms"] ?? 3000

const clients = []
for (let i = 0; i < count; i++) {
  const id = `${name}-${i}`
  const adapter = new WebSocketClientAdapter(opts.url)
  const repo = new Repo({ network: [adapter], peerId: newPeerId(`typist-${id}`) })
  const client = { id, repo, handle: null, messages: 0, seen: new Map() }
  // Inbound sync messages: how many the server made this client apply.
  adapter.on("message", (m) => {
    if (m.type === "sync") client.messages++
  })
  clients.push(client)
}
await Promise.all(clients.map((c) => waitForServerPeer(c.repo)))

let docUrl = opts.doc
if (!docUrl) {
  const h = clients[0].repo.create({ text: "", typed: {} })
  docUrl = h.url
  // The other processes find it on the server.
  await waitServerHas(clients[0].repo, h, opts.url)
  out({ doc: docUrl })
}
for (const c of clients) {
  c.handle = await c.repo.find(docUrl)
}

/** Rows [observer, typist, n, t]. */
const seen = []
for (const c of clients) {
  c.handle.on("change", ({ doc }) => {
    const t = Date.now()
    for (const [typist, n] of Object.entries(doc.typed ?? {})) {
      if (typist === c.id) continue
      if ((c.seen.get(typist) ?? 0) < n) {
        c.seen.set(typist, n)
        seen.push([c.id, typist, n, t])
      }
    }
  })
}

out({ ready: true })
const stdin = readline.createInterface({ input: process.stdin })
await new Promise((resolve) => stdin.once("line", resolve))

const sent = {}
const alphabet = "abcdefghijklmnopqrstuvwxyz "
const until = Date.now() + seconds * 1000
async function type(c) {
  const times = (sent[c.id] = [])
  // Exponential gaps with mean 1/rate s, as people type in bursts.
  while (Date.now() < until) {
    await sleep(-Math.log(1 - Math.random()) * (1000 / rate))
    if (Date.now() >= until) break
    const n = times.length + 1
    c.handle.change((d) => {
      const at = Math.floor(Math.random() * (d.text.length + 1))
      A.splice(d, ["text"], at, 0, alphabet[n % alphabet.length])
      d.typed[c.id] = n
    })
    times.push(Date.now())
  }
}
await Promise.all(clients.slice(0, typing).map(type))
// Processes without typists watch for as long as the others type.
await sleep(Math.max(0, until - Date.now()) + settleMs)

const messages = Object.fromEntries(clients.map((c) => [c.id, c.messages]))
out({ sent, seen, messages, text: clients[0].handle.doc().text.length })
await Promise.all(clients.map((c) => shutdown(c.repo)))
process.exit(0)
