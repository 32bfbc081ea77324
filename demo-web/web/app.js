// The Meridian collaborative editor: documents in IndexedDB, synced through
// this region's edge with @meridian/client.
import { Client } from "/pkg/index.js";
import { TextBinding } from "/editor.js";

const $ = (id) => document.getElementById(id);
const NAMES = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Alan", "Radia", "Edsger", "Hedy"];
const COLORS = ["#e8590c", "#2f9e44", "#1c7ed6", "#ae3ec9", "#f08c00", "#0c8599", "#d6336c", "#5f3dc4"];
const PRESENCE_EVERY_MS = 3000;
const PRESENCE_TTL_MS = 10000;
const INFO_EVERY_MS = 2000;

const config = await (await fetch("/config.json")).json();
const store = (key, fallback) => {
  try {
    return JSON.parse(localStorage.getItem(`meridian-demo:${key}`)) ?? fallback;
  } catch {
    return fallback;
  }
};
const save = (key, value) => localStorage.setItem(`meridian-demo:${key}`, JSON.stringify(value));

const me = store("me", null) ?? {
  name: NAMES[Math.floor(Math.random() * NAMES.length)],
  color: COLORS[Math.floor(Math.random() * COLORS.length)],
};
save("me", me);

const docInHash = () => location.hash.match(/automerge:[1-9A-HJ-NP-Za-km-z]+/)?.[0] ?? null;
/** A read-only link (`?readonly#automerge:…`): this page may only watch that one document. */
const readOnly = new URLSearchParams(location.search).has("readonly");
const viewed = readOnly ? docInHash() : null;
/** With auth on, the site plays the app's backend: it mints this page's token (again on every reconnect). */
async function getToken() {
  const r = await fetch(viewed ? `/token?read=${encodeURIComponent(viewed)}` : "/token", { cache: "no-store" });
  if (!r.ok) throw new Error(`the site gave no token (${r.status}): ${await r.text()}`);
  return (await r.json()).token;
}
const client = await Client.open({
  urls: [config.edge.ws],
  // A viewer keeps nothing on this device.
  dbName: readOnly ? null : "meridian-demo",
  ...(config.auth ? { getToken } : {}),
});
document.body.classList.toggle("read-only", readOnly);

/** Everything about the open document; replaced by `openDoc`. */
let current = null;
const peers = new Map(); // peerId -> { name, color, region, seen }
const info = { rttMs: null, edge: null, error: null };

// ---------------------------------------------------------------- top bar

$("region").textContent = `${config.region} edge`;
$("my-name").value = me.name;
$("my-color").style.background = me.color;
$("my-name").addEventListener("change", () => {
  me.name = $("my-name").value.trim() || me.name;
  save("me", me);
  sendPresence();
});
/** Set once the connection is closed by the switch (the pill says "offline" from then on). */
let offlineByYou = false;
$("offline-switch").addEventListener("change", async (e) => {
  if (e.target.checked) {
    // The others drop this page's cursor and avatar now, not when it times
    // out: the goodbye goes out before the connection closes.
    current?.doc.broadcast({ kind: "leave", peer: client.peerId });
    await new Promise((r) => setTimeout(r, 100));
    client.goOffline();
    offlineByYou = true;
    // What the edge said last is stale now: show nothing rather than old figures.
    Object.assign(info, { rttMs: null, edge: null, error: null, placement: null });
    peers.clear();
    current?.text.clearRemoteCursors?.();
    renderPresence();
  } else {
    offlineByYou = false;
    client.goOnline();
    sendPresence();
  }
  renderConnection();
  renderPlacement();
});
client.onConnectionStateChange(() => renderConnection());

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}
window.addEventListener("unhandledrejection", (e) => toast(`Error: ${e.reason?.message ?? e.reason}`));

// ------------------------------------------------------------- documents

function docList() {
  return store("docs", []);
}

function remember(doc) {
  const title = (doc.value().title ?? "").trim() || "Untitled";
  const list = docList().filter((d) => d.url !== doc.url);
  list.unshift({ url: doc.url, title, at: Date.now() });
  save("docs", list.slice(0, 50));
  renderDocList();
}

