// The Databases view: the catalog's systems, one SQL query, run on every ticked
// system at once (POST /api/systems/query), the answers side by side and compared.

import { EditorView } from "@codemirror/view";

import { compareAnswers, differingCells, parseCsv, type Verdict } from "./answers";
import { ApiError, api, type JobResult, type SystemAnswer, type SystemInfo, type SystemsQueryResponse } from "./api";
import { $, h, replace, type Child } from "./dom";
import { CodeEditor } from "./editor";
import { bytes, limitWords, ms, seconds, statusLine, type Tone } from "./format";

/** What the server takes in one request (docs/api.md). */
const MAX_SYSTEMS = 16;
const MAX_QUERY_BYTES = 128 * 1024;
/** Rows of one answer shown as a table (all of them are compared). */
const MAX_TABLE_ROWS = 1000;

export interface SystemsViewOptions {
  /** "⌘ Enter" or "Ctrl Enter". */
  runKeys: string;
  /** The selection changed: the page's URL follows (null: the default, every ready system). */
  onSelection: (ids: string[] | null) => void;
}

/** One system's card while its answer is awaited, or with its answer. */
type Slot = { id: string; answer: SystemAnswer | null; error?: ApiError };

export class SystemsView {
  private systems: SystemInfo[] = [];
  private loaded: Promise<void> | null = null;
  /** Ticked systems; null until the user or the URL chooses (then: every ready one). */
  private chosen: Set<string> | null = null;
  private editor: CodeEditor;
  private running = false;
  private visible = false;
  private pollTimer: number | undefined;
  private lastRun: { slots: Slot[]; response: SystemsQueryResponse | null } | null = null;

  private els = {
    list: $("#sys-list"),
    actions: $("#sys-pick-actions"),
    example: $("#sys-example") as HTMLButtonElement,
    run: $("#sys-run") as HTMLButtonElement,
    runNote: $("#sys-run-note"),
    phase: $("#sys-phase"),
    error: $("#sys-error"),
    answers: $("#sys-answers"),
  };

  constructor(private opts: SystemsViewOptions) {
    this.editor = new CodeEditor($("#sys-editor"), () => this.renderRunState(), "SQL query", [EditorView.lineWrapping]);
    this.editor.add("query.sql", "", "application/sql");
    this.editor.show("query.sql");
    $("#sys-run-keys").textContent = opts.runKeys;
    this.els.run.title = `Run on the ticked systems (${opts.runKeys.replace(" ", "+")})`;
    this.els.run.addEventListener("click", () => void this.run());
    this.els.example.addEventListener("click", () => {
      const ex = this.exampleQuery();
      if (ex !== null) this.editor.setText("query.sql", ex);
      this.editor.focus();
    });
    replace(
      this.els.actions,
      h("button", { type: "button", class: "link-button", onclick: () => this.choose(this.readyIds()) }, "All ready"),
      h("button", { type: "button", class: "link-button", onclick: () => this.choose([]) }, "None"),
    );
    this.renderAnswers();
  }

  /**
   * Shows the view. `fromUrl`: the page's address named these systems (null: the
   * default, every ready one) and maybe a query (null: keep the editor's).
   */
  async show(fromUrl?: { selection: string[] | null; query: string | null }) {
    this.visible = true;
    if (fromUrl && !this.running) this.clearError();
    const selection = fromUrl?.selection ?? null;
    if (fromUrl) this.chosen = selection && new Set(selection);
    if (fromUrl?.query != null) this.editor.setText("query.sql", fromUrl.query);
    this.loaded ??= this.load();
    await this.loaded;
    if (selection) this.reportUnknown(selection);
    this.renderList();
    this.renderRunState();
    if (this.editor.text("query.sql") === "") {
      const ex = this.exampleQuery();
      if (ex !== null) this.editor.setText("query.sql", ex);
    }
    this.schedulePoll();
  }

  hide() {
    this.visible = false;
    window.clearTimeout(this.pollTimer);
  }

  focus() {
    this.editor.focus();
  }

