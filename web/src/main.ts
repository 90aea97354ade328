import "./style.css";

import {
  ApiError,
  api,
  bytesToBase64,
  dataBytes,
  dataText,
  runJob,
  type CatalogImage,
  type InputSpec,
  type JobPhase,
  type ProgramInfo,
  type RunRequest,
  type RunResponse,
  type StoredResult,
} from "./api";
import { $, h, replace } from "./dom";
import { CodeEditor, extension, languageName, mimeForPath } from "./editor";
import { pathProblem } from "./files";
import { defaults, optionsForm, type OptionsForm } from "./form";
import { bytes, seconds } from "./format";
import { isTextMime, renderResult, type Shown } from "./output";
import { Picker } from "./picker";
import { SystemsView } from "./systems";

// ---- state ----

interface FileDraft {
  path: string;
  mime: string;
  /** Text files are edited in CodeMirror; binary ones are replaced by choosing a file. */
  binary: boolean;
  text: string;
  data: Uint8Array;
  /** Added by the user, not declared by the manifest: it can be removed. */
  added: boolean;
}

interface Draft {
  files: FileDraft[];
  active: string;
  stdin: string;
  options: Record<string, string>;
  shown: Shown | null;
  /** The permalink of the shown result. */
  permalink: string | null;
}

let programs: ProgramInfo[] = [];
let images: CatalogImage[] = [];
let current: ProgramInfo | null = null;
let draft: Draft | null = null;
const drafts = new Map<string, Draft>();
let form: OptionsForm | null = null;
let running = false;
/** The permalink this page was opened on, and its program. */
let restored: { key: string; id: string } | null = null;
/** The "new file" field is open in the tab bar. */
let adding = false;
/** The file removed last, for Undo (until the next change to the tabs). */
let removed: { draft: Draft; file: FileDraft; index: number } | null = null;

// ---- elements ----

const els = {
  buildStatus: $("#build-status"),
  programsView: $("#programs-view"),
  systemsView: $("#systems-view"),
  viewPrograms: $("#view-programs") as HTMLAnchorElement,
  viewSystems: $("#view-systems") as HTMLAnchorElement,
  sidebar: $("#sidebar"),
  toggle: $("#toggle-programs") as HTMLButtonElement,
  head: $("#program-head"),
  notReady: $("#not-ready"),
  options: $("#options"),
  tabs: $("#tabs"),
  tabAdd: $("#tab-add"),
  filesNote: $("#files-note"),
  editor: $("#editor"),
  binary: $("#binary-input"),
  stdinPane: $("#stdin-pane"),
  stdin: $("#stdin") as HTMLTextAreaElement,
  stdinMime: $("#stdin-mime"),
  run: $("#run") as HTMLButtonElement,
  cache: $("#use-cache") as HTMLInputElement,
  share: $("#share") as HTMLButtonElement,
  shareBox: $("#share-box"),
  error: $("#run-error"),
  phase: $("#run-phase"),
  output: $("#output"),
};

const editor = new CodeEditor(els.editor, () => undefined);
const picker = new Picker($("#program-list"), $("#search") as HTMLInputElement, $("#accepts") as HTMLSelectElement, (id) => {
  pickProgram(id, { updateUrl: "push" });
  closeDrawer();
  editor.focus();
});

const isMac = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
const runKeys = isMac ? "⌘ Enter" : "Ctrl Enter";
$("#run-keys").textContent = runKeys;
els.run.title = `Run (${isMac ? "⌘+Enter" : "Ctrl+Enter"})`;

// ---- drafts ----

function freshDraft(p: ProgramInfo): Draft {
  const files = p.inputs.map(fileFromSpec);
  return {
    files,
    active: files[0]?.path ?? "",
    stdin: p.stdin?.accepted ? (dataText(p.stdin.example ?? null) ?? "") : "",
    options: defaults(p.options),
    shown: null,
    permalink: null,
  };
}

function fileFromSpec(i: InputSpec): FileDraft {
  const data = dataBytes(i.example ?? null);
  const binary = (i.example != null && "base64" in i.example) || (i.example == null && !isTextMime(i.mime));
  return { path: i.path, mime: i.mime, binary, text: binary ? "" : (dataText(i.example ?? null) ?? ""), data, added: false };
}

/** A file's MIME type: a declared input's with the same extension, else by the extension. */
function mimeFor(p: ProgramInfo, path: string): string {
  const ext = extension(path);
  return (ext && p.inputs.find((i) => extension(i.path) === ext)?.mime) || mimeForPath(path);
}

