import { defineConfig } from "vite";

// `npm run dev` proxies /api to a local `imageretrieval serve` (override with API_URL).
export default defineConfig({
  server: {
    proxy: { "/api": process.env.API_URL ?? "http://127.0.0.1:8000" },
  },
  build: {
    target: "es2022",
    assetsDir: "assets", // hashed file names: nginx caches /assets/ for a year
  },
});
