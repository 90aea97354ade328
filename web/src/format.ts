import type { JobResult, Limits } from "./api";

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  const digits = Number.isInteger(v) || v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${units[u]}`;
}

export function ms(n: number): string {
  if (n < 1) return `${n.toFixed(2)} ms`;
  if (n < 1000) return `${n < 10 ? n.toFixed(1) : n.toFixed(0)} ms`;
  if (n < 60_000) return n % 1000 === 0 ? `${n / 1000} s` : `${(n / 1000).toFixed(n < 10_000 ? 2 : 1)} s`;
  const s = Math.round(n / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

export function seconds(s: number): string {
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** What each limit is, in words, and its value in the limits the job ran under. */
const LIMITS: Record<string, { words: string; value?: (l: Limits) => string }> = {
  wall_time: { words: "wall-clock time limit", value: (l) => ms(l.wall_time_ms) },
  cpu_time: { words: "CPU time limit", value: (l) => ms(l.cpu_time_ms) },
  memory: { words: "memory limit", value: (l) => bytes(l.memory_bytes) },
  pids: { words: "limit on processes and threads", value: (l) => String(l.pids) },
  file_size: { words: "file size limit", value: (l) => bytes(l.file_size_bytes) },
  output: { words: "output limit", value: (l) => bytes(l.output_bytes) },
  output_files: { words: "limit on collected output files", value: (l) => bytes(l.output_files_bytes) },
};

export function limitWords(kind: string, limits?: Limits): string {
  const l = LIMITS[kind];
  if (!l) return kind.replace(/_/g, " ");
  const v = limits && l.value ? l.value(limits) : null;
  if (kind === "output") return v ? `output limit (stdout and stderr are each kept up to ${v})` : "output limit";
  return v ? `${l.words} (${v})` : l.words;
}

export type Tone = "ok" | "warn" | "bad";

/** The headline for a result: what happened, in plain words. */
export function statusLine(r: JobResult): { text: string; tone: Tone } {
  switch (r.status) {
    case "ok":
      return { text: `Exited with code ${r.exit_code ?? 0}`, tone: "ok" };
    case "exit_nonzero":
      return { text: `Exited with code ${r.exit_code}`, tone: "warn" };
    case "signaled": {
      const sig = r.signal_name ?? (r.signal != null ? `signal ${r.signal}` : "a signal");
      return { text: `Killed by ${sig}${r.signal_name && r.signal != null ? ` (${r.signal})` : ""}`, tone: "bad" };
    }
    case "wall_time_limit":
      return { text: `Stopped: it ran into the ${limitWords("wall_time", r.limits)}`, tone: "bad" };
    case "cpu_time_limit":
      return { text: `Stopped: it ran into the ${limitWords("cpu_time", r.limits)}`, tone: "bad" };
    case "memory_limit":
      return { text: `Stopped: it ran out of memory (the ${limitWords("memory", r.limits)})`, tone: "bad" };
    case "pids_limit":
      return { text: `Stopped: it started too many processes (the ${limitWords("pids", r.limits)})`, tone: "bad" };
    case "file_size_limit":
      return { text: `Stopped: it wrote a file larger than the ${limitWords("file_size", r.limits)}`, tone: "bad" };
    case "cancelled":
      return { text: "Cancelled: it was stopped on request", tone: "warn" };
    default:
      return { text: `Ended: ${r.status.replace(/_/g, " ")}`, tone: "bad" };
  }
}