/** Reads the editor, stdin and form back into the current draft. */
function saveDraft() {
  if (!draft || !current) return;
  for (const f of draft.files) if (!f.binary) f.text = editor.text(f.path);
  draft.stdin = els.stdin.value;
  if (form) draft.options = form.values();
}

// ---- program selection ----

function pickProgram(id: string, opts: { restore?: StoredResult; updateUrl?: "push" | "replace" | false } = {}) {
  if (!opts.restore && id === current?.id) return;
  const p = programs.find((x) => x.id === id);
  if (!p) {
    showError(new ApiError("program_not_found", `There is no program "${id}" in this catalog.`), "Unknown program:");
    return;
  }
  saveDraft();
  current = p;
  adding = false;
  draft = opts.restore ? restoredDraft(p, opts.restore) : (drafts.get(id) ?? freshDraft(p));
  drafts.set(id, draft);
  if (opts.updateUrl !== false) setUrl(`/#${encodeURIComponent(id)}`, opts.updateUrl ?? "replace");
  els.viewPrograms.href = `/#${encodeURIComponent(id)}`;
  if (view === "programs") document.title = `${p.name} · runbox playground`;
  picker.select(id);
  clearError();
  hideShare();
  renderProgram();
}

function restoredDraft(p: ProgramInfo, stored: StoredResult): Draft {
  const d = freshDraft(p);
  const req = stored.request;
  for (const given of req.inputs ?? []) {
    const text = dataText(given.content);
    const known = d.files.find((f) => f.path === given.path);
    const data = dataBytes(given.content);
    if (known) {
      known.binary = known.binary || text === null;
      known.text = text ?? "";
      known.data = data;
    } else {
      // A file the user added: not in the manifest, so its type follows its extension.
      d.files.push({ path: given.path, mime: mimeFor(p, given.path), binary: text === null, text: text ?? "", data, added: true });
    }
  }
  if (req.stdin != null) d.stdin = dataText(req.stdin) ?? "";
  d.options = { ...d.options, ...(req.options ?? {}) };
  d.shown = { result: stored.result, cached: false, stored: { created_at: stored.created_at, hits: stored.hits } };
  d.permalink = `/r/${stored.key}`;
  return d;
}

function renderProgram() {
  if (!current || !draft) return;
  const p = current;
  const d = draft;
  const reads = [...new Set(p.inputs.map((i) => i.mime))];
  const writes = [...new Set([...(p.stdout_mime ? [p.stdout_mime] : []), ...p.outputs.map((o) => o.mime)])];
  replace(
    els.head,
    h(
      "div",
      { class: "program-heading" },
      h("h1", null, p.name, " ", h("span", { class: "program-version" }, p.version)),
      h("p", { class: "program-description" }, p.description),
      h(
        "p",
        { class: "program-mimes muted" },
        reads.length > 0 && ["reads ", reads.map((m, i) => [i > 0 && ", ", h("code", null, m)])],
        p.stdin?.accepted && [reads.length > 0 ? " and " : "reads ", "stdin"],
        writes.length > 0 && [" · writes ", writes.map((m, i) => [i > 0 && ", ", h("code", null, m)])],
      ),
    ),
    h("button", { type: "button", class: "link-button", onclick: resetDraft, title: "Put back the example inputs, stdin and option defaults (and drop the files you added)" }, "Reset to example"),
  );

  form = p.options.length > 0 ? optionsForm(p.options, d.options, () => undefined) : null;
  replace(els.options, form && h("h2", { class: "pane-title" }, "Options"), form?.element);
  els.options.hidden = !form;

  editor.setFiles(d.files.filter((f) => !f.binary).map((f) => ({ key: f.path, text: f.text, mime: f.mime })));
  removed = null;
  showNote(null);
  renderTabs();
  showTab(d.files.some((f) => f.path === d.active) ? d.active : (d.files[0]?.path ?? ""));

  els.stdinPane.hidden = !p.stdin?.accepted;
  els.stdin.value = d.stdin;
  els.stdinMime.textContent = p.stdin?.mime ?? "";

  renderNotReady();
  renderOutput();
}

function resetDraft() {
  if (!current) return;
  const shown = draft?.shown ?? null;
  const permalink = draft?.permalink ?? null;
  draft = { ...freshDraft(current), shown, permalink };
  drafts.set(current.id, draft);
  renderProgram();
}

