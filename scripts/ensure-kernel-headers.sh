#!/usr/bin/env bash
# bcc needs /lib/modules/$(uname -r)/build. When the running kernel ships no headers (custom or cloud
# kernels), link Debian's newest linux-headers-*-amd64 there: our XDP/tc programs only use stable UAPI
# structs, so headers of an older kernel compile fine. Does nothing when headers already exist.
set -euo pipefail
rel=$(uname -r)
mod=/lib/modules/$rel

if [ -e "$mod/build/include" ] || [ -e "$mod/build/Makefile" ]; then
  echo "kernel-headers: $mod/build present, nothing to do"
  exit 0
fi
if [ -e /sys/kernel/kheaders.tar.xz ]; then
  echo "kernel-headers: kernel provides /sys/kernel/kheaders.tar.xz, bcc will use it; nothing to do"
  exit 0
fi

build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$build" ]; then
  echo "kernel-headers: no headers for $rel and no linux-headers-*-amd64 in /usr/src; apt-get install linux-headers-amd64" >&2
  exit 3
fi
common="${build%-amd64}-common"
mkdir -p "$mod"
ln -sfn "$build" "$mod/build"
if [ -d "$common" ]; then
  ln -sfn "$common" "$mod/source"
fi
echo "kernel-headers: no headers for $rel; linked $mod/build -> $build and $mod/source -> $common"
