#!/usr/bin/env node
// Seeds the JS sync server's storage directory offline, with automerge-repo's
// own code, so the files are the ones the server itself writes when a peer
// syncs the same documents to it: a Repo with NodeFSStorageAdapter on the
// directory, no network, `repo.import(bytes, { docId })` for each document,
// then `repo.shutdown()`, which flushes every document (the same
// StorageSubsystem.saveDoc the server's throttled save and its shutdown flush
// call). Run it only while the server is stopped.
//
// The benchmark's `stored` scenario uses it for the documents beyond the part
// it measures through the protocol: the JS server stores about 29 documents
// per second through the protocol, so 100,000 would take an hour.
//
// Usage:
//   node seed-store.mjs --dir D < records
//
// stdin: one document per line, `<documentId> <hex>`, where <hex> is the
// document's automerge bytes (a saved document or its changes, as accepted by
// Automerge.loadIncremental). Prints {"seeded":N} when everything is on disk.

import readline from "node:readline"
import { Repo, isValidDocumentId } from "@automerge/automerge-repo"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"
import { out, parseArgs, installGuards } from "./lib.mjs"

const opts = parseArgs(process.argv.slice(2), { dir: "string", timeout: "number" })
const fail = installGuards(opts.timeout ?? 0, "seed-store")
if (!opts.dir) fail("usage: seed-store.mjs --dir D < records")

// Documents imported and saved together (one Repo each, dropped afterwards):
// enough to overlap the file writes, few enough that memory stays flat for any
// number of documents. Not Repo.removeFromCache(): in 2.5.6 unloading a handle
// resets its document to empty, which fires the throttled save, and that
// replaces the document's snapshot on disk with an empty one.
const BATCH = 256

let seeded = 0

/** Imports and saves one batch of `{ docId, bytes, at }` in a fresh Repo. */
async function seed(batch) {
  const repo = new Repo({
    storage: new NodeFSStorageAdapter(opts.dir),
    network: [],
    peerId: "seed-store",
    sharePolicy: async () => false,
  })
  for (const { docId, bytes, at } of batch) {
    const handle = repo.import(bytes, { docId })
    // An import that changed nothing (empty or foreign bytes) leaves the handle
    // not ready, and flush() would throw an unhelpful "DocHandle is not ready".
    if (!handle.isReady()) fail(`line ${at}: ${docId}: the bytes hold no automerge changes`)
  }
  // shutdown() is flush() of every handle (plus disconnecting no network):
  // StorageSubsystem.saveDoc, as the server's own saves.
  await repo.shutdown()
  seeded += batch.length
}

let line = 0
let batch = []
for await (const text of readline.createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  line++
  if (text === "") continue
  const [docId, hex, extra] = text.split(" ")
  if (!isValidDocumentId(docId) || !hex || extra !== undefined || !/^([0-9a-f]{2})+$/.test(hex)) {
    fail(`line ${line}: expected "<documentId> <hex bytes>", got ${JSON.stringify(text.slice(0, 80))}`)
  }
  batch.push({ docId, bytes: new Uint8Array(Buffer.from(hex, "hex")), at: line })
  if (batch.length >= BATCH) {
    await seed(batch)
    batch = []
  }
}
await seed(batch)
out({ seeded })
