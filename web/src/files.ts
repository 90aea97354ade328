// The paths of input files a user adds next to the ones the manifest declares.

/** The longest path the playground lets a user type. */
export const MAX_PATH_LENGTH = 100;
/** How many input files a draft may have in all. */
export const MAX_FILES = 32;

const NAME_CHAR = /^[A-Za-z0-9._+-]$/;

/**
 * Why `path` cannot be added to a draft holding `existing`, in words for the page,
 * or null when it can. A path is relative to the program's working directory, made
 * of names of letters, digits, `.`, `_`, `-` and `+`, separated by `/`.
 */
export function pathProblem(path: string, existing: readonly string[]): string | null {
  if (path === "") return "Type a file name, such as helper.py.";
  if (existing.length >= MAX_FILES) return `A program can have at most ${MAX_FILES} files here.`;
  if (path.length > MAX_PATH_LENGTH) return `That path has ${path.length} characters; the most is ${MAX_PATH_LENGTH}.`;
  if (path.startsWith("/")) return "Give a path relative to the working directory, without a leading /.";
  if (path.includes("\\")) return "Separate directories with /, not \\.";
  const parts = path.split("/");
  if (parts.includes("..")) return "A path cannot contain .. (the file must stay inside the working directory).";
  if (parts.includes(".")) return "Leave out the ./ parts of the path.";
  if (path.endsWith("/")) return "That names a directory: end the path with a file name.";
  if (parts.includes("")) return "A path cannot contain //.";
  for (const part of parts) {
    const bad = [...part].find((c) => !NAME_CHAR.test(c));
    if (bad !== undefined) return `${describe(bad)} is not allowed: use letters, digits, . _ - + (and / between directories).`;
    if (part.startsWith("-")) return "A name cannot start with -.";
  }
  if (existing.includes(path)) return `There is already a file ${path}.`;
  for (const other of existing) {
    if (path.startsWith(`${other}/`)) return `${other} is a file, so it cannot also be a directory.`;
    if (other.startsWith(`${path}/`)) return `${path} is a directory here: it holds ${other}.`;
  }
  return null;
}

function describe(c: string): string {
  if (c === " ") return "A space";
  if (/\s/.test(c)) return "White space";
  const code = c.codePointAt(0) ?? 0;
  if (code < 0x20 || code === 0x7f) return "A control character";
  return `“${c}”`;
}
