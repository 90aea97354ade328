// The options form, generated from a manifest's `options`. Values are strings, as the
// API takes them; the server validates them, the form only hints.

import type { OptionField } from "./api";
import { h } from "./dom";

/** An option's default as the string the API takes. */
export function defaultValue(o: OptionField): string {
  switch (o.type) {
    case "checkbox":
      return o.default === true || o.default === "true" ? "true" : "false";
    case "select":
      return o.default != null && o.default !== "" ? String(o.default) : (o.choices?.[0]?.value ?? "");
    case "number":
      return o.default != null && o.default !== "" ? numberString(Number(o.default)) : "";
    default:
      return o.default != null ? String(o.default) : "";
  }
}

function numberString(n: number): string {
  return Number.isFinite(n) ? String(n) : "";
}

export function defaults(options: OptionField[]): Record<string, string> {
  return Object.fromEntries(options.map((o) => [o.name, defaultValue(o)]));
}

/** A pattern the whole value must match, compiled for a client-side hint (null when JS cannot read it). */
function wholeMatch(pattern: string): RegExp | null {
  for (const flags of ["u", ""]) {
    try {
      return new RegExp(`^(?:${pattern})$`, flags);
    } catch {
      // Try without the u flag, then give up: the server still checks.
    }
  }
  return null;
}

export interface OptionsForm {
  element: HTMLElement;
  values(): Record<string, string>;
}

export function optionsForm(options: OptionField[], values: Record<string, string>, onChange: () => void): OptionsForm {
  const getters: [string, () => string][] = [];
  const fields = options.map((o) => {
    const id = `opt-${o.name}`;
    const value = values[o.name] ?? defaultValue(o);
    const help = o.help ?? undefined;
    let control: HTMLElement;
    switch (o.type) {
      case "checkbox": {
        const input = h("input", { type: "checkbox", id, name: o.name, checked: value === "true", onchange: onChange });
        getters.push([o.name, () => (input.checked ? "true" : "false")]);
        return h("div", { class: "opt opt-checkbox", title: help }, input, h("label", { for: id }, o.label));
      }
      case "select": {
        const choices = o.choices ?? [];
        const select = h(
          "select",
          { id, name: o.name, onchange: onChange },
          choices.map((c) => h("option", { value: c.value, selected: c.value === value }, c.label ?? c.value)),
        );
        // A restored value the form no longer offers: keep it visible so the server can name it.
        if (!choices.some((c) => c.value === value) && value !== "") select.append(h("option", { value, selected: true }, `${value} (unknown)`));
        getters.push([o.name, () => select.value]);
        control = select;
        break;
      }
      case "number": {
        const integer = o.integer !== false;
        const input = h("input", {
          type: "number",
          id,
          name: o.name,
          value,
          min: o.min ?? undefined,
          max: o.max ?? undefined,
          step: integer ? "1" : "any",
          inputmode: integer ? "numeric" : "decimal",
          oninput: onChange,
        });
        getters.push([o.name, () => input.value.trim()]);
        control = input;
        break;
      }
      default: {
        const re = o.pattern ? wholeMatch(o.pattern) : null;
        const input = h("input", {
          type: "text",
          id,
          name: o.name,
          value,
          maxlength: o.max_length ?? undefined,
          placeholder: help,
          spellcheck: "false",
          autocomplete: "off",
        });
        const check = () => {
          const v = input.value;
          input.setCustomValidity(v !== "" && re && !re.test(v) ? `Should match ${o.pattern}` : "");
        };
        input.addEventListener("input", () => {
          check();
          onChange();
        });
        check();
        getters.push([o.name, () => input.value]);
        control = input;
      }
    }
    return h(
      "div",
      { class: `opt opt-${o.type}`, title: help },
      h("label", { for: id }, o.label),
      control,
      o.type === "number" && (o.min != null || o.max != null) && h("span", { class: "hint" }, rangeHint(o)),
    );
  });
  return {
    element: h("div", { class: "options-grid" }, fields),
    values: () => Object.fromEntries(getters.map(([k, get]) => [k, get()])),
  };
}

function rangeHint(o: OptionField): string {
  if (o.min != null && o.max != null) return `${o.min}–${o.max}`;
  if (o.min != null) return `≥ ${o.min}`;
  return `≤ ${o.max}`;
}
