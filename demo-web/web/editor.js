// A <textarea> bound to a text field of a Meridian document.
//
// Local edits: every `input` event is turned into one splice (the smallest
// range that changed, never the whole text), so concurrent edits from
// other people merge character by character.
//
// Remote edits: the binding remembers the heads its view shows; when the
// document changes it asks for `doc.diff(viewHeads, heads)` and applies
// those patches to the textarea in order, moving the local caret and
// selection with them. Text positions are UTF-16 code units throughout,
// like JavaScript strings, so emoji and other non-BMP text work.
//
// Remote cursors are drawn on a mirror layer behind the (transparent)
// textarea that wraps text exactly like it.

/** The smallest splice turning `a` into `b`, never splitting a surrogate pair. */
export function spliceBetween(a, b) {
  let start = 0;
  const max = Math.min(a.length, b.length);
  while (start < max && a.charCodeAt(start) === b.charCodeAt(start)) start++;
  // Do not end the common prefix between the halves of a surrogate pair.
  if (start > 0 && isHigh(a.charCodeAt(start - 1))) start--;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a.charCodeAt(endA - 1) === b.charCodeAt(endB - 1)) {
    endA--;
    endB--;
  }
  if (endA < a.length && isLow(a.charCodeAt(endA))) {
    endA++;
    endB++;
  }
  return { index: start, deleteCount: endA - start, insert: b.slice(start, endB) };
}

const isHigh = (c) => c >= 0xd800 && c <= 0xdbff;
const isLow = (c) => c >= 0xdc00 && c <= 0xdfff;

/** Moves a position across one edit: inserting `ins` chars at `at`, deleting `del` chars at `at`. */
function shift(pos, at, del, ins) {
  if (pos <= at) return pos;
  if (pos <= at + del) return at + ins;
  return pos - del + ins;
}

export class TextBinding {
  /**
   * @param {HTMLTextAreaElement | HTMLInputElement} textarea
   * @param {HTMLElement | null} mirror the layer behind the textarea for remote cursors
   * @param {import('/pkg/index.js').Doc} doc
   * @param {string} field the text field of the document root
   * @param {{ locked?: boolean }} options `locked`: never editable (a read-only link)
   */
  constructor(textarea, mirror, doc, field, { onLocalEdit, onRemoteEdit, locked = false } = {}) {
    this.ta = textarea;
    this.mirror = mirror;
    this.doc = doc;
    this.field = field;
    this.onLocalEdit = onLocalEdit ?? (() => {});
    this.onRemoteEdit = onRemoteEdit ?? (() => {});
    this.locked = locked;
    this.readOnly = false;
    this.ta.readOnly = locked;
    this.composing = false;
    this.remoteCursors = new Map(); // peer -> { name, color, anchor, head } (automerge cursors)
    this.text = this.currentText();
    this.viewHeads = doc.heads();
    this.ta.value = this.text;
    this.listeners = [];
    const on = (el, ev, fn) => {
      el.addEventListener(ev, fn);
      this.listeners.push(() => el.removeEventListener(ev, fn));
    };
    on(textarea, "input", () => this.localInput());
    on(textarea, "compositionstart", () => (this.composing = true));
    on(textarea, "compositionend", () => {
      this.composing = false;
      this.localInput();
      this.followRemote();
    });
    on(textarea, "scroll", () => this.syncScroll());
    this.unsubscribe = doc.subscribe(() => this.followRemote());
    this.resizeObserver = new ResizeObserver(() => this.renderCursors());
    if (mirror) this.resizeObserver.observe(textarea);
    this.renderCursors();
  }

  destroy() {
    this.ta.readOnly = false;
    this.unsubscribe();
    this.resizeObserver.disconnect();
    this.listeners.forEach((off) => off());
  }

  currentText() {
    const v = this.doc.value()[this.field];
    return typeof v === "string" ? v : "";
  }

  /** Shows an earlier version (read-only) instead of the live text, or the live text again with `null`. */
  showVersion(text) {
    this.readOnly = text !== null;
    this.ta.readOnly = this.readOnly || this.locked;
    this.ta.classList.toggle("preview", this.readOnly);
    if (this.readOnly) {
      this.ta.value = text;
    } else {
      this.text = this.currentText();
      this.viewHeads = this.doc.heads();
      this.ta.value = this.text;
    }
    this.renderCursors();
  }

