// End-to-end test of the collaborative editor demo (demo-web) in headless
// Chromium (Debian's /usr/bin/chromium driven by playwright-core; no
// browser is downloaded). The Rust test tests/tests/demo_editor.rs starts a
// hub, an `eu` and a `us` edge behind simulated latency, and the demo sites,
// then runs this script:
//
//   node demo-e2e.mjs --eu http://127.0.0.1:P/ --us http://127.0.0.1:Q/ --out DIR
//
// Pages: A and C on the eu site, B on the us site (separate browser
// contexts: separate IndexedDB, like separate people). Steps:
//   1. A creates the welcome document; B and C open its share link.
//   2. A's cursor shows on B, with A's name.
//   3. Keystroke latency: A types, C (same edge) and B (other edge) see it;
//      times from A's input event to the others' views.
//   4. A and B type concurrently (with emoji); both end with identical text.
//   5. B goes offline with the switch; both edit; B comes back; the edits merge.
//   6. A restores the first version from the history panel; B shows it.
//   7. No console errors so far. A read-only link from the share panel, on
//      us: the viewer sees A's typing live and cannot type; an edit forced
//      through its client API reaches no one. Then the script prints {"step":"stop-edges"}
//      and waits for a line on stdin (the Rust test stops every edge); A
//      reloads and still shows the document, from IndexedDB.
// Each step saves a screenshot in DIR. Prints {"ok":true, ...figures} last.

import { mkdtemp, mkdir, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import path from "node:path"
import readline from "node:readline"
import { chromium } from "playwright-core"
import { installGuards, log, out, parseArgs } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), {
  eu: "string",
  us: "string",
  out: "string",
  keystrokes: "number",
  chromium: "string",
  timeout: "number",
})
const fail = installGuards(opts.timeout ?? 240, "demo-e2e")
const shots = opts.out
await mkdir(shots, { recursive: true })
const stdin = readline.createInterface({ input: process.stdin })
const nextLine = () => new Promise((resolve) => stdin.once("line", resolve))

const profile = await mkdtemp(path.join(tmpdir(), "meridian-demo-e2e-"))
const browser = await chromium.launch({
  executablePath: opts.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", `--disk-cache-dir=${profile}`],
})

const consoleErrors = []
async function openPage(name, url, me = null) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } })
  // A name and avatar colour set before the page loads (as a returning visitor's).
  if (me) await context.addInitScript((m) => localStorage.setItem("meridian-demo:me", JSON.stringify(m)), me)
  const page = await context.newPage()
  page.on("console", (m) => {
    log(`${name} ${m.type()}: ${m.text()}`)
    if (m.type() === "error") consoleErrors.push(`${name}: ${m.text()}`)
  })
  page.on("pageerror", (e) => {
    log(`${name} page error: ${e}`)
    consoleErrors.push(`${name}: ${e}`)
  })
  await page.goto(url)
  await page.waitForFunction(() => window.meridianDemo?.ready === true && window.meridianDemo.doc, null, { timeout: 60_000 })
  page.name = name
  return page
}

const text = (page) => page.$eval("#editor", (t) => t.value)
const shot = (page, file) => page.screenshot({ path: path.join(shots, file) })

/** Waits until every page shows the same text, containing each of `parts`. */
async function converge(pages, parts, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  let texts = []
  while (Date.now() < deadline) {
    texts = await Promise.all(pages.map(text))
    if (texts.every((t) => t === texts[0]) && parts.every((p) => texts[0].includes(p))) return texts[0]
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`${what}: pages did not converge: ${JSON.stringify(texts)}`)
}

async function caretToEnd(page) {
  await page.focus("#editor")
  await page.$eval("#editor", (t) => t.setSelectionRange(t.value.length, t.value.length))
}

async function caretToStart(page) {
  await page.focus("#editor")
  await page.$eval("#editor", (t) => t.setSelectionRange(0, 0))
}

