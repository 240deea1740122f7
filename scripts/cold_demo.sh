#!/usr/bin/env bash
# How long a newcomer waits for `make demo` on a fresh clone (issue 12's target: 90 s): empty uv, pip and npm
# caches (every package downloaded from its registry), a new state directory (the embedded PostgreSQL is
# initialised), timed until the demo prints "DLNUF demo is running.", then stopped. Prints the time and the sizes
# of the virtualenv and node_modules. Needs the network to the package registries.
#
#   scripts/cold_demo.sh            # clones this checkout's HEAD into a temporary directory
set -euo pipefail
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d /tmp/dlnuf-cold-demo.XXXXXX)
trap 'kill -TERM -- -"${pid:-0}" 2>/dev/null || true; sleep 2; kill -KILL -- -"${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
git clone -q "$src" "$work/dlnuf"
cd "$work/dlnuf"
start=$(date +%s.%N)
UV_CACHE_DIR="$work/uv-cache" PIP_NO_CACHE_DIR=1 npm_config_cache="$work/npm-cache" \
    DLNUF_STATE_DIR="$work/state" setsid make demo > "$work/demo.log" 2>&1 &
pid=$!
until grep -q "DLNUF demo is running" "$work/demo.log"; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "make demo exited:"; tail -20 "$work/demo.log"; exit 1; fi
    sleep 0.2
done
end=$(date +%s.%N)
printf 'cold make demo: %.1f s until "DLNUF demo is running." (load %s)\n' "$(echo "$end - $start" | bc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
du -sh .venv node_modules 2>/dev/null || true