  localInput() {
    if (this.readOnly || this.locked) return;
    const next = this.ta.value;
    if (next === this.text) return;
    const edit = spliceBetween(this.text, next);
    const heads = this.doc.heads();
    // Subscribers are called from inside `splice`: our own change must not
    // be replayed onto the view that already shows it.
    this.splicing = true;
    try {
      this.applyLocal(edit, heads, next);
    } finally {
      this.splicing = false;
    }
    this.viewHeads = this.doc.heads();
    this.onLocalEdit(edit);
    this.renderCursors();
  }

  applyLocal(edit, heads, next) {
    if (sameHeads(heads, this.viewHeads)) {
      this.doc.splice(this.field, edit.index, edit.deleteCount, edit.insert);
      this.text = next;
    } else {
      // Remote edits reached the document but not the view (they wait
      // while an IME composition is open): move our splice across them,
      // apply it, and show the merged text with the caret after our edit.
      let [from, to] = [edit.index, edit.index + edit.deleteCount];
      for (const p of this.doc.diff(this.viewHeads, heads)) {
        const e = fieldEdit(p, this.field);
        if (!e) continue;
        from = shift(from, e.at, e.del, e.ins);
        to = Math.max(from, shift(to, e.at, e.del, e.ins));
      }
      this.doc.splice(this.field, from, to - from, edit.insert);
      this.text = this.currentText();
      this.ta.value = this.text;
      const caret = from + edit.insert.length;
      this.ta.setSelectionRange(caret, caret);
    }
  }

  /** Applies what changed in the document since the view's heads. */
  followRemote() {
    if (this.composing || this.splicing) return; // applied at compositionend / by localInput
    const heads = this.doc.heads();
    if (sameHeads(heads, this.viewHeads)) {
      this.renderCursors();
      return;
    }
    const patches = this.doc.diff(this.viewHeads, heads);
    this.viewHeads = heads;
    if (this.readOnly) {
      this.text = this.currentText();
      this.renderCursors();
      return;
    }
    let text = this.text;
    let { selectionStart: s, selectionEnd: e, selectionDirection: dir } = this.ta;
    const scroll = this.ta.scrollTop;
    let touched = false;
    for (const p of patches) {
      if (p.path[0] !== this.field) continue;
      touched = true;
      if (p.path.length === 1) {
        // The whole field was replaced (or created): no finer information.
        const next = this.currentText();
        const d = spliceBetween(text, next);
        s = shift(s, d.index, d.deleteCount, d.insert.length);
        e = shift(e, d.index, d.deleteCount, d.insert.length);
        text = next;
        continue;
      }
      const d = fieldEdit(p, this.field);
      if (!d) continue;
      text = text.slice(0, d.at) + (p.value ?? "") + text.slice(d.at + d.del);
      s = shift(s, d.at, d.del, d.ins);
      e = shift(e, d.at, d.del, d.ins);
    }
    if (!touched) return;
    const truth = this.currentText();
    if (text !== truth) {
      // Never show something other than the document.
      console.warn("meridian-demo: patch replay diverged; resetting the view", { text, truth });
      text = truth;
      s = Math.min(s, text.length);
      e = Math.min(e, text.length);
    }
    this.text = text;
    this.ta.value = text;
    if (document.activeElement === this.ta) this.ta.setSelectionRange(s, e, dir);
    else this.ta.setSelectionRange(s, e);
    this.ta.scrollTop = scroll;
    this.renderCursors();
    this.onRemoteEdit(text);
  }

  /** Our selection as stable automerge cursors, for presence. */
  selectionCursors() {
    const len = this.text.length;
    const { selectionStart: s, selectionEnd: e, selectionDirection: dir } = this.ta;
    const [anchor, head] = dir === "backward" ? [e, s] : [s, e];
    return { anchor: this.cursorAt(anchor, len), head: this.cursorAt(head, len) };
  }

