#!/usr/bin/env bash
# `make run`: the hello example applied, then kept converged by a `diplo serve` in the
# background, whose dashboard is at the printed address. A second `make run` reuses the
# serve already running; `make stop` stops it (the apps keep running).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
listen=${DIPLO_LISTEN:-127.0.0.1:7700}
home=$($bin/python -c 'from diplo.paths import default_home; print(default_home())')
pidfile=$home/run-serve.pid
log=$home/serve.log

$bin/diplo apply -f examples/hello/diplo.yaml

answers() {
  $bin/python - "$listen" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}/healthz", timeout=1).read()
except Exception:
    sys.exit(1)
PY
}

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "run: diplo serve already runs (pid $(cat "$pidfile"))"
else
  mkdir -p "$home"
  setsid nohup "$bin/diplo" serve --manifests examples/hello --listen "$listen" \
    >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
  for _ in $(seq 1 150); do
    answers && break
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      echo "run: diplo serve stopped at start; the end of its log ($log):" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
  answers || { echo "run: diplo serve does not answer at $listen; its log: $log" >&2; exit 1; }
fi

$bin/diplo status
echo
echo "Dashboard: http://$listen/   (diplo serve's log: $log; \`make stop\` stops it)"
echo "To act from the dashboard, sign in with the admin token in $home/token."
