// Browser test of the playground's Databases view against a running `runbox serve`
// whose catalog has the systems sqlite, postgres and duckdb (their images built):
//
//   RUNBOX_URL=http://127.0.0.1:8080 RUNBOX_SCREENSHOTS=/tmp/shots node web/tests/systems.spec.mjs
//
// It opens /#systems, runs one GROUP BY over the orders dataset (a million rows) on
// the three systems at once (the first query to a system without a snapshot
// provisions it: up to minutes), checks the per-system waiting cards while the
// answers are awaited, that the three tables hold the same 36 rows (whose counts add
// up to 1,000,000), that the page says they agree and shows timings; then a query
// with a syntax error (each card shows its engine's error), then the GROUP BY again,
// answered by warm instances; then a deep link (?systems=sqlite,duckdb) and a narrow
// window. Env as in browser.mjs, and RUNBOX_COLD_TIMEOUT_MS (default 600000): how
// long the first answers may take.

import { Mismatch, browserTest } from "./browser.mjs";

/** What the Databases view shows now, for failure messages. */
async function describe(page) {
  return page.evaluate(() => {
    const text = (el) => el?.innerText?.replace(/\s+/g, " ").trim() ?? "(none)";
    const cards = [...document.querySelectorAll(".sys-card")].map(
      (c) => `  card ${c.dataset.system}: ${c.getAttribute("aria-busy") === "true" ? "(waiting) " : ""}${text(c).slice(0, 400)}`,
    );
    return [
      `  url: ${location.href}`,
      `  error box: ${document.querySelector("#sys-error")?.hidden ? "(hidden)" : text(document.querySelector("#sys-error"))}`,
      `  systems: ${[...document.querySelectorAll("#sys-list .sys-option")].map((o) => `${o.querySelector("input")?.checked ? "[x]" : "[ ]"} ${text(o)}`).join(" | ")}`,
      `  verdict: ${text(document.querySelector(".sys-verdict"))}`,
      ...cards,
    ].join("\n");
  });
}

const { base, origin, timeout, until, shot, watch, checkProblems, begin, launch, run } = browserTest("systems", describe);
const coldTimeout = Number(process.env.RUNBOX_COLD_TIMEOUT_MS || 600_000);
const SYSTEMS = ["sqlite", "postgres", "duckdb"];
// Counts and integer sums: the same text from every engine (docs/catalog.md lists
// where they differ: decimals, booleans, unnamed columns).
const GROUP_BY = "SELECT category, count(*) AS orders, sum(quantity) AS items FROM orders GROUP BY category ORDER BY category;";

/** Replaces the SQL editor's text by typing. */
async function typeQuery(page, text) {
  await page.locator("#sys-editor .cm-content").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.type(text);
  await until(page, `the SQL editor holding ${JSON.stringify(text)}`, (want) => [...document.querySelectorAll("#sys-editor .cm-line")].map((l) => l.textContent).join("\n") === want, text);
}

/**
 * Runs the editor's query with Ctrl+Enter. The answer is held back (it still comes
 * from the server) until `whileWaiting(page)` has looked at the waiting cards, then
 * the run is awaited until every card has its answer.
 */
async function runQuery(page, what, whileWaiting, waitMs = timeout) {
  let release;
  const held = new Promise((r) => (release = r));
  await page.route("**/api/systems/query", async (route) => {
    const response = await route.fetch({ timeout: coldTimeout });
    await held;
    await route.fulfill({ response });
  });
  try {
    await page.locator("#sys-editor .cm-content").click();
    await page.keyboard.press("Control+Enter");
    await whileWaiting(page);
  } finally {
    release();
  }
  await until(
    page,
    `${what}: every answer in`,
    () => {
      const run = document.querySelector("#sys-run");
      const err = document.querySelector("#sys-error");
      if (err && !err.hidden) return true; // reported below
      return run && !run.classList.contains("is-running") && document.querySelectorAll(".sys-card").length > 0 && !document.querySelector('.sys-card[aria-busy="true"]');
    },
    undefined,
    waitMs,
  );
  await page.unroute("**/api/systems/query");
  const error = await page.evaluate(() => {
    const err = document.querySelector("#sys-error");
    return err && !err.hidden ? err.textContent : null;
  });
  if (error) throw new Mismatch(`${what}: the page shows an error: ${error}\n${await describe(page)}`);
}

