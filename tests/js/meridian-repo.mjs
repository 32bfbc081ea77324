// @meridian/client/repo, automerge-repo's API over Meridian (issue 18):
//
//   1. proxy mutation: the same change callbacks run on @automerge/automerge
//      3.5 (its own proxies) and on a Meridian handle give the same document,
//      value types included — fixed cases, then 400 random edits from a
//      seeded generator;
//   2. lossless values: counters, bytes, dates, immutable strings vs text,
//      null, floats and nested lists/maps read back as written, through the
//      Repo API and the Client/Doc API;
//   3. the rest of the handle and repo API: events with patches, heads,
//      view, diff, history, metadata, export/import/clone, merge, delete;
//   4. with --url (a Meridian edge): a document the JS automerge-repo wrote
//      with every value type is found by a Meridian Repo with the same
//      types, edited, and the edit reaches JS; and the reverse;
//   5. with --url: presence between Meridian's `Presence` and
//      automerge-repo's, both ways.
//
// Prints one JSON line per step and {"ok":true} at the end.
//   node meridian-repo.mjs [--url ws://127.0.0.1:PORT/sync]

import { WebSocket } from "ws"
import { next as A } from "@automerge/automerge"
import { Presence as JsPresence } from "@automerge/automerge-repo"
import { clientRepo, installGuards, newPeerId, out, parseArgs, shutdown, waitForServerPeer, waitUntil, waitUntilServerHas, withTimeout } from "./lib.mjs"

const M = await import(new URL("../../client-wasm/pkg/repo-node.js", import.meta.url))
const { Client } = await import(new URL("../../client-wasm/pkg/node.js", import.meta.url))
const opts = parseArgs(process.argv.slice(2), { url: "string", timeout: "number" })
installGuards(opts.timeout ?? 120, "meridian-repo")

function check(cond, what) {
  if (!cond) throw new Error(what)
}

// Both libraries mark their value classes with these symbols.
const is = (v, name) => v !== null && typeof v === "object" && v[Symbol.for(`_am_${name}`)] === true

/** A value with its Automerge type spelled out, comparable across libraries. */
function typed(v) {
  if (v === null) return null
  if (typeof v === "string") return { text: v }
  if (typeof v === "number") return Number.isInteger(v) ? { int: v } : { f64: v }
  if (typeof v === "boolean") return v
  if (v instanceof Uint8Array) return { bytes: [...v] }
  if (v instanceof Date) return { date: v.getTime() }
  if (is(v, "counter")) return { counter: Number(v.value) }
  if (is(v, "immutableString")) return { str: String(v.val) }
  if (Array.isArray(v)) return v.map(typed)
  if (typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, typed(v[k])]))
  throw new Error(`unexpected ${typeof v}`)
}
const same = (a, b) => JSON.stringify(typed(a)) === JSON.stringify(typed(b))

const local = new M.Repo({})

// ----- 1. proxy mutation against automerge's own ----------------------------

/** Runs `fn` on automerge and on Meridian from the same start; both results. */
function both(init, fn) {
  const am = A.change(A.from(init), fn)
  const h = local.create(init)
  h.change(fn)
  return [am, h.doc()]
}

