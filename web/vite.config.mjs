import { defineConfig } from "vite";

// `npm run dev` serves the page with hot reload and forwards the API to a running
// `runbox serve` (RUNBOX_API overrides where that is).
const api = process.env.RUNBOX_API || "http://127.0.0.1:8080";

export default defineConfig({
  // The runbox binary serves index.html at / and /r/{key}, and the bundle at /assets/*.
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    // Every supported browser has <link rel="modulepreload">.
    modulePreload: { polyfill: false },
    target: "es2020",
    reportCompressedSize: true,
    rollupOptions: {
      output: {
        // Name the on-demand language chunks after their package (lang-python-[hash].js).
        chunkFileNames(chunk) {
          const id = chunk.facadeModuleId ?? chunk.moduleIds[0] ?? "";
          const m = /node_modules\/(?:@[^/]+\/)?([^/]+)\/(?:dist\/)?(?:mode\/)?([^/.]+)?/.exec(id);
          const name = m ? (m[1] === "legacy-modes" ? `mode-${m[2]}` : m[1]) : chunk.name;
          return `assets/${name}-[hash].js`;
        },
      },
    },
  },
  server: {
    host: "127.0.0.1",
    proxy: {
      "/api": { target: api, changeOrigin: true },
      "/healthz": { target: api, changeOrigin: true },
    },
  },
});