/** Each card: its system, whether it answered, badge, figures, table, error text. */
function cards(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll(".sys-card")].map((c) => ({
      system: c.dataset.system,
      ok: c.dataset.ok,
      status: c.dataset.status,
      warm: c.dataset.warm,
      badge: c.querySelector(".badge-warm, .badge-cold")?.textContent ?? null,
      head: c.querySelector(".result-status")?.textContent ?? null,
      figures: Object.fromEntries([...c.querySelectorAll(".sys-timings [data-figure]")].map((f) => [f.dataset.figure, f.querySelector("dd").textContent])),
      table: c.querySelector("table.csv-table") && [...c.querySelectorAll("table.csv-table tr")].map((tr) => [...tr.children].map((td) => td.textContent)),
      error: c.querySelector(".sys-stderr pre")?.textContent ?? c.querySelector(".sys-card-error")?.textContent ?? null,
    })),
  );
}

/** A card for each of the three systems (in the catalog's order, whatever that is). */
function expectSystems(got, what) {
  const ids = got.map((c) => c.system);
  if (JSON.stringify([...ids].sort()) !== JSON.stringify([...SYSTEMS].sort())) throw new Mismatch(`${what}: the cards are ${JSON.stringify(ids)}, not ${JSON.stringify(SYSTEMS)}`);
}

/** The cards hold the same table: 36 categories whose counts add up to the million rows. */
function expectSameRows(got, what) {
  for (const c of got) {
    if (c.ok !== "true" || c.status !== "ok" || !c.table) throw new Mismatch(`${what}: ${c.system} has no answer table: ${JSON.stringify(c)}`);
  }
  const [first, ...rest] = got;
  for (const c of rest) {
    if (JSON.stringify(c.table) !== JSON.stringify(first.table))
      throw new Mismatch(`${what}: ${c.system}'s table differs from ${first.system}'s:\n${JSON.stringify(c.table)}\n${JSON.stringify(first.table)}`);
  }
  const [header, ...rows] = first.table;
  if (JSON.stringify(header) !== JSON.stringify(["category", "orders", "items"])) throw new Mismatch(`${what}: the columns are ${JSON.stringify(header)}`);
  const total = rows.reduce((n, r) => n + Number(r[1]), 0);
  if (rows.length !== 36 || total !== 1_000_000) throw new Mismatch(`${what}: ${rows.length} categories with ${total} orders in all, not 36 with 1000000`);
  if (!rows.some((r) => r[0].includes(" "))) throw new Mismatch(`${what}: no category with a space (SQLite quotes those in its CSV): ${JSON.stringify(rows.map((r) => r[0]))}`);
  return rows;
}

const TIME = /^\d+(\.\d+)? (ms|s)$|^\d+ min \d+ s$/;

/** Each card shows its query time, and its start and provisioning time when it had them. */
function expectTimings(got, what) {
  for (const c of got) {
    const f = c.figures;
    if (!TIME.test(f.query ?? "") || !TIME.test(f.total ?? "")) throw new Mismatch(`${what}: ${c.system} shows no timings: ${JSON.stringify(f)}`);
    if (c.warm === "false" && !TIME.test(f["instance start"] ?? "")) throw new Mismatch(`${what}: ${c.system} started an instance but shows no start time: ${JSON.stringify(c)}`);
    if (c.badge === "cold: provisioned" && !TIME.test(f["provisioning (cold)"] ?? "")) throw new Mismatch(`${what}: ${c.system} was provisioned but shows no provisioning time: ${JSON.stringify(c)}`);
  }
}

