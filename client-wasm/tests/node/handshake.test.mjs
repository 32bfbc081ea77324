// An edge that accepts the WebSocket but never answers `join` must not hang
// the client: after `handshakeTimeoutMs` it drops the socket and retries
// with backoff.
import { test } from "node:test";
import assert from "node:assert/strict";

const pkg = new URL("../../pkg/node.js", import.meta.url);
// `ws` comes with the interop tests' npm packages (tests/js).
const ws = new URL("../../../tests/js/node_modules/ws/wrapper.mjs", import.meta.url);

test("a silent server is dropped after the handshake timeout and retried", { timeout: 30000 }, async () => {
  const { Client } = await import(pkg);
  const { WebSocket, WebSocketServer } = await import(ws);
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((r) => server.once("listening", r));
  const opened = [];
  const closed = [];
  server.on("connection", (socket) => {
    opened.push(Date.now());
    socket.on("close", () => closed.push(Date.now()));
    // Never answer.
  });
  const url = `ws://127.0.0.1:${server.address().port}/sync`;
  const client = await Client.open({ urls: [url], dbName: null, WebSocket, handshakeTimeoutMs: 300, minBackoffMs: 20, maxBackoffMs: 50 });
  try {
    const states = [];
    client.onConnectionStateChange((s) => states.push(s));
    const deadline = Date.now() + 5000;
    while (opened.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(opened.length >= 3, `the client retried: ${opened.length} connections`);
    assert.ok(closed.length >= 2, "the client closed the silent sockets");
    assert.ok(opened[1] - opened[0] >= 250, `waited for the timeout before giving up: ${opened[1] - opened[0]} ms`);
    assert.ok(states.includes("backoff"), JSON.stringify(states));
    assert.ok(!states.includes("connected"), JSON.stringify(states));
  } finally {
    await client.close();
    for (const c of server.clients) c.terminate();
    server.close();
  }
});
