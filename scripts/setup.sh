#!/usr/bin/env bash
# Create the project's virtual environment (idempotent). On a fresh Debian machine, as
# root, installs python3-venv first when `python3 -m venv` is not available.
set -euo pipefail
venv=${VENV:-.venv}
py=${PYTHON:-python3}
bash "$(dirname "$0")/web.sh"  # the dashboard's front-end files (npm ci, from the lockfile)
if [ -x "$venv/bin/python" ] && [ "$venv/.installed" -nt pyproject.toml ]; then
  exit 0
fi
if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
  else
    echo "setup: $py cannot create virtual environments; install python3-venv" >&2
    exit 1
  fi
fi
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Diplo needs Python 3.11 or newer ($($py --version))" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
touch "$venv/.installed"
echo "setup: $venv ready" >&2
