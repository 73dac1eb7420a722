#!/usr/bin/env bash
# Builds the VM lab's Debian 12 libvirt box from Debian packages only: no box registry, no installer ISO, no VM
# during the build. For air-gapped sites as much as for `make vm-test`.
#
#   mmdebstrap (Debian's mirror) → root tree with the vagrant user, Vagrant's insecure key, sshd, the kernel
#   and its headers, and every package scripts/install-system.sh installs (python3-bpfcc, bird2, ...), plus a
#   wheelhouse of the project's Python dependencies (the VMs have no uplink; `make venv` installs from it)
#   → ext4 (mkfs.ext4 -d) in a partitioned raw disk with extlinux → qcow2 → box (metadata.json, box.img).
#
# Usage: vagrant/box/build.sh            prints the .box path on its last line; built once per input set,
#                                        then cached in $ARP_SENSOR_CACHE/box (default /var/cache/arp-sensor).
#        vagrant box add --name arp-sensor/debian12 "$(vagrant/box/build.sh | tail -n1)"
#        ARP_LAB_BOX=arp-sensor/debian12 vagrant up --provider=libvirt
# Needs root (mmdebstrap into a directory, a loop mount for extlinux): scripts/install-vm.sh installs the tools.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${ARP_SENSOR_CACHE:-/var/cache/arp-sensor}/box
SIZE_GIB=6
SUITES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# What a Vagrant box needs, then what the project's installer would fetch (it finds them present offline).
BASE_PKGS=(linux-image-amd64 systemd-sysv dbus udev kmod procps openssh-server sudo ifupdown isc-dhcp-client
           iproute2 ca-certificates make rsync less python3)
mapfile -t PROJECT_PKGS < <("$REPO/scripts/install-system.sh" --list)

[ "$(id -u)" -eq 0 ] || { echo "box: must run as root (mmdebstrap, loop mount)" >&2; exit 2; }

# The cache key: this script, the package lists and the Python dependencies.
key=$( { cat "$0"; printf '%s\n' "${BASE_PKGS[@]}" "${PROJECT_PKGS[@]}"; cat "$REPO/pyproject.toml"; } \
       | sha256sum | cut -c1-12)
out="$CACHE/arp-sensor-debian12-$key.box"
if [ -s "$out" ]; then
  echo "box: cached"
  echo "$out"
  exit 0
fi

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build.XXXXXX")
mnt="$work/mnt"
loop=""
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
t0=$SECONDS

# 1. The root tree (the slow, network-bound part: cached on its own, keyed by the package lists).
root="$work/root"
pkgs=$(IFS=,; echo "${BASE_PKGS[*]},${PROJECT_PKGS[*]}")
tree="$CACHE/rootfs-$(echo "$pkgs" | sha256sum | cut -c1-12).tar"
if [ ! -s "$tree" ]; then
  mmdebstrap --quiet --variant=minbase --include="$pkgs" --aptopt='Apt::Install-Recommends "false"' \
    --format=tar bookworm "$tree.part" "${SUITES[@]}"
  mv "$tree.part" "$tree"
  echo "box: root tree in $((SECONDS - t0)) s"
fi
mkdir -p "$root"
tar -C "$root" --xattrs --xattrs-include='*' -xf "$tree"

# 2. The wheelhouse: the project's runtime Python dependencies and its build backend, so `make install
# VENV_EXTRAS=` (what vagrant/provision.sh runs) installs without an index (/etc/pip.conf below).
python3 - "$REPO/pyproject.toml" > "$work/requirements.txt" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"] + ["wheel"]))
PY
wheels=/var/cache/arp-sensor-wheels
mkdir -p "$root$wheels"
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --implementation cp -d "$root$wheels" -r "$work/requirements.txt"
cat > "$root/etc/pip.conf" <<EOF
# arp-sensor lab box: no uplink; Python packages come from the wheelhouse baked into the box.
[global]
no-index = true
find-links = $wheels
EOF

# 3. What makes it a Vagrant box.
chroot "$root" useradd --create-home --shell /bin/bash --groups sudo vagrant
echo vagrant:vagrant | chroot "$root" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
install -d -m700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
vpub=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n1 || true)
[ -n "$vpub" ] || { echo "box: Vagrant's insecure public key not found (is the vagrant package installed?)" >&2; exit 3; }
install -m600 -o 1000 -g 1000 "$vpub" "$root/home/vagrant/.ssh/authorized_keys"
rm -f "$root"/etc/ssh/ssh_host_*  # each VM makes its own on first boot:
install -d "$root/etc/systemd/system/ssh.service.d"
cat > "$root/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
echo 'UseDNS no' > "$root/etc/ssh/sshd_config.d/vagrant.conf"
echo arp-lab > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tarp-lab\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"  # systemd makes a fresh one per VM
# eth0 (net.ifnames=0): Vagrant's management NIC, DHCP; Vagrant writes the private network's stanza itself.
cat > "$root/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
allow-hotplug eth0
iface eth0 inet dhcp
EOF
# Services the lab starts its own way (install-system.sh also disables them once systemd runs).
chroot "$root" systemctl disable bird.service syslog-ng.service >/dev/null 2>&1 || true
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

# 4. A bootable disk: one ext4 partition made from the tree (no mount needed), extlinux in it, syslinux's MBR.
uuid=$(cat /proc/sys/kernel/random/uuid)
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$root/boot/$initrd" ] || { echo "box: no $initrd in the tree" >&2; exit 3; }
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
install -d "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=UUID=$uuid ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200n8
EOF
part_mib=$((SIZE_GIB * 1024 - 1))
mkfs.ext4 -q -F -L root -U "$uuid" -O ^64bit,^metadata_csum -d "$root" "$work/root.ext4" "${part_mib}M"
raw="$work/disk.raw"
truncate -s "${SIZE_GIB}G" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk --quiet --label dos "$raw"
dd if="$work/root.ext4" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$work/root.ext4"
mkdir -p "$mnt"
loop=$(losetup --find --show --offset $((1024 * 1024)) "$raw")
mount "$loop" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
losetup -d "$loop"
loop=""
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

# 5. The box.
box="$work/box"
mkdir -p "$box"
qemu-img convert -O qcow2 "$raw" "$box/box.img"
rm -f "$raw"
cat > "$box/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $SIZE_GIB}
EOF
cat > "$box/Vagrantfile" <<'EOF'
# arp-sensor lab box (vagrant/box/build.sh): Debian 12, built offline from Debian packages.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
tar -C "$box" -cf "$out.part" metadata.json Vagrantfile box.img
mv "$out.part" "$out"
# older builds go: the cache holds one box and one root tree
find "$CACHE" -maxdepth 1 \( -name 'arp-sensor-debian12-*.box' ! -name "${out##*/}" \) -o \
  \( -name 'rootfs-*.tar' ! -name "${tree##*/}" \) | xargs -r rm -f
echo "box: built in $((SECONDS - t0)) s ($(du -h "$out" | cut -f1), kernel ${kernel#vmlinuz-})"
echo "$out"
