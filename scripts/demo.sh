#!/usr/bin/env bash
# `make demo` (after `make venv app`): get a catalog, build the default model's index, start the API
# and nginx in front of the built web app, and print the address. Ctrl-C stops everything.
#
#   DATASET_ROOT   use this catalog (styles.csv + images/); default: download Fashion Product Images
#                  (small) into $WORKDIR/catalog, or a synthetic demo catalog when offline
#   WORKDIR        artifacts (default ./workdir)      DEFAULT_MODEL  efficientnet_lite0_fashion
#   APP_PORT       nginx's port (8080; the next free one is used when taken)
#   API_PORT       the API's port (8000; idem)        HOST  address nginx listens on (127.0.0.1)
#   NO_NGINX=1     let the API serve the web app itself (also the fallback when nginx is missing)
#   SYNTHETIC_PER_CLASS  size of the offline fallback catalog (60 products for each of 8 classes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
export WORKDIR=${WORKDIR:-${WORKDIR_ROOT:-$ROOT/workdir}}
export DEFAULT_MODEL=${DEFAULT_MODEL:-efficientnet_lite0_fashion}
export MODELS=${MODELS:-$DEFAULT_MODEL}
export MAX_UPLOAD_MB=${MAX_UPLOAD_MB:-10}
HOST=${HOST:-127.0.0.1}

say() { printf '\n\033[1;34m==>\033[0m \033[1m%s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

[ -x "$VENV/bin/imageretrieval" ] || die "no virtualenv in $VENV: run \`make demo\` (it creates it) or \`make venv\`"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
mkdir -p "$WORKDIR"

free_port() {  # the first free port from $1 on
  python - "$1" <<'PY'
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 50):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    sys.exit(f"no free port in {start}..{start + 49}")
PY
}

# 1. the catalog
if [ -n "${DATASET_ROOT:-}" ]; then
  [ -f "$DATASET_ROOT/styles.csv" ] && [ -d "$DATASET_ROOT/images" ] \
    || die "DATASET_ROOT=$DATASET_ROOT is not a catalog folder (styles.csv + images/)"
  say "catalog: $DATASET_ROOT"
elif [ -f "$WORKDIR/catalog/fashion-product-small/.complete" ]; then
  DATASET_ROOT="$WORKDIR/catalog/fashion-product-small"   # downloaded by an earlier run
  say "catalog: $DATASET_ROOT"
else
  say "getting the catalog: Fashion Product Images (small) from the Hugging Face hub (~270 MB, resumable)"
  # (the module entry point skips importing the whole CLI: the same command, seconds faster)
  DATASET_ROOT=$(python -m imageretrieval.commands.download_catalog --fallback-synthetic \
                   --synthetic-per-class "${SYNTHETIC_PER_CLASS:-60}")
  if [ -f "$DATASET_ROOT/SYNTHETIC" ]; then
    printf '   \033[33mthe hub could not be reached: using a small SYNTHETIC demo catalog (%s).\033[0m\n' \
      "$DATASET_ROOT" >&2
    printf '   Set DATASET_ROOT to a Fashion Product Images folder, or rerun when online.\n' >&2
  fi
fi
export DATASET_ROOT

# 2. the index (a no-op when it is current)
say "index for $DEFAULT_MODEL (built once; later runs check it in seconds)"
imageretrieval index --model "$DEFAULT_MODEL"

# 3. the API
API_PORT=$(free_port "${API_PORT:-8000}")
APP_PORT=$(free_port "${APP_PORT:-8080}")
LOGS="$WORKDIR/logs"
mkdir -p "$LOGS"
pids=()
# shellcheck disable=SC2329  # called by the traps below
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

say "starting the API on 127.0.0.1:$API_PORT (log: $LOGS/api.log)"
imageretrieval serve --host 127.0.0.1 --port "$API_PORT" >"$LOGS/api.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  if python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
       "http://127.0.0.1:$API_PORT/api/ready" 2>/dev/null; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { tail -n 30 "$LOGS/api.log" >&2; die "the API stopped (log above)"; }
  sleep 0.5
done

# 4. nginx in front of the built app, or the API serving the app itself
NGINX=$(python -c "import sys; sys.path.insert(0, 'scripts'); import nginx_conf; print(nginx_conf.find_nginx() or '')")
if [ -z "${NO_NGINX:-}" ] && [ -n "$NGINX" ] && [ -f retrieval-app/dist/index.html ]; then
  PREFIX="$WORKDIR/nginx"
  CONF=$(python scripts/nginx_conf.py --prefix "$PREFIX" --listen "$HOST:$APP_PORT" \
           --api "127.0.0.1:$API_PORT" --max-upload-mb "$MAX_UPLOAD_MB")
  "$NGINX" -t -q -c "$CONF" -p "$PREFIX" -e "$PREFIX/error.log" || die "nginx rejected $CONF"
  "$NGINX" -c "$CONF" -p "$PREFIX" -e "$PREFIX/error.log" -g 'daemon off;' &
  pids+=($!)
  URL="http://$HOST:$APP_PORT/"
  VIA="nginx (config: $CONF)"
else
  URL="http://127.0.0.1:$API_PORT/"
  VIA="the API itself (nginx not installed; sudo apt-get install nginx to put it in front)"
fi

say "ready: open $URL"
printf '   served by %s\n   API docs: http://127.0.0.1:%s/api/docs   Ctrl-C stops everything.\n' "$VIA" "$API_PORT" >&2
# Stop everything as soon as one of the services stops.
wait -n "${pids[@]}"
die "a service stopped unexpectedly; see $LOGS/api.log and $WORKDIR/nginx/error.log"