function renderDocList() {
  const ul = $("doc-list");
  ul.replaceChildren(
    ...docList().map((d) => {
      const li = document.createElement("li");
      li.classList.toggle("active", current?.doc.url === d.url);
      li.innerHTML = `<span class="t"></span><span class="id"></span>`;
      li.querySelector(".t").textContent = d.title;
      li.querySelector(".id").textContent = d.url.replace("automerge:", "");
      li.onclick = () => (location.hash = d.url);
      return li;
    }),
  );
  if (!ul.children.length) ul.innerHTML = `<li class="muted small">No documents yet</li>`;
}

$("new-doc").onclick = async () => {
  const doc = await client.create({ title: "Untitled", text: "", authors: {} });
  remember(doc);
  location.hash = doc.url;
};

$("open-form").onsubmit = (e) => {
  e.preventDefault();
  const raw = $("open-url").value.trim();
  const m = raw.match(/automerge:[1-9A-HJ-NP-Za-km-z]+/);
  if (!m) return toast("That is not an automerge: URL or a share link");
  $("open-url").value = "";
  location.hash = m[0];
};

/** A link whose id cannot be a document (a mistyped character): retrying cannot help. */
const invalidLink = (e) => /bs58check|not a valid id|not an automerge URL/i.test(e?.message ?? "");

/** Finds a document; a document created on another edge may take a moment to reach this one. */
async function findDoc(url) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await client.find(url);
    } catch (e) {
      if (invalidLink(e)) throw new Error(`this is not a valid document link: ${e.message.replace(/^.*?(not a valid id \(bs58check\): |not valid bs58check: )/, "")}`);
      if (attempt >= 10) throw e;
      setBanner(`Looking for the document on the hub… (${e.message})`);
      await new Promise((r) => setTimeout(r, 500 * Math.min(attempt + 1, 4)));
    }
  }
}

async function openDoc(url) {
  if (current?.doc.url === url) return;
  const previous = current?.doc.url;
  closeDoc();
  let doc;
  try {
    doc = await findDoc(url);
  } catch (e) {
    // Nothing is open: the editor shows nothing and takes no typing.
    const back = previous ? [["Back to the previous document", () => (location.hash = previous)]] : [];
    setBanner(`Could not open ${url}: ${e.message}`, back);
    return;
  }
  setBanner(readOnly ? "Read-only link: you see every change live, and cannot edit." : null);
  // A document made elsewhere (another app, the CLI) gets the editor's fields.
  const fields = doc.value();
  for (const [field, initial] of [["title", "Untitled"], ["text", ""]]) {
    if (!readOnly && typeof fields[field] !== "string") doc.put(field, initial);
  }
  if (!readOnly && (typeof fields.authors !== "object" || fields.authors === null)) doc.put("authors", {});
  const c = { doc, edits: 0, saved: 0, synced: 0, previewing: null, cleanup: [] };
  current = c;
  c.text = new TextBinding($("editor"), $("mirror"), doc, "text", {
    onLocalEdit: () => edited(c),
    onRemoteEdit: (text) => document.dispatchEvent(new CustomEvent("meridian:text", { detail: { text, at: Date.now() } })),
    locked: readOnly,
  });
  c.title = new TextBinding($("title"), null, doc, "title", { onLocalEdit: () => edited(c), locked: readOnly });
  c.cleanup.push(() => c.text.destroy(), () => c.title.destroy());
  c.cleanup.push(doc.subscribe(() => changed(c)));
  c.cleanup.push(doc.onEphemeral((e) => presence(e)));
  const tick = setInterval(() => {
    sendPresence();
    expirePeers();
  }, PRESENCE_EVERY_MS);
  c.cleanup.push(() => clearInterval(tick));
  if (!readOnly) remember(doc);
  renderAll();
  sendPresence();
  $("editor").focus();
  window.meridianDemo.opened?.(doc.url);
}

function closeDoc() {
  if (!current) return;
  current.doc.broadcast({ kind: "leave", peer: client.peerId });
  current.cleanup.forEach((f) => f());
  current = null;
  peers.clear();
  // No document: nothing to show or type into until the next one opens.
  for (const id of ["editor", "title"]) {
    $(id).value = "";
    $(id).readOnly = true;
  }
  $("mirror").replaceChildren();
  renderAll();
}

