#!/usr/bin/env bash
# `make app`: install the web app's packages and build it into retrieval-app/dist, only when needed
# (npm ci when package-lock.json changed, a build when a source file is newer than the last build).
set -euo pipefail
cd "$(dirname "$0")/../retrieval-app"
[ -f package.json ] || exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm (Node.js 20.19+ or 22.12+) is needed to build the web app; e.g. sudo apt-get install nodejs npm" >&2
  exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 22 || (a === 22 && b >= 12) || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "error: the web app's build (Vite) needs Node.js 20.19+ or 22.12+; this is $(node --version)" >&2
  exit 1
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
if [ ! -f dist/index.html ] || [ -n "$(find src public index.html package-lock.json vite.config.ts tsconfig.json \
     -newer dist/index.html -print -quit 2>/dev/null)" ]; then
  npm run build
else
  echo "web app is up to date (retrieval-app/dist)"
fi
