#!/usr/bin/env bash
# Provisions one lab VM: the project's own installer, then BIRD with the Calico-style mesh config from
# sensor.lab.birdconf (the renderer the netns lab uses), then arp-sensor as a service.
# Usage (Vagrant runs it as root): provision.sh MY_IP ALL_IPS_COMMA_SEPARATED HOLD_TIME
set -euo pipefail
MY_IP=$1
MESH=$2
HOLD=${3:-6}
SRC=/opt/arp-sensor

cd "$SRC"
./scripts/install-system.sh
make venv

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

# the sensor, writing JSON lines to a file an operator can tail (and a log shipper could read);
# BGP correlation through Calico's socket path when this arp-sensor has it
BIRD_FLAG=""
if "$SRC/.venv/bin/arp-sensor" run --help | grep -q -- --bird-socket; then
  BIRD_FLAG="--bird-socket /var/run/calico/bird.ctl"
fi
cat > /etc/systemd/system/arp-sensor.service <<UNIT
[Unit]
Description=arp-sensor on $IFACE (arp-sensor VM lab)
After=arp-lab-bird.service

[Service]
ExecStart=/bin/sh -c 'exec $SRC/.venv/bin/arp-sensor run -i $IFACE --interval 1 --min-requests 1 $BIRD_FLAG >> /var/log/arp-sensor.jsonl'
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now arp-lab-bird.service
systemctl restart arp-lab-bird.service
systemctl enable --now arp-sensor.service
echo "provision: $(hostname) $MY_IP on $IFACE: BIRD mesh with ${MESH//,/ } (hold time $HOLD), arp-sensor -> /var/log/arp-sensor.jsonl"