function edited(c) {
  const n = ++c.edits;
  noteAuthor(c);
  window.meridianDemo.lastLocalEditAt = Date.now();
  c.doc.whenSaved().then(() => {
    c.saved = Math.max(c.saved, n);
    renderSaveState();
  });
  c.doc.whenSynced().then(() => {
    c.synced = Math.max(c.synced, n);
    renderSaveState();
  });
  renderSaveState();
  sendPresence();
  scheduleHistory();
}

/**
 * The history names people, not actor ids: the first local change tells
 * this page its actor (the change it just made is the document's last), and
 * the document keeps `authors[actor] = { name, color }` for everyone.
 */
function noteAuthor(c) {
  if (c.actor || readOnly) return;
  c.actor = c.doc.history().at(-1)?.actor ?? null;
  const known = c.doc.value().authors?.[c.actor];
  if (c.actor && (known?.name !== me.name || known?.color !== me.color)) {
    // `authors` is made with the document (or when it is first opened here).
    if (typeof c.doc.value().authors === "object") c.doc.change((d) => d.put(["authors", c.actor], { name: me.name, color: me.color }));
  }
}

function changed(c) {
  if (c !== current) return;
  scheduleHistory();
  const list = docList();
  const title = (c.doc.value().title ?? "").trim() || "Untitled";
  if (list[0]?.url === c.doc.url && list[0].title !== title) remember(c.doc);
}

window.addEventListener("hashchange", () => route());
window.addEventListener("beforeunload", () => current?.doc.broadcast({ kind: "leave", peer: client.peerId }));

async function route() {
  const linked = docInHash();
  if (linked) return openDoc(linked);
  if (readOnly) return setBanner("This read-only link names no document (it ends with #automerge:…).");
  const recent = docList()[0];
  if (recent) {
    location.replace(`#${recent.url}`);
    return openDoc(recent.url);
  }
  const doc = await client.create({
    title: "Welcome to Meridian",
    authors: {},
    text:
      "This document lives in your browser (IndexedDB) and syncs through your region's edge to the hub.\n\n" +
      "Open a share link from the right in another region's tab and type in both. " +
      "Try “Go offline”, edit on both sides, and come back online: the edits merge. 🚀\n",
  });
  remember(doc);
  location.replace(`#${doc.url}`);
  return openDoc(doc.url);
}

// -------------------------------------------------------------- presence

let presenceQueued = false;
function sendPresence() {
  if (!current || presenceQueued) return;
  presenceQueued = true;
  setTimeout(() => {
    presenceQueued = false;
    if (!current) return;
    const { anchor, head } = current.previewing ? {} : current.text.selectionCursors();
    current.doc.broadcast({ kind: "presence", peer: client.peerId, name: me.name, color: me.color, region: config.region, anchor, head });
  }, 30);
}
for (const ev of ["keyup", "mouseup", "focus", "select"]) $("editor").addEventListener(ev, sendPresence);
document.addEventListener("selectionchange", () => {
  if (document.activeElement === $("editor")) sendPresence();
});

function presence({ message: m }) {
  if (!m || typeof m !== "object" || !m.peer || m.peer === client.peerId || !current) return;
  if (m.kind === "leave") {
    peers.delete(m.peer);
    current.text.setRemoteCursor(m.peer, null);
  } else if (m.kind === "presence") {
    // Two people with one colour: the one with the larger peer id takes a free one.
    if (validColor(m.color) === me.color && client.peerId > m.peer) takeFreeColor([m.color]);
    peers.set(m.peer, { name: String(m.name ?? "someone").slice(0, 24), color: validColor(m.color), region: m.region, seen: Date.now() });
    current.text.setRemoteCursor(m.peer, m.anchor || m.head ? { name: m.name, color: validColor(m.color), anchor: m.anchor, head: m.head } : null);
  }
  renderPresence();
}

/** A colour no one present uses (besides `taken`); told to the others. */
function takeFreeColor(taken) {
  const used = new Set([...taken, ...[...peers.values()].map((p) => p.color)]);
  const free = COLORS.filter((c) => !used.has(c));
  me.color = free[Math.floor(Math.random() * free.length)] ?? me.color;
  save("me", me);
  $("my-color").style.background = me.color;
  if (current?.actor) noteAuthor({ ...current, actor: null });
  sendPresence();
}

