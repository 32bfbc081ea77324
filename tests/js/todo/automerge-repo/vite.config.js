// Build settings shared by both versions of the app (identical files).
// automerge's browser entry imports its .wasm as an ES module, which Vite
// does not bundle without a plugin; without the "browser" condition it
// resolves to automerge's entry with the wasm inlined. Meridian's package
// resolves the same way either way ("default": the browser build).
export default {
  resolve: { conditions: ["module", "development|production"] },
  build: { target: "es2022", chunkSizeWarningLimit: 8192 },
  logLevel: "warn",
}
