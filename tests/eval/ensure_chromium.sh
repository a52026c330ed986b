#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium (used by the report tests).
# Idempotent: does nothing when it is already installed. Needs root (CI and `make setup` run as root).
set -euo pipefail
CHROMIUM="${AM3_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "ensure_chromium.sh: $CHROMIUM is missing and this user cannot install it (run: apt-get install -y chromium)" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" = "0" ] || SUDO="sudo"
# One installer at a time (tests and `make setup` may run this concurrently).
exec 9>/tmp/am3-ensure-chromium.lock
flock 9
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x "$CHROMIUM"
"$CHROMIUM" --version
