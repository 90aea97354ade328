// Browser test of the playground against a running `runbox serve`.
//
//   RUNBOX_URL=http://127.0.0.1:8080 RUNBOX_SCREENSHOTS=/tmp/shots node web/tests/playground.spec.mjs
//
// Env: RUNBOX_URL (required) the server's base URL; RUNBOX_SCREENSHOTS (optional) a
// directory for a PNG after each step (default: a new temp dir, printed);
// CHROMIUM (optional) the browser binary (default /usr/bin/chromium);
// RUNBOX_TEST_TIMEOUT_MS (optional) how long each wait may take (default 60000).
// Needs playwright-core (`cd web && npm ci`) and Debian's chromium. Exits non-zero,
// naming the step, on any mismatch.

import { Mismatch, browserTest } from "./browser.mjs";

/** What the page shows now, for failure messages. */
async function describe(page) {
  return page.evaluate(() => {
    const text = (sel) => document.querySelector(sel)?.textContent?.trim() ?? "(none)";
    return [
      `  url: ${location.href}`,
      `  program: ${text("#program-head h1")}`,
      `  error box: ${document.querySelector("#run-error")?.hidden ? "(hidden)" : text("#run-error")}`,
      `  result status: ${text(".result-status")}`,
      `  stdout: ${JSON.stringify(document.querySelector(".stream-stdout pre")?.textContent ?? null)}`,
      `  stderr: ${JSON.stringify(document.querySelector(".stream-stderr pre")?.textContent ?? null)}`,
    ].join("\n");
  });
}

const { base, origin, timeout, until, shot, watch, checkProblems, begin, launch, run } = browserTest("playground", describe);

async function pickProgram(page, id) {
  const button = page.locator(`#program-list button.program[data-id="${id}"]`);
  // On narrow windows the list is a drawer; this test uses a wide one, where it is always shown.
  await button.waitFor({ state: "visible", timeout });
  await button.click();
  await until(page, `program ${id} selected`, (id) => location.hash === `#${id}` && document.querySelector(".cm-content") !== null, id);
}

/** The text in the editor (the shown file). */
function editorText(page) {
  return page.evaluate(() => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n"));
}

/** Replaces the shown file's text by typing. */
async function typeCode(page, lines) {
  await page.locator(".cm-content").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  for (const [i, line] of lines.entries()) {
    if (i > 0) await page.keyboard.press("Enter");
    await page.keyboard.type(line);
  }
  const want = lines.join("\n");
  await until(page, `the editor holding ${JSON.stringify(want)}`, (want) => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === want, want);
}

/** The tabs: [{path, lang, selected, removable}]. */
function tabs(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#tabs .tab")].map((t) => ({
      path: t.dataset.path,
      lang: t.querySelector(".tab-lang")?.textContent,
      selected: t.getAttribute("aria-selected") === "true",
      removable: t.querySelector(".tab-remove") !== null,
    })),
  );
}

function expectTabs(got, want, what) {
  const paths = got.map((t) => t.path);
  if (JSON.stringify(paths) !== JSON.stringify(want)) throw new Mismatch(`${what}: the tabs are ${JSON.stringify(paths)}, not ${JSON.stringify(want)}`);
}

/** Types a path into the tab bar's "new file" field (opening it) and presses Enter. */
async function submitNewPath(page, path) {
  if (!(await page.locator(".tab-new-path").isVisible())) await page.locator(".tab-add-button").click();
  const field = page.locator(".tab-new-path");
  await field.waitFor({ state: "visible", timeout });
  await field.fill(path);
  await field.press("Enter");
}

/** Marks the shown result, so that waitForResult waits for the next one. */
async function markResult(page) {
  await page.evaluate(() => document.querySelector(".result")?.setAttribute("data-old", ""));
}

/** Waits for a run to finish: the Run button is back and a result is shown. */
async function waitForResult(page, what) {
  await until(page, `${what}: run finished`, () => {
    const run = document.querySelector("#run");
    const err = document.querySelector("#run-error");
    if (err && !err.hidden) return true; // reported below
    return run && !run.disabled && document.querySelector(".result:not([data-old])") !== null;
  });
  const error = await page.evaluate(() => {
    const err = document.querySelector("#run-error");
    return err && !err.hidden ? err.textContent : null;
  });
  if (error) throw new Mismatch(`${what}: the page shows an error: ${error}\n${await describe(page)}`);
}

