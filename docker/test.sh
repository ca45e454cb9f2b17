#!/usr/bin/env bash
# The container image and the two-mesh compose demo, end to end, with podman and no registry
# of images: the base image is pulled if it can be, else made with debootstrap from Debian's
# packages (cached); the image is built from a binary built on the host (`--target prebuilt`);
# the compose demo is started with podman-compose, its four callers and both health checks
# are checked, and everything is removed again. Run as root from anywhere:
#   docker/test.sh
# Environment (all optional):
#   MESHGATE_BIN      the binary to put in the image [target/release/meshgate; built if missing]
#   BASE_IMAGE        the runtime base [docker.io/library/debian:bookworm-slim, pulled if it can
#                     be, else localhost/meshgate-base:bookworm made with debootstrap]
#   DEBIAN_MIRROR     for debootstrap [http://deb.debian.org/debian]
#   CACHE_DIR         debootstrap's tarball and podman-compose's venv [~/.cache/meshgate-docker]
#   KEEP=1            leave the demo running (and the image) for trying by hand
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/meshgate-docker}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=localhost/meshgate:test
LOCAL_BASE=localhost/meshgate-base:bookworm
PROJECT=meshgate-two-mesh
export MESHGATE_IMAGE=$IMAGE
export MESHGATE_GATEWAY_PORT=${MESHGATE_GATEWAY_PORT:-18443}
export MESHGATE_GATEWAY_ADMIN_PORT=${MESHGATE_GATEWAY_ADMIN_PORT:-15000}
export MESHGATE_OUTBOUND_PORT=${MESHGATE_OUTBOUND_PORT:-15001}
export MESHGATE_SOURCE_ADMIN_PORT=${MESHGATE_SOURCE_ADMIN_PORT:-15010}
HOST=httpbin.example-target.com
mkdir -p "$CACHE_DIR"
WORK=$(mktemp -d)

TIMES=()
now() { date +%s.%N; }
timed() { # name command...: runs it, records its wall time
  local name=$1 t0 t1
  shift
  t0=$(now)
  "$@"
  t1=$(now)
  TIMES+=("$(awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-34s %7.1f s", n, b - a }')")
}
say() { printf '\n== %s\n' "$*"; }
FAILED=0
check() { # description command...
  local d=$1
  shift
  if "$@"; then printf '  ok    %s\n' "$d"; else printf '  FAIL  %s\n' "$d"; FAILED=1; fi
}

compose() { "$COMPOSE" -p "$PROJECT" -f "$REPO/docker/compose.yaml" "$@"; }
cleanup() {
  local rc=$?
  if [ "${KEEP:-}" = 1 ]; then
    echo "KEEP=1: left running; stop with: $COMPOSE -p $PROJECT -f docker/compose.yaml down -v"
  elif [ -n "${COMPOSE:-}" ]; then
    compose down -v -t 5 >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" localhost/meshgate:test-cc >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# --- Tools ---------------------------------------------------------------------------------
install_podman() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null
}
command -v podman >/dev/null || { say "installing podman"; timed "apt-get install podman" install_podman; }
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Host.NetworkBackend}}' >/dev/null

# Where no container starts as podman sets it up (seen in a sandbox: root without
# CAP_SYS_RESOURCE cannot raise RLIMIT_NOFILE/NPROC to podman's defaults, and crun refuses
# hybrid cgroups v1+v2), use runc and lower limits, for this script only.
runtime_workaround() {
  printf '[containers]\ndefault_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]\n[engine]\nruntime = "runc"\n' \
    >"$WORK/containers.conf"
  export CONTAINERS_CONF=$WORK/containers.conf
  command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
}

# podman-compose from PyPI (Debian bookworm's 1.0.3 ignores depends_on conditions).
COMPOSE=$CACHE_DIR/venv/bin/podman-compose
install_compose() {
  python3 -m venv "$CACHE_DIR/venv"
  "$CACHE_DIR/venv/bin/pip" install -q 'podman-compose==1.6.0'
}
[ -x "$COMPOSE" ] || { say "installing podman-compose"; timed "pip install podman-compose" install_compose; }

