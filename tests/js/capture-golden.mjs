// Captures golden automerge-repo v1 wire messages for the Rust codec tests.
//
// Usage (from the workspace root, once; the output is checked in):
//
//     node tests/js/capture-golden.mjs [out-dir]
//
// out-dir defaults to protocol/tests/fixtures/golden. For every fixture
// `<name>` it writes
//
//   <name>.cbor  the raw frame, exactly as the JS repo puts it on the wire:
//                `cbor.encode(msg)` from `@automerge/automerge-repo/slim`
//                (cbor-x Encoder, tagUint8Array:false, useRecords:false).
//                A few frames that cbor-x cannot produce (e.g. `count` as a
//                float64) are assembled by hand and say so in their .json.
//   <name>.json  what `meridian_protocol::codec::decode` must make of it:
//                `expect` holds the decoded fields with the codec's
//                normalisation applied (undefined/absent optional fields
//                become null or [], byte strings are lower-case hex);
//                `keys` is the top-level key order on the wire;
//                `reencode` says whether `codec::encode` of the decoded
//                message must reproduce the .cbor byte for byte (false when
//                the Rust message type cannot represent what JS sent, e.g.
//                an `undefined` list or an extra key; `reencode_note` says
//                why).
//
// Key orders follow the objects the JS code builds (automerge-repo 2.5.6,
// automerge-repo-network-websocket 2.5.6): NetworkSubsystem.send appends
// `senderId` (and `count`, `sessionId` for new ephemeral messages) after the
// synchronizer's fields.
//
// Data is real: document ids come from `generateAutomergeUrl()`, heads from
// `encodeHeads(Automerge.getHeads(doc))`, `request`/`sync` payloads from
// `Automerge.generateSyncMessage`, ephemeral payloads from `cbor.encode`.
// Ids, storage ids and timestamps are random per run, so re-running the
// script produces a different but equally valid set of fixtures.

import { mkdirSync, writeFileSync, readdirSync, rmSync } from "node:fs"
import { randomBytes, randomUUID } from "node:crypto"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"
import { cbor, generateAutomergeUrl, parseAutomergeUrl, encodeHeads } from "@automerge/automerge-repo"
import * as Automerge from "@automerge/automerge"

const here = dirname(fileURLToPath(import.meta.url))
const outDir = process.argv[2] ?? join(here, "..", "..", "protocol", "tests", "fixtures", "golden")

