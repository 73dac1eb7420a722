#!/usr/bin/env bash
# Builds the container image without any image registry (air-gapped sites, and `make image-test`):
#   1. a Debian 12 base made by mmdebstrap from Debian's mirror, imported into podman (cached: built once);
#   2. the repository's Dockerfile on that base with podman (Debian packages from Debian, the Python
#      packages from PyPI, as a normal build).
# Usage: scripts/build-image.sh [TAG]          (default localhost/arp-sensor:0.1.0)
# The build runs with --network host: no podman bridge or NAT rule is ever created.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/arp-sensor:0.1.0}
BASE=${ARP_SENSOR_BASE_IMAGE:-localhost/arp-sensor-base:bookworm}
CACHE=${ARP_SENSOR_CACHE:-/var/cache/arp-sensor}
SUITES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

if ! podman image exists "$BASE"; then
  mkdir -p "$CACHE"
  tar="$CACHE/debian-bookworm-minbase.tar"
  if [ ! -s "$tar" ]; then
    t0=$SECONDS
    # minbase, no docs/locales: what debian:12-slim is
    mmdebstrap --quiet --variant=minbase --format=tar \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --aptopt='Apt::Install-Recommends "false"' \
      bookworm "$tar.part" "${SUITES[@]}"
    mv "$tar.part" "$tar"
    echo "build-image: base tree $tar in $((SECONDS - t0)) s"
  fi
  podman import --quiet --change 'CMD ["bash"]' "$tar" "$BASE" >/dev/null
  echo "build-image: imported $BASE"
fi

# crun refuses cgroup v1/hybrid hosts ("cgroups in hybrid mode not supported"); runc runs there.
RUNTIME=()
if [ "$(podman info --format '{{.Host.CgroupsVersion}}')" != v2 ]; then RUNTIME=(--runtime runc); fi

# The host's CA bundle for pip during the build (a TLS-inspecting proxy's CA is trusted there, not in Debian's
# bundle inside the build); a build-time mount and ARG, not a layer of the image.
CA=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  CA=(--volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt)
fi

t0=$SECONDS
podman build "${RUNTIME[@]}" "${CA[@]}" --quiet --pull=never --network host --build-arg "BASE_IMAGE=$BASE" -t "$TAG" . >/dev/null
echo "build-image: $TAG built in $((SECONDS - t0)) s on $BASE"