# --- The base image --------------------------------------------------------------------------
debootstrap_base() {
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  local root=$CACHE_DIR/rootfs
  rm -rf "$root"
  nice -n 10 debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$CACHE_DIR/debootstrap.log"
  # As debian:bookworm-slim: no apt lists or caches, docs, man pages or locales.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale
  tar -C "$root" --numeric-owner -cf "$CACHE_DIR/bookworm-minbase.tar.tmp" .
  mv "$CACHE_DIR/bookworm-minbase.tar.tmp" "$CACHE_DIR/bookworm-minbase.tar"
  rm -rf "$root"
}
import_base() { podman import -q "$CACHE_DIR/bookworm-minbase.tar" "$LOCAL_BASE" >/dev/null; }
if [ -n "${BASE_IMAGE:-}" ]; then
  :
elif podman image exists docker.io/library/debian:bookworm-slim \
  || timeout 30 podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  BASE_IMAGE=docker.io/library/debian:bookworm-slim
else
  BASE_IMAGE=$LOCAL_BASE
  if ! podman image exists "$LOCAL_BASE"; then
    if [ ! -s "$CACHE_DIR/bookworm-minbase.tar" ]; then
      say "no base image can be pulled: debootstrap --variant=minbase bookworm"
      timed "debootstrap minbase" debootstrap_base
    fi
    timed "podman import base" import_base
  fi
fi
echo "base image: $BASE_IMAGE"
if ! podman run --rm "$BASE_IMAGE" true 2>"$WORK/probe.err"; then
  echo "podman cannot start a container as set up ($(tail -1 "$WORK/probe.err")): runc, lower rlimits"
  timed "runtime workaround (runc)" runtime_workaround
  podman run --rm "$BASE_IMAGE" true
fi

# --- The image, from the host's binary ------------------------------------------------------
MESHGATE_BIN=${MESHGATE_BIN:-$REPO/target/release/meshgate}
build_binary() {
  nice -n 10 cargo build --release --locked --bin meshgate
}
if [ ! -x "$MESHGATE_BIN" ]; then
  say "building the binary"
  timed "cargo build --release" build_binary
fi
mkdir -p "$WORK/context"
cp "$MESHGATE_BIN" "$WORK/context/meshgate"
strip "$WORK/context/meshgate"
build_image() {
  # OCI images have no HEALTHCHECK; compose.yaml brings its own. A context of the binary alone.
  nice -n 10 podman build -q --target prebuilt -f "$REPO/docker/Dockerfile" \
    --build-arg RUNTIME_IMAGE="$BASE_IMAGE" --build-arg MESHGATE_BINARY=meshgate \
    -t "$IMAGE" "$WORK/context" >/dev/null
}
say "building $IMAGE (--target prebuilt, on $BASE_IMAGE)"
timed "podman build (prebuilt)" build_image
size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1e6}'; }
echo "image size: $(size "$IMAGE") (base $(size "$BASE_IMAGE"), binary $(stat -c %s "$WORK/context/meshgate" | awk '{printf "%.1f MB", $1/1e6}'))"

# What distroless/cc would hold: the binary, the dynamic loader, libc, libm, libgcc_s and a
# passwd. Shows the size of the default image and that the binary needs nothing more.
cc_image() {
  local root=$WORK/cc lib
  mkdir -p "$root"/etc "$root"/lib64 "$root"/lib/x86_64-linux-gnu
  for lib in $(ldd "$WORK/context/meshgate" | awk '/=> \//{print $3} /ld-linux/{print $1}'); do
    cp -L "$lib" "$root$lib"
  done
  echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  echo 'nonroot:x:65532:' >"$root/etc/group"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . | podman import -q - localhost/meshgate-cc-base:test >/dev/null
  podman build -q --target prebuilt -f "$REPO/docker/Dockerfile" \
    --build-arg RUNTIME_IMAGE=localhost/meshgate-cc-base:test --build-arg MESHGATE_BINARY=meshgate \
    -t localhost/meshgate:test-cc "$WORK/context" >/dev/null
  podman rmi -f localhost/meshgate-cc-base:test >/dev/null
}
timed "podman build (distroless-like)" cc_image
echo "distroless-like image size: $(size localhost/meshgate:test-cc)"