const validColor = (c) => (typeof c === "string" && /^#[0-9a-f]{6}$/i.test(c) ? c : "#888888");

function expirePeers() {
  const now = Date.now();
  for (const [peer, p] of peers) {
    if (now - p.seen > PRESENCE_TTL_MS) {
      peers.delete(peer);
      current?.text.setRemoteCursor(peer, null);
    }
  }
  renderPresence();
}

function renderPresence() {
  const all = [{ name: me.name, color: me.color, region: config.region, you: true }, ...peers.values()];
  $("presence").replaceChildren(
    ...all.map((p) => {
      const a = document.createElement("span");
      a.className = "avatar";
      a.style.background = p.color;
      a.textContent = p.name.slice(0, 2);
      a.title = `${p.name}${p.you ? " (you)" : ""} · ${p.region ?? "?"} edge`;
      return a;
    }),
  );
}

// ------------------------------------------------------ connection panel

async function pollInfo() {
  if ($("offline-switch").checked) {
    info.rttMs = null;
  } else {
    const t0 = performance.now();
    try {
      const r = await fetch(`${config.edge.http}/info`, { cache: "no-store" });
      info.edge = await r.json();
      info.rttMs = performance.now() - t0;
      info.error = null;
    } catch (e) {
      info.rttMs = null;
      info.error = "edge unreachable";
    }
  }
  renderConnection();
  renderPlacement();
}
setInterval(pollInfo, INFO_EVERY_MS);

function stateLabel() {
  const s = client.connectionState;
  if (offlineByYou) return ["offline", "offline (by you)"];
  if (s === "backoff" || (s === "connecting" && current?.everConnected)) return ["reconnecting", "reconnecting"];
  if (s === "connected" && current) current.everConnected = true;
  return [s, s];
}

function renderConnection() {
  const [state, label] = stateLabel();
  $("conn-pill").dataset.state = state;
  $("conn-text").textContent = label === "connected" ? `online · ${config.region}` : label;
  const hub = info.edge?.hub;
  const rows = [
    ["State", label],
    ["Edge", `${config.region} · ${config.edge.ws}`],
    ["Page ↔ edge", info.rttMs == null ? (info.error ?? "—") : `${info.rttMs.toFixed(1)} ms (HTTP round trip)`],
    ["Edge ↔ hub", hub ? (hub.connected ? `${hub.rttMs.toFixed(1)} ms (QUIC RTT)` : "hub unreachable") : "—"],
    ["Your peer id", client.peerId],
  ];
  $("conn-facts").replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      return [dt, dd];
    }),
  );
  renderSaveState();
}

function renderSaveState() {
  const el = $("save-state");
  if (!current) return void (el.textContent = "");
  if (readOnly) return void ((el.textContent = "Read-only"), (el.className = "save-state"));
  const c = current;
  const offline = client.connectionState !== "connected";
  let text, cls;
  if (c.synced >= c.edits) [text, cls] = [`✓ Synced with the ${config.region} edge`, "synced"];
  else if (c.saved >= c.edits)
    [text, cls] = [offline ? "Saved on this device · syncs when back online" : "Saved on this device · syncing…", "pending"];
  else [text, cls] = ["Saving…", "pending"];
  el.textContent = text;
  el.className = `save-state ${cls}`;
}

// ------------------------------------------------------------ placement

/** The hub's placement view of the open document: its home, the decision behind it, its moves. */
async function pollPlacement() {
  if (!current || $("offline-switch").checked) return;
  try {
    // An operator route of the hub: the site relays it (with its admin token).
    const r = await fetch("/hub/placement", { cache: "no-store" });
    const all = await r.json();
    const mine = (m) => m.doc === current.doc.documentId;
    info.placement = {
      doc: all.documents?.find(mine) ?? null,
      movesEnabled: !!all.moves_enabled,
      // With moves on, the hand-offs that happened; otherwise the decisions.
      moves: (all.moves_enabled ? all.recent_handoffs ?? [] : all.recent_moves ?? []).filter(mine).slice(-5),
    };
  } catch {
    info.placement = null;
  }
  renderPlacement();
}
setInterval(pollPlacement, INFO_EVERY_MS);

/** A hand-off's duration: most take well under a millisecond (the new home already had every change). */
const handoffTime = (ms) =>
  ms < 1 ? "hand-off under 1 ms: the new home had every change" : `hand-off ${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms, catching up`;

const homeName = (h) => (h === "hub" ? "hub" : h?.edge ? `edge ${h.edge}` : "—");

