// End-to-end test of @meridian/client in headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core; no browser is downloaded).
// A Rust test (tests/tests/browser_client.rs) runs the edge and a Rust
// client, and starts this script with the URL of a document the Rust
// client made. The page:
//
//   1. finds the document, edits it, waits until the edge acknowledged;
//      prints {"step":"edited"} — the Rust client then writes `rust: "reply"`;
//   2. waits for the Rust reply (subscribe); prints {"step":"got-reply"};
//   3. goes offline (browser offline mode), edits, closes; reloads and
//      opens the document from IndexedDB with no network; then connects and
//      syncs the offline edit; prints {"step":"offline-synced"};
//   4. makes a 1,000-change document, reloads, and times opening it from
//      IndexedDB with no network.
//
// Prints {"ok":true,"openMs":...} at the end.
//   node browser-e2e.mjs --edge ws://127.0.0.1:PORT/sync --doc automerge:...

import http from "node:http"
import { readFile } from "node:fs/promises"
import path from "node:path"
import { installGuards, launchChromium, log, out, parseArgs } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), { edge: "string", doc: "string", chromium: "string", timeout: "number" })
const fail = installGuards(opts.timeout ?? 150, "browser-e2e")
const pkgDir = new URL("../../client-wasm/pkg/", import.meta.url)

const PAGE = `<!doctype html><meta charset="utf-8"><title>meridian e2e</title>
<script type="module">
  import * as meridian from "/pkg/index.js";
  await meridian.init();
  window.meridian = meridian;
  window.ready = true;
</script>`

const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json", ".ts": "text/plain" }

function serve() {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x")
    try {
      if (url.pathname === "/favicon.ico") {
        res.writeHead(204).end()
        return
      }
      if (url.pathname === "/") {
        res.writeHead(200, { "content-type": "text/html" }).end(PAGE)
        return
      }
      if (url.pathname.startsWith("/pkg/") && !url.pathname.includes("..")) {
        const body = await readFile(new URL(url.pathname.slice(5), pkgDir))
        res.writeHead(200, { "content-type": TYPES[path.extname(url.pathname)] ?? "application/octet-stream" }).end(body)
        return
      }
      res.writeHead(404).end()
    } catch (e) {
      res.writeHead(404).end(String(e))
    }
  })
  return new Promise(resolve => server.listen(0, "127.0.0.1", () => resolve(server)))
}

const server = await serve()
const origin = `http://127.0.0.1:${server.address().port}/`
const { browser, close: closeBrowser } = await launchChromium(opts.chromium, "meridian-e2e-")
const context = await browser.newContext()
const page = await context.newPage()
page.on("console", m => log(`page ${m.type()}: ${m.text()}`))
page.on("pageerror", e => log(`page error: ${e}`))

async function load() {
  await page.goto(origin)
  await page.waitForFunction(() => window.ready === true)
}