  private async load() {
    this.els.list.replaceChildren(h("p", { class: "muted" }, "Loading the systems…"));
    try {
      this.systems = await api.systems();
      this.clearError();
    } catch (e) {
      this.loaded = null; // the next show tries again
      this.showError(e, "Could not load the systems:");
      replace(this.els.list, h("p", { class: "muted" }, "The systems could not be loaded. Reload the page to try again."));
      return;
    }
    if (this.systems.length === 0) replace(this.els.list, h("p", { class: "muted" }, "This catalog has no database systems."));
  }

  private readyIds(): string[] {
    return this.systems.filter((s) => s.ready).map((s) => s.id);
  }

  /** The ticked systems, in the catalog's order. */
  selected(): string[] {
    const chosen = this.chosen ?? new Set(this.readyIds());
    return this.systems.filter((s) => chosen.has(s.id)).map((s) => s.id);
  }

  /** The ticked systems for the page's address: null when they are the default (every ready one). */
  choice(): string[] | null {
    if (this.chosen === null) return null;
    const def = this.readyIds();
    const sel = this.selected();
    return sel.length === def.length && sel.every((id, i) => id === def[i]) ? null : [...this.chosen];
  }

  private choose(ids: string[]) {
    this.chosen = new Set(ids);
    this.renderList();
    this.renderRunState();
    this.opts.onSelection(this.choice());
  }

  private reportUnknown(selection: string[]) {
    const unknown = selection.filter((id) => !this.systems.some((s) => s.id === id));
    if (unknown.length > 0 && this.systems.length > 0)
      this.showError(
        new ApiError("not_found", `This catalog has no system ${unknown.map((u) => `"${u}"`).join(", ")}; it has ${this.systems.map((s) => s.id).join(", ")}.`),
        "Unknown system:",
      );
  }

  private exampleQuery(): string | null {
    const sel = this.selected();
    const withExample = [...this.systems].sort((a, b) => Number(sel.includes(b.id)) - Number(sel.includes(a.id))).find((s) => s.example?.query);
    return withExample?.example?.query ?? null;
  }

  // ---- the list of systems ----

  private renderList() {
    if (this.systems.length === 0) return;
    const focused = (document.activeElement as HTMLElement | null)?.dataset?.id;
    const sel = new Set(this.selected());
    replace(
      this.els.list,
      this.systems.map((s) => {
        const box = h("input", {
          type: "checkbox",
          checked: sel.has(s.id),
          disabled: !s.ready && !sel.has(s.id),
          "data-id": s.id,
          "aria-describedby": `sys-meta-${s.id}`,
          onchange: () => {
            const next = new Set(this.selected());
            if (box.checked) next.add(s.id);
            else next.delete(s.id);
            this.choose([...next]);
          },
        });
        return h(
          "label",
          { class: `sys-option${s.ready ? "" : " is-not-ready"}`, "data-id": s.id },
          box,
          h(
            "span",
            { class: "sys-option-body" },
            h("span", { class: "sys-option-title" }, h("strong", null, s.name), " ", h("span", { class: "program-version" }, s.version)),
            h("span", { class: "sys-option-meta", id: `sys-meta-${s.id}` }, systemFacts(s)),
          ),
        );
      }),
    );
    if (focused) this.els.list.querySelector<HTMLInputElement>(`input[data-id="${CSS.escape(focused)}"]`)?.focus();
  }

  private renderRunState() {
    const n = this.selected().length;
    this.els.run.disabled = this.running || n === 0;
    if (!this.running) this.els.run.querySelector(".run-label")!.textContent = n > 1 ? `Run on ${n} systems` : n === 1 ? `Run on ${this.nameOf(this.selected()[0])}` : "Run";
    this.els.runNote.textContent = n === 0 ? "Tick at least one system." : n > MAX_SYSTEMS ? `At most ${MAX_SYSTEMS} systems at once.` : "";
  }

  private nameOf(id: string): string {
    return this.systems.find((s) => s.id === id)?.name ?? id;
  }

  /** While a system's image is still being built, the list is refreshed every few seconds. */
  private schedulePoll() {
    window.clearTimeout(this.pollTimer);
    if (!this.visible || this.running || this.systems.every((s) => s.ready)) return;
    this.pollTimer = window.setTimeout(async () => {
      await this.refresh();
      this.schedulePoll();
    }, 3000);
  }

