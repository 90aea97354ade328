// Unit test of src/answers.ts (CSV parsing, normalizing and comparing the answers
// of several database systems): `npm run test:unit` (node --test; the TypeScript is
// compiled with Vite's esbuild, no browser or server needed).

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { transformWithEsbuild } from "vite";

const src = new URL("../src/answers.ts", import.meta.url);
const { code } = await transformWithEsbuild(fs.readFileSync(src, "utf8"), src.pathname, { loader: "ts", format: "esm" });
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "runbox-answers-"));
fs.writeFileSync(path.join(dir, "answers.mjs"), code);
const { parseCsv, normalizeCell, compareAnswers, differingCells, normalize } = await import(pathToFileURL(path.join(dir, "answers.mjs")).href);
fs.rmSync(dir, { recursive: true });

test("CSV: quoted fields, doubled quotes, separators and line breaks inside quotes", () => {
  assert.deepEqual(parseCsv('a,b\n"art supplies",1\n"say ""hi""","x,y"\n"two\nlines",3\n'), [
    ["a", "b"],
    ["art supplies", "1"],
    ['say "hi"', "x,y"],
    ["two\nlines", "3"],
  ]);
});

test("CSV: CRLF, no final line break, empty fields, a quote inside an unquoted field", () => {
  assert.deepEqual(parseCsv('a,b\r\n1,\r\n,2\r\n"",x"y'), [
    ["a", "b"],
    ["1", ""],
    ["", "2"],
    ["", 'x"y'],
  ]);
  assert.deepEqual(parseCsv(""), []);
  assert.deepEqual(parseCsv("only"), [["only"]]);
  assert.deepEqual(parseCsv("a,\n"), [["a", ""]]);
});

test("cells: trimmed, decimals by value, everything else as written", () => {
  assert.equal(normalizeCell(" 146.90 "), "146.9");
  assert.equal(normalizeCell("100.00"), "100");
  assert.equal(normalizeCell("007"), "7");
  assert.equal(normalizeCell("-0.0"), "0");
  assert.equal(normalizeCell("+3"), "3");
  assert.equal(normalizeCell(".50"), "0.5");
  assert.equal(normalizeCell("-12.340"), "-12.34");
  assert.equal(normalizeCell("t"), "t");
  assert.equal(normalizeCell("2023-02-15 16:44:33"), "2023-02-15 16:44:33");
  assert.equal(normalizeCell("1e5"), "1e5");
  assert.equal(normalizeCell("."), ".");
  assert.equal(normalizeCell("-"), "-");
});

// The same GROUP BY as SQLite, PostgreSQL and DuckDB print it (docs/catalog.md).
const sqlite = 'category,n,avg_amount\n"art supplies",27801,146.9\nbooks,27712,151.23\n';
const postgres = "category,n,avg_amount\nart supplies,27801,146.90\nbooks,27712,151.23\n";
const duckdb = "category,n,avg_amount\nart supplies,27801,146.9\nbooks,27712,151.23\n\n";

test("the three engines' spellings of one answer agree", () => {
  const { verdict } = compareAnswers([
    { system: "sqlite", text: sqlite, csv: true },
    { system: "postgres", text: postgres, csv: true },
    { system: "duckdb", text: duckdb, csv: true },
  ]);
  assert.deepEqual(verdict, { kind: "agree", rows: 2 });
});

test("one different cell: the answers differ, grouped, and the cell is found", () => {
  const changed = duckdb.replace("151.23", "151.24");
  const { verdict, normalized } = compareAnswers([
    { system: "sqlite", text: sqlite, csv: true },
    { system: "postgres", text: postgres, csv: true },
    { system: "duckdb", text: changed, csv: true },
  ]);
  assert.deepEqual(verdict, { kind: "differ", groups: [["sqlite", "postgres"], ["duckdb"]] });
  assert.deepEqual([...differingCells(normalized.get("duckdb"), normalized.get("sqlite"))], ["1,2"]);
});

test("the same rows in another order, or under other column names, are similar, not equal", () => {
  const reordered = "category,n,avg_amount\nbooks,27712,151.23\nart supplies,27801,146.9\n";
  let { verdict } = compareAnswers([
    { system: "a", text: sqlite, csv: true },
    { system: "b", text: reordered, csv: true },
  ]);
  assert.deepEqual(verdict, { kind: "similar", rows: 2, order: true, names: false });
  ({ verdict } = compareAnswers([
    { system: "a", text: sqlite, csv: true },
    { system: "b", text: sqlite.replace("n,", "count_star(),"), csv: true },
  ]));
  assert.deepEqual(verdict, { kind: "similar", rows: 2, order: false, names: true });
  // Column names differ only in case: equal (PostgreSQL folds unquoted names).
  ({ verdict } = compareAnswers([
    { system: "a", text: sqlite, csv: true },
    { system: "b", text: sqlite.replace("avg_amount", "AVG_AMOUNT"), csv: true },
  ]));
  assert.equal(verdict.kind, "agree");
});

test("an extra row differs; one answer alone is not compared", () => {
  const { verdict, normalized } = compareAnswers([
    { system: "a", text: sqlite, csv: true },
    { system: "b", text: `${postgres}cars,1,2\n`, csv: true },
  ]);
  assert.equal(verdict.kind, "differ");
  assert.equal(differingCells(normalized.get("b"), normalized.get("a")).size, 0, "different row counts mark no cells");
  assert.deepEqual(compareAnswers([{ system: "a", text: sqlite, csv: true }]).verdict, { kind: "single" });
});

test("answers that are not CSV are compared as lines, trailing spaces and blank lines ignored", () => {
  assert.deepEqual(normalize({ system: "x", text: "a  \r\nb\n\n", csv: false }), { header: [], rows: [["a"], ["b"]] });
  const { verdict } = compareAnswers([
    { system: "a", text: "1 | x\n", csv: false },
    { system: "b", text: "1 | x   \n\n", csv: false },
  ]);
  assert.equal(verdict.kind, "agree");
});