function renderTabs() {
  if (!draft) return;
  const d = draft;
  replace(
    els.tabs,
    d.files.map((f) =>
      h(
        "button",
        {
          type: "button",
          role: "tab",
          class: f.added ? "tab tab-added" : "tab",
          id: `tab-${f.path}`,
          "data-path": f.path,
          "aria-selected": f.path === d.active ? "true" : "false",
          "aria-describedby": f.added ? "tab-remove-hint" : undefined,
          tabindex: f.path === d.active ? 0 : -1,
          title: f.added ? `${f.mime}; added by you (Delete removes it)` : f.mime,
          onclick: () => showTab(f.path),
        },
        h("span", { class: "tab-path" }, f.path),
        h("span", { class: "tab-lang" }, languageName(f.mime) ?? f.mime),
        // The × is for the mouse; from the keyboard, Delete on the tab does the same
        // (a button inside a tab would be a button inside a button).
        f.added &&
          h(
            "span",
            {
              class: "tab-remove",
              "aria-hidden": "true",
              title: `Remove ${f.path}`,
              onclick: (e: Event) => {
                e.stopPropagation();
                removeFile(f.path);
              },
            },
            "×",
          ),
      ),
    ),
  );
  renderAddFile();
}

els.tabs.addEventListener("keydown", (e) => {
  if (!draft || draft.files.length === 0) return;
  const files = draft.files;
  // The focused tab: usually the selected one (roving tabindex), not always.
  const from = (e.target as HTMLElement).closest<HTMLElement>(".tab")?.dataset.path ?? draft.active;
  const i = files.findIndex((f) => f.path === from);
  let next: FileDraft | undefined;
  switch (e.key) {
    case "ArrowLeft":
    case "ArrowRight":
      next = files[(i + (e.key === "ArrowRight" ? 1 : -1) + files.length) % files.length];
      break;
    case "Home":
      next = files[0];
      break;
    case "End":
      next = files[files.length - 1];
      break;
    case "Delete":
    case "Backspace":
      if (files[i]?.added) {
        e.preventDefault();
        removeFile(files[i].path);
      }
      return;
    default:
      return;
  }
  if (next) {
    e.preventDefault();
    showTab(next.path);
    tabOf(next.path)?.focus();
  }
});

function tabOf(path: string): HTMLElement | null {
  return els.tabs.querySelector<HTMLElement>(`[data-path="${CSS.escape(path)}"]`);
}

// ---- adding and removing files ----

/** The "+" button, or the field for a new file's path. */
function renderAddFile() {
  if (!adding) {
    replace(
      els.tabAdd,
      h("button", { type: "button", class: "tab-add-button", "aria-label": "Add a file", title: "Add a file", onclick: () => openAddFile() }, h("span", { "aria-hidden": "true" }, "+")),
    );
    return;
  }
  const lang = h("span", { class: "tab-lang tab-new-lang", "aria-hidden": "true" });
  const input = h("input", {
    type: "text",
    class: "tab-new-path",
    "aria-label": "New file's path",
    "aria-describedby": "files-note",
    placeholder: examplePath(),
    autocomplete: "off",
    autocapitalize: "off",
    spellcheck: "false",
    oninput: () => {
      input.removeAttribute("aria-invalid");
      if (noteKind === "error") showNote(null);
      const path = input.value.trim();
      lang.textContent = path && current ? (languageName(mimeFor(current, path)) ?? "") : "";
    },
    onkeydown: (e: KeyboardEvent) => {
      if (e.key === "Escape") {
        e.preventDefault();
        closeAddFile(true);
      }
    },
  });
  const form = h(
    "form",
    {
      class: "tab-new",
      onsubmit: (e: Event) => {
        e.preventDefault();
        const path = input.value.trim();
        const problem = draft ? pathProblem(path, draft.files.map((f) => f.path)) : "No program is selected.";
        if (problem) {
          input.setAttribute("aria-invalid", "true");
          showNote(problem, "error");
          input.focus();
          return;
        }
        addFile(path);
      },
      // Leaving an empty field closes it; one with a path stays, so nothing typed is lost.
      onfocusout: (e: FocusEvent) => {
        if (form.contains(e.relatedTarget as Node | null) || input.value.trim() !== "") return;
        setTimeout(() => {
          if (adding && els.tabAdd.contains(form) && !form.contains(document.activeElement)) closeAddFile(false);
        });
      },
    },
    input,
    lang,
    h("button", { type: "submit", class: "button tab-new-ok" }, "Add"),
    h("button", { type: "button", class: "tab-new-cancel", "aria-label": "Cancel", title: "Cancel (Esc)", onclick: () => closeAddFile(true) }, h("span", { "aria-hidden": "true" }, "×")),
  );
  replace(els.tabAdd, form);
  input.focus();
}

