#!/usr/bin/env bash
# The browser the dashboard's tests drive (idempotent): Debian's chromium, which
# Playwright launches by path. Playwright's own browser download is never used.
set -euo pipefail
bin=${DIPLO_CHROMIUM:-/usr/bin/chromium}
if [ -x "$bin" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "browser: $bin is missing; install Debian's chromium (or set DIPLO_CHROMIUM)" >&2
  exit 1
fi
echo "browser: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium fonts-dejavu-core >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }
