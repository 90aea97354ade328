// CodeMirror 6: one view, one state per input file (each with its own undo history),
// the language picked by the input's MIME type and loaded on demand.

import { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import {
  HighlightStyle,
  LanguageSupport,
  StreamLanguage,
  bracketMatching,
  indentOnInput,
  indentUnit,
  syntaxHighlighting,
} from "@codemirror/language";
import { highlightSelectionMatches, search, searchKeymap } from "@codemirror/search";
import { Compartment, EditorState, type Extension } from "@codemirror/state";
import {
  EditorView,
  crosshairCursor,
  drawSelection,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  keymap,
  lineNumbers,
  rectangularSelection,
} from "@codemirror/view";
import { tags as t } from "@lezer/highlight";

// Colours come from CSS variables, so the editor follows the page's light/dark scheme.
const highlight = HighlightStyle.define([
  { tag: [t.keyword, t.controlKeyword, t.moduleKeyword, t.operatorKeyword, t.definitionKeyword], color: "var(--syn-keyword)" },
  { tag: [t.string, t.special(t.string), t.regexp], color: "var(--syn-string)" },
  { tag: [t.number, t.bool, t.null, t.atom], color: "var(--syn-number)" },
  { tag: [t.comment, t.lineComment, t.blockComment, t.docComment], color: "var(--syn-comment)", fontStyle: "italic" },
  { tag: [t.function(t.variableName), t.function(t.propertyName), t.macroName], color: "var(--syn-function)" },
  { tag: [t.definition(t.variableName), t.definition(t.propertyName)], color: "var(--syn-def)" },
  { tag: [t.typeName, t.className, t.namespace, t.standard(t.typeName)], color: "var(--syn-type)" },
  { tag: [t.propertyName, t.attributeName], color: "var(--syn-property)" },
  { tag: [t.processingInstruction, t.meta, t.annotation], color: "var(--syn-meta)" },
  { tag: [t.operator, t.punctuation, t.bracket], color: "var(--syn-punct)" },
  { tag: [t.special(t.variableName), t.self], color: "var(--syn-keyword)" },
  { tag: t.invalid, color: "var(--bad)" },
  { tag: t.strong, fontWeight: "bold" },
  { tag: t.emphasis, fontStyle: "italic" },
]);

const theme = EditorView.theme({
  "&": { height: "100%", fontSize: "var(--code-size)", backgroundColor: "var(--editor-bg)", color: "var(--fg)" },
  ".cm-scroller": { fontFamily: "var(--mono)", lineHeight: "1.5" },
  ".cm-content": { caretColor: "var(--fg)" },
  ".cm-cursor, .cm-dropCursor": { borderLeftColor: "var(--fg)" },
  ".cm-gutters": { backgroundColor: "var(--editor-bg)", color: "var(--muted)", border: "none" },
  ".cm-activeLine": { backgroundColor: "var(--active-line)" },
  ".cm-activeLineGutter": { backgroundColor: "var(--active-line)", color: "var(--fg)" },
  "&.cm-focused > .cm-scroller > .cm-selectionLayer .cm-selectionBackground, .cm-selectionBackground, .cm-content ::selection":
    { backgroundColor: "var(--selection)" },
  ".cm-matchingBracket": { backgroundColor: "var(--bracket)", outline: "none" },
  ".cm-searchMatch": { backgroundColor: "var(--search-match)" },
  ".cm-panels": { backgroundColor: "var(--panel)", color: "var(--fg)" },
  ".cm-panels.cm-panels-bottom": { borderTop: "1px solid var(--border)" },
  ".cm-textfield": { backgroundColor: "var(--bg)", color: "var(--fg)", border: "1px solid var(--border)" },
  ".cm-button": { backgroundImage: "none", backgroundColor: "var(--panel)", color: "var(--fg)", border: "1px solid var(--border)" },
});

type Loader = () => Promise<Extension>;
const legacy = (load: () => Promise<Parameters<typeof StreamLanguage.define>[0]>): Loader => async () =>
  new LanguageSupport(StreamLanguage.define(await load()));

/** Which language each MIME type gets; anything else is plain text. */
const LANGUAGES: Record<string, Loader> = {
  "text/x-python": () => import("@codemirror/lang-python").then((m) => m.python()),
  "text/x-csrc": () => import("@codemirror/lang-cpp").then((m) => m.cpp()),
  "text/x-c++src": () => import("@codemirror/lang-cpp").then((m) => m.cpp()),
  "text/x-chdr": () => import("@codemirror/lang-cpp").then((m) => m.cpp()),
  "text/x-c++hdr": () => import("@codemirror/lang-cpp").then((m) => m.cpp()),
  "application/sql": () => import("@codemirror/lang-sql").then((m) => m.sql({ dialect: m.SQLite })),
  "application/json": () => import("@codemirror/lang-json").then((m) => m.json()),
  "text/x-shellscript": legacy(() => import("@codemirror/legacy-modes/mode/shell").then((m) => m.shell)),
  "application/x-sh": legacy(() => import("@codemirror/legacy-modes/mode/shell").then((m) => m.shell)),
};

const NAMES: Record<string, string> = {
  "text/x-python": "Python",
  "text/x-csrc": "C",
  "text/x-chdr": "C",
  "text/x-c++src": "C++",
  "text/x-c++hdr": "C++",
  "application/sql": "SQL",
  "application/json": "JSON",
  "text/x-shellscript": "Shell",
  "application/x-sh": "Shell",
  "text/vnd.graphviz": "DOT",
  "text/x-jq": "jq",
  "text/csv": "CSV",
  "text/markdown": "Markdown",
  "text/plain": "Text",
};

export function languageName(mime: string): string | null {
  return NAMES[mime] ?? null;
}

/** The MIME type of a file by its extension (the types LANGUAGES and NAMES know); anything else is text/plain. */
const EXTENSIONS: Record<string, string> = {
  py: "text/x-python",
  c: "text/x-csrc",
  h: "text/x-chdr",
  cpp: "text/x-c++src",
  cc: "text/x-c++src",
  cxx: "text/x-c++src",
  hpp: "text/x-c++hdr",
  hh: "text/x-c++hdr",
  hxx: "text/x-c++hdr",
  json: "application/json",
  sql: "application/sql",
  sh: "text/x-shellscript",
  dot: "text/vnd.graphviz",
  gv: "text/vnd.graphviz",
  jq: "text/x-jq",
  csv: "text/csv",
  md: "text/markdown",
  txt: "text/plain",
};

/** The extension of a path's last component, lower-cased ("" when it has none). */
export function extension(path: string): string {
  const name = path.slice(path.lastIndexOf("/") + 1);
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot + 1).toLowerCase() : "";
}

