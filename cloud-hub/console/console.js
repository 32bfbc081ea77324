// The hub's operator console: documents open at the hub with their
// replicas, heads, lag, divergence, home and moves; a document's history
// with a diff between versions, time travel and rollback. Everything comes
// from the hub's operator routes (GET /api/docs, /api/docs/{doc}/replicas,
// /api/divergence, /placement, /topology, /api/docs/{doc}/history,
// /api/docs/{doc}?at=, POST /api/docs/{doc}/rollback?to=), with the admin
// token as a bearer when one is given. Data is put in the page as text only.

const $ = (id) => document.getElementById(id)
const TOKEN_KEY = "meridian-admin-token"
const state = { doc: null, history: [], a: null, b: null, placement: null, heads: "" }
window.meridianConsole = state

class HttpError extends Error {
  constructor(status, text) {
    super(`${status}: ${text.trim()}`)
    this.status = status
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY)
  const headers = token ? { Authorization: `Bearer ${token}` } : {}
  const response = await fetch(path, { ...options, headers })
  if (response.status === 401 || response.status === 403) {
    askToken(`The hub refused the request (${response.status}): give its admin token.`)
    throw new HttpError(response.status, await response.text())
  }
  if (!response.ok) throw new HttpError(response.status, await response.text())
  return response.json()
}

function askToken(why) {
  $("token-why").textContent = why
  $("token-form").hidden = false
  $("token-input").focus()
}

function showError(e) {
  $("error").hidden = !e
  $("error").textContent = e ? String(e.message ?? e) : ""
}

/** A table cell (text only), optionally with a class. */
function cell(tr, text, cls) {
  const td = document.createElement("td")
  td.textContent = text ?? "–"
  if (cls) td.className = cls
  tr.appendChild(td)
  return td
}

const short = (h) => (h ? h.slice(0, 8) : "–")
const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

/** A head as the API gives it (base58check, as automerge-repo writes
 * heads: the 32-byte hash and a 4-byte checksum) in hex, as the history
 * lists changes. */
function headHex(b58) {
  let n = 0n
  for (const c of b58) {
    const v = B58.indexOf(c)
    if (v < 0) return b58
    n = n * 58n + BigInt(v)
  }
  return n.toString(16).padStart(72, "0").slice(0, 64)
}
const shortHeads = (heads) => (heads && heads.length ? heads.map((h) => short(headHex(h))).join(", ") : "–")
const ms = (v) => (v == null ? "–" : v < 1000 ? `${v} ms` : `${(v / 1000).toFixed(1)} s`)
const homeName = (h) => (h == null || h === "hub" ? "hub" : typeof h === "string" ? h : h.edge ?? "hub")

/** An edge by its id (its link's subject is `node:ID`), else a client by peer id. */
function replicaName(r) {
  if (r.subject?.startsWith("node:")) return `edge ${r.subject.slice(5)}`
  const who = r.peer ?? `connection ${r.conn}`
  return r.subject ? `${who} (${r.subject})` : who
}

function homeOf(doc) {
  const homes = state.placement?.homes ?? []
  const h = homes.find((x) => x.doc === doc)
  return h ? h.edge ?? "hub" : "hub"
}

// ----- overview and the documents table ------------------------------------

async function refreshOverview() {
  const [docs, divergence, placement, topology] = await Promise.all([
    api("/api/docs"),
    api("/api/divergence"),
    api("/placement"),
    api("/topology"),
  ])
  state.placement = placement
  $("n-docs").textContent = docs.documents.length + (docs.next ? "+" : "")
  $("n-edges").textContent = topology.edges.length
  $("n-divergent").textContent = divergence.divergent.length
  $("n-divergent").className = "figure" + (divergence.divergent.length ? " bad" : "")
  $("n-homes").textContent = placement.homes.filter((h) => h.edge).length
  const p = placement.placer
  $("placer").textContent = `${p.hub ?? "none"}${p.this_hub ? " (this hub)" : ""} · moves ${placement.moves_enabled ? "on" : "off"}`
  $("hub-line").textContent = `hub ${topology.hub} · edges: ${topology.edges.map((e) => e.id).join(", ") || "none"}`
  const body = $("docs").querySelector("tbody")
  body.replaceChildren()
  for (const d of docs.documents) {
    const tr = document.createElement("tr")
    tr.dataset.doc = d.doc
    if (d.doc === state.doc) tr.className = "selected"
    cell(tr, d.doc, "mono")
    cell(tr, shortHeads(d.heads))
    cell(tr, String(d.replicas))
    cell(tr, `${d.in_sync}/${d.replicas}`, d.in_sync === d.replicas ? "good" : "")
    cell(tr, String(d.divergent), d.divergent ? "bad" : "")
    cell(tr, ms(d.max_lag_ms))
    cell(tr, d.last_heard_ms_ago == null ? "–" : `${ms(d.last_heard_ms_ago)} ago`)
    cell(tr, homeOf(d.doc))
    tr.addEventListener("click", () => openDoc(d.doc))
    body.appendChild(tr)
  }
  $("docs-empty").hidden = docs.documents.length > 0
}

