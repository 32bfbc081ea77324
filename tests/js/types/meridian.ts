// Type tests of @meridian/client, @meridian/client/repo and @meridian/react
// (issue 18): what must compile does, and every `@ts-expect-error` line must
// be an error, under `tsc --noEmit --strict` (run by the test command:
// browser_client::the_packages_types_catch_mistakes).
import { Client, Counter, ImmutableString } from "@meridian/client";
import { Repo, DocHandle, Doc, splice, updateText, isValidAutomergeUrl, Presence } from "@meridian/client/repo";
import { useDocument, useDocHandle, useHandle, useRepo, usePresence, RepoContext } from "@meridian/react";

interface Todo {
  text: string;
  done: boolean;
}
interface TodoList {
  title: string;
  todos: Todo[];
  likes: Counter;
  id: ImmutableString;
  when: Date;
  bytes: Uint8Array;
  note?: string;
}

const repo = new Repo({ network: "ws://127.0.0.1:7300/sync", storage: "indexeddb" });
const handle: DocHandle<TodoList> = repo.create<TodoList>({
  title: "Groceries",
  todos: [],
  likes: new Counter(0),
  id: new ImmutableString("g1"),
  when: new Date(),
  bytes: new Uint8Array([1]),
});

// The change callback is typed over the document.
handle.change((d) => {
  d.title = "Shopping";
  d.todos.push({ text: "milk", done: false });
  d.todos[0].done = true;
  d.likes.increment();
  d.likes.increment(2);
  delete d.note;
  splice(d, ["title"], 0, 0, "My ");
  updateText(d, ["title"], "My shopping");
}, { message: "edit" });

handle.change((d) => {
  // @ts-expect-error: no such key
  d.titel = "typo";
});
handle.change((d) => {
  // @ts-expect-error: a boolean field takes no string
  d.todos[0].done = "yes";
});
handle.change((d) => {
  // @ts-expect-error: a todo needs its text
  d.todos.push({ done: false });
});
// @ts-expect-error: change takes a callback, not a value
handle.change({ title: "x" });
// @ts-expect-error: the message is an option, not a string argument
handle.change((d) => void d, "message");

// Reading: the document may be undefined (deleted), and is read-only.
const doc: Doc<TodoList> | undefined = handle.doc();
if (doc) {
  const title: string = doc.title;
  const likes: number = doc.likes.value;
  // @ts-expect-error: the document is read-only outside a change
  doc.title = "x";
  // @ts-expect-error: not a number
  const wrong: number = doc.title;
  void title, likes, wrong;
}
// @ts-expect-error: doc() may be undefined
handle.doc().title;

// Events carry the typed document.
handle.on("change", ({ doc, patches, patchInfo }) => {
  const t: string = doc.title;
  const before: string = patchInfo.before.title;
  void t, before, patches.length;
});
// @ts-expect-error: no such event
handle.on("changed", () => {});

async function finding(url: string) {
  if (!isValidAutomergeUrl(url)) return;
  const found = await repo.find<TodoList>(url);
  found.change((d) => void d.todos.pop());
  const view = found.view(found.heads());
  const patches = found.diff(found.heads());
  void view, patches;
  // @ts-expect-error: heads are strings
  found.view([1, 2]);
}
void finding;

// The Client/Doc API.
async function client() {
  const c = await Client.open({ urls: ["ws://127.0.0.1:7300/sync"] });
  const d = await c.create<{ n: number }>({ n: 1 });
  d.increment("n");
  d.change((draft) => draft.put("n", 2));
  const n: number = d.value().n;
  // @ts-expect-error: value() is typed
  const s: string = d.value().n;
  void n, s;
  // @ts-expect-error: no such option
  await Client.open({ url: "ws://x" });
}
void client;

// React.
function Component({ url }: { url: string }) {
  const r: Repo = useRepo();
  const [doc, changeDoc] = useDocument<TodoList>(url);
  const h = useDocHandle<TodoList>(url);
  const same: typeof useDocHandle = useHandle;
  if (doc) {
    const title: string = doc.title;
    void title;
  }
  changeDoc((d) => {
    d.title = "x";
  });
  changeDoc((d) => {
    // @ts-expect-error: typed over the document
    d.title = 1;
  });
  const { peerStates, update } = usePresence({ handle: h, initialState: { cursor: 0, name: "ana" } });
  update("cursor", 3);
  // @ts-expect-error: no such presence channel
  update("colour", "red");
  const names: string[] = Object.values(peerStates.getStates()).map((p) => p.value.name);
  void r, same, names, RepoContext;
}
void Component;

// Presence without React.
const presence = new Presence<{ cursor: number }>({ handle });
presence.start({ initialState: { cursor: 0 } });
// @ts-expect-error: the value of a channel is typed
presence.broadcast("cursor", "zero");
