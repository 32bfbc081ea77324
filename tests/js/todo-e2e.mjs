// The porting proof (issue 18): the todo app of todo/automerge-repo/
// (automerge-repo's Repo, adapters and React hooks) and todo/meridian/ (the
// same app with its imports and `new Repo` options changed), each built by
// Vite and driven in Debian's Chromium by the same steps:
//
//   1. page A starts a list and adds three todos;
//   2. page B (another browser profile) opens A's URL and sees them; each
//      page shows the other's name (presence);
//   3. B ticks one, A sees it; A removes one, B sees it;
//   4. A reloads and still has the list;
//   5. render time: A adds 20 todos one by one; on B, from the document's
//      "change" event (the remote change applied) to React's commit of
//      the re-render (useDocument), median and max.
//
// For the Meridian app the packages are packed (`npm pack` of
// client-wasm/pkg and client-react) and installed from the tarballs, as an
// app would. Prints one JSON line per step and {"ok":true} at the end.
//   node todo-e2e.mjs --app automerge-repo|meridian --sync ws://127.0.0.1:PORT/...

import { spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs"
import http from "node:http"
import { tmpdir } from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { chromium } from "playwright-core"
import { installGuards, log, npmPack, out, parseArgs } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), { app: "string", sync: "string", timeout: "number", chromium: "string" })
installGuards(opts.timeout ?? 240, `todo-e2e ${opts.app}`)
if (!["automerge-repo", "meridian"].includes(opts.app) || !opts.sync) {
  throw new Error("usage: node todo-e2e.mjs --app automerge-repo|meridian --sync ws://...")
}

const here = (p) => fileURLToPath(new URL(p, import.meta.url))
const appDir = here(`./todo/${opts.app}`)
const work = mkdtempSync(path.join(tmpdir(), `todo-${opts.app}-`))
const vite = here("./node_modules/vite/bin/vite.js")

function check(cond, what) {
  if (!cond) throw new Error(what)
}