/** A path to suggest in the empty field, after the program's first input. */
function examplePath(): string {
  const ext = current?.inputs[0] ? extension(current.inputs[0].path) : "";
  return ({ c: "util.h", cpp: "util.hpp", "": "notes.txt" } as Record<string, string>)[ext] ?? `helper.${ext}`;
}

function openAddFile() {
  adding = true;
  forgetRemoved();
  renderAddFile();
}

function closeAddFile(refocus: boolean) {
  adding = false;
  if (noteKind === "error") showNote(null);
  renderAddFile();
  if (refocus) els.tabAdd.querySelector("button")?.focus();
}

function addFile(path: string) {
  if (!draft || !current) return;
  const f: FileDraft = { path, mime: mimeFor(current, path), binary: false, text: "", data: new Uint8Array(), added: true };
  draft.files.push(f);
  editor.add(f.path, f.text, f.mime);
  adding = false;
  forgetRemoved();
  renderTabs();
  showTab(path);
  tabOf(path)?.scrollIntoView({ block: "nearest", inline: "nearest" });
  showNote(`Added ${path}.`);
  editor.focus();
}

/** Removes a file the user added; the tab after it (or before it) is shown next. */
function removeFile(path: string) {
  if (!draft) return;
  const d = draft;
  const index = d.files.findIndex((f) => f.path === path);
  const file = d.files[index];
  if (!file?.added) return;
  saveDraft();
  d.files.splice(index, 1);
  if (!file.binary) editor.remove(path);
  removed = { draft: d, file, index };
  const next = d.active === path ? (d.files[index] ?? d.files[index - 1])?.path ?? "" : d.active;
  renderTabs();
  showTab(next);
  showNote(`Removed ${path}.`, "removed");
  (tabOf(next) ?? els.tabAdd.querySelector("button"))?.focus();
}

function undoRemove() {
  const r = removed;
  if (!r || r.draft !== draft) return;
  removed = null;
  if (draft.files.some((f) => f.path === r.file.path)) return;
  draft.files.splice(Math.min(r.index, draft.files.length), 0, r.file);
  if (!r.file.binary) editor.add(r.file.path, r.file.text, r.file.mime);
  renderTabs();
  showTab(r.file.path);
  showNote(`Put back ${r.file.path}.`);
  tabOf(r.file.path)?.focus();
}

function forgetRemoved() {
  removed = null;
  if (noteKind === "removed") showNote(null);
}

type NoteKind = "info" | "error" | "removed";
let noteKind: NoteKind | null = null;
let noteTimer: number | undefined;

/**
 * The line under the tabs: what is wrong with a new path (until it is edited), that a
 * file was added (read out only, for a few seconds), or that one was removed, with Undo
 * (for ten seconds).
 */
function showNote(text: string | null, kind: NoteKind = "info") {
  window.clearTimeout(noteTimer);
  noteKind = text === null ? null : kind;
  els.filesNote.hidden = text === null;
  // Confirmations are for screen readers: the tabs show what changed.
  els.filesNote.className = kind === "info" ? "files-note sr-only" : `files-note files-note-${kind}`;
  replace(els.filesNote, text, kind === "removed" && [" ", h("button", { type: "button", class: "link-button", onclick: undoRemove }, "Undo")]);
  if (text !== null && kind !== "error") {
    noteTimer = window.setTimeout(() => {
      // Not while the keyboard is on Undo.
      if (els.filesNote.contains(document.activeElement)) return;
      if (kind === "removed") removed = null;
      showNote(null);
    }, kind === "removed" ? 10_000 : 4000);
  }
}

function showTab(path: string) {
  if (!draft) return;
  draft.active = path;
  for (const t of els.tabs.querySelectorAll<HTMLElement>(".tab")) {
    const on = t.dataset.path === path;
    t.setAttribute("aria-selected", on ? "true" : "false");
    t.tabIndex = on ? 0 : -1;
  }
  const f = draft.files.find((x) => x.path === path);
  const binary = !!f?.binary;
  els.editor.hidden = binary || !f;
  els.binary.hidden = !binary;
  if (f && binary) renderBinary(f);
  else if (f) editor.show(path);
}