function renderPlacement() {
  const el = $("placement");
  if (!current) return void (el.textContent = "");
  const hub = info.edge?.hub;
  const oneWay = config.linksMs?.[config.region];
  const p = info.placement?.doc;
  const moving = info.placement?.movesEnabled;
  const home = moving ? p?.announced_home : null;
  el.innerHTML = `
    <div class="route"><span class="node">this page</span>→<span class="node edge"></span>→<span class="node hubnode">hub</span></div>
    <dl class="facts">
      <dt>Home</dt><dd class="home-of-doc"></dd>
      <dt>Cloud copy</dt><dd class="hub"></dd>
      <dt>Edge ↔ hub</dt><dd class="latency"></dd>
      <dt>Hub's choice</dt><dd class="decided"></dd>
      <dt>Why</dt><dd class="why"></dd>
      <dt>Moves</dt><dd class="moves"></dd>
    </dl>
    <p class="muted small"></p>`;
  const myEdge = info.edge?.edgeId ?? config.region;
  el.querySelector(".node.edge").textContent = `edge ${myEdge}`;
  const homeEdge = home && home !== "hub" ? home.edge : null;
  if (homeEdge) {
    el.querySelector(".node.edge").classList.toggle("home", homeEdge === myEdge);
    if (homeEdge !== myEdge) el.querySelector(".route").insertAdjacentHTML("beforeend", `<span class="muted small">and</span><span class="node home"></span>`);
    const h = el.querySelector(".route .node.home:not(.edge)");
    if (h) h.textContent = `edge ${homeEdge}`;
  } else {
    el.querySelector(".node.hubnode").classList.toggle("home", moving && !!p);
  }
  el.querySelector(".home-of-doc").textContent = moving
    ? homeEdge ? `edge ${homeEdge}${homeEdge === myEdge ? " (this page's edge)" : ""}` : "hub"
    : `edge ${myEdge} (moves off)`;
  el.querySelector(".hub").textContent = hub ? `hub ${hub.addr} · ${hub.connected ? "linked" : "unreachable"}` : "—";
  el.querySelector(".latency").textContent =
    (hub?.connected ? `${hub.rttMs.toFixed(0)} ms RTT` : "—") + (oneWay != null ? ` (simulated ${oneWay} ms each way)` : "");
  el.querySelector(".decided").textContent = p ? homeName(p.home) : "no writes reported yet";
  el.querySelector(".why").textContent = p
    ? p.candidates
        .slice(0, 3)
        .map((c) => `${homeName(c.home)} ${c.cost_ms?.toFixed?.(0) ?? "?"} ms`)
        .join(" · ") + ` (${String(p.verdict?.kind ?? "").replaceAll("_", " ")})`
    : "—";
  const moves = info.placement?.moves ?? [];
  el.querySelector(".moves").textContent = moves.length
    ? moves.map((m) => `${homeName(m.from)} → ${homeName(m.to)}${m.took_ms != null ? ` (${handoffTime(m.took_ms)})` : ""}`).join(", ")
    : "none";
  el.querySelector("p").textContent = moving
    ? "The hub moves each document's home to the node nearest its writers, from measured latency; " +
      "a move happens only after the new home has caught up. Other edges sync with the home directly."
    : "The hub picks each document's home from measured latency and who writes where (advisory: moves are off).";
}

// ------------------------------------------------------------------ share

function renderShare() {
  const ul = $("share");
  if (!current) return ul.replaceChildren();
  const item = (region, kind, link) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="node"></span><a target="_blank" rel="noopener"></a><button>Copy</button>`;
    li.dataset.kind = kind;
    li.querySelector(".node").textContent = `${region} · ${kind}`;
    li.querySelector("a").href = link;
    li.querySelector("a").textContent = link;
    li.querySelector("button").onclick = () =>
      navigator.clipboard.writeText(link).then(
        () => toast("Link copied"),
        () => toast(link),
      );
    return li;
  };
  // Editors get both links; a viewer can pass on only what it has.
  ul.replaceChildren(
    ...config.sites.flatMap((s) => [
      ...(readOnly ? [] : [item(s.region, "edit", `${s.url}#${current.doc.url}`)]),
      item(s.region, "read-only", `${s.url}?readonly#${current.doc.url}`),
    ]),
  );
}

// ---------------------------------------------------------------- history