const start = () => ({
  title: "Hello",
  n: new A.Counter(10),
  tags: ["a", "b", "c"],
  todos: [{ text: "one", done: false }, { text: "two", done: true }],
  meta: { owner: "ana", nested: { deep: [1, 2] } },
  none: null,
})
const cases = {
  assign: (d) => {
    d.title = "Bye"
    d.added = { x: [1, { y: "z" }] }
  },
  remove: (d) => {
    delete d.meta.owner
    delete d.none
  },
  counter: (d) => {
    d.n.increment()
    d.n.increment(5)
    d.n.decrement(2)
  },
  push: (d) => {
    d.tags.push("d", "e")
    d.todos.push({ text: "three", done: false })
  },
  splice: (d) => {
    d.tags.splice(1, 1, "x", "y")
    d.todos.splice(0, 1)
  },
  insertAt: (d) => {
    d.tags.insertAt(1, "p", "q")
    d.tags.deleteAt(0)
    d.tags.deleteAt(1, 2)
  },
  popShift: (d) => {
    d.tags.pop()
    d.tags.shift()
    d.tags.unshift("front")
  },
  nested: (d) => {
    d.todos[1].done = false
    d.todos[0].text = "ONE"
    d.meta.nested.deep.push(3)
    d.meta.nested.deep[0] = 9
  },
  moveThenEdit: (d) => {
    const second = d.todos[1]
    d.todos.unshift({ text: "zero", done: false })
    second.done = "edited after a shift"
  },
  readBack: (d) => {
    d.tags.push("z")
    d.count = d.tags.length
    d.joined = d.tags.join("-")
    d.found = d.todos.findIndex((t) => t.done)
  },
  textHelpers: (d) => {
    A.splice(d, ["title"], 5, 0, ", world")
    A.updateText(d, ["todos", 0, "text"], "one!")
  },
  replaceList: (d) => {
    // (automerge refuses to store its own objects elsewhere: copy them)
    d.todos = d.todos.filter((t) => !t.done).map((t) => ({ ...t }))
  },
  truncate: (d) => {
    d.tags.splice(1)
  },
  values: (d) => {
    d.when = new Date(1_700_000_000_000)
    d.bytes = new Uint8Array([0, 1, 255])
    d.id = new A.ImmutableString("im")
    d.f = 2.5
    d.neg = -7
    d.yes = true
  },
}
for (const [name, fn] of Object.entries(cases)) {
  // The text helpers are each library's own (same signature).
  const mine = name === "textHelpers"
    ? (d) => {
        M.splice(d, ["title"], 5, 0, ", world")
        M.updateText(d, ["todos", 0, "text"], "one!")
      }
    : fn
  const am = A.change(A.from(start()), fn)
  const h = local.create(start())
  h.change(mine)
  check(same(am, h.doc()), `${name}: automerge ${JSON.stringify(typed(am))} but meridian ${JSON.stringify(typed(h.doc()))}`)
}

// Counters, which automerge identifies by position in its own document.
const withCounters = () => ({ c: [new A.Counter(1), new A.Counter(2)], a: { c: new A.Counter(5) }, s: "hello" })
const counterCases = {
  shifted: (d) => {
    d.c[1].increment()
    d.c.unshift(0)
    d.c[2].increment(10)
  },
  copied: (d) => {
    d.y = { ...d.a }
    d.y.c.increment(3)
  },
  pushedTwice: (d) => {
    d.c.push(d.c[0])
    d.c[2].increment(7)
  },
  readTwice: (d) => {
    const x = d.a.c
    const y = d.a.c
    x.increment()
    y.increment()
  },
}
for (const [name, fn] of Object.entries(counterCases)) {
  const am = A.change(A.from(withCounters()), fn)
  const h = local.create(withCounters())
  h.change(fn)
  check(same(am, h.doc()), `${name}: automerge ${JSON.stringify(typed(am))} but meridian ${JSON.stringify(typed(h.doc()))}`)
}
{
  // A negative count deletes backwards (automerge's splice).
  const am = A.change(A.from(withCounters()), (d) => A.splice(d, ["s"], 1, -1, "J"))
  const h = local.create(withCounters())
  h.change((d) => M.splice(d, ["s"], 1, -1, "J"))
  check(h.doc().s === am.s && am.s === "Jello", `negative splice: automerge ${am.s}, meridian ${h.doc().s}`)
}