let binaryUrl: string | null = null;
function renderBinary(f: FileDraft) {
  if (binaryUrl) URL.revokeObjectURL(binaryUrl);
  const url = (binaryUrl = URL.createObjectURL(new Blob([f.data as BlobPart], { type: f.mime })));
  const input = h("input", {
    type: "file",
    onchange: async () => {
      const file = input.files?.[0];
      if (!file) return;
      f.data = new Uint8Array(await file.arrayBuffer());
      renderBinary(f);
    },
  });
  replace(
    els.binary,
    h("p", null, h("strong", null, f.path), ` is a binary file (${f.mime}), ${bytes(f.data.length)}.`),
    f.mime.startsWith("image/") && f.data.length > 0 && h("img", { src: url, alt: f.path, class: "binary-preview" }),
    h("p", null, h("label", null, "Replace it with a file from this computer: ", input)),
    f.data.length > 0 && h("p", null, h("a", { href: url, download: f.path.split("/").pop() }, "Download the current one")),
  );
}

// ---- catalog image builds ----

function imageOf(p: ProgramInfo): CatalogImage | undefined {
  const img = p.image;
  if (p.image_name) {
    const byName = images.find((i) => i.name === p.image_name);
    if (byName) return byName;
  }
  if (img?.recipe) return images.find((i) => i.recipe === img.recipe);
  if (img?.reference) return images.find((i) => i.name === img.reference);
  return undefined;
}

function buildWords(img: CatalogImage | undefined): string {
  if (!img) return "image not ready";
  switch (img.state) {
    case "queued":
      return "image queued for building";
    case "building":
      return `building image${img.phase ? `: ${img.phase}` : ""}${img.elapsed_s != null ? ` (${seconds(img.elapsed_s)})` : ""}`;
    case "failed":
      return "image build failed";
    default:
      return "image ready";
  }
}

function renderNotReady() {
  const p = current;
  if (!p || p.ready !== false) {
    els.notReady.hidden = true;
    return;
  }
  const img = imageOf(p);
  els.notReady.hidden = false;
  els.notReady.className = `notice ${img?.state === "failed" ? "notice-bad" : "notice-warn"}`;
  replace(
    els.notReady,
    img?.state === "failed"
      ? [`The image for ${p.name} (${img.name}) could not be built: `, h("code", null, img.error ?? "unknown error"), "."]
      : `${p.name} cannot run yet: its image is being prepared (${buildWords(img)}). This page updates by itself when it is ready.`,
  );
}

function renderBuildStatus() {
  const total = images.length;
  const ready = images.filter((i) => i.state === "ready").length;
  const failed = images.filter((i) => i.state === "failed");
  const active = images.filter((i) => i.state === "queued" || i.state === "building");
  if (total === 0 || (active.length === 0 && failed.length === 0)) {
    els.buildStatus.hidden = true;
    return;
  }
  els.buildStatus.hidden = false;
  const open = (els.buildStatus.querySelector("details") as HTMLDetailsElement | null)?.open ?? false;
  replace(
    els.buildStatus,
    h(
      "details",
      { class: failed.length > 0 && active.length === 0 ? "tone-bad" : "tone-warn", open },
      h(
        "summary",
        null,
        active.length > 0 && h("span", { class: "spinner", "aria-hidden": "true" }),
        active.length > 0 ? `Building images: ${ready} of ${total} ready` : `${failed.length} image${failed.length > 1 ? "s" : ""} failed to build`,
      ),
      h(
        "ul",
        { class: "build-list" },
        images.map((i) =>
          h(
            "li",
            { class: `build-${i.state}` },
            h("span", { class: "build-name" }, i.name),
            h(
              "span",
              { class: "build-state" },
              i.state === "building" ? buildWords(i).replace(/^building image: ?/, "") || "building" : i.state,
              i.state === "building" && i.elapsed_s != null && !i.phase ? ` (${seconds(i.elapsed_s)})` : "",
            ),
            i.error && h("code", { class: "build-error" }, i.error),
          ),
        ),
      ),
    ),
  );
}

function buildingByProgram(): Map<string, string> {
  const m = new Map<string, string>();
  for (const p of programs) if (p.ready === false) m.set(p.id, buildWords(imageOf(p)));
  return m;
}