  private async refresh() {
    try {
      const fresh = await api.systems();
      // (With no choice made, a system that became ready is ticked now.)
      this.systems = fresh;
      this.renderList();
      this.renderRunState();
    } catch (e) {
      // The list is informative; a failed refresh leaves it as it was.
      console.warn("GET /api/systems:", e);
    }
  }

  // ---- running ----

  async run() {
    if (this.running) return;
    const ids = this.selected();
    const query = this.editor.text("query.sql");
    this.clearError();
    if (ids.length === 0) return this.showError(new ApiError("invalid_argument", "Tick at least one system to ask."), "Not run:");
    if (ids.length > MAX_SYSTEMS) return this.showError(new ApiError("invalid_argument", `At most ${MAX_SYSTEMS} systems can be asked at once; ${ids.length} are ticked.`), "Not run:");
    if (query.trim() === "") return this.showError(new ApiError("invalid_argument", "Write a query first."), "Not run:");
    const size = new TextEncoder().encode(query).length;
    if (size > MAX_QUERY_BYTES) return this.showError(new ApiError("payload_too_large", `The query is ${bytes(size)}; at most ${bytes(MAX_QUERY_BYTES)} is accepted.`), "Not run:");

    this.running = true;
    window.clearTimeout(this.pollTimer);
    this.els.run.disabled = true;
    this.els.run.classList.add("is-running");
    const label = this.els.run.querySelector(".run-label")!;
    const slots: Slot[] = ids.map((id) => ({ id, answer: null }));
    // What each system has to do, as far as the list says now.
    const before = new Map(this.systems.map((s) => [s.id, s]));
    const cold = ids.some((id) => !before.get(id)?.snapshot);
    this.lastRun = { slots, response: null };
    const started = performance.now();
    this.els.phase.textContent = `Asking ${ids.length === 1 ? this.nameOf(ids[0]) : `${ids.length} systems`}…`;
    this.renderAnswers(started);
    const tick = () => {
      const elapsed = seconds((performance.now() - started) / 1000);
      label.textContent = `Running… ${elapsed}`;
      for (const el of this.els.answers.querySelectorAll<HTMLElement>(".sys-elapsed")) el.textContent = elapsed;
    };
    tick();
    const ticker = window.setInterval(tick, 100);
    // A cold provision takes a while: follow the systems' snapshots meanwhile, to say what is happening.
    let watching = cold;
    const watch = async () => {
      while (watching) {
        await new Promise((r) => setTimeout(r, 1500));
        if (!watching) break;
        try {
          const fresh = await api.systems();
          if (!watching) break;
          this.systems = fresh;
          for (const s of slots) if (!s.answer) this.updatePending(s.id, before.get(s.id));
        } catch {
          // Only the words while waiting depend on it.
        }
      }
    };
    void watch();
    try {
      const res = await api.querySystems(ids, query);
      for (const a of res.answers) {
        const slot = slots.find((s) => s.id === a.system);
        if (slot) slot.answer = a;
      }
      this.lastRun = { slots, response: res };
      this.els.phase.textContent = summaryWords(slots, this.verdictOf(slots).verdict, (id) => this.nameOf(id));
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError("internal", String(e));
      for (const s of slots) s.error = err;
      this.showError(err, "Not run:");
      this.els.phase.textContent = "The query was not run.";
    } finally {
      watching = false;
      window.clearInterval(ticker);
      this.running = false;
      this.els.run.classList.remove("is-running");
      this.renderRunState();
      this.renderAnswers();
      void this.refresh().then(() => this.schedulePoll());
    }
  }

  private updatePending(id: string, before: SystemInfo | undefined) {
    const card = this.els.answers.querySelector<HTMLElement>(`.sys-card[data-system="${CSS.escape(id)}"] .sys-waiting-what`);
    if (card) card.textContent = waitingWords(this.systems.find((s) => s.id === id), before);
  }

  private verdictOf(slots: Slot[]) {
    const comparable = slots.filter((s) => s.answer?.ok && answerShown(s.answer.result) && !s.answer.result.stdout_truncated);
    return {
      ...compareAnswers(
        comparable.map((s) => {
          const a = s.answer as Extract<SystemAnswer, { ok: true }>;
          return { system: s.id, text: a.result.stdout, csv: this.isCsv(s.id) };
        }),
      ),
      compared: comparable.map((s) => s.id),
    };
  }

