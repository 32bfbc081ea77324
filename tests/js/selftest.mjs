#!/usr/bin/env node
// Self-test: runs every scenario and the peer.mjs flows against the reference
// JS server (server.mjs), i.e. JS client <-> JS server. Also shows how a Rust
// test drives these scripts.
//
// Usage: node selftest.mjs [--url ws://...] [--big-changes N] [--repeat R] [--timeout S]
//   --url: test an already running server instead of spawning server.mjs
//          (the restart step is then skipped).
// Prints one JSON line per step and {"ok":true,"passed":N} at the end.

import { spawn } from "node:child_process"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import readline from "node:readline"
import { fileURLToPath } from "node:url"
import { out, parseArgs, installGuards } from "./lib.mjs"

const here = path.dirname(fileURLToPath(import.meta.url))
const opts = parseArgs(process.argv.slice(2), {
  url: "string",
  "big-changes": "number",
  repeat: "number",
  timeout: "number",
})
const fail = installGuards(opts.timeout ?? 600, "selftest")
const children = new Set()
process.on("exit", () => children.forEach(c => c.kill("SIGKILL")))

/** Spawn `node script args`, collecting JSON stdout lines; onLine sees each parsed line. */
function run(script, args, { onLine, stdin = "ignore" } = {}) {
  const child = spawn(process.execPath, [path.join(here, script), ...args], {
    stdio: [stdin, "pipe", "pipe"],
  })
  children.add(child)
  const lines = []
  let stderr = ""
  child.stderr.on("data", d => (stderr += d))
  readline.createInterface({ input: child.stdout }).on("line", l => {
    let j
    try {
      j = JSON.parse(l)
    } catch {
      j = { raw: l }
    }
    lines.push(j)
    onLine?.(j)
  })
  const done = new Promise(resolve =>
    child.on("exit", code => {
      children.delete(child)
      setImmediate(() => resolve({ code, lines, last: lines[lines.length - 1], stderr }))
    })
  )
  return { child, lines, done }
}

async function startServer(dir) {
  let resolveListen
  const listening = new Promise(r => (resolveListen = r))
  const srv = run("server.mjs", ["--port", "0", "--dir", dir], {
    onLine: j => j.listening && resolveListen(j),
  })
  const info = await Promise.race([
    listening,
    srv.done.then(r => {
      throw new Error(`server exited early: ${r.stderr}`)
    }),
  ])
  return { srv, url: `ws://127.0.0.1:${info.listening}/` }
}

async function stopServer(srv) {
  srv.child.kill("SIGTERM")
  const r = await srv.done
  if (r.code !== 0 || !r.last?.shutdown) throw new Error(`server did not shut down cleanly: code ${r.code} ${r.stderr}`)
}

let passed = 0
async function step(name, script, args, check = () => {}) {
  const r = await run(script, args).done
  const ok = r.code === 0 && r.last?.ok === true
  if (!ok) {
    out({ step: name, ok: false, code: r.code, last: r.last, stderr: r.stderr.slice(-2000) })
    fail(`step ${name} failed`)
  }
  check(r.last, r)
  passed++
  const { doc, heads, ...brief } = r.last
  out({ step: name, ok: true, result: brief })
  return r.last
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "meridian-js-selftest-"))
  let server = null
  let url = opts.url
  if (!url) {
    server = await startServer(path.join(dir, "data"))
    url = server.url
  }
  const sc = (c, ...more) => ["--url", url, "--case", c, ...more]
  const repeat = String(opts.repeat ?? 5)

  await step("create-find", "scenario.mjs", sc("create-find"))
  await step("create-find (fresh-repo check)", "scenario.mjs", sc("create-find", "--server-check", "fresh"))
  await step("concurrent", "scenario.mjs", sc("concurrent", "--rounds", "20"))
  await step("unavailable", "scenario.mjs", sc("unavailable"))
  await step("unavailable-then-appears", "scenario.mjs", sc("unavailable-then-appears"))
  await step("ephemeral", "scenario.mjs", sc("ephemeral"))
  await step("upload-then-fetch", "scenario.mjs", sc("upload-then-fetch", "--repeat", "2"))
  await step("big-doc", "scenario.mjs", sc("big-doc", "--changes", String(opts["big-changes"] ?? 3000), "--repeat", repeat, "--warmup", "1"))

  // peer.mjs: create (stays connected), find with expectation, live edit via stdin.
  let createdUrl
  let synced
  const syncedP = new Promise(r => (synced = r))
  const creator = run("peer.mjs", ["--url", url, "--create", JSON.stringify({ greeting: "hello", n: 1 })], {
    stdin: "pipe",
    onLine: j => {
      if (j.url && !createdUrl) createdUrl = j.url
      if (j.synced) synced(j)
    },
  })
  await syncedP
  await step("peer find", "peer.mjs", ["--url", url, "--find", createdUrl, "--expect-key", "greeting", "--expect-value", "hello"])
  let synced2
  const synced2P = new Promise(r => (synced2 = r))
  creator.child.stdout.on("data", d => String(d).includes('"synced":true') && String(d).includes("heads") && synced2())
  creator.child.stdin.write(JSON.stringify({ greeting: "edited", nested: { list: [1, 2, 3] } }) + "\n")
  await step("peer find after live edit", "peer.mjs", ["--url", url, "--find", createdUrl, "--expect-key", "nested.list.2", "--expect-value", "3"])
  await synced2P
  creator.child.stdin.end()
  const cr = await creator.done
  if (cr.code !== 0 || cr.last?.exiting !== "stdin closed") fail(`peer --create did not exit cleanly: ${JSON.stringify(cr.last)} ${cr.stderr}`)
  passed++
  out({ step: "peer create exits on stdin EOF", ok: true })

  // Persistence: upload, restart the server on the same directory, fetch (cold load from disk).
  if (server) {
    const up = await step("upload 3000 changes", "scenario.mjs", sc("upload", "--changes", "3000"))
    await stopServer(server.srv)
    server = await startServer(path.join(dir, "data"))
    url = server.url
    await step("fetch after server restart (cold)", "scenario.mjs", ["--url", url, "--case", "fetch", "--doc", up.url, "--expect-count", "3000", "--repeat", repeat])
    await stopServer(server.srv)
    passed++
    out({ step: "server SIGTERM shutdown", ok: true })
  }
  fs.rmSync(dir, { recursive: true, force: true })
  out({ ok: true, passed })
  process.exit(0)
}

main().catch(e => fail(e?.stack ?? e))