const hex = bytes => Buffer.from(bytes).toString("hex")
const newDocumentId = () => parseAutomergeUrl(generateAutomergeUrl()).documentId
const randomPeerId = () => "peer-" + Math.random().toString(36).slice(4) // as Repo.js does
const sessionId = () => Math.random().toString(36).slice(2) // as NetworkSubsystem.js does

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`)
}

// ---- real automerge sync payloads -------------------------------------------------

const actor = n => n.toString(16).padStart(2, "0").repeat(16)

let full = Automerge.change(Automerge.init({ actor: actor(0xa1) }), d => {
  d.title = "Meridian golden fixture"
  d.items = ["alpha", "beta"]
  d.count = 3
})
full = Automerge.change(full, d => {
  d.items.push("gamma")
})
const empty = Automerge.init({ actor: actor(0xb2) })

// The peer without the document asks for it: this is a `request`.
let [emptyState, requestData] = Automerge.generateSyncMessage(empty, Automerge.initSyncState())
// The peer with the document opens with heads and a bloom filter, no changes: a `sync`.
let [fullState, syncData] = Automerge.generateSyncMessage(full, Automerge.initSyncState())
// Having heard the request, it answers with the changes.
;[full, fullState] = Automerge.receiveSyncMessage(full, fullState, requestData)
let syncChangesData
;[fullState, syncChangesData] = Automerge.generateSyncMessage(full, fullState)
assert(requestData && syncData && syncChangesData, "sync messages were generated")
assert(syncChangesData.length > syncData.length, "the answer carries changes")
void emptyState

// A document whose changes exceed 64 KiB, so `data` needs a 32-bit length.
const big = Automerge.change(Automerge.init({ actor: actor(0xc3) }), d => {
  d.blob = new Uint8Array(randomBytes(70_000))
})
// The opening message has no changes; answer a request to get them.
let [bigState] = Automerge.generateSyncMessage(big, Automerge.initSyncState())
;[, bigState] = Automerge.receiveSyncMessage(big, bigState, requestData)
const [, syncLargeData] = Automerge.generateSyncMessage(big, bigState)
assert(syncLargeData.length > 0xffff, "large sync message exceeds 64 KiB")
for (const d of [requestData, syncData, syncChangesData, syncLargeData]) {
  assert(d[0] === 0x42 || d[0] === 0x43, "sync message magic byte")
}

const heads = encodeHeads(Automerge.getHeads(full))
assert(heads.length === 1, "one head")

// ---- ids -----------------------------------------------------------------------

const client = randomPeerId()
const server = randomPeerId()
const clientStorage = randomUUID()
const serverStorage = randomUUID()
const otherStorage = randomUUID()
const documentId = newDocumentId()
const otherDocumentId = newDocumentId()

// ---- fixtures ------------------------------------------------------------------

const fixtures = []

/**
 * A message encoded by the real JS helper. `expect` is the decoded view; by
 * default it is derived from the message itself.
 */
function js(name, description, msg, { expect, reencode = true, reencodeNote } = {}) {
  const bytes = cbor.encode(msg)
  // Sanity: cbor-x reads back what it wrote.
  const back = cbor.decode(bytes)
  assert(back.type === msg.type, `${name} decodes in JS`)
  fixtures.push({
    name,
    description,
    encoding: "cbor-x via `cbor.encode` from @automerge/automerge-repo 2.5.6",
    bytes,
    keys: Object.keys(msg),
    expect: expect ?? normalise(msg),
    reencode,
    reencodeNote,
  })
}

/** A frame assembled by hand from cbor-x-encoded keys and values. */
function handBuilt(name, description, entries, { expect, reencode = false, reencodeNote }) {
  assert(entries.length < 24, "small map")
  const parts = [Buffer.from([0xa0 | entries.length])]
  for (const [key, value] of entries) {
    parts.push(Buffer.from(cbor.encode(key)))
    parts.push(value instanceof RawCbor ? value.bytes : Buffer.from(cbor.encode(value)))
  }
  fixtures.push({
    name,
    description,
    encoding: "hand-built CBOR map (keys and ordinary values via cbor-x)",
    bytes: Buffer.concat(parts),
    keys: entries.map(([k]) => k),
    expect,
    reencode,
    reencodeNote,
  })
}

class RawCbor {
  constructor(bytes) {
    this.bytes = Buffer.from(bytes)
  }
}

const peerMetadata = m => ({ storageId: m?.storageId ?? null, isEphemeral: m?.isEphemeral ?? false })

/** The decoded view the Rust codec produces for a JS message object. */
function normalise(msg) {
  const out = { kind: "message", type: msg.type }
  switch (msg.type) {
    case "join":
      out.senderId = msg.senderId
      out.peerMetadata = peerMetadata(msg.peerMetadata)
      out.supportedProtocolVersions = msg.supportedProtocolVersions ?? null
      break
    case "peer":
      out.senderId = msg.senderId
      out.peerMetadata = peerMetadata(msg.peerMetadata)
      out.selectedProtocolVersion = msg.selectedProtocolVersion ?? "1"
      out.targetId = msg.targetId
      break
    case "error":
      out.senderId = msg.senderId ?? null
      out.message = msg.message ?? ""
      out.targetId = msg.targetId ?? null
      break
    case "request":
    case "sync":
      Object.assign(out, { senderId: msg.senderId, targetId: msg.targetId, documentId: msg.documentId, data: hex(msg.data) })
      break
    case "doc-unavailable":
      Object.assign(out, { senderId: msg.senderId, targetId: msg.targetId, documentId: msg.documentId })
      break
    case "ephemeral":
      Object.assign(out, {
        senderId: msg.senderId,
        targetId: msg.targetId,
        documentId: msg.documentId,
        sessionId: msg.sessionId,
        count: msg.count,
        data: hex(msg.data),
      })
      break
    case "remote-subscription-change":
      Object.assign(out, { senderId: msg.senderId, targetId: msg.targetId, add: msg.add ?? [], remove: msg.remove ?? [] })
      break
    case "remote-heads-changed":
      Object.assign(out, { senderId: msg.senderId, targetId: msg.targetId, documentId: msg.documentId, newHeads: msg.newHeads })
      break
    default:
      return { kind: "unknown", type: msg.type }
  }
  return out
}

// join / peer / error: WebSocketClientAdapter.joinMessage and WebSocketServerAdapter.
js("join", "client join from a repo with storage", {
  type: "join",
  senderId: client,
  peerMetadata: { storageId: clientStorage, isEphemeral: false },
  supportedProtocolVersions: ["1"],
})
js("join-ephemeral", "client join from a repo without storage: storageId is undefined (0xf7), isEphemeral true", {
  type: "join",
  senderId: client,
  peerMetadata: { storageId: undefined, isEphemeral: true },
  supportedProtocolVersions: ["1"],
})
js("join-no-versions", "join without supportedProtocolVersions (means version 1)", {
  type: "join",
  senderId: client,
  peerMetadata: { storageId: clientStorage, isEphemeral: false },
})
js("join-v2-only", "join offering only protocol version \"2\" (the server must answer with an error)", {
  type: "join",
  senderId: client,
  peerMetadata: { storageId: clientStorage, isEphemeral: false },
  supportedProtocolVersions: ["2"],
})
js("peer", "server answer to join", {
  type: "peer",
  senderId: server,
  peerMetadata: { storageId: serverStorage, isEphemeral: false },
  selectedProtocolVersion: "1",
  targetId: client,
})
js("error", "server refusing a join", {
  type: "error",
  senderId: server,
  message: "unsupported protocol version",
  targetId: client,
})
js("error-unicode", "error whose message is 24+ UTF-8 bytes but fewer than 32 UTF-16 units (cbor-x moves the string to a 1-byte length)", {
  type: "error",
  senderId: server,
  message: "Ünsupported versión — ✗",
  targetId: client,
})

// Document messages: DocSynchronizer / CollectionSynchronizer + NetworkSubsystem.send.
js("request", "request for a document the sender does not have (sync message from an empty doc)", {
  type: "request",
  targetId: server,
  documentId,
  data: requestData,
  senderId: client,
})
js("sync", "opening sync message: heads and bloom filter, no changes", {
  type: "sync",
  targetId: client,
  data: syncData,
  documentId,
  senderId: server,
})
js("sync-changes", "sync message carrying the document's changes", {
  type: "sync",
  targetId: client,
  data: syncChangesData,
  documentId,
  senderId: server,
})
js("sync-large", "sync message whose data exceeds 64 KiB (32-bit byte string length)", {
  type: "sync",
  targetId: client,
  data: syncLargeData,
  documentId: otherDocumentId,
  senderId: server,
})
js("doc-unavailable", "nobody has the requested document", {
  type: "doc-unavailable",
  documentId,
  targetId: client,
  senderId: server,
})

// Ephemeral: DocHandle.broadcast encodes the app value, NetworkSubsystem adds count/sessionId/senderId.
const session = sessionId()
const ephemeralData = new Uint8Array(cbor.encode({ cursor: { line: 3, column: 14 }, user: "alice" }))
js("ephemeral", "ephemeral broadcast with count, sessionId and CBOR data", {
  type: "ephemeral",
  targetId: server,
  documentId,
  data: ephemeralData,
  count: 1,
  sessionId: session,
  senderId: client,
})
js("ephemeral-count-large", "ephemeral with count above 2^32: cbor-x writes the integer as float64", {
  type: "ephemeral",
  targetId: server,
  documentId,
  data: ephemeralData,
  count: 2 ** 32 + 5,
  sessionId: session,
  senderId: client,
})
handBuilt(
  "ephemeral-count-float",
  "ephemeral whose count is the float64 2.0 (cbor-x would write the integer 2; other encoders may not)",
  [
    ["type", "ephemeral"],
    ["targetId", server],
    ["documentId", documentId],
    ["data", ephemeralData],
    ["count", new RawCbor([0xfb, 0x40, 0, 0, 0, 0, 0, 0, 0])],
    ["sessionId", session],
    ["senderId", client],
  ],
  {
    expect: {
      kind: "message",
      type: "ephemeral",
      senderId: client,
      targetId: server,
      documentId,
      sessionId: session,
      count: 2,
      data: hex(ephemeralData),
    },
    reencode: false,
    reencodeNote: "hand-built with a one-byte map header (0xa7) and a float64 count; the encoder writes cbor-x's 16-bit header and the integer 2",
  },
)

// Remote heads gossip: Repo.js on notify-remote-heads / change-remote-subs.
js("remote-subscription-change", "subscribe to one storage id, unsubscribe from another", {
  type: "remote-subscription-change",
  targetId: server,
  add: [serverStorage],
  remove: [otherStorage],
  senderId: client,
})
js(
  "remote-subscription-change-remove-undefined",
  "subscription change where `remove` is undefined (0xf7), as RemoteHeadsSubscriptions emits",
  {
    type: "remote-subscription-change",
    targetId: server,
    add: [serverStorage],
    remove: undefined,
    senderId: client,
  },
  {
    reencode: false,
    reencodeNote: "the message type holds `remove` as a list; the encoder writes an empty array where JS wrote undefined",
  },
)
js("remote-heads-changed", "remote heads with a Date.now() timestamp (integer above 2^32, so cbor-x writes float64)", {
  type: "remote-heads-changed",
  targetId: client,
  documentId,
  newHeads: { [serverStorage]: { heads, timestamp: Date.now() } },
  senderId: server,
})
js("remote-heads-changed-float-timestamp", "remote heads with a non-integer timestamp", {
  type: "remote-heads-changed",
  targetId: client,
  documentId,
  newHeads: { [serverStorage]: { heads, timestamp: Date.now() + 0.25 } },
  senderId: server,
})
js("remote-heads-changed-small-timestamp", "remote heads with a small integer timestamp: cbor-x writes it as an unsigned integer", {
  type: "remote-heads-changed",
  targetId: client,
  documentId,
  newHeads: { [serverStorage]: { heads, timestamp: 1234 } },
  senderId: server,
})

// Tolerance.
{
  const msg = {
    type: "sync",
    targetId: client,
    data: syncData,
    extension: { nested: [1, "two", new Uint8Array([3])], flag: null },
    documentId,
    senderId: server,
  }
  js("sync-extra-key", "sync message with an unknown key (holding a nested map) between known ones", msg, {
    expect: normalise(msg),
    reencode: false,
    reencodeNote: "unknown keys are skipped on decode and not re-emitted",
  })
}
js(
  "unknown-type",
  "a message type from the future: decodes as Unknown and is ignored",
  {
    type: "frobnicate",
    targetId: server,
    documentId,
    data: new Uint8Array([1, 2, 3]),
    senderId: client,
  },
  { reencode: false, reencodeNote: "an unknown message type decodes to Decoded::Unknown; there is no message to encode" },
)

// ---- write ---------------------------------------------------------------------

mkdirSync(outDir, { recursive: true })
for (const f of readdirSync(outDir)) {
  if (f.endsWith(".cbor") || f.endsWith(".json")) rmSync(join(outDir, f))
}
for (const f of fixtures) {
  const { bytes, ...meta } = f
  writeFileSync(join(outDir, `${f.name}.cbor`), bytes)
  const json = {
    name: meta.name,
    description: meta.description,
    encoding: meta.encoding,
    keys: meta.keys,
    reencode: meta.reencode,
    ...(meta.reencodeNote ? { reencode_note: meta.reencodeNote } : {}),
    expect: meta.expect,
  }
  writeFileSync(join(outDir, `${f.name}.json`), JSON.stringify(json, null, 2) + "\n")
}
console.log(`wrote ${fixtures.length} fixtures to ${outDir}`)
