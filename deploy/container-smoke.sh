#!/usr/bin/env bash
# Build the broker's image (Containerfile) and smoke-test it: the container starts as uid 10001 on a read-only root
# filesystem, its HEALTHCHECK passes, /healthz and /readyz answer (embedded PostgreSQL in the state volume).
#
#   deploy/container-smoke.sh           build + smoke test; exit 77 (skipped) when no engine can run a container
#   deploy/container-smoke.sh --check   only say whether podman or docker can run a container here (exit 0 or 77)
#
# No image registry needs to be reachable: when the base image can be neither found nor pulled, it is made from
# Debian's packages (debootstrap + import). Environment: CONTAINER_ENGINE (podman|docker), DLNUF_IMAGE (the tag
# built, default localhost/dlnuf:smoke), DLNUF_BASE_IMAGE (default docker.io/library/debian:bookworm-slim).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${DLNUF_IMAGE:-localhost/dlnuf:smoke}
BASE=${DLNUF_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
LOCAL_BASE=localhost/debian:bookworm-debootstrap
NAME=dlnuf-smoke-$$
WORK=$(mktemp -d)
trap 'cleanup' EXIT

cleanup() {
  [ -n "${ENGINE:-}" ] && "$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true
  [ -n "${ENGINE:-}" ] && "$ENGINE" volume rm -f "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

skip() { echo "SKIPPED: $*"; exit 77; }

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# 1. An engine that can start a container: `info` is not enough (a daemon-less docker client, or a podman whose
#    runtime the kernel's cgroups refuse), so run /bin/true from an image made of it and its libraries.
runs_containers() {
  local root="$WORK/true-root"
  mkdir -p "$root"
  cp --parents /bin/true $(ldd /bin/true | grep -o '/[^ ]*') "$root" 2>/dev/null
  image_exists localhost/dlnuf-probe:true \
    || tar -C "$root" -c . | "$ENGINE" import - localhost/dlnuf-probe:true >/dev/null 2>&1 || return 1
  "$ENGINE" run --rm --network none localhost/dlnuf-probe:true /bin/true >"$WORK/probe.log" 2>&1
}

ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
  for candidate in podman docker; do
    if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then ENGINE=$candidate; break; fi
  done
fi
[ -n "$ENGINE" ] || skip "neither podman nor docker is installed and answering (apt-get install podman)"
if ! runs_containers; then
  skip "$ENGINE cannot start a container here: $(tail -1 "$WORK/probe.log" 2>/dev/null)"
fi
[ "${1:-}" = "--check" ] && { echo "$ENGINE runs containers"; exit 0; }

# 2. The base image: present, pulled, or made from Debian's packages.
if ! image_exists "$BASE" && ! timeout 120 "$ENGINE" pull -q "$BASE" >/dev/null 2>&1; then
  echo "no registry answered for $BASE: making the base from Debian's packages (debootstrap)"
  BASE=$LOCAL_BASE
  if ! image_exists "$BASE"; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    # what a registry's slim image leaves out too: the downloaded packages and the package lists
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | "$ENGINE" import - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
fi

# 3. Build (the DSFR comes from node_modules: `make assets` installs it).
[ -d node_modules/@gouvfr/dsfr/dist ] || make --no-print-directory assets
[ -d node_modules/@gouvfr/dsfr/dist ] || { echo "node_modules/@gouvfr/dsfr/dist is missing (npm?)"; exit 1; }
start=$(date +%s)
build_args=(--build-arg "BASE=$BASE")
if [ -n "${PIP_CERT:-}" ] && [ "$ENGINE" = podman ]; then
  # behind a TLS-intercepting proxy, pip in the build needs its CA: mounted for the build, not kept in the image
  build_args+=(-v "$PIP_CERT:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt)
fi
[ "$ENGINE" = podman ] && build_args+=(--format docker)   # OCI images drop HEALTHCHECK
"$ENGINE" build -q "${build_args[@]}" -f Containerfile -t "$IMAGE" . >/dev/null
echo "built $IMAGE from $BASE in $(( $(date +%s) - start )) s, $(( $("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE") / 1000000 )) MB"

# 4. Run it as production would: read-only root, state in a volume, /tmp a tmpfs; embedded PostgreSQL.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$ENGINE" volume create "$NAME" >/dev/null
"$ENGINE" run -d --name "$NAME" --read-only --tmpfs /tmp --tmpfs /run -v "$NAME:/var/lib/dlnuf" \
  -p "127.0.0.1:$port:8080" -e "DLNUF_PUBLIC_URL=http://127.0.0.1:$port" "$IMAGE" >/dev/null
for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$port/readyz" >"$WORK/readyz" 2>/dev/null && break
  "$ENGINE" inspect -f '{{.State.Running}}' "$NAME" | grep -q true || { "$ENGINE" logs "$NAME" | tail -20; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null
grep -Eq '"status": *"(ready|degraded)"' "$WORK/readyz" || { cat "$WORK/readyz"; "$ENGINE" logs "$NAME" | tail -20; exit 1; }
uid=$("$ENGINE" exec "$NAME" id -u)
[ "$uid" = 10001 ] || { echo "the broker runs as uid $uid, not 10001"; exit 1; }
if "$ENGINE" exec "$NAME" sh -c 'touch /opt/dlnuf/written' 2>/dev/null; then
  echo "the root filesystem is writable"; exit 1
fi
if [ "$ENGINE" = podman ]; then
  podman healthcheck run "$NAME"
else
  for _ in $(seq 90); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ] && break; sleep 1
  done
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ]
fi
echo "smoke test passed: uid 10001, read-only root, healthcheck healthy, /readyz $(cat "$WORK/readyz")"
