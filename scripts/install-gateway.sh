#!/usr/bin/env bash
# Install edge-agent on a gateway as a systemd service, idempotently:
#   /opt/edge-agent          src/ (the code, with the bundled model) and .venv/
#   /etc/edge-agent          edge-agent.env (kept if present) and credentials/
#   /etc/systemd/system      edge-agent.service
# Usage: sudo scripts/install-gateway.sh [--no-start] [--prefix DIR]
#        sudo scripts/install-gateway.sh --uninstall [--purge]   (--purge: config and state too)
# Environment: PIP_OPTIONS (offline: "--no-index --find-links /media/wheels"); for tests
# SYSTEMD_DIR, ETC_DIR and SYSTEMCTL (a command, or "true" to skip systemctl).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/edge-agent
ETC_DIR="${ETC_DIR:-/etc/edge-agent}"
SYSTEMD_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"
SYSTEMCTL="${SYSTEMCTL:-systemctl}"
PYTHON="${PYTHON:-python3}"
ACTION=install_agent
START=1
PURGE=0

while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) ACTION=uninstall_agent ;;
    --purge) PURGE=1 ;;
    --no-start) START=0 ;;
    --prefix) PREFIX="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install-gateway: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

UNIT="$SYSTEMD_DIR/edge-agent.service"

systemctl_quiet() { $SYSTEMCTL "$@" >/dev/null 2>&1 || true; }

install_agent() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "install-gateway: Python 3.11 or newer is needed ($PYTHON)" >&2; exit 1; }
  # The code (not the build venvs, caches or local models) in src/, a new copy each time.
  rm -rf "$PREFIX/src"
  mkdir -p "$PREFIX/src"
  tar -C "$REPO" --exclude='./.venv*' --exclude=./.git --exclude=./models \
      --exclude='__pycache__' --exclude='*.egg-info' \
      --exclude=./.pytest_cache --exclude=./.ruff_cache -cf - . | tar -C "$PREFIX/src" -xf -
  [ -x "$PREFIX/.venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/.venv"
  # shellcheck disable=SC2086  # PIP_OPTIONS is a list of options
  "$PREFIX/.venv/bin/pip" install --quiet ${PIP_OPTIONS:-} "$PREFIX/src"
  mkdir -p "$ETC_DIR/credentials"
  chmod 700 "$ETC_DIR/credentials"
  [ -f "$ETC_DIR/edge-agent.env" ] || cp "$REPO/systemd/edge-agent.env.example" "$ETC_DIR/edge-agent.env"
  # The unit always loads this credential; left empty, it does not count (no password, or
  # the one in EDGE_AGENT_MQTT_URL).
  [ -f "$ETC_DIR/credentials/mqtt-password" ] || install -m 600 /dev/null "$ETC_DIR/credentials/mqtt-password"
  mkdir -p "$SYSTEMD_DIR"
  sed -e "s#/opt/edge-agent#$PREFIX#g" -e "s#/etc/edge-agent#$ETC_DIR#g" \
    "$REPO/systemd/edge-agent.service" > "$UNIT.tmp"
  mv "$UNIT.tmp" "$UNIT"
  systemctl_quiet daemon-reload
  if [ "$START" = 1 ]; then
    $SYSTEMCTL enable --now edge-agent.service
  fi
  echo "edge-agent installed in $PREFIX; settings: $ETC_DIR/edge-agent.env"
}

uninstall_agent() {
  systemctl_quiet disable --now edge-agent.service
  rm -f "$UNIT"
  systemctl_quiet daemon-reload
  rm -rf "$PREFIX"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC_DIR" /var/lib/private/edge-agent /var/lib/edge-agent /var/cache/edge-agent
    echo "edge-agent removed with its settings and state"
  else
    echo "edge-agent removed; settings kept in $ETC_DIR (--purge removes them)"
  fi
}

"$ACTION"
