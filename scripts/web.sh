#!/usr/bin/env bash
# Build the dashboard's front-end files (idempotent): the npm packages pinned by
# web/package-lock.json, installed with `npm ci`, and their minified files copied into
# diplo/web/static/vendor (git-ignored; package data). `diplo serve` serves them itself:
# no CDN and no Node at run time. On a fresh Debian machine, as root, installs npm first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=diplo/web/static/vendor
stamp=$out/.built
if [ -f "$stamp" ] && [ "$stamp" -nt web/package-lock.json ] && [ "$stamp" -nt scripts/web.sh ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "web: installing npm" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "web: npm is missing; install Node.js and npm to build the dashboard's files" >&2
    exit 1
  fi
fi
(cd web && npm ci --no-audit --no-fund --loglevel=error)
mkdir -p "$out"
mods=web/node_modules
cp "$mods/htmx.org/dist/htmx.min.js" "$out/htmx.min.js"
cp "$mods/htmx.org/LICENSE" "$out/htmx.LICENSE"
cp "$mods/uplot/dist/uPlot.iife.min.js" "$out/uPlot.iife.min.js"
cp "$mods/uplot/dist/uPlot.min.css" "$out/uPlot.min.css"
cp "$mods/uplot/LICENSE" "$out/uPlot.LICENSE"
touch "$stamp"
echo "web: dashboard files built into $out" >&2