// ----- one document ---------------------------------------------------------

async function openDoc(doc) {
  state.doc = doc
  state.a = state.b = null
  state.heads = ""
  $("detail").hidden = false
  $("d-id").textContent = doc
  $("diff").replaceChildren()
  $("status").textContent = ""
  for (const tr of $("docs").querySelectorAll("tbody tr")) tr.className = tr.dataset.doc === doc ? "selected" : ""
  await refreshDoc()
  await showVersion(null)
}

async function refreshDoc() {
  const doc = state.doc
  if (!doc) return
  const enc = encodeURIComponent(doc)
  let replicas
  try {
    replicas = await api(`/api/docs/${enc}/replicas`)
  } catch (e) {
    if (e.status !== 404) throw e
    replicas = { heads: [], replicas: [] } // not open at the hub now
  }
  $("d-heads").textContent = shortHeads(replicas.heads)
  $("d-home").textContent = homeOf(doc)
  const pin = (state.placement?.pins ?? []).find((p) => p.doc === doc)
  $("d-pin").textContent = pin ? `(pinned to ${pin.to})` : ""
  const body = $("replicas").querySelector("tbody")
  body.replaceChildren()
  for (const r of replicas.replicas) {
    const tr = document.createElement("tr")
    cell(tr, replicaName(r))
    cell(tr, shortHeads(r.heads))
    cell(tr, r.in_sync ? "yes" : "no", r.in_sync ? "good" : "")
    cell(tr, ms(r.apart_ms))
    cell(tr, r.last_heard_ms_ago == null ? "–" : `${ms(r.last_heard_ms_ago)} ago`)
    cell(tr, ms(r.lag_ms))
    cell(tr, r.divergent ? "DIVERGENT" : "no", r.divergent ? "bad" : "")
    cell(tr, String(r.repairs))
    body.appendChild(tr)
  }
  $("replicas-empty").hidden = replicas.replicas.length > 0
  refreshMoves(doc)
  // The history again only when the heads moved.
  const heads = replicas.heads.join(",")
  if (heads !== state.heads || !state.history.length) {
    state.heads = heads
    state.history = await api(`/api/docs/${enc}/history`)
    renderHistory()
  }
}

function refreshMoves(doc) {
  const p = state.placement ?? {}
  const rows = []
  for (const m of p.recent_moves ?? []) {
    if (m.doc === doc) rows.push({ at: m.at_ms, from: homeName(m.from), to: homeName(m.to), why: m.reason, handoff: "" })
  }
  for (const h of p.recent_handoffs ?? []) {
    if (h.doc === doc) rows.push({ at: h.at_ms, from: homeName(h.from), to: homeName(h.to), why: "announced", handoff: `${h.took_ms} ms` })
  }
  for (const h of p.handoffs ?? []) {
    if (h.doc === doc) rows.push({ at: null, from: homeName(h.from), to: homeName(h.to), why: `in progress (${h.status})`, handoff: `${h.pending_ms} ms so far` })
  }
  const body = $("moves").querySelector("tbody")
  body.replaceChildren()
  for (const r of rows) {
    const tr = document.createElement("tr")
    cell(tr, r.at == null ? "now" : `${ms(p.now_ms - r.at)} ago`)
    cell(tr, r.from)
    cell(tr, r.to)
    cell(tr, typeof r.why === "string" ? r.why : JSON.stringify(r.why))
    cell(tr, r.handoff)
    body.appendChild(tr)
  }
  $("moves-empty").hidden = rows.length > 0
}

