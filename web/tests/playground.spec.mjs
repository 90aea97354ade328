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

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.env.RUNBOX_URL?.replace(/\/+$/, "");
if (!base) {
  console.error("playground.spec: set RUNBOX_URL to the runbox server, e.g. RUNBOX_URL=http://127.0.0.1:8080");
  process.exit(2);
}
const shots = process.env.RUNBOX_SCREENSHOTS || fs.mkdtempSync(path.join(os.tmpdir(), "runbox-playground-"));
fs.mkdirSync(shots, { recursive: true });
const timeout = Number(process.env.RUNBOX_TEST_TIMEOUT_MS || 60_000);
const origin = new URL(base).origin;

let step = "start";
let shotNo = 0;
const problems = [];
let browser;

class Mismatch extends Error {}

/** Polls `fn` in the page until it returns a truthy value; on timeout, describes the page. */
async function until(page, what, fn, arg) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout, polling: 100 })).jsonValue();
  } catch (e) {
    const state = await describe(page).catch(() => "(page state unavailable)");
    throw new Mismatch(`${what}: not seen within ${timeout} ms (${e.message.split("\n")[0]})\n${state}`);
  }
}

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

async function shot(page, name) {
  const file = path.join(shots, `${String(++shotNo).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
  console.log(`  screenshot ${file}`);
}

function watch(page, label) {
  page.on("pageerror", (e) => problems.push(`${label}: uncaught error in the page: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`  [${label} console.error] ${m.text()}`);
  });
  // Every asset must come from the runbox server itself.
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && !u.startsWith("blob:") && new URL(u).origin !== origin) problems.push(`${label}: request to another origin: ${u}`);
  });
}

function checkProblems() {
  if (problems.length) throw new Mismatch(problems.join("\n"));
}

async function pickProgram(page, id) {
  const button = page.locator(`#program-list button.program[data-id="${id}"]`);
  // On narrow windows the list is a drawer; this test uses a wide one, where it is always shown.
  await button.waitFor({ state: "visible", timeout });
  await button.click();
  await until(page, `program ${id} selected`, (id) => location.hash === `#${id}` && document.querySelector(".cm-content") !== null, id);
}

/** Waits for a run to finish: the Run button is back and a result is shown. */
async function waitForResult(page, what) {
  await until(page, `${what}: run finished`, () => {
    const run = document.querySelector("#run");
    const err = document.querySelector("#run-error");
    if (err && !err.hidden) return true; // reported below
    return run && !run.disabled && document.querySelector(".result") !== null;
  });
  const error = await page.evaluate(() => {
    const err = document.querySelector("#run-error");
    return err && !err.hidden ? err.textContent : null;
  });
  if (error) throw new Mismatch(`${what}: the page shows an error: ${error}\n${await describe(page)}`);
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  const page = await context.newPage();
  watch(page, "page");

  step = "open the page";
  console.log(`- ${step}: ${base}/`);
  await page.goto(`${base}/`);
  await page.locator("#program-list button.program").first().waitFor({ timeout });
  await until(page, "the output pane's first hint", () => document.querySelector(".output-empty, .result") !== null);
  checkProblems();
  await shot(page, "opened");

  step = "pick Python and edit the code";
  console.log(`- ${step}`);
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

  step = "run Python with Ctrl+Enter";
  console.log(`- ${step}`);
  await page.keyboard.press("Control+Enter");
  await waitForResult(page, "python");
  const stdout = await until(page, "stdout 42", () => {
    const t = document.querySelector(".stream-stdout pre")?.textContent;
    return t !== undefined && t.trim() === "42" ? t : false;
  });
  console.log(`  stdout: ${JSON.stringify(stdout)}; ${await page.locator(".result-status").textContent()}`);
  checkProblems();
  await shot(page, "python-ran");

  step = "pick Graphviz and run it";
  console.log(`- ${step}`);
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

  step = "hit a limit and cut the output (shell)";
  console.log(`- ${step}`);
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

  step = "share the Python result";
  console.log(`- ${step}`);
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

  step = "open the permalink in a new page";
  console.log(`- ${step}`);
  const again = await context.newPage();
  watch(again, "permalink page");
  await again.goto(link);
  const restored = await until(again, "the stored stdout 42 and the code restored", () => {
    const out = document.querySelector(".stream-stdout pre")?.textContent;
    const code = [...document.querySelectorAll(".cm-content .cm-line")].map((l) => l.textContent).join("\n");
    return out?.trim() === "42" && code === "print(6*7)" && document.querySelector("#program-head h1")?.textContent?.includes("Python")
      ? { out, code, path: location.pathname }
      : false;
  });
  console.log(`  restored at ${restored.path}: stdout ${JSON.stringify(restored.out)}, code ${JSON.stringify(restored.code)}`);
  checkProblems();
  await shot(again, "permalink-opened");
}

try {
  await main();
  await browser?.close();
  console.log(`playground: 7 passed, 0 failed (screenshots in ${shots})`);
} catch (e) {
  console.error(`\nplayground test FAILED at step "${step}":\n${e instanceof Mismatch ? e.message : e.stack ?? e}`);
  try {
    const pages = browser?.contexts().flatMap((c) => c.pages()) ?? [];
    const last = pages[pages.length - 1];
    if (last) {
      const file = path.join(shots, "failure.png");
      await last.screenshot({ path: file });
      console.error(`screenshot of the failure: ${file}`);
    }
  } catch {
    // The browser may be gone; the message above is what matters.
  }
  await browser?.close().catch(() => {});
  process.exit(1);
}
