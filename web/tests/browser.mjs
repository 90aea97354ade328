// What the browser tests share: their settings, Debian's chromium driven by
// playwright-core, bounded waits that describe the page when they time out,
// screenshots, and a run that names the failing step.
//
// Env: RUNBOX_URL (required) the server's base URL; RUNBOX_SCREENSHOTS (optional) a
// directory for a PNG after each step (default: a new temp dir, printed);
// CHROMIUM (optional) the browser binary (default /usr/bin/chromium);
// RUNBOX_TEST_TIMEOUT_MS (optional) how long each wait may take (default 60000).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export class Mismatch extends Error {}

/**
 * A test named `name`. `describe(page)` says what the page shows now (for failure
 * messages). Exits with 2 when RUNBOX_URL is missing.
 */
export function browserTest(name, describe) {
  const base = process.env.RUNBOX_URL?.replace(/\/+$/, "");
  if (!base) {
    console.error(`${name}: set RUNBOX_URL to the runbox server, e.g. RUNBOX_URL=http://127.0.0.1:8080`);
    process.exit(2);
  }
  const shots = process.env.RUNBOX_SCREENSHOTS || fs.mkdtempSync(path.join(os.tmpdir(), `runbox-${name}-`));
  fs.mkdirSync(shots, { recursive: true });
  const timeout = Number(process.env.RUNBOX_TEST_TIMEOUT_MS || 60_000);
  const origin = new URL(base).origin;

  let step = "start";
  let steps = 0;
  let shotNo = 0;
  const problems = [];
  let browser;

  /** Polls `fn` in the page until it returns a truthy value; on timeout, describes the page. */
  async function until(page, what, fn, arg, ms = timeout) {
    try {
      return await (await page.waitForFunction(fn, arg, { timeout: ms, polling: 100 })).jsonValue();
    } catch (e) {
      const state = await describe(page).catch(() => "(page state unavailable)");
      throw new Mismatch(`${what}: not seen within ${ms} ms (${e.message.split("\n")[0]})\n${state}`);
    }
  }

  async function shot(page, label, opts = {}) {
    const file = path.join(shots, `${String(++shotNo).padStart(2, "0")}-${label}.png`);
    await page.screenshot({ path: file, ...opts });
    console.log(`  screenshot ${file}`);
    return file;
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

  function begin(label) {
    step = label;
    steps++;
    console.log(`- ${label}`);
  }

  async function launch() {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: ["--no-sandbox"],
    });
    return browser;
  }

  /** Runs `main`; on a failure, says which step failed, saves a screenshot and exits 1. */
  async function run(main) {
    try {
      await main();
      await browser?.close();
      console.log(`${name}: ${steps} passed, 0 failed (screenshots in ${shots})`);
    } catch (e) {
      console.error(`\n${name} test FAILED at step "${step}":\n${e instanceof Mismatch ? e.message : (e.stack ?? e)}`);
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
  }

  return { base, origin, shots, timeout, until, shot, watch, checkProblems, begin, launch, run };
}
