// Database answers: CSV parsed as RFC 4180 says (quoted fields, "" inside quotes,
// separators and line breaks inside quotes, CRLF or LF), and answers of several
// systems compared after normalizing what differs only in spelling. No imports: the
// unit test (tests/answers.test.mjs) loads this file alone.

/** Rows of fields. A final line break ends the last row (it does not start an empty one). */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let i = 0;
  const n = text.length;
  // A field that starts with a quote is quoted; a quote anywhere else is a character.
  let atFieldStart = true;
  while (i < n) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
        i++;
        continue;
      }
      field += c;
      i++;
      continue;
    }
    if (c === '"' && atFieldStart) {
      quoted = true;
      atFieldStart = false;
      i++;
      continue;
    }
    if (c === ",") {
      row.push(field);
      field = "";
      atFieldStart = true;
      i++;
      continue;
    }
    if (c === "\n" || c === "\r") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      atFieldStart = true;
      i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
      continue;
    }
    field += c;
    atFieldStart = false;
    i++;
  }
  if (!atFieldStart || row.length > 0 || quoted) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

/** A decimal number written without a sign of formatting: 12, -3.50, .5, 7. */
const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?$/;

/**
 * One cell as it is compared: trimmed, and a decimal number in its shortest form
 * (`146.90` and `146.9`, `100.00` and `100`, `+1` and `1`, `-0` and `0` are each the same).
 */
export function normalizeCell(cell: string): string {
  const t = cell.trim();
  const m = DECIMAL.exec(t);
  if (!m || (m[2] === "" && (m[3] ?? "") === "")) return t;
  const int = m[2].replace(/^0+(?=\d)/, "") || "0";
  const frac = (m[3] ?? "").replace(/0+$/, "");
  const abs = frac ? `${int}.${frac}` : int;
  return m[1] === "-" && abs !== "0" ? `-${abs}` : abs;
}

export interface Answer {
  system: string;
  /** The answer's text (stdout). */
  text: string;
  /** It is CSV with a header row. */
  csv: boolean;
}

/** An answer in the form it is compared in. */
export interface Normalized {
  /** Column names, lower-cased (empty for answers that are not CSV). */
  header: string[];
  rows: string[][];
}

export function normalize(a: Answer): Normalized {
  if (!a.csv) {
    const lines = a.text.replace(/\r\n?/g, "\n").split("\n").map((l) => l.trimEnd());
    while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
    return { header: [], rows: lines.map((l) => [l]) };
  }
  const rows = parseCsv(a.text)
    .map((r) => r.map(normalizeCell))
    // Blank lines (a trailing one, say) are not rows.
    .filter((r) => !(r.length === 1 && r[0] === ""));
  const header = (rows.shift() ?? []).map((c) => c.toLowerCase());
  return { header, rows };
}

export type Verdict =
  /** Fewer than two answers to compare. */
  | { kind: "single" }
  /** Every answer is the same. */
  | { kind: "agree"; rows: number }
  /** The same rows, but not in the same order, or not under the same column names (or both). */
  | { kind: "similar"; rows: number; order: boolean; names: boolean }
  /** Different rows: the systems grouped by identical answers, the largest group first. */
  | { kind: "differ"; groups: string[][] };

const key = (x: unknown) => JSON.stringify(x);

/** Compares the answers of several systems (those that answered without an error). */
export function compareAnswers(answers: Answer[]): { verdict: Verdict; normalized: Map<string, Normalized> } {
  const normalized = new Map(answers.map((a) => [a.system, normalize(a)]));
  const all = [...normalized.values()];
  if (all.length < 2) return { verdict: { kind: "single" }, normalized };
  const same = (f: (n: Normalized) => unknown) => new Set(all.map((n) => key(f(n)))).size === 1;
  const rows = all[0].rows.length;
  let verdict: Verdict;
  if (same((n) => [n.header, n.rows])) {
    verdict = { kind: "agree", rows };
  } else if (same((n) => [n.header.length, sortedRows(n.rows)])) {
    verdict = { kind: "similar", rows, order: !same((n) => n.rows), names: !same((n) => n.header) };
  } else {
    const groups = new Map<string, string[]>();
    for (const [system, n] of normalized) {
      const k = key([n.header, n.rows]);
      groups.set(k, [...(groups.get(k) ?? []), system]);
    }
    verdict = { kind: "differ", groups: [...groups.values()].sort((a, b) => b.length - a.length) };
  }
  return { verdict, normalized };
}

function sortedRows(rows: string[][]): string[] {
  return rows.map(key).sort();
}

/**
 * Which cells of `n` differ from `ref` (same row and column, normalized), as
 * "row,column" keys (rows counted without the header); the header's cells as
 * "h,column". Empty when the two have different numbers of rows: then every row
 * would differ, which says nothing.
 */
export function differingCells(n: Normalized, ref: Normalized): Set<string> {
  const out = new Set<string>();
  if (n.rows.length !== ref.rows.length) return out;
  n.header.forEach((c, j) => {
    if (c !== ref.header[j]) out.add(`h,${j}`);
  });
  n.rows.forEach((r, i) =>
    r.forEach((c, j) => {
      if (c !== ref.rows[i]?.[j]) out.add(`${i},${j}`);
    }),
  );
  return out;
}
