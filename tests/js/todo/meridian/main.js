// The todo app of ../automerge-repo/, ported to Meridian: only the imports
// and the `new Repo(...)` options differ (diff the two files). It runs
// against a Meridian edge, with @meridian/client/repo and @meridian/react.
//
import React, { useLayoutEffect, useState } from "react"
import { createRoot } from "react-dom/client"
import { Repo, isValidAutomergeUrl } from "@meridian/client/repo"
import { RepoContext, useDocHandle, useDocument, usePresence } from "@meridian/react"

const h = React.createElement
const params = new URLSearchParams(location.search)
const syncUrl = params.get("sync") ?? "ws://127.0.0.1:3030"
const myName = params.get("name") ?? "someone"

const repo = new Repo({
  network: syncUrl,
  storage: "indexeddb",
})
window.repo = repo

function listUrl() {
  const hash = location.hash.slice(1)
  if (isValidAutomergeUrl(hash)) return hash
  const handle = repo.create({ todos: [] })
  location.hash = handle.url
  return handle.url
}

/** Who else has the list open (presence). */
function Peers({ url }) {
  const handle = useDocHandle(url)
  return handle ? h(PeersOf, { handle }) : null
}

function PeersOf({ handle }) {
  const { peerStates } = usePresence({ handle, initialState: { name: myName }, heartbeatMs: 1000 })
  const names = Object.values(peerStates.getStates())
    .map((p) => p.value.name)
    .sort()
  return h("p", { id: "peers" }, names.length ? `Also here: ${names.join(", ")}` : "Nobody else here")
}

function TodoList({ url }) {
  const [doc, changeDoc] = useDocument(url)
  const [text, setText] = useState("")
  // For the test: when React has committed a render of the document.
  useLayoutEffect(() => window.rendered?.(doc))
  if (!doc) return h("p", { id: "loading" }, "Loading…")
  const add = (e) => {
    e.preventDefault()
    if (!text.trim()) return
    changeDoc((d) => {
      d.todos.push({ text: text.trim(), done: false })
    })
    setText("")
  }
  const left = doc.todos.filter((t) => !t.done).length
  return h(
    "main",
    null,
    h("h1", null, "Todos"),
    h(
      "form",
      { onSubmit: add },
      h("input", { id: "new", value: text, placeholder: "What needs doing?", onChange: (e) => setText(e.target.value) }),
      h("button", { id: "add" }, "Add"),
    ),
    h(
      "ul",
      { id: "todos" },
      doc.todos.map((t, i) =>
        h(
          "li",
          { key: i, className: t.done ? "done" : "" },
          h("input", {
            type: "checkbox",
            checked: t.done,
            onChange: () =>
              changeDoc((d) => {
                d.todos[i].done = !d.todos[i].done
              }),
          }),
          h("span", { className: "text" }, t.text),
          h(
            "button",
            {
              className: "remove",
              onClick: () =>
                changeDoc((d) => {
                  d.todos.splice(i, 1)
                }),
            },
            "×",
          ),
        ),
      ),
    ),
    h("p", { id: "left" }, `${left} left`),
    h(Peers, { url }),
  )
}

createRoot(document.getElementById("root")).render(
  h(RepoContext.Provider, { value: repo }, h(TodoList, { url: listUrl() })),
)