  private isCsv(id: string): boolean {
    return (this.systems.find((s) => s.id === id)?.answer_mime ?? "text/csv").split(";")[0].trim() === "text/csv";
  }

  // ---- answers ----

  private renderAnswers(started?: number) {
    const run = this.lastRun;
    if (!run) {
      replace(
        this.els.answers,
        h(
          "div",
          { class: "output-empty" },
          h("p", null, "Tick the systems to ask, write one SQL query, and press ", h("strong", null, "Run"), " or ", h("kbd", null, this.opts.runKeys.split(" ")[0]), "+", h("kbd", null, "Enter"), "."),
          h("p", { class: "muted" }, "Each system answers in its own column; the page says whether the answers agree."),
        ),
      );
      return;
    }
    const pending = run.slots.some((s) => !s.answer && !s.error);
    const { verdict, normalized, compared } = this.verdictOf(run.slots);
    // Cells are marked against the answer most systems gave.
    const refId = verdict.kind === "differ" ? verdict.groups[0][0] : null;
    const ref = refId ? normalized.get(refId) : undefined;
    replace(
      this.els.answers,
      pending
        ? h("p", { class: "sys-summary muted" }, `Asked ${run.slots.length} ${run.slots.length === 1 ? "system" : "systems"}; waiting for the answers…`)
        : this.verdictBanner(run.slots, verdict, compared, run.response),
      h(
        "div",
        { class: "sys-cards" },
        run.slots.map((s) => {
          const sys = this.systems.find((x) => x.id === s.id);
          if (!s.answer && !s.error) return pendingCard(s.id, sys, started ?? performance.now());
          const n = normalized.get(s.id);
          let mark: Child = null;
          let diff = new Set<string>();
          if (verdict.kind === "differ" && n && ref && refId) {
            const group = verdict.groups.find((g) => g.includes(s.id))!;
            if (!group.includes(refId)) {
              mark = h("span", { class: "badge badge-differs", title: `Its answer differs from ${this.nameOf(refId)}'s` }, `differs from ${this.nameOf(refId)}`);
              diff = differingCells(n, ref);
            } else if (group.length > 1) {
              mark = h("span", { class: "badge badge-agrees" }, group.length === compared.length ? "agrees" : `same as ${group.filter((x) => x !== s.id).map((x) => this.nameOf(x)).join(", ")}`);
            }
          }
          return answerCard(s, sys, this.isCsv(s.id), mark, diff);
        }),
      ),
    );
  }

  private verdictBanner(slots: Slot[], verdict: Verdict, compared: string[], res: SystemsQueryResponse | null): HTMLElement | null {
    if (!res) return null;
    const names = (ids: string[]) => andList(ids.map((id) => this.nameOf(id)));
    const left = slots.filter((s) => !compared.includes(s.id));
    const why = (s: Slot) => {
      const a = s.answer;
      if (!a) return "not run";
      if (!a.ok) return "failed";
      if (a.result.stdout_truncated) return "answer cut short";
      return a.result.exit_code === 0 ? "no answer" : "error";
    };
    let tone: Tone = "ok";
    let text: Child;
    switch (verdict.kind) {
      case "agree":
        text = [h("span", { "aria-hidden": "true" }, "✓ "), `The ${compared.length} answers agree`, `: ${rowsWords(verdict.rows)}.`];
        break;
      case "similar":
        tone = "warn";
        text = [
          h("span", { "aria-hidden": "true" }, "≈ "),
          `The ${compared.length} answers have the same ${rowsWords(verdict.rows)}`,
          verdict.order && verdict.names ? ", in a different order and under different column names." : verdict.order ? ", in a different order." : ", under different column names.",
        ];
        break;
      case "differ": {
        tone = "bad";
        const parts = verdict.groups.every((g) => g.length === 1)
          ? "no two systems give the same answer"
          : verdict.groups.map((g) => (g.length > 1 ? `${names(g)} agree` : `${names(g)} differs`)).join("; ");
        text = [h("span", { "aria-hidden": "true" }, "≠ "), `The answers differ: ${parts}.`];
        break;
      }
      default:
        tone = compared.length === 1 && left.length === 0 ? "ok" : "warn";
        text =
          compared.length === 1
            ? left.length === 0
              ? `${names(compared)} answered.`
              : `Only ${names(compared)} answered: nothing to compare with.`
            : slots.length === 1
              ? `${names(slots.map((s) => s.id))} gave no answer.`
              : `None of the ${slots.length} systems gave an answer to compare.`;
    }
    return h(
      "div",
      { class: `result-head sys-verdict tone-${tone}`, "data-verdict": verdict.kind },
      h("strong", { class: "result-status" }, text),
      left.length > 0 && h("span", { class: "muted" }, `Not compared: ${left.map((s) => `${this.nameOf(s.id)} (${why(s)})`).join(", ")}.`),
      h(
        "span",
        { class: "sys-total muted", title: "From sending the query to the last answer, on the server" },
        `${slots.length} ${slots.length === 1 ? "system" : "systems"} in ${ms(res.total_ms)}`,
      ),
      verdict.kind !== "single" &&
        h(
          "details",
          { class: "sys-how" },
          h("summary", { class: "muted" }, "how compared"),
          h(
            "p",
            null,
            "Rows and cells in order, each cell trimmed; CSV quoting does not matter, numbers are compared by value (146.90 is 146.9), column names regardless of case. Booleans and dates are compared as written.",
          ),
        ),
    );
  }