# --- The compose demo -------------------------------------------------------------------------
# In depends_on order, one service at a time: podman-compose starts a service's dependencies
# again with it (podman --requires), and podman before 4.6, or without systemd, cannot wait for
# `service_healthy`; so this waits for each condition itself.
ready() { # port: GET /ready until 200, 60 s at most
  local i
  for i in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$1/ready" -o /dev/null && return 0
    sleep 0.5
  done
  echo "no 200 from 127.0.0.1:$1/ready after 60 s"; compose logs 2>&1 | tail -40; return 1
}
demo_up() {
  compose down -v -t 5 >/dev/null 2>&1 || true
  local log=$WORK/compose-up.log
  compose up -d --no-build --no-deps pki >"$log" 2>&1 || { cat "$log"; return 1; }
  [ "$(podman wait "$(container pki)")" = 0 ] || { podman logs "$(container pki)"; return 1; }
  compose up -d --no-build --no-deps echo target-gateway >>"$log" 2>&1 || { cat "$log"; return 1; }
  ready "$MESHGATE_GATEWAY_ADMIN_PORT"
  compose up -d --no-build --no-deps source-proxy >>"$log" 2>&1 || { cat "$log"; return 1; }
  ready "$MESHGATE_SOURCE_ADMIN_PORT"
}
container() { podman ps -a --filter "label=com.docker.compose.project=$PROJECT" \
  --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1; }
say "starting the compose demo"
timed "compose up (until ready)" demo_up
podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '  {{.Names}}  {{.Status}}  {{.Ports}}'

GATEWAY=$(container target-gateway)
SOURCE=$(container source-proxy)
PKI=$(container pki)

say "health checks"
# As the engine would run them (podman runs them on a systemd timer, absent here): up to 3 tries.
healthy() {
  local i
  for i in 1 2 3; do
    podman healthcheck run "$1" && return 0
    sleep 1
  done
  return 1
}
check "target-gateway health check (meshgate probe /ready :15000)" healthy "$GATEWAY"
check "source-proxy health check (meshgate probe /ready :15010)" healthy "$SOURCE"
check "target-gateway /healthz from the host" \
  curl -sf "http://127.0.0.1:$MESHGATE_GATEWAY_ADMIN_PORT/healthz" -o /dev/null

say "the four callers (meshgate demo's, but the east-west one)"
CALLERS=$(podman volume inspect --format '{{.Mountpoint}}' "${PROJECT}_callers")
# call name: the response's status, x-mesh-origin and x-source-principal, or the curl error
call() {
  local args=()
  if [ "$1" = source-app ]; then
    args=(-H "Host: $HOST" "http://127.0.0.1:$MESHGATE_OUTBOUND_PORT/get")
  else
    local c=$CALLERS/$1
    args=(--resolve "$HOST:$MESHGATE_GATEWAY_PORT:127.0.0.1" --cacert "$CALLERS/target-curl/root-cert.pem"
      --cert "$c/cert-chain.pem" --key "$c/key.pem" "https://$HOST:$MESHGATE_GATEWAY_PORT/get")
  fi
  local out code
  out=$(curl -sS --max-time 10 -H 'x-mesh-origin: local' -w '\n%{http_code}' "${args[@]}" 2>&1) \
    || { echo "refused: ${out%$'\n'*}" | tr '\n' ' '; return 0; }
  code=${out##*$'\n'}
  printf '%s\n' "${out%$'\n'*}" | python3 -c '
import json, sys
h = json.load(sys.stdin)["headers"]
print(sys.argv[1], ",".join(h.get("x-mesh-origin", ["-"])), ",".join(h.get("x-source-principal", ["-"])))
' "$code"
}
expect() { # caller path expected
  local got
  got=$(call "$1")
  printf '  %-12s %-52s %s\n' "$1" "$2" "$got"
  case "$got" in $3) return 0 ;; *) echo "        expected: $3"; return 1 ;; esac
}
check "target-mesh workload: 200 local" \
  expect target-curl "mTLS -> gateway" "200 local example-target.com/ns/default/sa/curl"
