// The packed @meridian/client as an application installs it (issue 18):
// `npm pack` of client-wasm/pkg (built by `cargo xtask build-js`), installed
// from the tarball into
//
//   1. a fresh Node app, which imports it by name, creates a document and
//      counts;
//   2. a fresh Vite app, built with no warning (no Node module pulled into
//      the browser build) and the wasm shipped as an asset.
//
// Prints one JSON line per step and {"ok":true} at the end.
//   node meridian-pack.mjs

import { execFileSync, spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { installGuards, out } from "./lib.mjs"

installGuards(240, "meridian-pack")

const pkg = fileURLToPath(new URL("../../client-wasm/pkg", import.meta.url))
const vite = fileURLToPath(new URL("./node_modules/vite/bin/vite.js", import.meta.url))

function check(cond, what) {
  if (!cond) throw new Error(what)
}

/** A fresh app in `dir` with `files`, and the tarball installed (no registry needed). */
function app(dir, files, tarball) {
  mkdirSync(dir)
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text)
  const npm = spawnSync("npm", ["install", "--offline", "--no-audit", "--no-fund", tarball], { cwd: dir, encoding: "utf8" })
  check(npm.status === 0, `npm install in ${dir}: ${npm.stderr}`)
}

const work = mkdtempSync(join(tmpdir(), "meridian-pack-"))
try {
  const [packed] = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", work, pkg], { encoding: "utf8" }))
  const tarball = join(work, packed.filename)
  const files = packed.files.map(f => f.path)
  for (const f of ["README.md", "package.json", "index.js", "index.d.ts", "meridian_client_wasm.js", "meridian_client_wasm_bg.wasm"]) {
    check(files.includes(f), `the tarball lacks ${f}: ${files}`)
  }
  out({ step: "pack", tarball_bytes: packed.size, unpacked_bytes: packed.unpackedSize, files: files.length })

  // 1. Node.
  const nodeApp = join(work, "node-app")
  app(
    nodeApp,
    {
      "package.json": JSON.stringify({ name: "node-app", private: true, type: "module" }),
      "main.mjs": [
        'import { Client, Counter } from "@meridian/client"',
        "const client = await Client.open({ dbName: null })",
        "const doc = await client.create({ likes: new Counter(0) })",
        'doc.increment("likes")',
        "console.log(JSON.stringify({ likes: doc.value().likes, url: doc.url }))",
        "await client.close()",
      ].join("\n"),
    },
    tarball
  )
  const ran = spawnSync("node", ["main.mjs"], { cwd: nodeApp, encoding: "utf8" })
  check(ran.status === 0, `the Node app failed: ${ran.stderr}`)
  const result = JSON.parse(ran.stdout.trim().split("\n").pop())
  check(result.likes === 1 && result.url.startsWith("automerge:"), `the Node app printed ${ran.stdout}`)
  out({ step: "node-app", ...result })

  // 2. Vite.
  const viteApp = join(work, "vite-app")
  app(
    viteApp,
    {
      "package.json": JSON.stringify({ name: "vite-app", private: true, type: "module" }),
      "index.html": '<!doctype html><html><body><pre id="out"></pre><script type="module" src="/main.js"></script></body></html>',
      "main.js": [
        'import { Client } from "@meridian/client"',
        "async function main() {",
        '  const client = await Client.open({ urls: ["ws://127.0.0.1:7300/sync"] })',
        '  const doc = await client.create({ title: "hello" })',
        '  document.getElementById("out").textContent = JSON.stringify(doc.value())',
        "}",
        "main()",
      ].join("\n"),
    },
    tarball
  )
  const built = spawnSync("node", [vite, "build"], { cwd: viteApp, encoding: "utf8", env: { ...process.env, NO_COLOR: "1" } })
  const log = `${built.stdout}\n${built.stderr}`
  check(built.status === 0, `vite build failed:\n${log}`)
  const warnings = log.split("\n").filter(l => /warn|externalized|\(!\)/i.test(l))
  check(warnings.length === 0, `vite build warned:\n${warnings.join("\n")}`)
  const assets = readdirSync(join(viteApp, "dist", "assets"))
  check(assets.some(a => a.endsWith(".wasm")), `no wasm among the built assets: ${assets}`)
  out({ step: "vite-app", assets })
} finally {
  rmSync(work, { recursive: true, force: true })
}
out({ ok: true })
