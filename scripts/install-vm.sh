#!/usr/bin/env bash
# Installs the heavy Debian packages only `make image-test` and `make vm-test` need (the container image
# and the VM lab), idempotently. `make test` does not call this: scripts/install-system.sh stays lean.
#
# No service may start here: libvirt-daemon-system would start libvirtd in the root network namespace, and
# its autostarted "default" network puts a bridge, dnsmasq and NAT rules there. A temporary policy-rc.d
# refuses every start during the install, and the default network's autostart link is removed; the tests
# start libvirtd/virtlogd themselves, inside a network namespace of their own.
set -euo pipefail

PKGS=(
  mmdebstrap                                  # Debian root trees from Debian's mirror (no image registry)
  podman buildah runc                         # build and run the container image offline (runc: cgroup v1/hybrid hosts, where crun refuses)
  qemu-system-x86 qemu-utils                  # the VMs (TCG when KVM is unusable)
  libvirt-daemon-system libvirt-clients dnsmasq-base iptables  # vagrant-libvirt's backend (its networks' rules)
  vagrant vagrant-libvirt rsync               # the lab itself; rsync for its synced folder
  extlinux syslinux-common fdisk e2fsprogs    # a bootable disk image without a VM or a registry
  openssh-client                              # vagrant ssh
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-vm: must run as root (apt-get)" >&2
  exit 2
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-vm: installing ${missing[*]}"
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap '[ -z "$created_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-vm: all Debian packages present"
fi

# libvirt's packaged NAT network must never autostart (whatever namespace libvirtd runs in).
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
