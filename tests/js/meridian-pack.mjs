// The packed @meridian/client and @meridian/react as an application
// installs them (issue 18): `npm pack` of client-wasm/pkg (built by `cargo
// xtask build-js`) and client-react, installed from the tarballs into
//
//   1. a fresh Node app, which imports the client and its Repo layer by
//      name (the Node entry points), creates documents and counts;
//   2. a fresh Vite app using the Repo layer, built with no warning (no
//      Node module pulled into the browser build) and the wasm shipped as
//      an asset. (The React package in a Vite app: todo-e2e.mjs.)
//
// Prints one JSON line per step and {"ok":true} at the end.
//   node meridian-pack.mjs

import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { installGuards, npmPack, out } from "./lib.mjs"

installGuards(240, "meridian-pack")

const pkg = fileURLToPath(new URL("../../client-wasm/pkg", import.meta.url))
const vite = fileURLToPath(new URL("./node_modules/vite/bin/vite.js", import.meta.url))

function check(cond, what) {
  if (!cond) throw new Error(what)
}

/** A fresh app in `dir` with `files`, and the tarball installed (no registry needed). */
function app(dir, files, tarballs) {
  mkdirSync(dir)
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text)
  const npm = spawnSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--legacy-peer-deps", ...tarballs], { cwd: dir, encoding: "utf8" })
  check(npm.status === 0, `npm install in ${dir}: ${npm.stderr}`)
}

const work = mkdtempSync(join(tmpdir(), "meridian-pack-"))
try {
  const pack = (dir, expected) => {
    const packed = npmPack(dir, work)
    for (const f of expected) check(packed.files.includes(f), `the ${packed.name} tarball lacks ${f}: ${packed.files}`)
    const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"))
    for (const k of ["repository", "engines", "keywords", "license", "exports", "types"]) check(manifest[k], `${packed.name} has no ${k}`)
    return { tarball: packed.tarball, name: packed.name, tarball_bytes: packed.size, unpacked_bytes: packed.unpackedSize, files: packed.files.length }
  }
  const client = pack(pkg, ["README.md", "package.json", "index.js", "node.js", "repo.js", "repo-node.js", "draft.js", "index.d.ts", "repo.d.ts", "meridian_client_wasm.js", "meridian_client_wasm_bg.wasm"])
  const react = pack(fileURLToPath(new URL("../../client-react", import.meta.url)), ["README.md", "package.json", "index.js", "index.d.ts"])
  const tarballs = [client.tarball, react.tarball]
  out({ step: "pack", packages: [client, react].map(({ tarball, ...rest }) => rest) })

  // 1. Node.
  const nodeApp = join(work, "node-app")
  app(
    nodeApp,
    {
      "package.json": JSON.stringify({ name: "node-app", private: true, type: "module" }),
      "main.mjs": [
        'import { Client, Counter } from "@meridian/client"',
        'import { Repo } from "@meridian/client/repo"',
        "const client = await Client.open({ dbName: null })",
        "const doc = await client.create({ likes: new Counter(0) })",
        'doc.increment("likes")',
        "const repo = new Repo()",
        "const handle = repo.create({ todos: [] })",
        'handle.change(d => { d.todos.push({ text: "milk", done: false }); d.todos[0].done = true })',
        "console.log(JSON.stringify({ likes: doc.value().likes, url: doc.url, todos: handle.doc().todos }))",
        "await client.close()",
        "await repo.shutdown()",
      ].join("\n"),
    },
    tarballs
  )
  const ran = spawnSync("node", ["main.mjs"], { cwd: nodeApp, encoding: "utf8" })
  check(ran.status === 0, `the Node app failed: ${ran.stderr}`)
  const result = JSON.parse(ran.stdout.trim().split("\n").pop())
  check(result.likes === 1 && result.url.startsWith("automerge:") && result.todos[0].done === true, `the Node app printed ${ran.stdout}`)
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
        'import { Repo } from "@meridian/client/repo"',
        "async function main() {",
        '  const client = await Client.open({ urls: ["ws://127.0.0.1:7300/sync"] })',
        '  const doc = await client.create({ title: "hello" })',
        '  const repo = new Repo({ network: "ws://127.0.0.1:7300/sync", storage: "indexeddb" })',
        '  const handle = repo.create({ title: "hi" })',
        '  document.getElementById("out").textContent = JSON.stringify([doc.value(), handle.doc()])',
        "}",
        "main()",
      ].join("\n"),
    },
    tarballs
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