  // ---- errors ----

  private showError(e: unknown, context: string) {
    const err = e instanceof ApiError ? e : new ApiError("internal", e instanceof Error ? e.message : String(e));
    let lead = `${context} `;
    if (err.code === "rate_limited") lead = `The server is busy${err.retryAfter ? `; try again in ${err.retryAfter} s` : ""}. `;
    this.els.error.hidden = false;
    replace(this.els.error, h("strong", null, lead), err.message, " ", h("code", { class: "error-code" }, err.code));
  }

  private clearError() {
    this.els.error.hidden = true;
    this.els.error.replaceChildren();
  }
}

// ---- pieces ----

function rowsWords(n: number): string {
  return `${n.toLocaleString("en")} ${n === 1 ? "row" : "rows"}`;
}

function andList(items: string[]): string {
  return items.length <= 1 ? (items[0] ?? "") : `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

function shortFingerprint(f: string): string {
  return f.slice(0, 12);
}

/** A system in the list: dataset, snapshot, warm instances. */
function systemFacts(s: SystemInfo): Child[] {
  const data = s.datasets.map((d) => `${d.name}${d.rows != null ? ` · ${d.rows.toLocaleString("en")} rows` : ""}`).join("; ");
  const lines: Child[] = [];
  if (!s.ready) lines.push(h("span", { class: "sys-fact sys-fact-warn" }, `image ${s.image_name} is not built yet`));
  if (data) lines.push(h("span", { class: "sys-fact" }, data));
  lines.push(
    s.snapshot
      ? h(
          "span",
          { class: "sys-fact", title: `snapshot image ${s.snapshot.image}, ${s.snapshot.files.toLocaleString("en")} files; fingerprint ${s.snapshot.fingerprint}` },
          `snapshot ${bytes(s.snapshot.layer_bytes)} · `,
          h("code", null, shortFingerprint(s.snapshot.fingerprint)),
        )
      : h("span", { class: "sys-fact muted" }, "no snapshot: the first query provisions it (cold)"),
  );
  if (s.instances > 0) lines.push(h("span", { class: "sys-fact sys-fact-ok" }, `${s.instances} warm ${s.instances === 1 ? "instance" : "instances"}`));
  return lines;
}

/** What a system is doing while its answer is awaited, judging by its snapshot and instances. */
function waitingWords(now: SystemInfo | undefined, before: SystemInfo | undefined): string {
  if (!now) return "Waiting for the answer…";
  if (!now.snapshot) {
    const rows = now.datasets.map((d) => (d.rows != null ? `${d.rows.toLocaleString("en")} rows of ${d.name}` : d.name)).join(" and ");
    return `Provisioning (cold): loading ${rows || "its data"} and taking a snapshot. The first query can take a minute.`;
  }
  if (before && !before.snapshot) return "Snapshot taken; starting an instance from it and asking it…";
  if (now.instances === 0) return "Starting an instance from the snapshot and asking it…";
  return "Asking a warm instance…";
}

function pendingCard(id: string, sys: SystemInfo | undefined, started: number): HTMLElement {
  return h(
    "article",
    { class: "sys-card is-pending", "data-system": id, "aria-busy": "true", "aria-label": sys?.name ?? id },
    cardHead(id, sys, h("span", { class: "spinner", "aria-hidden": "true" })),
    h(
      "div",
      { class: "sys-waiting" },
      h("span", { class: "sys-elapsed", "aria-hidden": "true" }, seconds((performance.now() - started) / 1000)),
      h("span", { class: "sys-waiting-what" }, waitingWords(sys, sys)),
    ),
  );
}

function cardHead(id: string, sys: SystemInfo | undefined, ...extra: Child[]): HTMLElement {
  return h("header", { class: "sys-card-head" }, h("h3", null, sys?.name ?? id, sys && h("span", { class: "program-version" }, ` ${sys.version}`)), ...extra);
}

/** The answer is something to show and compare: the query ran and exited 0. */
function answerShown(r: JobResult): boolean {
  return r.status === "ok" && r.exit_code === 0;
}

function answerCard(slot: Slot, sys: SystemInfo | undefined, csv: boolean, mark: Child, diff: Set<string>): HTMLElement {
  const a = slot.answer;
  if (!a || !a.ok) {
    const err = a && !a.ok ? a.error : slot.error ? { code: slot.error.code, message: slot.error.message } : { code: "internal", message: "No answer came back." };
    return h(
      "article",
      { class: "sys-card", "data-system": slot.id, "data-ok": "false", "aria-label": sys?.name ?? slot.id },
      cardHead(slot.id, sys),
      h("div", { class: "result-head tone-bad" }, h("strong", { class: "result-status" }, a ? "Failed" : "Not run")),
      h("p", { class: "notice notice-bad sys-card-error" }, err.message, " ", h("code", { class: "error-code" }, err.code)),
    );
  }
  const r = a.result;
  const provision = provisionOf(a);
  const cold = provision?.path === "cold";
  const badge = a.warm
    ? h("span", { class: "badge badge-warm", title: "The instance was already running" }, "warm")
    : cold
      ? h("span", { class: "badge badge-cold", title: `Provisioned for this query${provision?.reason ? ` (${provision.reason})` : ""}: the dataset loaded and a snapshot taken, then an instance started from it` }, "cold: provisioned")
      : h("span", { class: "badge badge-cold", title: "An instance was started from the snapshot for this query" }, "cold: new instance");
  const ok = answerShown(r);
  const rows = ok && csv ? parseCsv(r.stdout).filter((row) => !(row.length === 1 && row[0] === "")).length - 1 : null;
  const counted = rows !== null && rows >= 0 ? `: ${rowsWords(rows)}${r.stdout_truncated ? " received" : ""}` : "";
  const head = ok
    ? { text: r.stdout_truncated ? `Answer cut short${counted}` : `Answered${counted}`, tone: (r.stdout_truncated ? "warn" : "ok") as Tone } : r.status === "exit_nonzero" ? { text: `Query failed (exit code ${r.exit_code})`, tone: "bad" as Tone } : statusLine(r);
  // (The output limit is told by the cut-short notice.)
  const limits = (r.limits_hit ?? []).filter((k) => r.status !== `${k}_limit` && !(k === "output" && r.stdout_truncated));
  let body: Child;
  if (ok || r.stdout) body = csv ? csvTable(r.stdout, diff) : h("pre", { class: "stream-text sys-raw", tabindex: 0 }, r.stdout || "(empty)");
  return h(
    "article",
    { class: "sys-card", "data-system": slot.id, "data-ok": "true", "data-warm": String(a.warm), "data-status": r.status, "aria-label": sys?.name ?? slot.id },
    cardHead(slot.id, sys, badge, mark),
    h("div", { class: `result-head tone-${head.tone}` }, h("strong", { class: "result-status" }, head.text)),
    timings(a),
    limits.length > 0 && h("p", { class: "notice notice-warn sys-limits" }, `Limits reached: ${limits.map((k) => limitWords(k, r.limits)).join("; ")}.`),
    r.stdout_truncated &&
      h(
        "p",
        { class: "notice notice-warn sys-truncated" },
        `The answer was cut short: the first ${bytes(new TextEncoder().encode(r.stdout).length)} of ${bytes(r.stdout_bytes)} are shown (and not compared). Add a LIMIT, or aggregate.`,
      ),
    body,
    r.stderr &&
      h(
        "section",
        { class: `stream stream-stderr sys-stderr${ok ? " is-warning" : ""}`, "aria-label": ok ? "messages" : "error" },
        h("h4", null, ok ? "messages" : "error"),
        h("pre", { class: "stream-text", tabindex: 0 }, r.stderr),
        r.stderr_truncated && h("p", { class: "notice notice-warn" }, `cut short: ${bytes(r.stderr_bytes)} in all`),
      ),
  );
}

type Answered = Extract<SystemAnswer, { ok: true }>;

function provisionOf(a: Answered) {
  return a.provision ?? a.provisioned ?? null;
}

function timings(a: Answered): HTMLElement {
  const t = a.result.timings;
  const items: [string, string, string][] = [
    ["query", ms(t.wall_ms ?? t.run_ms), "From the query's start in the instance to its exit"],
    ["total", ms(t.total_ms), "Setting up the exec, the query, collecting the answer"],
  ];
  const p = provisionOf(a);
  const cold = p?.path === "cold";
  // start_ms is the instance's own start; a cold provision is reported apart.
  if (!a.warm) items.push(["instance start", ms(a.start_ms), "Starting an instance from the snapshot (clone, start, check)"]);
  if (cold) items.push(["provisioning (cold)", seconds(p.total_ms / 1000), `Loading the dataset and taking the snapshot${p.reason ? `: ${p.reason}` : ""}`]);
  items.push(["CPU", ms(a.result.usage.cpu_time_ms), "CPU time of the query"]);
  return h(
    "dl",
    { class: "figures sys-timings" },
    items.map(([k, v, title]) => h("div", { title, "data-figure": k }, h("dt", null, k), h("dd", null, v))),
  );
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function csvTable(text: string, diff: Set<string>): HTMLElement {
  const rows = parseCsv(text).filter((r) => !(r.length === 1 && r[0] === ""));
  if (rows.length === 0) return h("p", { class: "muted sys-empty" }, "(no rows)");
  const [header, ...body] = rows;
  const shown = body.slice(0, MAX_TABLE_ROWS);
  // A column of numbers (empty cells aside) is aligned right, its name too.
  const numeric = header.map((_, j) => shown.some((r) => (r[j] ?? "").trim() !== "") && shown.every((r) => (r[j] ?? "").trim() === "" || NUMBER.test(r[j].trim())));
  const cell = (v: string, k: string, j: number) =>
    h("td", { class: [numeric[j] ? "num" : "", diff.has(k) ? "cell-differs" : ""].join(" ").trim() || null, title: diff.has(k) ? "differs" : null }, v);
  return h(
    "div",
    { class: "sys-table" },
    h(
      "div",
      { class: "sys-table-scroll", tabindex: 0, role: "region", "aria-label": "answer" },
      h(
        "table",
        { class: "csv-table" },
        h("thead", null, h("tr", null, header.map((c, j) => h("th", { scope: "col", class: [numeric[j] ? "num" : "", diff.has(`h,${j}`) ? "cell-differs" : ""].join(" ").trim() || null }, c)))),
        h(
          "tbody",
          null,
          shown.map((r, i) => h("tr", null, r.map((c, j) => cell(c, `${i},${j}`, j)))),
        ),
      ),
    ),
    shown.length < body.length && h("p", { class: "sys-rows muted" }, `The first ${shown.length.toLocaleString("en")} of ${rowsWords(body.length)} are shown.`),
  );
}

function summaryWords(slots: Slot[], verdict: Verdict, name: (id: string) => string): string {
  const failed = slots.filter((s) => !s.answer?.ok || !answerShown(s.answer.result)).map((s) => name(s.id));
  const v =
    verdict.kind === "agree" ? "The answers agree." : verdict.kind === "similar" ? "The answers have the same rows." : verdict.kind === "differ" ? "The answers differ." : "";
  return [`${slots.length - failed.length} of ${slots.length} answered.`, v, failed.length ? `No answer from ${andList(failed)}.` : ""].filter(Boolean).join(" ");
}
