// The program picker: categories, search, and "which programs accept this MIME type".

import type { ProgramInfo } from "./api";
import { h, replace } from "./dom";

/** MIME types a program reads: its input files' and its stdin's (as the API's ?accepts= does). */
export function accepted(p: ProgramInfo): string[] {
  const m = p.inputs.map((i) => i.mime);
  if (p.stdin?.accepted && p.stdin.mime) m.push(p.stdin.mime);
  return [...new Set(m)];
}

function matches(p: ProgramInfo, words: string[]): boolean {
  const hay = [p.id, p.name, p.category, p.version, p.description, ...accepted(p), ...p.outputs.map((o) => o.mime), p.stdout_mime ?? ""]
    .join(" ")
    .toLowerCase();
  return words.every((w) => hay.includes(w));
}

export class Picker {
  private programs: ProgramInfo[] = [];
  private selected: string | null = null;
  private building = new Map<string, string>();

  constructor(
    private list: HTMLElement,
    private search: HTMLInputElement,
    private accepts: HTMLSelectElement,
    private onPick: (id: string) => void,
  ) {
    search.addEventListener("input", () => this.render());
    accepts.addEventListener("change", () => this.render());
    search.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown") {
        e.preventDefault();
        this.items()[0]?.focus();
      } else if (e.key === "Enter") {
        const first = this.items()[0];
        if (first) {
          e.preventDefault();
          this.onPick(first.dataset.id!);
        }
      } else if (e.key === "Escape" && search.value) {
        e.preventDefault();
        search.value = "";
        this.render();
      }
    });
    list.addEventListener("keydown", (e) => {
      const items = this.items();
      const i = items.indexOf(document.activeElement as HTMLButtonElement);
      if (i < 0) return;
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        const next = e.key === "ArrowDown" ? i + 1 : i - 1;
        if (next < 0) this.search.focus();
        else items[Math.min(next, items.length - 1)].focus();
      }
    });
  }

  private items(): HTMLButtonElement[] {
    return [...this.list.querySelectorAll<HTMLButtonElement>("button.program")];
  }

  setPrograms(programs: ProgramInfo[]) {
    this.programs = [...programs].sort((a, b) => a.category.localeCompare(b.category) || a.name.localeCompare(b.name));
    const mimes = [...new Set(this.programs.flatMap(accepted))].sort();
    const chosen = this.accepts.value;
    replace(
      this.accepts,
      h("option", { value: "" }, "Any input type"),
      mimes.map((m) => h("option", { value: m, selected: m === chosen }, `Accepts ${m}`)),
    );
    this.render();
  }

  /** Image build phase by program id, for programs whose image is not ready. */
  setBuilding(building: Map<string, string>) {
    this.building = building;
    this.render();
  }

  select(id: string) {
    this.selected = id;
    for (const b of this.items()) {
      if (b.dataset.id === id) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
  }

  render() {
    const words = this.search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const mime = this.accepts.value;
    const shown = this.programs.filter((p) => (!mime || accepted(p).includes(mime)) && matches(p, words));
    const groups = new Map<string, ProgramInfo[]>();
    for (const p of shown) groups.set(p.category, [...(groups.get(p.category) ?? []), p]);
    const hadFocus = this.list.contains(document.activeElement) ? (document.activeElement as HTMLElement).dataset.id : undefined;
    replace(
      this.list,
      shown.length === 0 &&
        h("p", { class: "muted empty" }, this.programs.length === 0 ? "No programs in the catalog." : "No program matches."),
      [...groups].map(([cat, ps]) =>
        h(
          "section",
          { class: "category" },
          h("h2", null, cat),
          ps.map((p) => {
            const notReady = p.ready === false;
            return h(
              "button",
              {
                type: "button",
                class: `program${notReady ? " not-ready" : ""}`,
                "data-id": p.id,
                "aria-current": p.id === this.selected ? "true" : undefined,
                onclick: () => this.onPick(p.id),
              },
              h("span", { class: "program-title" }, h("span", { class: "program-name" }, p.name), h("span", { class: "program-version" }, p.version)),
              h("span", { class: "program-desc" }, p.description),
              notReady && h("span", { class: "badge badge-building" }, this.building.get(p.id) ?? "image not ready"),
            );
          }),
        ),
      ),
    );
    if (hadFocus) this.list.querySelector<HTMLElement>(`[data-id="${CSS.escape(hadFocus)}"]`)?.focus();
  }
}
