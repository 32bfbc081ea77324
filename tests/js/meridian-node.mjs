// @meridian/client in Node, as a newcomer first meets it (issue 18):
//
//   1. without a WebSocket (Node 20 has no global one), `Client.open` with
//      URLs rejects at once with a clear error (no silent retries);
//   2. `increment(path)` steps by 1 (and refuses a fraction), alone and
//      inside `change(fn)`;
//   3. assigning in `change(fn)` (automerge-repo's style) throws, naming
//      what to call instead;
//   4. `value()` is the same object until the document changes.
//
// Prints one JSON line per step and {"ok":true} at the end.
//   node meridian-node.mjs

import { installGuards, out } from "./lib.mjs"

const { Client, Counter } = await import(new URL("../../client-wasm/pkg/node.js", import.meta.url))
installGuards(30, "meridian-node")

function check(cond, what) {
  if (!cond) throw new Error(what)
}

// 1. No WebSocket: a clear rejection, whatever Node this is.
const saved = globalThis.WebSocket
delete globalThis.WebSocket
let refused = null
try {
  const c = await Client.open({ urls: ["ws://127.0.0.1:9/sync"], dbName: null })
  await c.close()
} catch (e) {
  refused = String(e?.message ?? e)
}
if (saved) globalThis.WebSocket = saved
check(refused && /no WebSocket/.test(refused) && /ws/.test(refused), `open without a WebSocket: ${refused}`)
out({ step: "no-websocket", error: refused })

// 2. Counters step by 1 by default.
const client = await Client.open({ dbName: null })
const doc = await client.create({ likes: new Counter(0), title: "hello" })
doc.increment("likes")
check(doc.value().likes instanceof Counter && Number(doc.value().likes) === 1, `increment() gave ${doc.value().likes}`)
doc.increment("likes", 5)
check(Number(doc.value().likes) === 6, `increment(5) gave ${doc.value().likes}`)
doc.change(d => d.increment("likes"))
check(Number(doc.value().likes) === 7, `change(d => d.increment()) gave ${doc.value().likes}`)
let fraction = null
try {
  doc.increment("likes", 1.5)
} catch (e) {
  fraction = String(e?.message ?? e)
}
check(fraction && /whole number/.test(fraction), `increment(1.5): ${fraction}`)
check(Number(doc.value().likes) === 7, "a refused increment changes nothing")
out({ step: "increment", likes: Number(doc.value().likes) })

// automerge-repo's habit, `d.title = "x"`, is an error, not a silent no-op.
let assigned = null
try {
  doc.change(d => {
    d.title = "x"
  })
} catch (e) {
  assigned = String(e?.message ?? e)
}
check(assigned && /d\.put\("title"/.test(assigned), `assigning in change(): ${assigned}`)
check(doc.value().title === "hello", "nothing changed")
out({ step: "assignment-refused", error: assigned })

// 3. The same value until the document changes.
const a = doc.value()
check(doc.value() === a, "value() twice without a change gives two objects")
doc.put("title", "world")
const b = doc.value()
check(b !== a && b.title === "world" && a.title === "hello", "after a change value() is a new object")
check(doc.value() === b, "and stable again")
const other = await client.find(doc.url)
check(other.value().title === "world", "another handle reads the same document")
out({ step: "stable-value" })

await client.close()
out({ ok: true })