async function main() {
  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  const page = await context.newPage();
  watch(page, "page");

  begin(`open the page: ${base}/`);
  await page.goto(`${base}/`);
  await page.locator("#program-list button.program").first().waitFor({ timeout });
  await until(page, "the output pane's first hint", () => document.querySelector(".output-empty, .result") !== null);
  checkProblems();
  await shot(page, "opened");

  begin("pick Python and edit the code");
  await pickProgram(page, "python");
  await until(page, "main.py tab", () => document.querySelector('.tab[data-path="main.py"]') !== null);
  await page.locator(".cm-content").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.type("print(6*7)");
  const code = await until(page, "the editor holding print(6*7)", () => {
    const t = [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n");
    return t === "print(6*7)" ? t : false;
  });
  console.log(`  editor: ${JSON.stringify(code)}`);
  await shot(page, "python-edited");

  begin("run Python with Ctrl+Enter");
  await page.keyboard.press("Control+Enter");
  await waitForResult(page, "python");
  const stdout = await until(page, "stdout 42", () => {
    const t = document.querySelector(".stream-stdout pre")?.textContent;
    return t !== undefined && t.trim() === "42" ? t : false;
  });
  console.log(`  stdout: ${JSON.stringify(stdout)}; ${await page.locator(".result-status").textContent()}`);
  checkProblems();
  await shot(page, "python-ran");

  begin("add helper.py (refusing bad paths first)");
  await submitNewPath(page, "../helper.py");
  let note = await until(page, "an error about ..", () => {
    const n = document.querySelector("#files-note.files-note-error");
    return n && !n.hidden && /\.\./.test(n.textContent) && document.querySelector(".tab-new-path")?.getAttribute("aria-invalid") === "true" ? n.textContent : false;
  });
  console.log(`  ../helper.py: ${JSON.stringify(note)}`);
  await shot(page, "add-file-refused");
  await page.emulateMedia({ colorScheme: "dark" });
  await shot(page, "add-file-refused-dark");
  await page.emulateMedia({ colorScheme: "light" });
  for (const [bad, why] of [
    ["main.py", /already/],
    ["/etc/x.py", /relative/],
    ["a b.py", /space/],
  ]) {
    await submitNewPath(page, bad);
    note = await until(page, `an error about ${bad}`, (re) => {
      const n = document.querySelector("#files-note.files-note-error");
      return n && !n.hidden && new RegExp(re).test(n.textContent) ? n.textContent : false;
    }, why.source);
    console.log(`  ${bad}: ${JSON.stringify(note)}`);
  }
  expectTabs(await tabs(page), ["main.py"], "after refused paths");
  await page.locator(".tab-new-path").fill("helper.py");
  await until(page, "the field naming the language", () => document.querySelector(".tab-new-lang")?.textContent === "Python");
  await page.locator(".tab-new-path").press("Enter");
  await until(page, "the helper.py tab selected", () => document.querySelector('.tab[data-path="helper.py"]')?.getAttribute("aria-selected") === "true");
  let t = await tabs(page);
  expectTabs(t, ["main.py", "helper.py"], "after adding helper.py");
  if (t[0].removable || !t[1].removable || t[1].lang !== "Python") throw new Mismatch(`only helper.py should be removable, and it is Python: ${JSON.stringify(t)}`);
  // The editor has the focus, on the new (empty) file.
  if ((await editorText(page)) !== "") throw new Mismatch(`the new file is not empty: ${JSON.stringify(await editorText(page))}`);
  await page.keyboard.type("def answer(): return 42");
  await until(page, "helper.py holding the function", () => [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n") === "def answer(): return 42");
  await page.locator('.tab[data-path="main.py"]').click();
  await typeCode(page, ["from helper import answer; print(answer())"]);
  await shot(page, "helper-added");

  begin("run main.py importing helper.py");
  await markResult(page);
  const [sent] = await Promise.all([
    page.waitForRequest((r) => r.method() === "POST" && new URL(r.url()).pathname === "/api/jobs", { timeout }),
    page.locator("#run").click(),
  ]);
  const inputs = JSON.parse(sent.postData() ?? "{}").inputs ?? [];
  console.log(`  sent inputs: ${JSON.stringify(inputs.map((i) => i.path))}`);
  const helper = inputs.find((i) => i.path === "helper.py");
  if (helper?.content?.text !== "def answer(): return 42") throw new Mismatch(`the request's inputs lack helper.py: ${JSON.stringify(inputs)}`);
  await waitForResult(page, "python with helper.py");
  const viaHelper = await until(page, "stdout 42 from helper.answer()", () => document.querySelector(".stream-stdout pre")?.textContent?.trim() === "42" && document.querySelector(".result-status")?.textContent);
  console.log(`  stdout 42; ${viaHelper}`);
  checkProblems();
  await shot(page, "helper-ran");

  begin("remove an added file (Delete, Undo, ×)");
  await submitNewPath(page, "notes/todo.txt");
  await until(page, "the notes/todo.txt tab", () => document.querySelector('.tab[data-path="notes/todo.txt"] .tab-lang')?.textContent === "Text");
  await page.locator('.tab[data-path="notes/todo.txt"]').focus();
  await page.keyboard.press("Delete");
  await until(page, "notes/todo.txt removed, with Undo", () => !document.querySelector('.tab[data-path="notes/todo.txt"]') && /Removed notes\/todo\.txt/.test(document.querySelector("#files-note")?.textContent ?? ""));
  const focused = await page.evaluate(() => document.activeElement?.dataset?.path ?? document.activeElement?.tagName);
  if (focused !== "helper.py") throw new Mismatch(`after Delete the focus is on ${focused}, not the helper.py tab`);
  await shot(page, "file-removed");
  await page.locator("#files-note button", { hasText: "Undo" }).click();
  await until(page, "notes/todo.txt back", () => document.querySelector('.tab[data-path="notes/todo.txt"]')?.getAttribute("aria-selected") === "true");
  await page.locator('.tab[data-path="notes/todo.txt"] .tab-remove').click();
  await until(page, "notes/todo.txt removed by its ×", () => !document.querySelector('.tab[data-path="notes/todo.txt"]'));
  // A declared file stays: Delete on its tab does nothing.
  await page.locator('.tab[data-path="main.py"]').focus();
  await page.keyboard.press("Delete");
  await page.keyboard.press("ArrowRight");
  t = await tabs(page);
  expectTabs(t, ["main.py", "helper.py"], "after removing notes/todo.txt");
  if (!t[1].selected) throw new Mismatch(`ArrowRight from main.py did not select helper.py: ${JSON.stringify(t)}`);
  if ((await editorText(page)) !== "def answer(): return 42") throw new Mismatch(`helper.py lost its text: ${JSON.stringify(await editorText(page))}`);
  console.log(`  tabs: ${t.map((x) => x.path).join(", ")}`);
  checkProblems();

  begin("jq: its two declared files");
  await pickProgram(page, "jq");
  t = await tabs(page);
  expectTabs(t, ["filter.jq", "data.json"], "jq");
  if (t.some((x) => x.removable)) throw new Mismatch(`jq's declared files must not be removable: ${JSON.stringify(t)}`);
  await page.locator('.tab[data-path="filter.jq"]').click();
  await page.keyboard.press("End");
  await until(page, "data.json shown", () => document.querySelector('.tab[data-path="data.json"]')?.getAttribute("aria-selected") === "true" && document.activeElement?.dataset?.path === "data.json");
  const data = await editorText(page);
  if (!data.includes('"planets"')) throw new Mismatch(`data.json's editor shows ${JSON.stringify(data)}`);
  await page.keyboard.press("ArrowLeft");
  if (!(await editorText(page)).includes("select(.moons > 10)")) throw new Mismatch(`filter.jq's editor shows ${JSON.stringify(await editorText(page))}`);
  await page.locator("#run").click();
  await waitForResult(page, "jq");
  const jq = await until(page, "jq's output naming Saturn", () => {
    const out = document.querySelector(".stream-stdout pre")?.textContent ?? "";
    return /"name": "Saturn"/.test(out) ? out : false;
  });
  console.log(`  stdout: ${JSON.stringify(jq.slice(0, 60))}…`);
  checkProblems();
  await shot(page, "jq-ran");

  begin("pick Graphviz and run it");
  await pickProgram(page, "graphviz");
  await page.locator("#run").click();
  await waitForResult(page, "graphviz");
  const size = await until(page, "graph.png shown as an image", () => {
    const img = document.querySelector('.stream-file[data-path="graph.png"] img');
    return img && img.complete && img.naturalWidth > 0 ? { w: img.naturalWidth, h: img.naturalHeight } : false;
  });
  console.log(`  graph.png: ${size.w}x${size.h}`);
  checkProblems();
  await shot(page, "graphviz-ran");

  begin("hit a limit and cut the output (shell)");
  await pickProgram(page, "sh");
  await until(page, "script.sh tab", () => document.querySelector('.tab[data-path="script.sh"]') !== null);
  await page.locator(".cm-content").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  // 3,000,000 bytes of stdout (over the 1 MiB cap), then past the 5 s wall-clock limit.
  // (Typed line by line: the editor auto-indents nothing here, but keeps what is typed.)
  await page.keyboard.type("yes 0123456789 | head -c 3000000");
  await page.keyboard.press("Enter");
  await page.keyboard.type(`sleep 60 # ${Date.now()}`);
  await page.keyboard.press("Control+Enter");
  await waitForResult(page, "sh");
  const cut = await until(page, "the wall-clock limit and the cut stdout reported", () => {
    const status = document.querySelector(".result-status")?.textContent ?? "";
    const notice = document.querySelector(".stream-stdout .notice-warn")?.textContent ?? "";
    return /wall-clock time limit/.test(status) && /of 3,000,000 bytes/.test(notice) ? { status, notice } : false;
  });
  console.log(`  status: ${JSON.stringify(cut.status)}; notice: ${JSON.stringify(cut.notice)}`);
  checkProblems();
  await shot(page, "limits-hit");

  begin("share the Python result");
  await pickProgram(page, "python");
  await until(page, "the Python result kept", () => document.querySelector(".stream-stdout pre")?.textContent?.trim() === "42");
  await page.locator("#share").click();
  const link = await until(page, "the permalink shown", () => {
    const v = document.querySelector(".share-url")?.value;
    return v && /\/r\/[^/]+$/.test(v) ? v : false;
  });
  console.log(`  permalink: ${link}`);
  if (!link.startsWith(`${origin}/r/`)) throw new Mismatch(`the permalink ${link} is not an absolute URL on ${origin}`);
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  if (copied !== link) throw new Mismatch(`the clipboard holds ${JSON.stringify(copied)}, not the permalink ${link}`);
  await shot(page, "shared");

  begin("open the permalink in a new page");
  const again = await context.newPage();
  watch(again, "permalink page");
  await again.goto(link);
  const restored = await until(again, "the stored stdout 42 and the code restored", () => {
    const out = document.querySelector(".stream-stdout pre")?.textContent;
    const code = [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n");
    return out?.trim() === "42" && code === "from helper import answer; print(answer())" && document.querySelector("#program-head h1")?.textContent?.includes("Python")
      ? { out, code, path: location.pathname }
      : false;
  });
  console.log(`  restored at ${restored.path}: stdout ${JSON.stringify(restored.out)}, main.py ${JSON.stringify(restored.code)}`);
  const back = await tabs(again);
  expectTabs(back, ["main.py", "helper.py"], "the permalink page");
  if (back[0].removable || !back[1].removable || back[1].lang !== "Python") throw new Mismatch(`the restored helper.py is not an added Python file: ${JSON.stringify(back)}`);
  await again.locator('.tab[data-path="helper.py"]').click();
  const helperText = await editorText(again);
  if (helperText !== "def answer(): return 42") throw new Mismatch(`the restored helper.py holds ${JSON.stringify(helperText)}`);
  console.log(`  helper.py ${JSON.stringify(helperText)}`);
  checkProblems();
  await shot(again, "permalink-opened");
}

await run(main);