let catalogTimer: number | undefined;
async function pollCatalog() {
  clearTimeout(catalogTimer);
  try {
    const before = images.filter((i) => i.state === "ready").length;
    images = await api.catalog();
    const busy = images.some((i) => i.state === "queued" || i.state === "building");
    const nowReady = images.filter((i) => i.state === "ready").length;
    if (nowReady !== before || (!busy && programs.some((p) => p.ready === false))) await refreshPrograms();
    renderBuildStatus();
    picker.setBuilding(buildingByProgram());
    renderNotReady();
    if (busy) catalogTimer = window.setTimeout(pollCatalog, 1000);
  } catch (e) {
    // The build status is a nicety; the page works without it. Try again later.
    console.warn("GET /api/catalog:", e);
    catalogTimer = window.setTimeout(pollCatalog, 5000);
  }
}

async function refreshPrograms() {
  const fresh = await api.programs();
  for (const f of fresh) {
    const old = programs.find((p) => p.id === f.id);
    if (old) old.ready = f.ready;
  }
  picker.setPrograms(programs);
  if (current) picker.select(current.id);
}

// ---- running ----

function request(): RunRequest | null {
  if (!current || !draft) return null;
  saveDraft();
  return {
    program: current.id,
    options: draft.options,
    inputs: draft.files.map((f) => ({ path: f.path, content: f.binary ? { base64: bytesToBase64(f.data) } : { text: f.text } })),
    ...(current.stdin?.accepted ? { stdin: { text: draft.stdin } } : {}),
    cache: els.cache.checked,
  };
}

async function run() {
  if (running) return;
  const req = request();
  if (!req || !current || !draft) return;
  const forDraft = draft;
  const program = current;
  running = true;
  clearError();
  hideShare();
  els.run.disabled = true;
  els.run.classList.add("is-running");
  els.output.classList.add("is-stale");
  const started = performance.now();
  let phase: JobPhase = "submitting";
  let announced = "";
  const showPhase = () => {
    const words = { submitting: "Sending", queued: "Queued", running: "Running" }[phase];
    els.run.querySelector(".run-label")!.textContent = `${words}… ${seconds((performance.now() - started) / 1000)}`;
    // Screen readers hear each phase once, not every tick.
    if (announced !== words) els.phase.textContent = announced = `${words}…`;
  };
  showPhase();
  const ticker = window.setInterval(showPhase, 100);
  try {
    const res: RunResponse = await runJob(req, (p) => {
      phase = p;
      showPhase();
    });
    forDraft.shown = { result: res.result, cached: res.cached };
    forDraft.permalink = res.permalink;
    if (draft === forDraft) {
      renderOutput();
      if (location.pathname !== "/") setUrl(`/#${encodeURIComponent(program.id)}`);
    }
  } catch (e) {
    if (draft === forDraft) showError(e, phase === "submitting" ? "Not run:" : "The run failed:");
  } finally {
    window.clearInterval(ticker);
    running = false;
    els.run.disabled = false;
    els.run.classList.remove("is-running");
    els.run.querySelector(".run-label")!.textContent = "Run";
    els.phase.textContent = "";
    els.output.classList.remove("is-stale");
  }
}

function renderOutput() {
  const d = draft;
  els.share.disabled = !d?.permalink;
  if (!d?.shown) {
    const file = d?.files[0]?.path;
    replace(
      els.output,
      h(
        "div",
        { class: "output-empty" },
        h("p", null, "Press ", h("strong", null, "Run"), " or ", h("kbd", null, isMac ? "⌘" : "Ctrl"), "+", h("kbd", null, "Enter"), file ? ` to run ${current?.name} on ${file}.` : " to run it."),
        h("p", { class: "muted" }, "Output, exit status, timings and memory use appear here."),
      ),
    );
    return;
  }
  replace(els.output, renderResult(d.shown, current));
}

function showError(e: unknown, context = "Not run:") {
  const err = e instanceof ApiError ? e : new ApiError("internal", e instanceof Error ? e.message : String(e));
  let lead = "";
  switch (err.code) {
    case "image_not_ready":
      lead = `The image is still being built${err.retryAfter ? `; try again in ${err.retryAfter} s` : ""}. `;
      break;
    case "rate_limited":
    case "queue_full":
      lead = `The server is busy${err.retryAfter ? `; try again in ${err.retryAfter} s` : ""}. `;
      break;
    case "payload_too_large":
      lead = "The inputs are too large for the server. ";
      break;
  }
  els.error.hidden = false;
  replace(els.error, h("strong", null, lead || `${context} `), err.message, " ", h("code", { class: "error-code" }, err.code));
}