  cursorAt(index, len) {
    // A cursor names a character; the end of the text has none.
    if (index >= len) return { end: true };
    try {
      return { c: this.doc.cursor(this.field, index) };
    } catch {
      return { i: index };
    }
  }

  indexOf(pos) {
    const len = this.text.length;
    if (!pos || pos.end) return len;
    if (pos.c) {
      try {
        return Math.min(this.doc.cursorIndex(this.field, pos.c), len);
      } catch {
        return len;
      }
    }
    return Math.min(pos.i ?? len, len);
  }

  /** A remote caret's name tag shows for this long after it moved, then fades (so it never hides the line above for long). */
  static LABEL_MS = 2000;

  setRemoteCursor(peer, cursor) {
    if (cursor) {
      const before = this.remoteCursors.get(peer);
      const where = (c) => JSON.stringify([c.anchor, c.head, c.name]);
      const moved = !before || where(before) !== where(cursor);
      this.remoteCursors.set(peer, { ...cursor, movedAt: moved ? Date.now() : before.movedAt });
      if (moved) {
        clearTimeout(this.labelTimer);
        this.labelTimer = setTimeout(() => this.renderCursors(), TextBinding.LABEL_MS + 50);
      }
    } else this.remoteCursors.delete(peer);
    this.renderCursors();
  }

  /** Forgets every remote caret (this page went offline: they are stale). */
  clearRemoteCursors() {
    this.remoteCursors.clear();
    this.renderCursors();
  }

  syncScroll() {
    if (!this.mirror) return;
    this.mirror.scrollTop = this.ta.scrollTop;
    this.mirror.scrollLeft = this.ta.scrollLeft;
  }

  /** Draws remote selections and carets on the mirror layer. */
  renderCursors() {
    if (!this.mirror) return;
    const text = this.ta.value;
    const marks = []; // { at, kind: "start"|"end"|"caret", peer }
    if (!this.readOnly) {
      for (const [peer, c] of this.remoteCursors) {
        const a = this.indexOf(c.anchor);
        const h = this.indexOf(c.head);
        const [from, to] = a <= h ? [a, h] : [h, a];
        if (from < to) {
          marks.push({ at: from, kind: "start", peer, c });
          marks.push({ at: to, kind: "end", peer, c });
        }
        marks.push({ at: h, kind: "caret", peer, c });
      }
    }
    marks.sort((x, y) => x.at - y.at || (x.kind === "end" ? -1 : 1));
    const frag = document.createDocumentFragment();
    const open = new Map();
    let pos = 0;
    const emit = (upto) => {
      if (upto <= pos) return;
      const chunk = text.slice(pos, upto);
      const span = document.createElement("span");
      span.textContent = chunk;
      const colors = [...open.values()];
      if (colors.length) span.style.background = colors[colors.length - 1] + "33";
      frag.append(span);
      pos = upto;
    };
    for (const m of marks) {
      emit(m.at);
      if (m.kind === "start") open.set(m.peer, m.c.color);
      else if (m.kind === "end") open.delete(m.peer);
      else {
        const caret = document.createElement("span");
        caret.className = "remote-caret";
        caret.style.setProperty("--c", m.c.color);
        caret.dataset.peer = m.peer;
        const label = document.createElement("span");
        label.className = "remote-label";
        label.classList.toggle("quiet", Date.now() - (m.c.movedAt ?? 0) > TextBinding.LABEL_MS);
        label.textContent = m.c.name;
        caret.append(label);
        frag.append(caret);
      }
    }
    emit(text.length);
    // A trailing newline needs something after it to take up a line.
    frag.append(document.createTextNode("\u200b"));
    this.mirror.replaceChildren(frag);
    this.syncScroll();
  }
}

/** A text patch on `field` as { at, del, ins }, or null. */
function fieldEdit(p, field) {
  if (p.path[0] !== field || p.path.length !== 2) return null;
  if (p.action === "splice") return { at: p.path[1], del: 0, ins: p.value.length };
  if (p.action === "del") return { at: p.path[1], del: p.length ?? 1, ins: 0 };
  return null;
}

function sameHeads(a, b) {
  return a.length === b.length && a.every((h) => b.includes(h));
}
