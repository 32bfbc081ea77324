// The browser's own path, in headless Chromium (issue 19, item 3): a large
// text (`--dir`/doc.bin, made by `bench/examples/text_doc.rs`) opened from
// IndexedDB after a reload, and a remote edit applied to it, with
// @meridian/client (client-wasm/pkg) against @automerge/automerge 3 in the
// same page:
//
//   open:   @meridian/client `Client.open` + `find` + `value()` from its
//           IndexedDB, no network; automerge: the saved bytes read from an
//           IndexedDB store of our own + `Automerge.load` + reading the text.
//   edit:   @meridian/client: another client in the page splices the text
//           through the edge (`--edge`), until this one's subscriber gets the
//           patches; automerge: `applyChanges` of an edit's change
//           (`--dir`/edit.bin) + reading the text (no network: the floor).
//
// Prints one JSON line per measurement, then {"ok":true, medians...}.
// Run by `cargo xtask bench browser`.
import http from "node:http"
import { readFile } from "node:fs/promises"
import path from "node:path"
import { installGuards, launchChromium, log, out, parseArgs } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  edge: "string",
  dir: "string",
  reloads: "number",
  edits: "number",
  chromium: "string",
  timeout: "number",
})
const fail = installGuards(opts.timeout ?? 600, "browser-bench")
const reloads = opts.reloads ?? 5
const edits = opts.edits ?? 20
const pkgDir = new URL("../../client-wasm/pkg/", import.meta.url)
const amFile = new URL("./node_modules/@automerge/automerge/dist/iife/iife.js", import.meta.url)

const PAGE = `<!doctype html><meta charset="utf-8"><title>meridian bench</title>
<script src="/am.js"></script>
<script type="module">
  import * as meridian from "/pkg/index.js";
  await meridian.init();
  window.meridian = meridian;
  window.ready = true;
</script>`

const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" }

function serve() {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x")
    try {
      let body, type = "application/octet-stream"
      if (url.pathname === "/") [body, type] = [PAGE, "text/html"]
      else if (url.pathname === "/am.js") [body, type] = [await readFile(amFile), "text/javascript"]
      else if (url.pathname === "/doc.bin" || url.pathname === "/edit.bin") body = await readFile(path.join(opts.dir, url.pathname))
      else if (url.pathname.startsWith("/pkg/") && !url.pathname.includes("..")) {
        body = await readFile(new URL(url.pathname.slice(5), pkgDir))
        type = TYPES[path.extname(url.pathname)] ?? type
      } else {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { "content-type": type }).end(body)
    } catch (e) {
      res.writeHead(404).end(String(e))
    }
  })
  return new Promise(resolve => server.listen(0, "127.0.0.1", () => resolve(server)))
}

const median = v => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]

const server = await serve()
const origin = `http://127.0.0.1:${server.address().port}/`
const { browser, close: closeBrowser } = await launchChromium(opts.chromium, "meridian-bench-")
const page = await (await browser.newContext()).newPage()
page.on("console", m => log(`page ${m.type()}: ${m.text()}`))
page.on("pageerror", e => log(`page error: ${e}`))

async function load() {
  await page.goto(origin)
  await page.waitForFunction(() => window.ready === true)
  // A tiny IndexedDB helper for automerge's saved bytes.
  await page.evaluate(() => {
    window.idb = (mode, f) => new Promise((resolve, reject) => {
      const open = indexedDB.open("automerge-bench", 1)
      open.onupgradeneeded = () => open.result.createObjectStore("docs")
      open.onerror = () => reject(open.error)
      open.onsuccess = () => {
        const tx = open.result.transaction("docs", mode)
        const req = f(tx.objectStore("docs"))
        tx.oncomplete = () => { open.result.close(); resolve(req.result) }
        tx.onerror = () => reject(tx.error)
      }
    })
  })
}

