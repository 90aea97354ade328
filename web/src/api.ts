// The HTTP API of `runbox serve`, as docs/api.md describes it.

/** Bytes in JSON: a plain string, {"text": ...} or {"base64": ...}. */
export type Data = string | { text: string } | { base64: string };

export interface Choice {
  value: string;
  label?: string;
}

export interface OptionField {
  name: string;
  label: string;
  help?: string | null;
  type: "select" | "checkbox" | "number" | "text";
  default?: string | number | boolean | null;
  choices?: Choice[];
  min?: number | null;
  max?: number | null;
  integer?: boolean;
  pattern?: string | null;
  max_length?: number | null;
}

export interface InputSpec {
  path: string;
  mime: string;
  required?: boolean;
  example?: { text: string } | { base64: string } | null;
}

export interface ProgramInfo {
  id: string;
  name: string;
  category: string;
  version: string;
  description: string;
  /** Where the image comes from (the manifest's form). */
  image?: { recipe?: string; reference?: string };
  /** The image's name in the store. */
  image_name?: string;
  ready?: boolean;
  inputs: InputSpec[];
  stdin?: { accepted: boolean; mime?: string | null; example?: { text: string } | { base64: string } | null };
  options: OptionField[];
  outputs: { path: string; mime: string }[];
  stdout_mime?: string | null;
  limits?: Record<string, number>;
}

export interface CatalogImage {
  name: string;
  recipe?: string | null;
  state: "ready" | "queued" | "building" | "failed";
  phase?: string | null;
  elapsed_s?: number | null;
  error?: string | null;
}

export interface OutputFile {
  path: string;
  size: number;
  truncated: boolean;
  content?: { text: string } | { base64: string } | null;
  error?: string | null;
}

export interface Limits {
  wall_time_ms: number;
  cpu_time_ms: number;
  memory_bytes: number;
  pids: number;
  file_size_bytes: number;
  output_bytes: number;
  output_files_bytes: number;
  [k: string]: number;
}

export interface JobResult {
  status: string;
  exit_code: number | null;
  signal: number | null;
  signal_name: string | null;
  stdout: string;
  stdout_base64?: string | null;
  stdout_bytes: number;
  stdout_truncated: boolean;
  stderr: string;
  stderr_base64?: string | null;
  stderr_bytes: number;
  stderr_truncated: boolean;
  outputs: OutputFile[];
  limits_hit: string[];
  timings: { setup_ms: number; run_ms: number; teardown_ms: number; total_ms: number; wall_ms?: number };
  usage: { cpu_time_ms: number; cpu_user_ms: number; cpu_system_ms: number; peak_memory_bytes: number };
  limits?: Limits;
}

export interface RunRequest {
  program?: string;
  image?: string;
  options?: Record<string, string>;
  inputs?: { path: string; content: Data; executable?: boolean }[];
  stdin?: Data | null;
  limits?: Record<string, number>;
  cache?: boolean;
}

export interface RunResponse {
  key: string;
  cached: boolean;
  permalink: string;
  result: JobResult;
}

export interface StoredResult {
  key: string;
  request: RunRequest;
  result: JobResult;
  created_at?: string;
  hits?: number;
}

/** A database system of the catalog (GET /api/systems). */
export interface SystemInfo {
  id: string;
  name: string;
  version: string;
  description: string;
  category: string;
  query_mime: string;
  answer_mime: string;
  datasets: { name: string; description?: string; rows?: number | null; size?: number | null }[];
  example: { query: string } | null;
  image_name: string;
  /** Its image is built. */
  ready: boolean;
  fingerprint: string | null;
  snapshot: SnapshotInfo | null;
  /** Warm instances alive now. */
  instances: number;
}

export interface SnapshotInfo {
  fingerprint: string;
  image: string;
  layer_bytes: number;
  files: number;
  created_at: number;
  steps_ms: Record<string, number>;
}

/** How a system got its snapshot for an answer: `cold` when it was provisioned for it. */
export interface ProvisionInfo {
  path: string;
  reason?: string | null;
  total_ms: number;
}

export type SystemAnswer =
  | {
      system: string;
      ok: true;
      instance: string;
      /** The instance was already running (false: started from the snapshot for this query). */
      warm: boolean;
      start_ms: number;
      /** The cold provision that ran first, when no snapshot matched (docs name it `provision`, the engine `provisioned`). */
      provision?: ProvisionInfo | null;
      provisioned?: ProvisionInfo | null;
      result: JobResult;
    }
  | { system: string; ok: false; error: { code: string; message: string } };

export interface SystemsQueryResponse {
  query_bytes: number;
  total_ms: number;
  /** In the order the systems were asked. */
  answers: SystemAnswer[];
}

