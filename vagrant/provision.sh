#!/usr/bin/env bash
# Provisions one lab VM the way the README installs arp-sensor on a real host: the project's own installer
# (`make install`: scripts/install-system.sh, then the venv), the /usr/local/bin link, the shipped systemd unit
# from deploy/systemd with its config file; then BIRD with the Calico-style mesh config from
# sensor.lab.birdconf (the renderer the netns lab uses) on Calico's socket path.
# Usage (Vagrant runs it as root): provision.sh MY_IP ALL_IPS_COMMA_SEPARATED HOLD_TIME
set -euo pipefail
MY_IP=$1
MESH=$2
HOLD=${3:-6}
SRC=/opt/arp-sensor
LOG=/var/log/arp-sensor/events.json # the unit's LogsDirectory: writable under ProtectSystem=strict

cd "$SRC"
# the sensor alone, no test tools (VENV_EXTRAS=); offline with the box from vagrant/box/build.sh: every
# Debian package and wheel is already there
make install VENV_EXTRAS=
ln -sf "$SRC/.venv/bin/arp-sensor" /usr/local/bin/arp-sensor

# the interface that carries MY_IP (eth1 on most boxes, but do not guess)
IFACE=$(ip -o -4 addr show | awk -v ip="$MY_IP" '{split($4, a, "/"); if (a[1] == ip) print $2}')
[ -n "$IFACE" ] || { echo "provision: no interface has $MY_IP" >&2; exit 1; }

# BIRD laid out as calico-node runs it: its own config, control socket /var/run/calico/bird.ctl
install -d /etc/arp-sensor-lab /var/run/calico
"$SRC/.venv/bin/python" -m sensor.lab.birdconf --local "$MY_IP" --mesh ${MESH//,/ } \
  --hold-time "$HOLD" --pod-block "198.19.${MY_IP##*.}.0/26" -o /etc/arp-sensor-lab/bird.conf
bird -p -c /etc/arp-sensor-lab/bird.conf

cat > /etc/systemd/system/arp-lab-bird.service <<UNIT
[Unit]
Description=BIRD in a Calico-style full mesh (arp-sensor VM lab)
After=network-online.target
Wants=network-online.target

[Service]
RuntimeDirectory=calico
RuntimeDirectoryPreserve=yes
ExecStart=/usr/sbin/bird -f -R -c /etc/arp-sensor-lab/bird.conf -s /var/run/calico/bird.ctl
ExecReload=/usr/sbin/birdc -s /var/run/calico/bird.ctl configure
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT

# arp-sensor exactly as docs/operations.md installs it: the shipped unit, config.toml with the lab NIC, and
# the flags in /etc/default/arp-sensor: BGP correlation through Calico's socket, JSON lines to a file an
# operator can tail (and the journal).
install -D -m644 deploy/systemd/arp-sensor.service /etc/systemd/system/arp-sensor.service
install -D -m644 deploy/systemd/config.toml /etc/arp-sensor/config.toml
sed -i "s/^interface = .*/interface = [\"$IFACE\"]/; s/^# min-requests = .*/min-requests = 1/" /etc/arp-sensor/config.toml
install -D -m644 deploy/systemd/arp-sensor.env /etc/default/arp-sensor
sed -i "s|^ARP_SENSOR_OPTS=.*|ARP_SENSOR_OPTS=--bird-socket /var/run/calico/bird.ctl -o - -o file:$LOG ${ARP_LAB_SENSOR_OPTS:-}|" \
  /etc/default/arp-sensor

systemctl daemon-reload
systemctl enable --now arp-lab-bird.service
systemctl restart arp-lab-bird.service
systemctl enable arp-sensor.service
systemctl restart arp-sensor.service # returns once READY=1: compiled and attached
echo "provision: $(hostname) $MY_IP on $IFACE: BIRD mesh with ${MESH//,/ } (hold time $HOLD), arp-sensor -> $LOG"
