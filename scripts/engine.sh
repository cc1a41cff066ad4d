#!/usr/bin/env bash
# Make sure a Docker engine answers, idempotently.
# 1. an engine that already answers is used as it is;
# 2. otherwise, as root on Debian: install docker.io + busybox-static, start dockerd
#    in the background (log: $DIPLO_DOCKERD_LOG) and wait until `docker info` answers.
# Also seeds the local `busybox:latest` base image from Debian's static busybox when it is
# missing, so that examples and tests never need a registry; and installs Debian's caddy,
# from which Diplo builds its proxy image when `caddy:2` cannot be pulled.
set -euo pipefail

log=${DIPLO_DOCKERD_LOG:-/var/log/diplo-dockerd.log}
pidfile=${DIPLO_DOCKERD_PIDFILE:-/run/diplo-dockerd.pid}  # only for an engine started here

answers() { timeout 10 docker info >/dev/null 2>&1; }

if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1 || [ ! -x /bin/busybox ] && [ ! -x /usr/bin/busybox ]; then
  if ! answers; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "engine: no Docker engine answers and this is not root on Debian; start Docker yourself" >&2
      exit 1
    fi
    echo "engine: installing docker.io and busybox-static" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io busybox-static >/dev/null
  fi
fi

if ! answers; then
  if [ "$(id -u)" != 0 ]; then
    echo "engine: no Docker engine answers; start dockerd (or ask an admin) and retry" >&2
    exit 1
  fi
  echo "engine: starting dockerd (log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    answers && break
    sleep 0.5
  done
  if ! answers; then
    echo "engine: dockerd did not answer within 60 s; last lines of $log:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
  fi
fi
echo "engine: $(docker version --format 'Docker {{.Server.Version}}') answers" >&2

# Caddy: only its binary is wanted (Diplo runs it in a container). The package would
# start a service: a policy-rc.d forbids that during the install, and a caddy that
# started anyway (not there before) is stopped, so nothing is left listening on :80.
caddy_pids() {  # from /proc: pgrep (procps) may be missing on a fresh machine
  local f
  for f in /proc/[0-9]*/comm; do
    if [ "$(cat "$f" 2>/dev/null)" = caddy ]; then f=${f#/proc/}; echo "${f%/comm}"; fi
  done
}
if ! command -v caddy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "engine: installing caddy" >&2
    export DEBIAN_FRONTEND=noninteractive
    before=" $(caddy_pids | tr '\n' ' ')"
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    status=0
    apt-get install -y -qq caddy >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq caddy >/dev/null; } || status=$?
    if [ -n "$own_policy" ]; then rm -f "$policy"; fi
    for pid in $(caddy_pids); do
      case "$before" in *" $pid "*) ;; *) kill "$pid" 2>/dev/null || true ;; esac
    done
    [ "$status" = 0 ] || { echo "engine: installing caddy failed" >&2; exit 1; }
  else
    echo "engine: caddy is not installed (the proxy then needs the caddy:2 image)" >&2
  fi
fi

# Caddy 2.6 reloads its config (every switch of an app's upstreams) on a new listening
# socket beside the old one (SO_REUSEPORT), then closes the old one: connections still
# queued there are reset, unless the kernel hands them over (Linux >= 5.14). Not kept
# across reboots: put `net.ipv4.tcp_migrate_req = 1` in /etc/sysctl.d/ for that.
migrate=/proc/sys/net/ipv4/tcp_migrate_req
if [ "$(id -u)" = 0 ] && [ -e "$migrate" ] && [ "$(cat "$migrate")" = 0 ]; then
  if { echo 1 >"$migrate"; } 2>/dev/null; then
    echo "engine: set net.ipv4.tcp_migrate_req=1 (no connection reset when Caddy reloads)" >&2
  else
    echo "engine: could not set net.ipv4.tcp_migrate_req=1" >&2
  fi
fi

# Seed busybox:latest from the static busybox binary when there is none (no registry here).
if ! docker image inspect busybox:latest >/dev/null 2>&1; then
  bb=$(command -v busybox || true)
  [ -n "$bb" ] || { echo "engine: busybox-static is not installed" >&2; exit 1; }
  file "$bb" 2>/dev/null | grep -q static || ldd "$bb" 2>&1 | grep -q "not a dynamic" || {
    echo "engine: $bb is not statically linked (install busybox-static)" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www" "$root/var/www"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
  echo "root:x:0:" >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import \
    --change 'CMD ["sh"]' --change 'ENV PATH=/bin' \
    --change 'LABEL org.opencontainers.image.description="busybox seeded by diplo from the host static binary"' \
    - busybox:latest >/dev/null
  echo "engine: seeded busybox:latest from $bb" >&2
fi

# Debian's Prometheus, for the integration test that scrapes `diplo serve`'s /metrics
# (tests/integration/test_metrics.py starts its own, on a free port). Its package must not
# start a system-wide server: a policy-rc.d that refuses is put in place for the install
# when the machine has none.
if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "engine: installing prometheus" >&2
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null || status=$?
    [ -z "$ours" ] || rm -f "$policy"
    [ "${status:-0}" = 0 ] || { echo "engine: installing prometheus failed" >&2; exit 1; }
  else
    echo "engine: prometheus is missing (the metrics integration test needs it); install Debian's package" >&2
  fi
fi
