// The hub's operator console (cloud-hub/console) in headless Chromium
// (Debian's /usr/bin/chromium driven by playwright-core). The Rust test
// tests/tests/console.rs starts a hub with an admin token and two edges,
// writes a document with three versions through them, then runs:
//
//   node console-e2e.mjs --url http://127.0.0.1:P/console --doc DOC --token T --out DIR
//
// Steps (a screenshot each, in DIR):
//   1. The page asks for the admin token (the routes refuse without it); given
//      it, the document is listed with its two replicas in sync.
//   2. Opening it shows its replicas (heads, lag, last heard) and its history.
//   3. Version A = the first change, B = the last: the diff lists `title`
//      changed "v1" → "v3" and `tags` added.
//   4. Time travel: viewing the first change shows the document as it was.
//   5. Rollback to the first change (confirmed in the dialog): the document
//      is "v1" again, with one more change in its history.
// No console errors (a CSP violation would be one). Prints {"ok":true,...}.

import { mkdtemp, mkdir } from "node:fs/promises"
import { tmpdir } from "node:os"
import path from "node:path"
import { chromium } from "playwright-core"
import { installGuards, log, out, parseArgs } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  doc: "string",
  token: "string",
  out: "string",
  chromium: "string",
  timeout: "number",
})
installGuards(opts.timeout ?? 120, "console-e2e")
await mkdir(opts.out, { recursive: true })
const profile = await mkdtemp(path.join(tmpdir(), "meridian-console-e2e-"))
const browser = await chromium.launch({
  executablePath: opts.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", `--disk-cache-dir=${profile}`],
})
const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } })
const page = await context.newPage()
const errors = []
page.on("console", (m) => {
  log(`console ${m.type()}: ${m.text()}`)
  // The refused first requests (401, before the token) are expected.
  if (m.type() === "error" && !m.text().includes("401")) errors.push(m.text())
})
page.on("pageerror", (e) => errors.push(String(e)))
page.on("dialog", (d) => d.accept())
const shot = (file) => page.screenshot({ path: path.join(opts.out, file), fullPage: true })
const rows = (table) => page.locator(`#${table} tbody tr`)

// 1. The token, then the document in the list.
await page.goto(opts.url)
await page.locator("#token-form").waitFor({ state: "visible", timeout: 15_000 })
await page.fill("#token-input", opts.token)
await page.click("#token-form button[type=submit]")
const row = page.locator(`#docs tbody tr[data-doc="${opts.doc}"]`)
await row.waitFor({ timeout: 20_000 })
await page.waitForFunction(
  (doc) => document.querySelector(`#docs tbody tr[data-doc="${doc}"] td:nth-child(4)`)?.textContent === "2/2",
  opts.doc,
  { timeout: 20_000 },
)
await shot("1-documents.png")

// 2. The document: replicas and history.
await row.click()
await page.waitForFunction(() => document.querySelectorAll("#replicas tbody tr").length >= 2, null, { timeout: 20_000 })
await page.waitForFunction(() => document.querySelectorAll("#history tbody tr").length >= 3, null, { timeout: 20_000 })
const replicas = await rows("replicas").allInnerTexts()
const history = await rows("history").count()
await shot("2-document.png")

// 3. Diff between the first and the last version.
await rows("history").first().locator(".pick-a").check()
await rows("history").last().locator(".pick-b").check()
await page.click("#diff-button")
await page.waitForFunction(() => document.querySelectorAll("#diff li").length > 0, null, { timeout: 10_000 })
const diff = await page.locator("#diff li").allInnerTexts()
if (!diff.some((d) => d.includes("title") && d.includes('"v1" → "v3"'))) throw new Error(`diff: ${JSON.stringify(diff)}`)
if (!diff.some((d) => d.startsWith("+ tags"))) throw new Error(`diff lacks the added tags: ${JSON.stringify(diff)}`)
await shot("3-diff.png")

// 4. Time travel to the first version.
await rows("history").first().locator("button.view").click()
await page.waitForFunction(() => document.querySelector("#version-title").textContent.startsWith("As it was"), null, { timeout: 10_000 })
const old = JSON.parse(await page.locator("#version").innerText())
if (old.title !== "v1" || "tags" in old) throw new Error(`the first version: ${JSON.stringify(old)}`)
await shot("4-time-travel.png")

// 5. Roll back to it.
await rows("history").first().locator("button.rollback").click()
await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("rolled back"), null, { timeout: 20_000 })
const now = JSON.parse(await page.locator("#version").innerText())
if (now.title !== "v1" || "tags" in now) throw new Error(`after the rollback: ${JSON.stringify(now)}`)
await page.waitForFunction((n) => document.querySelectorAll("#history tbody tr").length === n + 1, history, { timeout: 20_000 })
// The hub's heads (base58 in the API, hex on the page) are the rollback's change.
await page.waitForFunction(
  () => document.querySelector("#d-heads").textContent === [...document.querySelectorAll("#history tbody tr")].at(-1).children[3].textContent,
  null,
  { timeout: 20_000 },
)
await shot("5-rollback.png")

if (errors.length) throw new Error(`console errors: ${JSON.stringify(errors)}`)
await browser.close()
out({ ok: true, replicas, history, diff, rolledBackTo: now })