function renderHistory() {
  const body = $("history").querySelector("tbody")
  body.replaceChildren()
  state.history.forEach((c, i) => {
    const tr = document.createElement("tr")
    tr.dataset.hash = c.hash
    for (const side of ["a", "b"]) {
      const td = document.createElement("td")
      const radio = document.createElement("input")
      radio.type = "radio"
      radio.name = `pick-${side}`
      radio.className = `pick-${side}`
      radio.checked = state[side] === c.hash
      radio.addEventListener("change", () => (state[side] = c.hash))
      td.appendChild(radio)
      tr.appendChild(td)
    }
    cell(tr, String(i + 1))
    cell(tr, short(c.hash)).title = c.hash
    cell(tr, short(c.actor)).title = c.actor
    cell(tr, String(c.seq))
    cell(tr, c.time ? new Date(c.time * 1000).toLocaleString() : "–")
    cell(tr, c.message ?? "")
    const actions = document.createElement("td")
    const view = document.createElement("button")
    view.type = "button"
    view.className = "view"
    view.textContent = "View"
    view.addEventListener("click", () => showVersion(c.hash).catch(showError))
    const back = document.createElement("button")
    back.type = "button"
    back.className = "rollback danger"
    back.textContent = "Roll back to here"
    back.addEventListener("click", () => rollback(c.hash).catch(showError))
    actions.append(view, " ", back)
    tr.appendChild(actions)
    body.appendChild(tr)
  })
}

/** Shows the document at `hash` (null: now). */
async function showVersion(hash) {
  const enc = encodeURIComponent(state.doc)
  const value = await api(hash ? `/api/docs/${enc}?at=${hash}` : `/api/docs/${enc}`)
  $("version-title").textContent = hash ? `As it was at ${short(hash)}` : "Now"
  $("version").textContent = JSON.stringify(value, null, 2)
  $("version").dataset.at = hash ?? ""
}

async function rollback(hash) {
  if (!confirm(`Roll ${state.doc} back to its version at ${short(hash)}? This is a new change that every replica gets.`)) return
  $("status").textContent = "rolling back…"
  const enc = encodeURIComponent(state.doc)
  const done = await api(`/api/docs/${enc}/rollback?to=${hash}`, { method: "POST" })
  $("status").textContent = `rolled back to ${short(hash)}: new heads ${shortHeads(done.heads)}`
  $("version-title").textContent = "Now (after the rollback)"
  $("version").textContent = JSON.stringify(done.value, null, 2)
  $("version").dataset.at = ""
  await refreshDoc()
}

// ----- diff between two versions --------------------------------------------

/** Leaves of a JSON value by path (objects and arrays walked). */
function leaves(value, path = [], out = new Map()) {
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value)
    if (!entries.length) out.set(path.join("."), Array.isArray(value) ? "[]" : "{}")
    for (const [k, v] of entries) leaves(v, [...path, k], out)
  } else {
    out.set(path.join("."), JSON.stringify(value))
  }
  return out
}

async function compare() {
  if (!state.a || !state.b) {
    $("status").textContent = "pick a version A and a version B first"
    return
  }
  const enc = encodeURIComponent(state.doc)
  const [a, b] = await Promise.all([api(`/api/docs/${enc}?at=${state.a}`), api(`/api/docs/${enc}?at=${state.b}`)])
  const la = leaves(a)
  const lb = leaves(b)
  const list = $("diff")
  list.replaceChildren()
  const add = (cls, text) => {
    const li = document.createElement("li")
    li.className = cls
    li.textContent = text
    list.appendChild(li)
  }
  for (const [path, v] of lb) {
    if (!la.has(path)) add("added", `+ ${path || "(root)"} = ${v}`)
    else if (la.get(path) !== v) add("changed", `~ ${path || "(root)"}: ${la.get(path)} → ${v}`)
  }
  for (const [path, v] of la) if (!lb.has(path)) add("removed", `- ${path || "(root)"} (was ${v})`)
  if (!list.children.length) add("", "no difference")
  $("diff-title").textContent = `Differences ${short(state.a)} → ${short(state.b)}`
}

// ----- wiring ---------------------------------------------------------------

async function refresh() {
  try {
    await refreshOverview()
    await refreshDoc()
    showError(null)
  } catch (e) {
    if (e.status !== 401 && e.status !== 403) showError(e)
  }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault()
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim())
  $("token-input").value = ""
  $("token-form").hidden = true
  refresh()
})
$("token-button").addEventListener("click", () => askToken("The admin token for this hub's operator routes:"))
$("open-form").addEventListener("submit", (e) => {
  e.preventDefault()
  const id = $("open-input").value.trim().replace(/^automerge:/, "")
  if (id) openDoc(id).catch(showError)
})
$("d-close").addEventListener("click", () => {
  state.doc = null
  $("detail").hidden = true
})
$("diff-button").addEventListener("click", () => compare().catch(showError))

setInterval(() => {
  if ($("auto").checked) refresh()
}, 2000)
refresh().then(() => (state.ready = true))
