// Renders a JobResult: what happened, stdout, stderr, output files, figures.

import { base64ToBytes, dataBytes, type JobResult, type OutputFile, type ProgramInfo } from "./api";
import { h, type Child } from "./dom";
import { bytes, limitWords, ms, statusLine } from "./format";

export interface Shown {
  result: JobResult;
  cached: boolean;
  /** When the result came from a permalink: when it was made and how often it was viewed. */
  stored?: { created_at?: string; hits?: number };
}

let urls: string[] = [];

function blobUrl(data: Uint8Array, mime: string): string {
  const url = URL.createObjectURL(new Blob([data as BlobPart], { type: mime }));
  urls.push(url);
  return url;
}

/** Frees the object URLs of the previous render. */
export function releaseUrls() {
  for (const u of urls) URL.revokeObjectURL(u);
  urls = [];
}

const TEXT_MIMES = new Set(["application/json", "application/sql", "application/xml", "application/javascript", "application/toml", "application/yaml", "application/x-sh"]);

export function isTextMime(mime: string): boolean {
  return mime.startsWith("text/") || TEXT_MIMES.has(mime) || mime.endsWith("+json") || mime.endsWith("+xml");
}

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

export function renderResult(shown: Shown, program: ProgramInfo | null): HTMLElement {
  releaseUrls();
  const r = shown.result;
  const head = statusLine(r);
  const badges: Child[] = [];
  if (shown.cached) badges.push(h("span", { class: "badge badge-cached", title: "This exact job ran before; the stored result was returned without running it again." }, "cached"));

  const limitsHit = (r.limits_hit ?? []).filter((k) => !statusMatches(r.status, k));
  return h(
    "div",
    { class: "result", "data-status": r.status },
    h(
      "div",
      { class: `result-head tone-${head.tone}` },
      h("strong", { class: "result-status" }, head.text),
      ...badges,
    ),
    limitsHit.length > 0 &&
      h("p", { class: "notice notice-warn" }, `Limits reached: ${limitsHit.map((k) => limitWords(k, r.limits)).join("; ")}.`),
    figures(shown),
    stream("stdout", r.stdout, r.stdout_base64, r.stdout_bytes, r.stdout_truncated, program?.stdout_mime ?? null),
    stream("stderr", r.stderr, r.stderr_base64, r.stderr_bytes, r.stderr_truncated, null),
    (r.outputs ?? []).map((f) => outputFile(f, program?.outputs.find((o) => o.path === f.path)?.mime ?? null)),
  );
}

function statusMatches(status: string, limit: string): boolean {
  return status === `${limit}_limit`;
}

function figures(shown: Shown): HTMLElement {
  const r = shown.result;
  const t = r.timings;
  const items: [string, string, string?][] = [
    ["total", ms(t.total_ms), "from accepting the job to removing its sandbox"],
    ["run", ms(t.run_ms), "from the program's start to the exit of its last process"],
    ["setup", ms(t.setup_ms), "sandbox, mounts and input files"],
    ["teardown", ms(t.teardown_ms), "collecting outputs and removing the sandbox"],
    ["CPU", ms(r.usage.cpu_time_ms), `user ${ms(r.usage.cpu_user_ms)}, system ${ms(r.usage.cpu_system_ms)}`],
    ["peak memory", bytes(r.usage.peak_memory_bytes), r.limits ? `limit ${bytes(r.limits.memory_bytes)}` : undefined],
  ];
  if (r.exit_code !== null && r.exit_code !== undefined) items.splice(0, 0, ["exit code", String(r.exit_code)]);
  if (r.signal_name) items.splice(0, 0, ["signal", r.signal_name]);
  const stored = shown.stored;
  return h(
    "div",
    { class: "figures-wrap" },
    h(
      "dl",
      { class: "figures" },
      items.map(([k, v, title]) => h("div", { title }, h("dt", null, k), h("dd", null, v))),
    ),
    stored &&
      h(
        "p",
        { class: "stored muted" },
        "Stored result",
        stored.created_at && [" from ", h("time", { datetime: stored.created_at }, new Date(stored.created_at).toLocaleString())],
        stored.hits !== undefined && stored.hits > 0 && `, served from the cache ${stored.hits} ${stored.hits === 1 ? "time" : "times"}`,
        ".",
      ),
  );
}

function stream(name: string, text: string, b64: string | null | undefined, total: number, truncated: boolean, mime: string | null): HTMLElement {
  const raw = b64 ? base64ToBytes(b64) : null;
  const shownBytes = raw ? raw.length : utf8Length(text);
  const notices: Child[] = [];
  if (truncated)
    notices.push(
      h(
        "p",
        { class: "notice notice-warn" },
        `${name} was cut short: showing the first ${bytes(shownBytes)} of ${bytes(total)} (${shownBytes.toLocaleString("en")} of ${total.toLocaleString("en")} bytes).`,
      ),
    );
  if (raw) notices.push(h("p", { class: "notice" }, `${name} is not valid UTF-8: shown with replacement characters. `, download(raw, mime ?? "application/octet-stream", `${name}.bin`, "Download the exact bytes")));

  let body: Child;
  if (mime?.startsWith("image/") && total > 0) {
    body = image(raw ?? new TextEncoder().encode(text), mime, name);
  } else if (total === 0) {
    body = h("p", { class: "empty muted" }, `(no ${name})`);
  } else {
    body = h("pre", { class: `stream-text ${name}`, tabindex: 0 }, text);
  }
  return h(
    "section",
    { class: `stream stream-${name}${total === 0 ? " is-empty" : ""}`, "aria-label": name },
    h("h3", null, name, total > 0 && h("span", { class: "muted size" }, bytes(total))),
    notices,
    body,
  );
}

function image(data: Uint8Array, mime: string, alt: string): HTMLElement {
  return h("div", { class: "image-out" }, h("img", { src: blobUrl(data, mime), alt }));
}

function download(data: Uint8Array, mime: string, name: string, label: string): HTMLElement {
  return h("a", { href: blobUrl(data, mime), download: name.split("/").pop() || name, class: "download" }, label);
}

function outputFile(f: OutputFile, manifestMime: string | null): HTMLElement {
  const mime = manifestMime ?? (f.content && "text" in f.content ? "text/plain" : "application/octet-stream");
  const notices: Child[] = [];
  let body: Child = null;
  if (f.error) {
    notices.push(h("p", { class: "notice notice-bad" }, `Not collected: ${f.error}`));
  } else if (f.content) {
    const data = dataBytes(f.content);
    if (f.truncated)
      notices.push(
        h("p", { class: "notice notice-warn" }, `Cut short by the output-files limit: ${bytes(data.length)} of ${bytes(f.size)} collected.`),
      );
    if (mime.startsWith("image/")) {
      body = image(data, mime, f.path);
    } else if (isTextMime(mime) && "text" in f.content) {
      body = h("pre", { class: "stream-text", tabindex: 0 }, mime === "application/json" ? prettyJson(f.content.text) : f.content.text);
    } else {
      body = h("p", { class: "muted" }, `${mime}, ${bytes(f.size)}.`);
    }
    notices.push(h("p", { class: "file-actions" }, download(data, mime, f.path, `Download ${f.path.split("/").pop()}`)));
  } else {
    notices.push(h("p", { class: "notice" }, "The file's content was not returned."));
  }
  return h(
    "section",
    { class: "stream stream-file", "aria-label": `output file ${f.path}`, "data-path": f.path },
    h("h3", null, f.path, h("span", { class: "muted size" }, `${mime} · ${bytes(f.size)}`)),
    body,
    notices,
  );
}

function prettyJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
