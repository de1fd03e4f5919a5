#!/usr/bin/env bash
# ARM64 proof (slow, not part of CI): on an x86-64 Debian host, as root,
#   1. every runtime dependency resolves to a Python 3.11 aarch64 wheel (pure-Python
#      sdist-only packages are named in SDIST_ONLY and checked to hold no native code);
#   2. an arm64 Debian root is made with debootstrap and run under qemu-user-static;
#   3. edge-agent is installed in it by scripts/install-gateway.sh (venv + non-editable pip
#      install, offline from the wheels of step 1), from a snapshot of the working tree
#      (or of the commit ARM64_REV);
#   4. the daemon serves the bundled model under emulation: one chat request over HTTP and
#      one over MQTT (the host's Mosquitto on a free loopback port), then a clean SIGTERM stop.
# Usage: sudo scripts/check_arm64.sh [--fresh]      (make check-arm64)
# Cached between runs in ARM64_CACHE (default /var/tmp/edge-agent-arm64): the arm64 root,
# its installed venv (upgraded in place, as on a gateway) and the wheels; --fresh deletes it.
# Environment: ARM64_CACHE, ARM64_MIRROR (default: the host's Debian mirror), ARM64_SUITE
# (bookworm), ARM64_REV (a git revision to check instead of the working tree),
# ARM64_READY_TIMEOUT_S (600), ARM64_REQUEST_TIMEOUT_S (300).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ARM64_CACHE:-/var/tmp/edge-agent-arm64}"
SUITE="${ARM64_SUITE:-bookworm}"
READY_TIMEOUT_S="${ARM64_READY_TIMEOUT_S:-600}"
REQUEST_TIMEOUT_S="${ARM64_REQUEST_TIMEOUT_S:-300}"
ROOT="$CACHE/root"
WHEELS="$CACHE/wheels"
ROOT_WHEELS=/var/cache/edge-agent-wheels  # inside the root
PLATFORMS=(manylinux2014_aarch64 manylinux_2_28_aarch64 manylinux_2_34_aarch64)
SDIST_ONLY=(sdnotify)  # publish no wheel at all; must be pure Python
DEVICE_ID=arm64-check

case "${1:-}" in
  --fresh) FRESH=1 ;;
  "") FRESH=0 ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "check_arm64: unknown option $1" >&2; exit 2 ;;
esac

START_S=$SECONDS
STEP_S=$SECONDS
WORK=""
MOUNTS=()
DAEMON_PID=""
BROKER_PID=""

step() {
  echo "    ($((SECONDS - STEP_S)) s)"
  STEP_S=$SECONDS
  printf '\n==> [%s] %s\n' "$(date +%T)" "$*"
}
fail() { echo "check_arm64: FAILED: $*" >&2; exit 1; }