let historyQueued = null;
function scheduleHistory() {
  historyQueued ??= setTimeout(() => {
    historyQueued = null;
    renderHistory();
  }, 250);
}

/**
 * An author's changes within a minute of their previous one form one entry,
 * also while others type at the same time (their changes interleave).
 */
function versions(doc) {
  const groups = [];
  const open = new Map(); // actor -> its latest entry
  for (const c of doc.history()) {
    const last = open.get(c.actor);
    if (last && !c.message && !last.message && c.time && c.time - last.time < 60) {
      last.hash = c.hash;
      last.time = c.time;
      last.count++;
    } else {
      const g = { hash: c.hash, actor: c.actor, time: c.time, message: c.message, count: 1 };
      groups.push(g);
      open.set(c.actor, g);
    }
  }
  return groups.sort((x, y) => x.time - y.time).reverse();
}

/** Who wrote an entry: the name the document keeps for the actor (in `authors`), or "someone". */
function authorName(authors, actor) {
  const a = authors?.[actor];
  return typeof a?.name === "string" ? a.name.slice(0, 24) : `someone (${actor.slice(0, 6)})`;
}

const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString([], { hour12: false }) : "creation");
const versionName = (g) => (g.time ? `the version of ${clock(g.time)}` : "the first version");

function renderHistory() {
  const ol = $("history");
  if (!current) return ol.replaceChildren();
  const groups = versions(current.doc).slice(0, 100);
  // The document's value once per render, not once per row.
  const authors = current.doc.value().authors;
  ol.replaceChildren(
    ...groups.map((g, i) => {
      const li = document.createElement("li");
      li.classList.toggle("active", current.previewing === g.hash);
      li.innerHTML = `<span class="when"></span><span class="what"></span><span class="who"></span>`;
      li.querySelector(".when").textContent = clock(g.time);
      li.querySelector(".what").textContent = g.message ?? (!g.time ? "created" : g.count === 1 ? "1 edit" : `${g.count} edits`);
      li.querySelector(".who").textContent = `${i === 0 ? "latest · " : ""}by ${authorName(authors, g.actor)}`;
      li.dataset.hash = g.hash;
      li.onclick = () => (i === 0 ? showLive() : preview(g));
      return li;
    }),
  );
}

function preview(g) {
  const c = current;
  const old = c.doc.valueAt([g.hash]);
  c.previewing = g.hash;
  c.text.showVersion(typeof old.text === "string" ? old.text : "");
  c.title.showVersion(typeof old.title === "string" ? old.title : "");
  setBanner(`Viewing ${versionName(g)} (read-only).`, [
    ["Restore this version", () => restore(g, old)],
    ["Back to live", showLive],
  ]);
  renderHistory();
  sendPresence();
}

function showLive() {
  const c = current;
  if (!c) return;
  c.previewing = null;
  c.text.showVersion(null);
  c.title.showVersion(null);
  setBanner(null);
  renderHistory();
}

/** A new change that makes the text and title equal to an earlier version; it syncs like any edit. */
function restore(g, old) {
  const c = current;
  const now = c.doc.value();
  c.doc.change((d) => {
    for (const field of ["title", "text"]) {
      if (now[field] !== old[field]) d.updateText(field, typeof old[field] === "string" ? old[field] : "");
    }
  }, `Restored ${versionName(g)}`);
  showLive();
  edited(c);
  toast(`Restored ${versionName(g)}`);
}

function setBanner(text, actions = []) {
  const b = $("banner");
  b.hidden = !text;
  if (!text) return b.replaceChildren();
  const span = document.createElement("span");
  span.className = "grow";
  span.textContent = text;
  b.replaceChildren(
    span,
    ...actions.map(([label, fn]) => {
      const btn = document.createElement("button");
      btn.textContent = label;
      btn.onclick = fn;
      return btn;
    }),
  );
}

function renderAll() {
  renderDocList();
  renderPresence();
  renderConnection();
  renderPlacement();
  renderShare();
  renderHistory();
  $("statusline").textContent = `document ${current?.doc.documentId ?? ""}`;
}

// For the end-to-end tests (and the curious, in the console).
window.meridianDemo = { client, config, readOnly, get doc() { return current?.doc; } };
renderAll();
pollInfo();
await route();
pollPlacement();
window.meridianDemo.ready = true;