function clearError() {
  els.error.hidden = true;
  els.error.replaceChildren();
}

// ---- sharing ----

async function share() {
  const link = draft?.permalink;
  if (!link) return;
  const url = new URL(link, location.origin).href;
  const field = h("input", { type: "text", readonly: true, value: url, class: "share-url", "aria-label": "Permalink", onfocus: () => field.select() });
  const note = h("span", { class: "share-note muted" });
  els.shareBox.hidden = false;
  replace(els.shareBox, field, note, h("button", { type: "button", class: "link-button", onclick: hideShare, "aria-label": "Close" }, "×"));
  try {
    await navigator.clipboard.writeText(url);
    note.textContent = "Copied to the clipboard.";
  } catch {
    field.focus();
    field.select();
    note.textContent = document.execCommand?.("copy") ? "Copied to the clipboard." : `Press ${isMac ? "⌘" : "Ctrl"}+C to copy.`;
  }
}

function hideShare() {
  els.shareBox.hidden = true;
  els.shareBox.replaceChildren();
}

// ---- URL ----

function setUrl(url: string, how: "push" | "replace" = "replace") {
  if (location.pathname + location.search + location.hash === url) return;
  if (how === "push") history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

function programFromUrl(): string | null {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash) return hash;
  return new URLSearchParams(location.search).get("program");
}

// The address bar edited by hand, or Back/Forward between programs and views.
function followUrl() {
  const sys = systemsFromUrl();
  if (sys) {
    showView("systems", { url: false, fromUrl: sys });
    return;
  }
  if (view === "systems") showView("programs", { url: false });
  const permalink = /^\/r\/([^/]+)\/?$/.exec(location.pathname);
  const id = permalink ? (restored?.key === decodeURIComponent(permalink[1]) ? restored.id : null) : programFromUrl();
  if (id && id !== current?.id) pickProgram(id, { updateUrl: false });
}
window.addEventListener("hashchange", followUrl);
window.addEventListener("popstate", followUrl);

// ---- keys, drawer ----

window.addEventListener(
  "keydown",
  (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey) {
      e.preventDefault();
      e.stopPropagation();
      if (view === "systems") void systemsView?.run();
      else void run();
    } else if (e.key === "/" && view === "programs" && !isTyping(e.target)) {
      e.preventDefault();
      openDrawer();
      ($("#search") as HTMLInputElement).focus();
    } else if (e.key === "Escape" && document.body.classList.contains("drawer-open")) {
      closeDrawer();
    }
  },
  true,
);

function isTyping(t: EventTarget | null): boolean {
  const el = t as HTMLElement | null;
  return !!el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
}

function openDrawer() {
  document.body.classList.add("drawer-open");
  els.toggle.setAttribute("aria-expanded", "true");
}
function closeDrawer() {
  document.body.classList.remove("drawer-open");
  els.toggle.setAttribute("aria-expanded", "false");
}
els.toggle.addEventListener("click", () => (document.body.classList.contains("drawer-open") ? closeDrawer() : openDrawer()));
$("#scrim").addEventListener("click", closeDrawer);
document.addEventListener("click", (e) => {
  const details = els.buildStatus.querySelector("details");
  if (details?.open && !details.contains(e.target as Node)) details.open = false;
});

els.run.addEventListener("click", () => void run());
els.share.addEventListener("click", () => void share());

// ---- start ----

