#!/usr/bin/env bash
# Installs what arp-sensor needs from Debian, idempotently: only missing packages are installed,
# and the kernel-header fallback is applied only when the running kernel has no headers.
set -euo pipefail

PKGS=(
  python3-bpfcc bpfcc-tools python3-venv python3-pip   # bcc (the real one) and a venv that can see it
  linux-headers-amd64                                  # bcc compiles against kernel headers
  iproute2 bpftool ethtool                             # netns/veth/bridge, program inspection
  bird2                                                # real BGP routers for the lab and tests
  tcpdump netsniff-ng arping                           # traffic tools for tests and benchmarks
  syslog-ng-core                                       # a real log receiver for the output tests
  tmux vagrant                                         # top's pty test; `vagrant validate`
  prometheus                                           # promtool (rule tests) and a real server for the lab test
)

# --list: the package names only (vagrant/box/build.sh bakes them into the offline lab box).
if [ "${1:-}" = --list ]; then
  printf '%s\n' "${PKGS[@]}"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system: must run as root (apt-get, /lib/modules)" >&2
  exit 2
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-system: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-system: all Debian packages present"
fi

# Debian starts services on install where an init system runs them; the lab and tests start their own.
for svc in bird syslog-ng prometheus; do
  if pgrep -x "$svc" >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

"$(dirname "$0")/ensure-kernel-headers.sh"