// Random edits, the same on both sides (a seeded generator: reproducible).
let seed = 18
const rand = (n) => {
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n
}
const scalars = () => [rand(100), "s" + rand(10), null, true, 1.25, { k: rand(5) }, [rand(3)]][rand(7)]
function randomEdit(d) {
  const lists = [d.tags, d.todos, d.meta.nested.deep]
  const l = lists[rand(3)]
  switch (rand(9)) {
    case 0: l.push(scalars()); break
    case 1: if (l.length) l.splice(rand(l.length), 1 + rand(2), scalars()); break
    case 2: l.insertAt(rand(l.length + 1), scalars(), scalars()); break
    case 3: if (l.length) l.deleteAt(rand(l.length)); break
    case 4: if (l.length) l[rand(l.length)] = scalars(); break
    case 5: d.meta["k" + rand(4)] = scalars(); break
    case 6: delete d.meta["k" + rand(4)]; break
    case 7: d.n.increment(rand(5) - 2); break
    case 8: if (l.length) l.pop(); else l.unshift(scalars()); break
  }
}
let am = A.from(start())
const rh = local.create(start())
for (let i = 0; i < 400; i++) {
  const s = seed
  am = A.change(am, (d) => randomEdit(d))
  seed = s
  rh.change((d) => randomEdit(d))
  check(same(am, rh.doc()), `random edit ${i}: automerge ${JSON.stringify(typed(am))} but meridian ${JSON.stringify(typed(rh.doc()))}`)
}
// Misuse is refused, and leaves the document as it was.
const before = rh.doc()
let kept
rh.change((d) => {
  kept = d
})
const refusals = []
for (const bad of [
  () => rh.change((d) => { d.x = undefined }),
  () => rh.change((d) => { d.tags[d.tags.length + 5] = 1 }),
  () => rh.change(async (d) => { d.later = 1 }),
  () => { kept.title = "stale draft" },
  () => { rh.doc().title = "in place" },
  () => M.splice(rh.doc(), ["title"], 0, 0, "outside a change"),
]) {
  try {
    bad()
    refusals.push(null)
  } catch (e) {
    refusals.push(e.message)
  }
}
check(refusals.every((r) => r), `every misuse is refused: ${JSON.stringify(refusals)}`)
check(rh.doc() === before, "a refused change leaves the document (and its object) as it was")
out({ step: "proxy-mutation", cases: Object.keys(cases).length + Object.keys(counterCases).length + 1, random: 400, refusals })

// ----- 2. lossless values, both APIs -----------------------------------------

const values = {
  counter: new M.Counter(3),
  bytes: new Uint8Array([1, 2, 3]),
  when: new Date(1_234_567_890_123),
  text: "spliceable",
  str: new M.ImmutableString("atomic"),
  nil: null,
  f: 0.5,
  big: 2 ** 40,
  list: [1, "two", [3, { four: new M.Counter(4) }], null],
  map: { a: { b: { c: new Uint8Array([9]) } } },
}
const vh = local.create(values)
check(same(vh.doc(), values), `Repo API round trip: ${JSON.stringify(typed(vh.doc()))}`)
// Numbers as automerge has them: NaN is an f64, a BigInt an int, ints
// beyond 2^53 read back as BigInt.
const nums = local.create({ nan: NaN, big: 2n ** 60n, neg: -(2n ** 62n) })
check(Number.isNaN(nums.doc().nan) && nums.doc().big === 2n ** 60n && nums.doc().neg === -(2n ** 62n), `numbers: ${String(Object.values(nums.doc()))}`)
// What a document cannot hold is refused, naming it.
const refused = []
for (const bad of [new Map([["k", 1]]), new Set([1]), new Int8Array([1]), JSON.parse('{"__proto__": {"x": 1}}'), 2n ** 70n]) {
  try {
    local.create({ bad })
    refused.push(null)
  } catch (e) {
    refused.push(e.message)
  }
  try {
    vh.change((d) => { d.bad = bad })
    refused.push(null)
  } catch (e) {
    refused.push(e.message)
  }
}
check(refused.every((r) => r), `Map, Set, Int8Array, a __proto__ key and a 70-bit BigInt are refused: ${JSON.stringify(refused)}`)
check(same(vh.doc(), values), "and nothing was stored")
check(vh.doc().counter instanceof M.Counter && vh.doc().str instanceof M.ImmutableString, "our classes come back")
const client = await Client.open({ dbName: null })
// No initial value, or null: an empty document (as before values were lossless).
check(same((await client.create()).value(), {}) && same((await client.create(null)).value(), {}), "create() and create(null) are empty")
const cd = await client.create({})
for (const [k, v] of Object.entries(values)) cd.put(k, v)
check(same(cd.value(), values), `Doc API round trip: ${JSON.stringify(typed(cd.value()))}`)
cd.increment("counter")
check(cd.value().counter.value === 4, "Doc API increments a counter it wrote")
const beforeUpdate = cd.heads()
cd.change((d) => d.updateText("text", "very spliceable"))
const patches = cd.diff(beforeUpdate, cd.heads())
check(cd.value().text === "very spliceable" && patches.length === 1 && patches[0].action === "splice" && patches[0].value === "very ", `updateText is the smallest edit: ${JSON.stringify(patches)}`)
await client.close()
out({ step: "lossless", value: typed(vh.doc()) })