let browser
try {
  // Build (the Meridian app with its packages installed from tarballs).
  let sizes = {}
  if (opts.app === "meridian") {
    const tarballs = [here("../../client-wasm/pkg"), here("../../client-react")].map((dir) => {
      const p = npmPack(dir, work)
      sizes[p.name] = { tarball: p.size, unpacked: p.unpackedSize }
      return p.tarball
    })
    rmSync(path.join(appDir, "node_modules"), { recursive: true, force: true })
    const npm = spawnSync(
      "npm",
      ["install", "--offline", "--no-save", "--no-package-lock", "--legacy-peer-deps", "--no-audit", "--no-fund", ...tarballs],
      { cwd: appDir, encoding: "utf8" },
    )
    check(npm.status === 0, `npm install of the packed packages: ${npm.stderr}`)
  }
  const dist = path.join(work, "dist")
  const built = spawnSync("node", [vite, "build", "--outDir", dist, "--emptyOutDir"], {
    cwd: appDir,
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1" },
  })
  const buildLog = `${built.stdout}\n${built.stderr}`
  check(built.status === 0, `vite build failed:\n${buildLog}`)
  const warnings = buildLog.split("\n").filter((l) => /warn|externalized|\(!\)/i.test(l))
  check(warnings.length === 0, `vite build warned:\n${warnings.join("\n")}`)
  out({ step: "built", app: opts.app, packages: sizes })

  // Serve the build.
  const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css" }
  const server = http.createServer((req, res) => {
    const file = path.join(dist, decodeURIComponent(new URL(req.url, "http://x").pathname).replace(/^\/$/, "/index.html"))
    if (!file.startsWith(dist) || !existsSync(file)) return void res.writeHead(404).end()
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" }).end(readFileSync(file))
  })
  await new Promise((r) => server.listen(0, "127.0.0.1", r))
  const origin = `http://127.0.0.1:${server.address().port}/?sync=${encodeURIComponent(opts.sync)}`

  browser = await chromium.launch({
    executablePath: opts.chromium ?? "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  })
  const errors = []
  const page = async (name) => {
    const p = await (await browser.newContext()).newPage()
    p.on("console", (m) => {
      log(`${name} ${m.type()}: ${m.text()}`)
      if (m.type() === "error") errors.push(`${name}: ${m.text()}`)
    })
    p.on("pageerror", (e) => errors.push(`${name}: ${e}`))
    return p
  }
  const todos = (p) => p.$$eval("#todos li", (lis) => lis.map((li) => `${li.classList.contains("done") ? "[x]" : "[ ]"} ${li.querySelector(".text").textContent}`))
  const until = (p, expected, what) =>
    p
      .waitForFunction(
        (want) => JSON.stringify([...document.querySelectorAll("#todos li")].map((li) => `${li.classList.contains("done") ? "[x]" : "[ ]"} ${li.querySelector(".text").textContent}`)) === want,
        JSON.stringify(expected),
        { timeout: 30_000 },
      )
      .catch(async (e) => {
        throw new Error(`${what}: wanted ${JSON.stringify(expected)}, the page shows ${JSON.stringify(await todos(p))} (${e.message})`)
      })
  const add = async (p, text) => {
    await p.fill("#new", text)
    await p.click("#add")
  }

  // 1. A starts a list.
  const a = await page("A")
  await a.goto(`${origin}&name=Ana`)
  await a.waitForSelector("#new")
  for (const t of ["milk", "bread", "eggs"]) await add(a, t)
  await until(a, ["[ ] milk", "[ ] bread", "[ ] eggs"], "A's own todos")
  const listUrl = await a.evaluate(() => location.hash.slice(1))
  check(listUrl.startsWith("automerge:"), `the list's URL is in the hash: ${listUrl}`)
  out({ step: "added", url: listUrl })

  // 2. B opens it.
  const b = await page("B")
  await b.goto(`${origin}&name=Bo#${listUrl}`)
  await until(b, ["[ ] milk", "[ ] bread", "[ ] eggs"], "B opening A's list")
  out({ step: "shared" })

  // Presence (useDocHandle + usePresence): each page sees the other.
  await a.waitForFunction(() => document.querySelector("#peers")?.textContent === "Also here: Bo", null, { timeout: 30_000 })
  await b.waitForFunction(() => document.querySelector("#peers")?.textContent === "Also here: Ana", null, { timeout: 30_000 })
  out({ step: "presence" })

  // 3. Edits both ways.
  await b.click("#todos li:nth-child(2) input[type=checkbox]")
  await until(a, ["[ ] milk", "[x] bread", "[ ] eggs"], "B's tick reaching A")
  await a.click("#todos li:nth-child(1) .remove")
  await until(b, ["[x] bread", "[ ] eggs"], "A's removal reaching B")
  check((await b.textContent("#left")) === "1 left", `B counts ${await b.textContent("#left")}`)
  out({ step: "edited" })

  // 4. A reloads.
  await a.reload()
  await until(a, ["[x] bread", "[ ] eggs"], "A after a reload")
  out({ step: "reloaded" })

  // 5. Render time of a remote change on B.
  await b.evaluate(async (url) => {
    const handle = await window.repo.find(url)
    window.samples = []
    let changedAt = null
    handle.on("change", () => (changedAt ??= performance.now()))
    window.rendered = () => {
      if (changedAt !== null) {
        window.samples.push(performance.now() - changedAt)
        changedAt = null
      }
    }
  }, listUrl)
  const expected = ["[x] bread", "[ ] eggs"]
  for (let i = 0; i < 20; i++) {
    await add(a, `item ${i}`)
    expected.push(`[ ] item ${i}`)
    await until(b, expected, `item ${i} reaching B`)
  }
  const samples = (await b.evaluate(() => window.samples)).sort((x, y) => x - y)
  check(samples.length >= 20, `B rendered ${samples.length} remote changes`)
  const ms = (x) => Math.round(x * 100) / 100
  out({ step: "render-time", app: opts.app, n: samples.length, median_ms: ms(samples[samples.length >> 1]), max_ms: ms(samples.at(-1)) })
  check(errors.length === 0, `console errors: ${JSON.stringify(errors)}`)
} finally {
  await browser?.close()
  rmSync(work, { recursive: true, force: true })
  if (opts.app === "meridian") rmSync(path.join(appDir, "node_modules"), { recursive: true, force: true })
}
out({ ok: true })
process.exit(0)