try {
  await load()
  const edge = opts.edge
  const docUrl = opts.doc

  // 1. Find the Rust client's document and edit it.
  const first = await page.evaluate(async ({ edge, docUrl }) => {
    const client = await meridian.Client.open({ urls: [edge], dbName: "e2e" })
    window.client = client
    const doc = await client.find(docUrl)
    window.doc = doc
    const before = doc.value()
    doc.change(d => {
      d.splice("title", 0, 0, "hi ")
      d.put("browser", "was here")
    })
    await doc.whenSynced()
    return { before, after: doc.value(), state: client.connectionState, edges: client.edges() }
  }, { edge, docUrl })
  out({ step: "edited", ...first })

  // 2. Wait for the Rust client's reply, delivered through subscribe.
  const reply = await page.evaluate(() => new Promise(resolve => {
    // The Rust client put a scalar string: it reads as an ImmutableString.
    const check = () => window.doc.value().rust instanceof meridian.ImmutableString && String(window.doc.value().rust) === "reply"
    if (check()) return resolve({ via: "value" })
    const unsubscribe = window.doc.subscribe(({ patches }) => {
      if (check()) {
        unsubscribe()
        resolve({ via: "subscribe", patches })
      }
    })
  }))
  out({ step: "got-reply", ...reply })

  // 3. Offline: edit, persist, reload, open from IndexedDB, then sync.
  await context.setOffline(true)
  const offline = await page.evaluate(async () => {
    const client = window.client
    const deadline = Date.now() + 10000
    while (client.connectionState !== "offline" && Date.now() < deadline) await new Promise(r => setTimeout(r, 20))
    const state = client.connectionState
    window.doc.put("offline", "edit")
    await window.doc.whenSaved()
    await client.close()
    return { state }
  })
  if (offline.state !== "offline") throw new Error(`client did not notice the browser going offline: ${offline.state}`)
  await context.setOffline(false)
  await load()
  const reopened = await page.evaluate(async ({ edge, docUrl }) => {
    // No URLs: this open cannot touch the network.
    const local = await meridian.Client.open({ urls: [], dbName: "e2e" })
    const value = (await local.find(docUrl)).value()
    await local.close()
    const client = await meridian.Client.open({ urls: [edge], dbName: "e2e" })
    const doc = await client.find(docUrl)
    await doc.whenSynced()
    await client.close()
    return { value }
  }, { edge, docUrl })
  if (reopened.value.offline !== "edit") throw new Error(`offline edit lost across reload: ${JSON.stringify(reopened.value)}`)

  // A connected client follows the browser offline and back online.
  const waitState = (want) => page.waitForFunction((s) => window.live.connectionState === s, want, { timeout: 15000 })
  await page.evaluate(async (edge) => {
    window.live = await meridian.Client.open({ urls: [edge], dbName: "e2e" })
    window.liveStates = []
    window.live.onConnectionStateChange(s => window.liveStates.push(s))
  }, edge)
  await waitState("connected")
  await context.setOffline(true)
  await waitState("offline")
  await context.setOffline(false)
  await waitState("connected")
  reopened.liveStates = await page.evaluate(async () => {
    await window.live.close()
    return window.liveStates
  })
  out({ step: "offline-synced", ...reopened })

  // openSync: usable before IndexedDB is open; closing at once still
  // writes what was made meanwhile (and whenSaved settles).
  const early = await page.evaluate(async () => {
    const c = meridian.Client.openSync({ urls: [], dbName: "e2e-sync" })
    const d = c.createSync({ made: "before the store opened" })
    const saved = d.whenSaved()
    await c.close()
    await saved
    const again = await meridian.Client.open({ urls: [], dbName: "e2e-sync" })
    const value = (await again.find(d.url)).value()
    await again.close()
    return value
  })
  if (early.made !== "before the store opened") throw new Error(`openSync then close lost the document: ${JSON.stringify(early)}`)

  // 4. A 1,000-change document opened from IndexedDB with no network.
  const bigUrl = await page.evaluate(async () => {
    const client = await meridian.Client.open({ urls: [], dbName: "e2e-big" })
    const doc = await client.create({ n: 0 })
    for (let i = 1; i < 1000; i++) doc.put("n", i)
    await doc.whenSaved()
    const changes = doc.history().length
    await client.close()
    return { url: doc.url, changes }
  })
  if (bigUrl.changes !== 1000) throw new Error(`expected 1000 changes, got ${bigUrl.changes}`)
  await load()
  const timing = await page.evaluate(async (url) => {
    const t0 = performance.now()
    const client = await meridian.Client.open({ urls: [], dbName: "e2e-big" })
    const t1 = performance.now()
    const doc = await client.find(url)
    const n = doc.value().n
    const t2 = performance.now()
    const changes = doc.history().length
    await client.close()
    return { n, changes, openClientMs: t1 - t0, findMs: t2 - t1, openMs: t2 - t0 }
  }, bigUrl.url)
  if (timing.n !== 999 || timing.changes !== 1000) throw new Error(`big doc reopened wrong: ${JSON.stringify(timing)}`)
  out({ step: "big-doc-open", ...timing })
  out({ ok: true, openMs: timing.openMs })
} catch (e) {
  await cleanup()
  fail(e)
}
await cleanup()
process.exit(0)

async function cleanup() {
  await closeBrowser()
  server.close()
}