try {
  // 1. A document on eu, opened on us and (by a second person) on eu.
  // A and B come with the same avatar colour: one of them must take another.
  const a = await openPage("A(eu)", opts.eu, { name: "Ada", color: "#1c7ed6" })
  const docUrl = await a.evaluate(() => window.meridianDemo.doc.url)
  await a.waitForFunction(() => document.querySelector("#conn-pill").dataset.state === "connected")
  await a.evaluate(() => window.meridianDemo.doc.whenSynced())
  const b = await openPage("B(us)", `${opts.us}#${docUrl}`, { name: "Bob", color: "#1c7ed6" })
  const c = await openPage("C(eu)", `${opts.eu}#${docUrl}`)
  const welcome = await converge([a, b, c], ["IndexedDB", "🚀"], "open by link")
  out({ step: "opened", doc: docUrl })

  // Two people never share an avatar colour: on each page, A's and B's differ.
  const avatarColours = (p) => p.$$eval("#presence .avatar", (xs) => xs.map((x) => `${x.title.split(" ")[0]}=${x.style.background}`))
  for (const p of [a, b]) {
    await p.waitForFunction(
      () => {
        const colour = (who) => [...document.querySelectorAll("#presence .avatar")].find((x) => x.title.startsWith(who))?.style.background
        return colour("Ada") && colour("Bob") && colour("Ada") !== colour("Bob")
      },
      null,
      { timeout: 15_000 },
    ).catch(async () => {
      throw new Error(`${p.name}: Ada and Bob keep one colour: ${JSON.stringify(await avatarColours(p))}`)
    })
  }
  out({ step: "distinct-colours", a: await avatarColours(a) })

  // A link with a mistyped id: said at once (no retries), in words, and
  // nothing stays editable; the banner leads back.
  const typo = docUrl.slice(0, -1) + (docUrl.endsWith("2") ? "3" : "2")
  const askedAt = Date.now()
  await c.evaluate((u) => (location.hash = u), typo)
  await c.waitForFunction(() => /not a valid document link/.test(document.querySelector("#banner")?.textContent ?? ""), null, { timeout: 5_000 })
  const banner = await c.$eval("#banner", (b) => b.textContent)
  if (/\[\d+, \d+/.test(banner)) throw new Error(`raw checksum bytes in the banner: ${banner}`)
  if (!(await c.$eval("#editor", (t) => t.readOnly && t.value === ""))) throw new Error("after a failed open the previous document is still editable")
  await shot(c, "0-invalid-link-c.png")
  await c.click("#banner button")
  await converge([a, c], ["IndexedDB"], "back to the document after a bad link")
  if (await c.$eval("#editor", (t) => t.readOnly)) throw new Error("the document is not editable again")
  out({ step: "invalid-link", ms: Date.now() - askedAt })

  // 2. A's cursor and name appear on B.
  await caretToStart(a)
  await a.keyboard.press("ArrowRight")
  const aName = await a.$eval("#my-name", (i) => i.value)
  await b.waitForFunction(
    (name) => [...document.querySelectorAll(".remote-caret .remote-label")].some((l) => l.textContent === name),
    aName,
    { timeout: 15_000 },
  )
  await shot(b, "1-remote-cursor.png")
  // A caret that stays put keeps its colour but not its name tag, which
  // would hide the line above.
  await b
    .waitForFunction(() => [...document.querySelectorAll(".remote-label")].every((l) => l.classList.contains("quiet")), null, { timeout: 10_000 })
    .catch(async () => {
      throw new Error(`name tags still shown: ${JSON.stringify(await b.$$eval(".remote-label", (ls) => ls.map((l) => `${l.textContent}:${l.className}`)))}`)
    })
  out({ step: "remote-cursor", name: aName })

  // 3. Keystroke latency, same edge (A→C) and across edges (A→B via the hub).
  for (const p of [b, c]) {
    await p.evaluate(() => {
      window.__seen = []
      document.addEventListener("meridian:text", (e) => window.__seen.push(e.detail))
    })
  }
  await caretToEnd(a)
  await a.keyboard.type("\n")
  const same = []
  const cross = []
  const n = opts.keystrokes ?? 30
  for (let i = 0; i < n; i++) {
    const ch = "abcdefghijklmnopqrstuvwxyz"[i % 26]
    await a.keyboard.type(ch)
    const { expected, at } = await a.evaluate(() => ({ expected: document.querySelector("#editor").value, at: window.meridianDemo.lastLocalEditAt }))
    for (const [p, list] of [[c, same], [b, cross]]) {
      const seenAt = await p.waitForFunction(
        (expected) => window.__seen.find((s) => s.text === expected)?.at,
        expected,
        { timeout: 15_000, polling: 10 },
      )
      list.push((await seenAt.jsonValue()) - at)
    }
  }
  const stats = (xs) => {
    const s = [...xs].sort((x, y) => x - y)
    return { median: s[Math.floor(s.length / 2)], p90: s[Math.floor(s.length * 0.9)], min: s[0], max: s[s.length - 1], n: s.length }
  }
  const latency = { sameEdge: stats(same), crossEdge: stats(cross) }
  out({ step: "latency", ...latency })

  // 4. Concurrent typing on two edges, with non-BMP text.
  await caretToStart(a)
  await caretToEnd(b)
  await Promise.all([a.keyboard.type("Ana 😀 was here. ", { delay: 15 }), b.keyboard.type(" Bo 🎉 too.", { delay: 15 })])
  const merged = await converge([a, b, c], ["Ana 😀 was here. ", " Bo 🎉 too."], "concurrent typing")
  if (!merged.startsWith("Ana 😀 was here. ") || !merged.endsWith(" Bo 🎉 too.")) throw new Error(`edits landed in the wrong places: ${JSON.stringify(merged)}`)
  await shot(a, "2-concurrent-a.png")
  await shot(b, "2-concurrent-b.png")
  // The history names people and keeps each one's typing of the last
  // minute as one entry, though A's and B's changes interleave.
  await a.waitForFunction(() => [...document.querySelectorAll("#history li .who")].some((w) => w.textContent.includes("Bob")), null, { timeout: 10_000 })
  const rows = await a.$$eval("#history li", (ls) => ls.map((l) => `${l.querySelector(".what").textContent} ${l.querySelector(".who").textContent}`))
  const who = rows.filter((r) => !/^created/i.test(r))
  const rowsBy = (name) => who.filter((w) => w.endsWith(`by ${name}`)).length
  if (rowsBy("Ada") !== 1 || rowsBy("Bob") !== 1) throw new Error(`history rows: ${JSON.stringify(rows)}`)
  if (who.some((w) => /by [0-9a-f]{8}$/.test(w))) throw new Error(`hex authors in the history: ${JSON.stringify(who)}`)
  out({ step: "concurrent", history: who })

  // 5. B goes offline with the switch; both edit; B comes back.
  await b.click("label.switch")
  await b.waitForFunction(() => document.querySelector("#conn-pill").dataset.state === "offline")
  if ((await b.evaluate(() => window.meridianDemo.client.connectionState)) !== "offline") throw new Error("the switch did not cut the connection")
  // The others drop B at once (not after a timeout); B shows no stale round trips.
  await a.waitForFunction(() => ![...document.querySelectorAll("#presence .avatar")].some((x) => x.title.startsWith("Bob")), null, { timeout: 3_000 })
  const facts = await b.$eval("#conn-facts", (f) => f.textContent)
  if (/ms \((QUIC RTT|HTTP round trip)\)/.test(facts)) throw new Error(`an offline page shows round trips: ${facts}`)
  await caretToEnd(b)
  await b.keyboard.type(" [offline edit by B]")
  await caretToStart(a)
  await a.keyboard.type("[online edit by A] ")
  await new Promise((r) => setTimeout(r, 1000))
  if ((await text(a)).includes("offline edit by B")) throw new Error("an offline edit reached A")
  if ((await text(b)).includes("online edit by A")) throw new Error("B received an edit while offline")
  await shot(b, "3-offline-b.png")
  await b.click("label.switch")
  const afterMerge = await converge([a, b, c], ["[offline edit by B]", "[online edit by A] "], "offline merge")
  await shot(b, "4-merged-b.png")
  out({ step: "offline-merge" })

  // The hub's placement decision for the document shows in the panel.
  await a.waitForFunction(() => /^(edge \w+|hub)$/.test(document.querySelector("#placement .decided")?.textContent ?? ""), null, { timeout: 30_000 })
  const decided = await a.$eval("#placement .decided", (d) => d.textContent)
  // With moves on, the document's home becomes an edge (its writers are on eu
  // and us), and the pages keep editing across the hand-off.
  await a.waitForFunction(() => /^edge \w+/.test(document.querySelector("#placement .home-of-doc")?.textContent ?? ""), null, { timeout: 30_000 })
  const home = await a.$eval("#placement .home-of-doc", (d) => d.textContent)
  await a.waitForFunction(() => /hand-off/.test(document.querySelector("#placement .moves")?.textContent ?? ""), null, { timeout: 30_000 })
  const moves = await a.$eval("#placement .moves", (d) => d.textContent)
  if (/\b0(\.0+)? ms/.test(moves)) throw new Error(`a hand-off reads 0 ms: ${moves}`)
  await shot(a, "5a-placement-a.png")
  out({ step: "placement-shown", decided, home })

  // 6. A restores the first version (the welcome text); B shows it.
  await a.waitForFunction(() => document.querySelectorAll("#history li").length > 1)
  await a.click("#history li:last-child")
  await a.waitForFunction(() => document.querySelector("#editor").readOnly)
  const previewed = await text(a)
  if (previewed !== welcome) throw new Error(`preview shows ${JSON.stringify(previewed)}, not the first version`)
  await shot(a, "5-history-preview-a.png")
  await a.click("#banner button:first-of-type")
  await converge([a, b, c], [], "restore")
  if ((await text(b)) !== welcome) throw new Error(`restore did not reach B: ${JSON.stringify(await text(b))}`)
  if (afterMerge === welcome) throw new Error("nothing to restore")
  await shot(b, "6-restored-b.png")
  out({ step: "restored" })

  // 7. No console errors in normal operation.
  if (consoleErrors.length) throw new Error(`console errors: ${JSON.stringify(consoleErrors)}`)
  // A read-only link (the site mints the page a viewer's token for this document).
  const roLink = await a.$$eval('#share li[data-kind="read-only"] a', (links, us) => links.map((l) => l.href).find((h) => h.startsWith(us)), opts.us)
  if (!roLink?.includes("?readonly#automerge:")) throw new Error(`no read-only link for us in the share panel: ${roLink}`)
  const v = await openPage("V(us, read-only)", roLink)
  await converge([a, v], [], "the viewer opens the document")
  if (!(await v.$eval("#editor", (t) => t.readOnly))) throw new Error("the viewer's editor is editable")
  if ((await v.$$('#share li[data-kind="edit"]')).length) throw new Error("a viewer is offered edit links")
  await caretToEnd(a)
  await a.keyboard.type(" [seen by the viewer]")
  await converge([a, b, c, v], ["[seen by the viewer]"], "live to the viewer")
  await v.evaluate(() => window.meridianDemo.doc.change((d) => d.splice("text", 0, 0, "[forged] ")))
  await new Promise((r) => setTimeout(r, 1500))
  for (const p of [a, b, c]) if ((await text(p)).includes("[forged]")) throw new Error(`a read-only page's edit reached ${p.name}`)
  await shot(v, "6b-read-only-viewer.png")
  await v.context().close()
  out({ step: "read-only", link: roLink })
  // Then every edge stops.
  const finalText = await text(a)
  out({ step: "stop-edges" })
  await nextLine()
  await a.reload()
  await a.waitForFunction(() => window.meridianDemo?.ready === true && window.meridianDemo.doc, null, { timeout: 30_000 })
  const reloaded = await text(a)
  if (reloaded !== finalText) throw new Error(`after reload with every edge stopped: ${JSON.stringify(reloaded)}`)
  if ((await a.evaluate(() => window.meridianDemo.client.connectionState)) === "connected") throw new Error("connected with every edge stopped?")
  await shot(a, "7-reload-all-edges-down-a.png")
  out({ ok: true, doc: docUrl, latency, screenshots: shots })
} catch (e) {
  fail(e)
} finally {
  await browser.close()
  await rm(profile, { recursive: true, force: true })
  stdin.close()
}