async function main() {
  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  watch(page, "page");

  begin(`open the Databases view: ${base}/#systems`);
  await page.goto(`${base}/#systems`);
  const listed = await until(page, "the three systems listed, ready and ticked", (want) => {
    const opts = [...document.querySelectorAll("#sys-list .sys-option")];
    const ids = opts.map((o) => o.dataset.id);
    const ok = want.every((id) => {
      const box = document.querySelector(`#sys-list input[data-id="${id}"]`);
      return box && box.checked && !box.disabled;
    });
    return ok ? opts.map((o) => o.innerText.replace(/\s+/g, " ").trim()) : false;
  }, SYSTEMS);
  for (const l of listed) console.log(`  ${l}`);
  const nav = await page.evaluate(() => ({ current: document.querySelector('.views [aria-current="page"]')?.textContent, title: document.title, programs: !document.querySelector("#programs-view").hidden }));
  if (nav.current !== "Databases" || nav.programs || !/Databases/.test(nav.title)) throw new Mismatch(`the Databases view is not the one shown: ${JSON.stringify(nav)}`);
  if (!/1,000,000 rows/.test(listed.join(" "))) throw new Mismatch(`the list does not show the dataset's rows: ${JSON.stringify(listed)}`);
  const example = await page.evaluate(() => [...document.querySelectorAll("#sys-editor .cm-line")].map((l) => l.textContent).join("\n"));
  if (!/GROUP BY/i.test(example)) throw new Mismatch(`the editor is not prefilled with an example query: ${JSON.stringify(example)}`);
  checkProblems();
  await shot(page, "systems-opened");

  begin("run one GROUP BY on sqlite, postgres and duckdb (the first run may provision them: cold)");
  await typeQuery(page, GROUP_BY);
  const started = Date.now();
  await runQuery(
    page,
    "the GROUP BY",
    async (p) => {
      // While the answers are awaited: a card per system, busy, with a spinner, the time
      // elapsed (counting) and what is happening.
      const first = await until(p, "three waiting cards", (want) => {
        const cs = [...document.querySelectorAll('.sys-card[aria-busy="true"]')];
        return cs.length === want.length && want.every((id) => cs.some((c) => c.dataset.system === id)) && cs.every((c) => c.querySelector(".spinner") && c.querySelector(".sys-waiting-what")?.textContent)
          ? cs.map((c) => `${c.dataset.system}: ${c.querySelector(".sys-elapsed").textContent} ${c.querySelector(".sys-waiting-what").textContent}`)
          : false;
      }, SYSTEMS);
      for (const l of first) console.log(`  waiting: ${l}`);
      const t0 = first[0].split(" ")[1];
      await until(p, "the elapsed time counting", (t0) => /^\d+\.\d s$/.test(document.querySelector(".sys-elapsed")?.textContent ?? "") && document.querySelector(".sys-elapsed").textContent.split(" ")[0] !== t0, t0);
      const label = await p.locator("#sys-run .run-label").textContent();
      if (!/^Running… \d/.test(label) || !(await p.locator("#sys-run").isDisabled())) throw new Mismatch(`the Run button does not say it is running: ${JSON.stringify(label)}`);
      await shot(p, "systems-waiting");
    },
    coldTimeout,
  );
  let got = await cards(page);
  console.log(`  answered in ${((Date.now() - started) / 1000).toFixed(1)} s: ${got.map((c) => `${c.system} ${c.badge} ${JSON.stringify(c.figures)}`).join("; ")}`);
  expectSystems(got, "the GROUP BY");
  const rows = expectSameRows(got, "the GROUP BY");
  expectTimings(got, "the GROUP BY");
  const verdict = await page.locator(".sys-verdict").getAttribute("data-verdict");
  const words = (await page.locator(".sys-verdict .result-status").textContent()).trim();
  if (verdict !== "agree" || !/answers agree/.test(words)) throw new Mismatch(`the page does not say the answers agree: ${verdict} ${JSON.stringify(words)}`);
  console.log(`  ${words} first rows: ${JSON.stringify(rows.slice(0, 2))}`);
  checkProblems();
  await shot(page, "systems-agree", { fullPage: true });

  begin("a syntax error: each card shows its engine's message");
  await typeQuery(page, "SELEC category FROM orders;");
  await runQuery(page, "the syntax error", async () => {});
  got = await cards(page);
  expectSystems(got, "the syntax error");
  for (const c of got) {
    if (c.ok !== "true" || c.status === "ok" || !/failed/i.test(c.head ?? "") || !/syntax error/i.test(c.error ?? ""))
      throw new Mismatch(`${c.system} does not show its syntax error: ${JSON.stringify(c)}`);
    console.log(`  ${c.system}: ${c.head}: ${JSON.stringify(c.error.trim().split("\n")[0])}`);
  }
  const none = await page.locator(".sys-verdict").getAttribute("data-verdict");
  if (none !== "single") throw new Mismatch(`with three errors the page compares something: ${none}`);
  checkProblems();
  await shot(page, "systems-syntax-error", { fullPage: true });

  begin("the GROUP BY again: warm instances, the same rows");
  await typeQuery(page, GROUP_BY);
  await runQuery(page, "the warm GROUP BY", async () => {});
  got = await cards(page);
  expectSystems(got, "the warm GROUP BY");
  const again = expectSameRows(got, "the warm GROUP BY");
  if (JSON.stringify(again) !== JSON.stringify(rows)) throw new Mismatch("the warm answer differs from the first");
  expectTimings(got, "the warm GROUP BY");
  for (const c of got) {
    if (c.warm !== "true" || c.badge !== "warm" || "instance start" in c.figures) throw new Mismatch(`${c.system} was not answered warm: ${JSON.stringify(c)}`);
  }
  console.log(`  ${got.map((c) => `${c.system} ${c.badge} query ${c.figures.query}`).join("; ")}`);
  checkProblems();
  await shot(page, "systems-warm", { fullPage: true });

  begin("a deep link to two systems, and back to the programs");
  await page.goto(`${base}/?systems=sqlite,duckdb#systems`);
  const ticked = await until(page, "only sqlite and duckdb ticked", () => {
    const boxes = [...document.querySelectorAll("#sys-list input[type=checkbox]")];
    const on = boxes.filter((b) => b.checked).map((b) => b.dataset.id);
    return boxes.length === 3 && on.sort().join() === "duckdb,sqlite" ? on : false;
  });
  const label = (await page.locator("#sys-run .run-label").textContent()).trim();
  if (label !== "Run on 2 systems") throw new Mismatch(`the Run button says ${JSON.stringify(label)} with ${ticked.join(", ")} ticked`);
  // Ticking postgres again makes the default selection: the address becomes /#systems.
  await page.locator('#sys-list input[data-id="postgres"]').check();
  await until(page, "the address /#systems", (o) => location.href === `${o}/#systems`, origin);
  await page.locator("#view-programs").click();
  await until(page, "the Programs view with a program", () => !document.querySelector("#programs-view").hidden && document.querySelector("#systems-view").hidden && /^#[a-z]/.test(location.hash) && document.querySelector("#program-head h1"));
  await page.goBack();
  await until(page, "Back: the Databases view again", () => !document.querySelector("#systems-view").hidden && location.hash === "#systems");
  checkProblems();

  begin("a narrow window: the cards stack");
  const narrow = await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: "dark" });
  const phone = await narrow.newPage();
  watch(phone, "narrow page");
  await phone.goto(`${base}/#systems`);
  await until(phone, "the three systems listed", () => document.querySelectorAll("#sys-list .sys-option").length === 3);
  await typeQuery(phone, GROUP_BY);
  await runQuery(phone, "the narrow GROUP BY", async () => {});
  expectSameRows(await cards(phone), "the narrow GROUP BY");
  const stacked = await phone.evaluate(() => {
    const xs = [...document.querySelectorAll(".sys-card")].map((c) => c.getBoundingClientRect());
    return { lefts: [...new Set(xs.map((r) => Math.round(r.left)))], fits: xs.every((r) => r.right <= window.innerWidth + 1), overflow: document.documentElement.scrollWidth - window.innerWidth };
  });
  if (stacked.lefts.length !== 1 || !stacked.fits || stacked.overflow > 0) throw new Mismatch(`the cards do not stack in a narrow window: ${JSON.stringify(stacked)}`);
  checkProblems();
  await shot(phone, "systems-narrow-dark", { fullPage: true });
}

await run(main);
