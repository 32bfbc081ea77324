// @meridian/client/repo for Node: loads the wasm module from disk
// (`node.js`) before `repo.js` needs it.
import "./node.js";

export * from "./repo.js";