check "source-mesh app: 200 remote" \
  expect source-app "plaintext -> source proxy -> ISTIO_MUTUAL -> gateway" "200 remote example.com/ns/default/sa/sleep"
check "legacy cluster.local workload: 200 local" \
  expect legacy "mTLS -> gateway" "200 local cluster.local/ns/default/sa/legacy"
check "caller from an untrusted root: refused" \
  expect untrusted "mTLS -> gateway" "refused:*"
check "... and counted: meshgate_handshakes_total{result=rejected,reason=unknown_issuer}" \
  bash -c "curl -sf http://127.0.0.1:$MESHGATE_GATEWAY_ADMIN_PORT/stats/prometheus |
    grep -Eq '^meshgate_handshakes_total\{result=\"rejected\",reason=\"unknown_issuer\"\} [1-9]'"

say "isolation and the PKI"
check "source-proxy sees only its own identity under /pki" \
  test "$(podman exec "$SOURCE" bash -c 'cd /pki && echo *')" = source
check "target-gateway sees only its own identity under /pki" \
  test "$(podman exec "$GATEWAY" bash -c 'cd /pki && echo *')" = target
check "the proxies run as 65532" \
  test "$(podman exec "$SOURCE" id -u)$(podman exec "$GATEWAY" id -u)" = 6553265532
check "the root filesystem is read-only" \
  bash -c "! podman exec '$GATEWAY' bash -c ': > /usr/local/bin/x' 2>/dev/null"
root_sha() { sha256sum "$(podman volume inspect --format '{{.Mountpoint}}' "${PROJECT}_pki-root")/root-cert.pem" | cut -c1-16; }
before=$(root_sha)
podman start -a "$PKI" >"$WORK/pki-again.log" 2>&1
check "a second start reuses the root CA ($before)" test "$(root_sha)" = "$before"
check "... and says so" grep -q 'reusing the root CA' "$WORK/pki-again.log"

say "the distroless-like image: the gateway's identity and config, read-only, no capability"
check "check -c passes as 65532 with a read-only root, no /tmp, no capability" \
  podman run --rm --read-only --read-only-tmpfs=false --cap-drop=ALL \
  -v "${PROJECT}_id-target:/pki/target:ro" -v "$REPO/docker/config/target:/config:ro" \
  localhost/meshgate:test-cc check -c /config >"$WORK/check.log" 2>&1 || { cat "$WORK/check.log"; false; }

say "the build context keeps keys out (.dockerignore)"
# The repository's files, plus keys where the README's step by step and `meshgate pki` write
# them, as the context of an image that copies all it is given.
ctx="$WORK/repo-context"
mkdir -p "$ctx"
git -C "$REPO" ls-files -z | (cd "$REPO" && xargs -0 cp --parents -t "$ctx")
mkdir -p "$ctx/examples/target-mesh/certs" "$ctx/pki-out" "$ctx/target/release"
for f in examples/target-mesh/certs/key.pem root-key.pem pki-out/ca-key.pem pki-out/tls.key; do
  echo "not a key" >"$ctx/$f"
done
cp "$WORK/context/meshgate" "$ctx/target/release/meshgate"
printf 'FROM %s\nCOPY . /ctx\n' "$BASE_IMAGE" >"$WORK/Containerfile.context"
podman build -q -f "$WORK/Containerfile.context" -t localhost/meshgate-context:test "$ctx" >/dev/null
inside() { podman run --rm localhost/meshgate-context:test sh -c "$1"; }
check "no key or certificate in the context" \
  test -z "$(inside 'find /ctx -name "*.pem" -o -name "*.key" -o -name certs')"
check "... but the sources, the manifest and the prebuilt binary" \
  inside 'test -f /ctx/Cargo.lock && test -f /ctx/proxy/src/lib.rs && test -x /ctx/target/release/meshgate'
podman rmi -f localhost/meshgate-context:test >/dev/null 2>&1 || true

say "times"
printf '  %s\n' "${TIMES[@]}"
if [ "$FAILED" = 0 ]; then echo "all checks passed"; else echo "SOME CHECKS FAILED"; fi
exit "$FAILED"