// ----- 3. the rest of the API ---------------------------------------------

const h = local.create({ title: "v1", items: [] })
const events = []
h.on("change", ({ handle, doc, patches, patchInfo }) => events.push({ handle, doc, patches, patchInfo }))
const v1 = h.heads()
const v1doc = h.doc()
h.change((d) => { d.items.push("x") }, { message: "add x" })
check(events.length === 1 && events[0].handle === h && events[0].doc === h.doc(), "one change event with the handle and the new doc")
check(events[0].patchInfo.before === v1doc && events[0].patchInfo.after === h.doc(), "patchInfo has before and after")
check(events[0].patches.some((p) => p.action === "insert" && p.path.join() === "items,0"), `patches ${JSON.stringify(events[0].patches)}`)
check(h.metadata().message === "add x", "metadata has the message")
check(h.history().length === 2, "history has both changes")
check(same(h.view(v1).doc(), { title: "v1", items: [] }), "view(heads) shows the old version")
// As automerge-repo: diff(heads) goes from now to `heads`, diff(a, b) from a to b.
check(h.diff(v1).some((p) => p.action === "del" && p.path.join() === "items,0"), `diff(heads) from now back: ${JSON.stringify(h.diff(v1))}`)
check(h.diff(v1, h.heads()).some((p) => p.action === "insert"), `diff(a, b) forward: ${JSON.stringify(h.diff(v1, h.heads()))}`)
let viewRefused = false
try { h.view(v1).change((d) => { d.title = "no" }) } catch { viewRefused = true }
check(viewRefused, "a view is read-only")
const bytes = await local.export(h.url)
check(same(A.load(bytes), h.doc()), "export is a document automerge loads")
const imported = local.import(A.save(A.from({ from: "automerge", c: new A.Counter(2) })))
check(imported.url !== h.url && same(imported.doc(), { from: "automerge", c: new A.Counter(2) }), "import gives a new document")
const cloned = local.clone(h)
check(cloned.url !== h.url && same(cloned.doc(), h.doc()) && cloned.history().length === 2, "clone keeps the history")
cloned.change((d) => { d.title = "from the clone" })
// diff(otherHandle): from this document to the other's, across documents.
check(h.diff(cloned).some((p) => p.path[0] === "title"), `diff(other handle): ${JSON.stringify(h.diff(cloned))}`)
h.merge(cloned)
check(h.doc().title === "from the clone", "merge takes the other's changes")
check((await local.find(h.url)) === h, "find gives the same handle")
let deleted = 0
h.on("delete", () => deleted++)
local.delete(h.url)
check(deleted === 1 && h.isDeleted() && h.doc() === undefined, "delete emits and empties the handle")
let savedAfterDelete = ""
try { await h.whenSaved() } catch (e) { savedAfterDelete = e.message }
check(/not open here/.test(savedAfterDelete), `whenSaved after delete rejects: ${savedAfterDelete}`)
let findRejected = ""
try { await local.find(h.url) } catch (e) { findRejected = e.message }
check(/unavailable|deleted/.test(findRejected), `find after delete rejects: ${findRejected}`)
check(M.isValidAutomergeUrl(cloned.url) && !M.isValidAutomergeUrl("automerge:nope"), "isValidAutomergeUrl")
out({ step: "handle-api", events: events.length })
await local.shutdown()