export function mimeForPath(path: string): string {
  return EXTENSIONS[extension(path)] ?? "text/plain";
}

const loaded = new Map<string, Promise<Extension>>();
function loadLanguage(mime: string): Promise<Extension> {
  const loader = LANGUAGES[mime];
  if (!loader) return Promise.resolve([]);
  let p = loaded.get(mime);
  if (!p) {
    p = loader().catch((e) => {
      console.error(`could not load the editor language for ${mime}`, e);
      return [];
    });
    loaded.set(mime, p);
  }
  return p;
}

export class CodeEditor {
  readonly view: EditorView;
  private language = new Compartment();
  private states = new Map<string, EditorState>();
  private current: string | null = null;
  private generation = 0;
  private onChange: () => void;
  private label: string;
  private extra: Extension[];

  /** `label` names the editor for screen readers; `extra` extensions are added to every file's. */
  constructor(parent: HTMLElement, onChange: () => void, label = "Code editor", extra: Extension[] = []) {
    this.onChange = onChange;
    this.label = label;
    this.extra = extra;
    this.view = new EditorView({ parent, state: this.makeState("") });
  }

  private extensions(): Extension[] {
    return [
      lineNumbers(),
      highlightActiveLineGutter(),
      highlightSpecialChars(),
      history(),
      drawSelection(),
      EditorState.allowMultipleSelections.of(true),
      indentOnInput(),
      indentUnit.of("    "),
      syntaxHighlighting(highlight),
      bracketMatching(),
      closeBrackets(),
      rectangularSelection(),
      crosshairCursor(),
      highlightActiveLine(),
      highlightSelectionMatches(),
      search({ top: false }),
      keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...searchKeymap, ...historyKeymap, indentWithTab]),
      theme,
      EditorView.contentAttributes.of({ "aria-label": this.label, spellcheck: "false" }),
      EditorView.updateListener.of((u) => {
        if (u.docChanged) this.onChange();
      }),
      ...this.extra,
    ];
  }

  private makeState(doc: string): EditorState {
    return EditorState.create({ doc, extensions: [...this.extensions(), this.language.of([])] });
  }

  /** Replaces every file: key → {text, mime}. Languages load in the background. */
  setFiles(files: { key: string; text: string; mime: string }[]) {
    ++this.generation;
    this.states.clear();
    this.current = null;
    for (const f of files) this.add(f.key, f.text, f.mime);
  }

  /** Adds one file (a fresh state, with its own undo history). */
  add(key: string, text: string, mime: string) {
    const generation = this.generation;
    this.states.set(key, this.makeState(text));
    void loadLanguage(mime).then((lang) => {
      // (A file removed meanwhile has no state left to configure: setLanguage skips it.)
      if (generation === this.generation) this.setLanguage(key, lang);
    });
  }

  /** Drops one file; the view keeps showing it until another is shown. */
  remove(key: string) {
    if (this.current === key) this.current = null;
    this.states.delete(key);
  }

  /** Installs a loaded language into one file's state, shown or not. */
  private setLanguage(key: string, lang: Extension) {
    const effects = this.language.reconfigure(lang);
    if (this.current === key) {
      this.view.dispatch({ effects });
    } else {
      const st = this.states.get(key);
      if (st) this.states.set(key, st.update({ effects }).state);
    }
  }

  show(key: string) {
    if (this.current !== null) this.states.set(this.current, this.view.state);
    const st = this.states.get(key);
    if (!st) return;
    this.current = key;
    this.view.setState(st);
  }

  /** Replaces a file's whole text (one undoable change when it is shown). */
  setText(key: string, text: string) {
    if (key === this.current) {
      this.view.dispatch({ changes: { from: 0, to: this.view.state.doc.length, insert: text } });
    } else {
      const st = this.states.get(key);
      if (st) this.states.set(key, st.update({ changes: { from: 0, to: st.doc.length, insert: text } }).state);
    }
  }

  text(key: string): string {
    if (key === this.current) return this.view.state.doc.toString();
    return this.states.get(key)?.doc.toString() ?? "";
  }

  focus() {
    this.view.focus();
  }
}

