// @meridian/client for Node: the same module as `index.js` (the browser
// entry point), with the wasm file read from the package's folder (Node's
// fetch has no file: URLs). Node 20.16 or later; Node before 22 has no
// WebSocket: pass one (`ws`) to `Client.open` / `new Repo`.
import { readFileSync } from "node:fs";
import { setLoader } from "./index.js";

setLoader(async ({ initSync }) => {
  initSync({ module: readFileSync(new URL("./meridian_client_wasm_bg.wasm", import.meta.url)) });
});

export * from "./index.js";