/** An error body from the API, or a transport failure in the same shape. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 0,
    readonly retryAfter: number | null = null,
  ) {
    super(message);
  }
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? { Accept: "application/json" } : { Accept: "application/json", "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError("network", `Could not reach the runbox server (${(e as Error).message}).`);
  }
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: a proxy's error page, for instance. Reported below.
  }
  if (!res.ok) {
    const retry = Number(res.headers.get("Retry-After"));
    const err = (json as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(
      err?.code ?? `http_${res.status}`,
      err?.message ?? `${res.status} ${res.statusText}${text && !json ? `: ${text.slice(0, 200)}` : ""}`,
      res.status,
      Number.isFinite(retry) && retry > 0 ? retry : null,
    );
  }
  if (json === null) throw new ApiError("bad_response", `The server answered ${method} ${path} with no JSON.`, res.status);
  return json as T;
}

export const api = {
  programs: () => request<{ programs: ProgramInfo[] }>("GET", "/api/programs").then((r) => r.programs),
  catalog: () => request<{ images: CatalogImage[] }>("GET", "/api/catalog").then((r) => r.images),
  systems: () => request<{ systems: SystemInfo[] }>("GET", "/api/systems").then((r) => r.systems),
  querySystems: (systems: string[], query: string) => request<SystemsQueryResponse>("POST", "/api/systems/query", { systems, query }),
  result: (key: string) => request<StoredResult>("GET", `/api/results/${encodeURIComponent(key)}`),
  submit: (req: RunRequest) => request<{ id: string; status: string }>("POST", "/api/jobs", req),
  job: (id: string) =>
    request<{ id: string; status: string; response: RunResponse | null; error: { code: string; message: string } | null }>(
      "GET",
      `/api/jobs/${encodeURIComponent(id)}`,
    ),
};

export type JobPhase = "submitting" | "queued" | "running";

/**
 * Runs one job asynchronously: POST /api/jobs, then follows its events (SSE) until
 * it is done or failed. If the event stream breaks, asks GET /api/jobs/{id} instead.
 */
export async function runJob(req: RunRequest, onPhase: (p: JobPhase) => void): Promise<RunResponse> {
  onPhase("submitting");
  const { id } = await api.submit(req);
  onPhase("queued");
  return new Promise<RunResponse>((resolve, reject) => {
    let settled = false;
    const finish = (f: () => void) => {
      if (settled) return;
      settled = true;
      source.close();
      f();
    };
    const parse = (ev: Event) => JSON.parse((ev as MessageEvent<string>).data);
    const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
    source.addEventListener("queued", () => onPhase("queued"));
    source.addEventListener("running", () => onPhase("running"));
    source.addEventListener("done", (ev) => finish(() => resolve(parse(ev) as RunResponse)));
    source.addEventListener("failed", (ev) =>
      finish(() => {
        const err = (parse(ev) as { error?: { code: string; message: string } }).error;
        reject(new ApiError(err?.code ?? "failed", err?.message ?? "The job failed."));
      }),
    );
    // Cancelled: the partial result when it was stopped while running.
    source.addEventListener("cancelled", (ev) =>
      finish(() => {
        const r = parse(ev) as Partial<RunResponse>;
        if (r.result) resolve(r as RunResponse);
        else reject(new ApiError("cancelled", "The job was cancelled before it ran."));
      }),
    );
    source.addEventListener("error", () => {
      if (settled) return;
      source.close();
      poll(id, onPhase).then(
        (r) => finish(() => resolve(r)),
        (e) => finish(() => reject(e)),
      );
    });
  });
}

async function poll(id: string, onPhase: (p: JobPhase) => void): Promise<RunResponse> {
  for (let delay = 250; ; delay = Math.min(delay * 1.5, 2000)) {
    const info = await api.job(id);
    if (info.status === "done" && info.response) return info.response;
    if (info.status === "failed") throw new ApiError(info.error?.code ?? "failed", info.error?.message ?? "The job failed.");
    if (info.status === "cancelled") {
      if (info.response) return info.response;
      throw new ApiError("cancelled", info.error?.message ?? "The job was cancelled before it ran.");
    }
    onPhase(info.status === "running" ? "running" : "queued");
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** The bytes of a Data value. */
export function dataBytes(d: Data | null | undefined): Uint8Array {
  if (d == null) return new Uint8Array();
  if (typeof d === "string") return new TextEncoder().encode(d);
  if ("text" in d) return new TextEncoder().encode(d.text);
  return base64ToBytes(d.base64);
}

/** A Data value as text, or null when it is not valid UTF-8. */
export function dataText(d: Data | null | undefined): string | null {
  if (d == null) return "";
  if (typeof d === "string") return d;
  if ("text" in d) return d.text;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(base64ToBytes(d.base64));
  } catch {
    return null;
  }
}

export function base64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function bytesToBase64(bytes: Uint8Array): string {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}