try {
  await load()
  // Seed: the document into @meridian/client's IndexedDB (and the edge),
  // and its bytes into ours for automerge.
  const seeded = await page.evaluate(async edge => {
    const bytes = new Uint8Array(await (await fetch("/doc.bin")).arrayBuffer())
    const client = await meridian.Client.open({ urls: [edge], dbName: "bench-m" })
    const doc = client.import(bytes)
    await doc.whenSaved()
    await doc.whenSynced()
    const length = doc.value().text.length
    await client.close()
    await idb("readwrite", s => s.put(bytes, "doc"))
    return { url: doc.url, length, bytes: bytes.length }
  }, opts.edge)
  out({ step: "seeded", ...seeded })

  // Open from IndexedDB after a reload, alternating which goes first.
  const opens = { meridian: [], automerge: [] }
  for (let r = 0; r < reloads; r++) {
    await load()
    const t = await page.evaluate(async ({ url, meridianFirst }) => {
      const viaMeridian = async () => {
        const t0 = performance.now()
        const client = await meridian.Client.open({ urls: [], dbName: "bench-m" })
        const doc = await client.find(url)
        const length = doc.value().text.length
        const ms = performance.now() - t0
        await client.close()
        return { ms, length }
      }
      const viaAutomerge = async () => {
        const t0 = performance.now()
        const bytes = await idb("readonly", s => s.get("doc"))
        const doc = Automerge.load(bytes)
        const length = doc.text.length
        return { ms: performance.now() - t0, length }
      }
      if (meridianFirst) return { m: await viaMeridian(), a: await viaAutomerge() }
      const a = await viaAutomerge()
      return { m: await viaMeridian(), a }
    }, { url: seeded.url, meridianFirst: r % 2 === 0 })
    if (t.m.length !== seeded.length || t.a.length !== seeded.length) throw new Error(`wrong text after open: ${JSON.stringify(t)}`)
    opens.meridian.push(t.m.ms)
    opens.automerge.push(t.a.ms)
    out({ step: "open", round: r, meridianMs: t.m.ms, automergeMs: t.a.ms })
  }

  // A remote edit: another client's splice through the edge, until this
  // client's subscriber has it; automerge applies the change bytes.
  await load()
  const applied = await page.evaluate(async ({ url, edge, edits }) => {
    const here = await meridian.Client.open({ urls: [edge], dbName: "bench-m" })
    const there = await meridian.Client.open({ urls: [edge], dbName: "bench-other" })
    const a = await here.find(url)
    const b = await there.find(url)
    await a.whenSynced()
    await b.whenSynced()
    const meridianMs = []
    for (let i = 0; i < edits; i++) {
      const seen = new Promise(resolve => {
        const off = a.subscribe(() => { off(); resolve(performance.now()) })
      })
      const t0 = performance.now()
      b.splice(["text"], 1000, 0, `<${i}>`)
      meridianMs.push((await seen) - t0)
      await b.whenSynced()
    }
    const marks = a.value().text.match(/<\d+>/g)?.length ?? 0
    const edit = new Uint8Array(await (await fetch("/edit.bin")).arrayBuffer())
    const base = Automerge.load(await idb("readonly", s => s.get("doc")))
    const automergeMs = []
    for (let i = 0; i < edits; i++) {
      const doc = Automerge.clone(base)
      const t0 = performance.now()
      const [next] = Automerge.applyChanges(doc, [edit])
      const included = next.text.includes("remote edit")
      automergeMs.push(performance.now() - t0)
      if (!included) throw new Error("automerge did not apply the edit")
    }
    await here.close()
    await there.close()
    return { meridianMs, automergeMs, marks }
  }, { url: seeded.url, edge: opts.edge, edits })
  if (applied.marks !== edits) throw new Error(`expected ${edits} remote edits in the text, saw ${applied.marks}`)
  const result = {
    ok: true,
    length: seeded.length,
    bytes: seeded.bytes,
    openMeridianMs: median(opens.meridian),
    openAutomergeMs: median(opens.automerge),
    editMeridianMs: median(applied.meridianMs),
    editMeridianP90Ms: [...applied.meridianMs].sort((a, b) => a - b)[Math.floor(applied.meridianMs.length * 0.9)],
    editAutomergeMs: median(applied.automergeMs),
  }
  out(result)
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