# Ends a process that this script started: SIGTERM, then SIGKILL after a deadline.
stop_pid() {
  local pid="$1" deadline=$((SECONDS + ${2:-30}))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
    sleep 0.5
  done
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  [ -z "$DAEMON_PID" ] || stop_pid "$DAEMON_PID" 60
  [ -z "$BROKER_PID" ] || stop_pid "$BROKER_PID" 10
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" || true
  done
  [ -z "$WORK" ] || rm -rf "$WORK"
  if [ "$rc" = 0 ]; then
    echo "check_arm64: PASSED in $((SECONDS - START_S)) s"
  else
    echo "check_arm64: FAILED (exit $rc) after $((SECONDS - START_S)) s" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs a command in the arm64 root with a clean environment (a command, not a function, so
# that $! of a background one is the process itself: chroot and env exec).
IN_ROOT=(chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
  HOME=/root LANG=C.UTF-8)

printf '==> [%s] Host prerequisites\n' "$(date +%T)"
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot, mounts)"
[ "$(uname -m)" = x86_64 ] || echo "note: host is $(uname -m), not x86_64"
missing=()
for tool in debootstrap:debootstrap qemu-aarch64-static:qemu-user-static \
    update-binfmts:binfmt-support mosquitto:mosquitto curl:curl; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
BINFMT=/proc/sys/fs/binfmt_misc
mountpoint -q "$BINFMT" || mount -t binfmt_misc binfmt_misc "$BINFMT"
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -qsx enabled "$BINFMT/qemu-aarch64" \
  || fail "binfmt qemu-aarch64 is not enabled (qemu-user-static, binfmt-support)"
# The F flag opens the interpreter now, so it need not exist inside the root.
grep -q '^flags: .*F' "$BINFMT/qemu-aarch64" || fail "binfmt qemu-aarch64 lacks the F flag"
if [ "$FRESH" = 1 ]; then
  echo "--fresh: removing $CACHE"
  rm -rf "$CACHE"
fi
mkdir -p "$CACHE"
WORK="$(mktemp -d /tmp/check-arm64.XXXXXX)"

step "Source snapshot"
# One snapshot of the source, checked and installed: the working tree (excluding what the
# installer's own tar excludes, and local models), or the commit ARM64_REV. Nothing in the
# checkout is written.
SRC="$WORK/src"
mkdir -p "$SRC"
if [ -n "${ARM64_REV:-}" ]; then
  git -C "$REPO" archive --format=tar "$ARM64_REV" | tar -C "$SRC" -xf -
  echo "source: commit $(git -C "$REPO" rev-parse --short "$ARM64_REV^{commit}")"
else
  tar -C "$REPO" --exclude=./.venv --exclude=./.venv-build --exclude=./.git \
    --exclude='./models/bench*' --exclude=./models/real --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./build \
    --exclude=./.state -cf - . | tar -C "$SRC" -xf -
  echo "source: the working tree $REPO"
fi

step "Wheel check: every runtime dependency as a Python 3.11 aarch64 wheel (${PLATFORMS[*]})"
[ -x "$CACHE/host-venv/bin/pip" ] || python3 -m venv "$CACHE/host-venv"
HOST_PIP=("$CACHE/host-venv/bin/pip" --disable-pip-version-check)
# Runtime dependencies from pyproject.toml: those with wheels, and the sdist-only ones.
python3 - "$SRC/pyproject.toml" "$WORK" "${SDIST_ONLY[@]}" <<'EOF'
import re, sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
sdist_only = set(sys.argv[3:])
split = {True: [], False: []}
for dep in deps:
    split[re.split(r"[<>=!~;\[ ]", dep)[0] in sdist_only].append(dep)
for sdist, name in ((False, "requirements.txt"), (True, "sdist-only.txt")):
    with open(f"{sys.argv[2]}/{name}", "w") as f:
        f.write("".join(f"{dep}\n" for dep in split[sdist]))
EOF
# Also the build backends, so that the install in the root can run with --no-index.
printf '%s\n' "setuptools>=69" wheel >>"$WORK/requirements.txt"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
mkdir -p "$WHEELS"
"${HOST_PIP[@]}" download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
  "${platform_args[@]}" --dest "$WHEELS" -r "$WORK/requirements.txt" 2> >(grep -v 'is ignored' >&2) \
  || fail "a runtime dependency has no Python 3.11 aarch64 wheel (see pip's message above)"
while read -r spec; do
  name="$(echo "$spec" | sed -E 's/[<>=!~; [].*//')"
  "${HOST_PIP[@]}" download --quiet --no-deps --no-binary=:all: --dest "$WHEELS" "$spec" \
    2> >(grep -v 'is ignored' >&2) || fail "no sdist for $spec"
  sdist="$(find "$WHEELS" -name "$name-*.tar.gz" | sort -V | tail -n 1)"
  if tar -tzf "$sdist" | grep -E '\.(c|cc|cpp|cxx|h|pyx|rs|f90)$'; then
    fail "$name publishes no aarch64 wheel and its sdist holds native sources"
  fi
  echo "sdist only, pure Python (built in the root): $(basename "$sdist")"
done <"$WORK/sdist-only.txt"
echo "native wheels:"
find "$WHEELS" -name '*.whl' ! -name '*-none-any.whl' -printf '  %f\n' | sort
echo "$(find "$WHEELS" -name '*-none-any.whl' | wc -l) pure-Python wheels"

step "arm64 Debian root ($SUITE) in $ROOT"
if [ ! -f "$ROOT/.edge-agent-root-ok" ]; then
  MIRROR="${ARM64_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' \
    | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ' || true)}"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  echo "debootstrap from $MIRROR (cached for later runs)"
  rm -rf "$ROOT"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
  touch "$ROOT/.edge-agent-root-ok"
else
  echo "reusing the cached root (--fresh rebuilds it)"
fi
for fs in proc/cpuinfo proc sys dev; do  # left over from a killed run
  if mountpoint -q "$ROOT/$fs"; then umount -l "$ROOT/$fs"; fi
done
mount -t proc proc "$ROOT/proc"
MOUNTS+=("$ROOT/proc")
# qemu-user (7.2 in bookworm) passes the host's x86 /proc/cpuinfo through, and onnxruntime's
# cpuinfo library segfaults parsing it; an arm64 kernel would show this (Neoverse-N1 cores,
# features that qemu's "max" CPU has).
for ((i = 0; i < $(nproc); i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' \
    "$i" "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
  printf 'CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n'
done >"$WORK/cpuinfo"
mount --bind "$WORK/cpuinfo" "$ROOT/proc/cpuinfo"
MOUNTS+=("$ROOT/proc/cpuinfo")
mount --bind /sys "$ROOT/sys"
MOUNTS+=("$ROOT/sys")
mount --bind /dev "$ROOT/dev"
MOUNTS+=("$ROOT/dev")
arch="$("${IN_ROOT[@]}" uname -m)"
[ "$arch" = aarch64 ] || fail "the root runs as $arch, not aarch64"
echo "root: $("${IN_ROOT[@]}" python3 --version), uname -m: $arch"

step "Install with scripts/install-gateway.sh --no-start inside the root (offline from the wheels)"
rm -rf "$ROOT/usr/src/edge-agent" "$ROOT$ROOT_WHEELS"
mkdir -p "$ROOT/usr/src/edge-agent" "$ROOT$ROOT_WHEELS"
cp -a "$SRC/." "$ROOT/usr/src/edge-agent/"
cp "$WHEELS"/* "$ROOT$ROOT_WHEELS/"
"${IN_ROOT[@]}" SYSTEMCTL=true PIP_OPTIONS="--no-index --find-links $ROOT_WHEELS" \
  bash /usr/src/edge-agent/scripts/install-gateway.sh --no-start
AGENT=/opt/edge-agent/.venv/bin/edge-agent
"${IN_ROOT[@]}" /opt/edge-agent/.venv/bin/python - <<'EOF'
import importlib.metadata as md, platform
import agent, onnxruntime_genai
dist = md.distribution("edge-agent")
direct = dist.read_text("direct_url.json") or ""
assert '"editable": true' not in direct, "edge-agent was installed editable"
print(f"edge-agent {dist.version} in {agent.__file__} ({platform.machine()}), "
      f"onnxruntime-genai {onnxruntime_genai.__version__}")
EOF

step "Mosquitto (host) on a free loopback port"
MQTT_PORT="$(free_port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n' \
  "$MQTT_PORT" >"$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
deadline=$((SECONDS + 10))
until (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; do
  kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/mosquitto.log" >&2; fail "mosquitto exited"; }
  [ "$SECONDS" -lt "$deadline" ] || fail "mosquitto did not listen within 10 s"
  sleep 0.2
done
echo "mqtt://127.0.0.1:$MQTT_PORT"

step "Daemon under qemu-aarch64 on the bundled model (ready within ${READY_TIMEOUT_S} s)"
HTTP_PORT="$(free_port)"
URL="http://127.0.0.1:$HTTP_PORT"
"${IN_ROOT[@]}" "$AGENT" serve --http-host 127.0.0.1 --http-port "$HTTP_PORT" \
  --mqtt-url "mqtt://127.0.0.1:$MQTT_PORT" --device-id "$DEVICE_ID" \
  --state-dir /var/lib/edge-agent --log-format json >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
deadline=$((SECONDS + READY_TIMEOUT_S))
until curl -sf -o /dev/null "$URL/ready"; do
  kill -0 "$DAEMON_PID" 2>/dev/null || { tail -n 40 "$WORK/daemon.log" >&2; fail "daemon exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { tail -n 40 "$WORK/daemon.log" >&2; fail "not ready in time"; }
  sleep 1
done
curl -sf "$URL/v1/agent/status" >"$WORK/status.json"
python3 - "$WORK/status.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
m, arch = s["model"], s["hardware"]["cpu"]["arch"]
print(f"ready: model {m['name']} ({m['variant']}) from {m['path']}, provider {s['provider']}, "
      f"cpu arch {arch}, loaded in {m['load_time_s']} s")
assert arch == "aarch64", "the daemon does not run as aarch64"
EOF

step "One chat request over HTTP (POST /v1/chat/completions)"
curl -sf --max-time "$REQUEST_TIMEOUT_S" "$URL/v1/chat/completions" \
  -H 'content-type: application/json' \
  -d '{"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello, arm64!"}]}' \
  >"$WORK/http.json" || fail "HTTP chat request"
python3 - "$WORK/http.json" <<'EOF'
import json, sys
reply = json.load(open(sys.argv[1]))
choice = reply["choices"][0]
assert choice["finish_reason"] in ("stop", "length"), reply
print(f"HTTP reply: {json.dumps(choice['message']['content'])} "
      f"finish_reason={choice['finish_reason']} usage={json.dumps(reply['usage'])}")
EOF

step "One chat request over MQTT 5 (paho-mqtt in the root's venv)"
"${IN_ROOT[@]}" /opt/edge-agent/.venv/bin/python - "$MQTT_PORT" "$DEVICE_ID" "$REQUEST_TIMEOUT_S" <<'EOF'
import json, queue, sys
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, device, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
replies = queue.Queue()
subscribed = queue.Queue()
client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
client.on_message = lambda c, u, msg: replies.put(json.loads(msg.payload))
client.on_subscribe = lambda c, u, mid, codes, props: subscribed.put(codes)
client.connect("127.0.0.1", port)
client.loop_start()
client.subscribe("arm64-check/replies", qos=1)
subscribed.get(timeout=30)
props = Properties(PacketTypes.PUBLISH)
props.ResponseTopic = "arm64-check/replies"
props.CorrelationData = b"arm64-1"
request = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi!"}]}
client.publish(f"edge-agent/v1/{device}/infer/req", json.dumps(request), qos=1, properties=props)
while True:
    reply = replies.get(timeout=timeout)
    print(f"MQTT {reply['type']}: {json.dumps(reply)}")
    if reply["type"] in ("final", "rejected"):
        break
client.loop_stop()
client.disconnect()
assert reply["type"] == "final" and reply["finish_reason"] in ("stop", "length"), reply
EOF

step "Clean stop (SIGTERM: drain, exit 0)"
kill -TERM "$DAEMON_PID"
deadline=$((SECONDS + 60))
while kill -0 "$DAEMON_PID" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "daemon did not stop within 60 s of SIGTERM"
  sleep 0.5
done
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=""
[ "$rc" = 0 ] || { tail -n 20 "$WORK/daemon.log" >&2; fail "daemon exited $rc on SIGTERM"; }
echo "daemon exited 0"
step "Done"