// ----- 4 and 5: with a server -------------------------------------------

if (opts.url) {
  const repo = new M.Repo({ network: opts.url, WebSocket })
  const js = clientRepo(opts.url, { peerId: newPeerId("js") })
  await waitForServerPeer(js)
  const all = () => ({
    counter: new A.Counter(7),
    bytes: new Uint8Array([4, 5]),
    when: new Date(1_000_000),
    text: "text",
    str: new A.ImmutableString("immutable"),
    nil: null,
    f: 3.25,
    nested: { list: [{ deep: [new A.Counter(1)] }] },
  })

  // JS wrote it; Meridian reads the same types, edits, JS sees the edit.
  const j1 = js.create(all())
  await waitUntilServerHas(opts.url, j1.url, (d) => d?.f === 3.25, "edge to hold the JS document")
  const m1 = await withTimeout(repo.find(j1.url), 20000, "meridian find")
  check(same(m1.doc(), all()), `meridian reads ${JSON.stringify(typed(m1.doc()))}`)
  m1.change((d) => {
    d.counter.increment(3)
    M.splice(d, ["text"], 4, 0, "!")
    d.nested.list[0].deep[0].increment()
    d.bytes = new Uint8Array([6])
  })
  await waitUntil(() => Number(j1.doc().counter) === 10, { timeoutMs: 20000, what: "meridian edit to reach JS" })
  const j = j1.doc()
  check(j.counter instanceof A.Counter && j.text === "text!" && Number(j.nested.list[0].deep[0]) === 2 && j.bytes[0] === 6, `JS reads ${JSON.stringify(typed(j))}`)
  out({ step: "js-wrote", meridian: typed(m1.doc()) })

  // Meridian wrote it; JS reads the same types, edits, Meridian sees it.
  const m2 = repo.create({ ...values })
  await withTimeout(m2.whenSynced(), 20000, "edge acknowledges the meridian document")
  const j2 = await withTimeout(js.find(m2.url), 20000, "JS find")
  check(same(j2.doc(), values), `JS reads ${JSON.stringify(typed(j2.doc()))}`)
  check(j2.doc().counter instanceof A.Counter && j2.doc().str instanceof A.ImmutableString && j2.doc().when instanceof Date, "JS gets its own classes")
  j2.change((d) => {
    d.counter.increment(10)
    A.splice(d, ["text"], 0, 0, "very ")
  })
  await waitUntil(() => Number(m2.doc().counter) === 13, { timeoutMs: 20000, what: "JS edit to reach meridian" })
  check(m2.doc().text === "very spliceable" && m2.doc().counter instanceof M.Counter, `meridian reads ${JSON.stringify(typed(m2.doc()))}`)
  out({ step: "meridian-wrote", js: typed(j2.doc()) })

  // Presence: Meridian's and automerge-repo's, both ways.
  const mine = new M.Presence({ handle: m2 })
  const theirs = new JsPresence({ handle: j2 })
  mine.start({ initialState: { name: "meridian" }, heartbeatMs: 200 })
  theirs.start({ initialState: { name: "js" }, heartbeatMs: 200 })
  const timer = setInterval(() => {
    mine.broadcast("cursor", 5)
    theirs.broadcast("cursor", 9)
  }, 200)
  const [atMeridian, atJs] = await withTimeout(
    Promise.all([
      waitUntil(() => Object.values(mine.getPeerStates().value).find((p) => p.value.cursor === 9 && p.value.name === "js"), { timeoutMs: 20000, what: "JS presence at meridian" }),
      waitUntil(() => Object.values(theirs.getPeerStates().value).find((p) => p.value.cursor === 5 && p.value.name === "meridian"), { timeoutMs: 20000, what: "meridian presence at JS" }),
    ]),
    25000,
    "presence both ways",
  )
  clearInterval(timer)
  mine.stop()
  theirs.stop()
  out({ step: "presence", atMeridian: atMeridian.value, atJs: atJs.value })
  await repo.shutdown()
  await shutdown(js)
}
out({ ok: true })
process.exit(0)