async function start() {
  const sys = systemsFromUrl();
  if (sys) showView("systems", { url: false, fromUrl: sys });
  replace(els.output, h("p", { class: "muted output-empty" }, "Loading the catalog…"));
  try {
    programs = await api.programs();
  } catch (e) {
    showError(e, "Could not load the catalog:");
    replace(els.output, h("p", { class: "muted output-empty" }, "The catalog could not be loaded. Reload the page to try again."));
    return;
  }
  picker.setPrograms(programs);
  void pollCatalog();
  // The Databases view was opened: the Programs view picks its program when it is shown.
  if (view === "systems") return;
  if (programs.length === 0) {
    replace(els.output, h("p", { class: "muted output-empty" }, "The catalog has no programs."));
    return;
  }

  const permalink = /^\/r\/([^/]+)\/?$/.exec(location.pathname);
  if (permalink) {
    const key = decodeURIComponent(permalink[1]);
    try {
      const stored = await api.result(key);
      const id = stored.request.program;
      if (id && programs.some((p) => p.id === id)) {
        restored = { key, id };
        pickProgram(id, { restore: stored, updateUrl: false });
        return;
      }
      // Made with an image and argv, or with a program this catalog lacks: show the result alone.
      pickProgram(defaultProgram(), { updateUrl: false });
      showError(new ApiError("program_not_found", id ? `This result was made with the program "${id}", which this catalog does not have; its output is shown below.` : `This result was made with the image ${stored.request.image ?? "?"}, not a catalog program; its output is shown below.`), "Shown without its inputs:");
      replace(els.output, renderResult({ result: stored.result, cached: false, stored: { created_at: stored.created_at, hits: stored.hits } }, null));
      return;
    } catch (e) {
      pickProgram(defaultProgram());
      showError(
        e instanceof ApiError && e.code === "not_found" ? new ApiError("not_found", `There is no stored result ${key}: it may have been deleted.`) : e,
        "Could not open this link:",
      );
      return;
    }
  }
  const wanted = programFromUrl();
  pickProgram(wanted && programs.some((p) => p.id === wanted) ? wanted : defaultProgram());
  if (wanted && !programs.some((p) => p.id === wanted)) showError(new ApiError("program_not_found", `There is no program "${wanted}" in this catalog.`), "Unknown program:");
}

// ---- views: Programs and Databases ----

type View = "programs" | "systems";
let view: View = "programs";
let systemsView: SystemsView | null = null;

/**
 * The Databases view's address: /#systems (every ready system ticked), or
 * /?systems=sqlite,duckdb#systems for a choice; ?q= fills the query. The Programs
 * view's is /#program.
 */
function systemsFromUrl(): { selection: string[] | null; query: string | null } | null {
  const params = new URLSearchParams(location.search);
  if (location.pathname !== "/" || !(location.hash === "#systems" || (location.hash === "" && params.has("systems")))) return null;
  const list = params.get("systems");
  return {
    selection: list === null ? null : list.split(",").map((x) => x.trim()).filter(Boolean),
    query: params.get("q"),
  };
}

function systemsUrl(selection: string[] | null): string {
  return selection === null ? "/#systems" : `/?systems=${selection.map(encodeURIComponent).join(",")}#systems`;
}

/**
 * Shows a view. `url` writes the address (push or replace); `fromUrl` is the
 * Databases view's address as read (its selection and query replace the view's).
 */
function showView(next: View, opts: { url?: "push" | "replace" | false; fromUrl?: { selection: string[] | null; query: string | null } } = {}) {
  const changed = next !== view;
  view = next;
  document.body.dataset.view = next;
  els.programsView.hidden = next !== "programs";
  els.systemsView.hidden = next !== "systems";
  els.toggle.hidden = next !== "programs";
  els.viewPrograms.toggleAttribute("aria-current", false);
  els.viewSystems.toggleAttribute("aria-current", false);
  (next === "programs" ? els.viewPrograms : els.viewSystems).setAttribute("aria-current", "page");
  if (next === "systems") {
    closeDrawer();
    document.title = "Databases · runbox playground";
    systemsView ??= new SystemsView({ runKeys, onSelection: (sel) => setUrl(systemsUrl(sel)) });
    const shown = systemsView.show(opts.fromUrl);
    if (opts.url) setUrl(systemsUrl(systemsView.choice()), opts.url);
    void shown.then(() => {
      if (changed && opts.url) systemsView?.focus();
    });
    return;
  }
  systemsView?.hide();
  if (current) {
    if (opts.url) setUrl(`/#${encodeURIComponent(current.id)}`, opts.url);
    document.title = `${current.name} · runbox playground`;
    if (changed && opts.url) editor.focus();
  } else if (programs.length > 0) {
    const wanted = programFromUrl();
    pickProgram(wanted && programs.some((p) => p.id === wanted) ? wanted : defaultProgram(), { updateUrl: opts.url ?? false });
  }
}

for (const [link, target] of [
  [els.viewPrograms, "programs"],
  [els.viewSystems, "systems"],
] as const) {
  link.addEventListener("click", (e) => {
    // A new tab or window opens the link itself.
    if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    if (view !== target) showView(target, { url: "push" });
  });
}

function defaultProgram(): string {
  return (programs.find((p) => p.id === "python") ?? programs[0])?.id ?? "";
}

void start();
