// Node 20 imports the package with no bundler and uses it as a
// memory-only client (Node has no IndexedDB).
import { test } from "node:test";
import assert from "node:assert/strict";

const pkg = new URL("../../pkg/node.js", import.meta.url);

test("the package imports in Node and edits a document", { timeout: 30000 }, async () => {
  const { Client, Counter, parseAutomergeUrl } = await import(pkg);
  const client = await Client.open({ urls: [] });
  assert.equal(client.connectionState, "local");
  assert.equal(client.storageId, undefined);

  const doc = await client.create({ title: "hi", tags: [], likes: new Counter(0) });
  assert.match(doc.url, /^automerge:/);
  assert.equal(parseAutomergeUrl(doc.url), doc.documentId);

  const events = [];
  const unsubscribe = doc.subscribe((e) => events.push(e));
  doc.change((d) => {
    d.splice("title", 2, 0, " 👋 there");
    d.insert("tags", 0, "a");
    d.increment("likes", 2);
  }, "greet");
  doc.put(["tags", 0], "b");
  await doc.whenSaved();
  assert.deepEqual(doc.value(), { title: "hi 👋 there", tags: ["b"], likes: new Counter(2) });
  // "👋" is two UTF-16 code units, as in JavaScript strings.
  doc.splice("title", 3, 2, "🙂");
  assert.equal(doc.value().title, "hi 🙂 there");

  assert.ok(events.length >= 1);
  assert.ok(events[0].patches.some((p) => p.action === "splice" && p.value.includes("👋")));
  assert.equal(doc.heads().length, 1);
  const history = doc.history();
  assert.equal(history.length, 4);
  assert.equal(history[0].seq, 1);
  // The creating change carries a wall-clock time and says what it is.
  assert.equal(history[0].message, "Created");
  assert.ok(Math.abs(history[0].time - Date.now() / 1000) < 60, `creation time ${history[0].time}`);
  const greet = history.find((c) => c.message === "greet");
  assert.ok(greet, JSON.stringify(history));
  assert.ok(Math.abs(greet.time - Date.now() / 1000) < 60, `time ${greet.time}`);
  unsubscribe();

  // Finding a document this client holds needs no network.
  const again = await client.find(doc.url);
  assert.deepEqual(again.value(), doc.value());
  await client.close();
  assert.equal(client.connectionState, "closed");
  assert.throws(() => doc.put("late", 1), /closed/);
});

test("find rejects malformed URLs, and unknown documents when there is no server", { timeout: 30000 }, async () => {
  const { Client } = await import(pkg);
  const client = await Client.open({ urls: [] });
  await assert.rejects(client.find("automerge:nope"));
  const other = await Client.open({ urls: [] });
  const elsewhere = await other.create({ only: "there" });
  await assert.rejects(client.find(elsewhere.url), /unavailable/);
  await other.close();
  await client.close();
});
