"""The netns lab: BIRD config rendering, a real 6-node BIRD full mesh, power-off storms seen on the bridge,
revival, and teardown that leaves nothing behind (also after kill -9 of the builder)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.errors import SensorError
from sensor.lab import birdconf
from sensor.lab.lab import parse_tcpdump_line
from tests.support.fixtures_lab import ROOT, cli, leftovers, unique_lab_name

# ---- the config renderer (pure)


def test_protocol_names_and_passive_rule_follow_calico() -> None:
    assert birdconf.protocol_name("10.0.0.7") == "Mesh_10_0_0_7"
    # Calico compares the address STRINGS: the greater string of each pair connects, the other waits
    assert birdconf.is_passive("198.18.0.2", "198.18.0.3")
    assert birdconf.is_passive("198.18.0.10", "198.18.0.2")  # "198.18.0.2" sorts after "198.18.0.10"
    assert not birdconf.is_passive("198.18.0.2", "198.18.0.10")
    assert birdconf.connects("198.18.0.9", "198.18.0.10") and not birdconf.connects("198.18.0.10", "198.18.0.9")
    # Calico's own cases (confd's TestPassiveCommentLogic): node 10.0.0.10 is passive towards 10.0.0.5
    assert birdconf.is_passive("10.0.0.10", "10.0.0.5") and not birdconf.is_passive("10.0.0.5", "10.0.0.10")
    ips = [f"198.18.0.{i}" for i in range(1, 13)]
    for a in ips:  # exactly one side of every pair is passive
        for b in ips:
            if a != b:
                assert birdconf.is_passive(a, b) != birdconf.is_passive(b, a)
    conf = birdconf.render("198.18.0.9", ips)
    passive = set(re.findall(r"neighbor (\S+) as \d+;\n  passive on", conf))
    assert passive == {ip for ip in ips if ip > "198.18.0.9"} == set()  # .9 is the greatest string
    conf = birdconf.render("198.18.0.10", ips)
    assert set(re.findall(r"neighbor (\S+) as \d+;\n  passive on", conf)) == {
        f"198.18.0.{i}" for i in (2, 3, 4, 5, 6, 7, 8, 9, 11, 12)}  # all but .1
    conf = birdconf.render("198.18.0.2", ["198.18.0.1", "198.18.0.2", "198.18.0.3"], hold_time=7)
    blocks = dict(re.findall(r"protocol bgp (Mesh_\S+) from bgp_template \{(.*?)\n\}", conf, re.S))
    assert set(blocks) == {"Mesh_198_18_0_1", "Mesh_198_18_0_3"}  # never itself
    assert "passive on" in blocks["Mesh_198_18_0_3"] and "passive on" not in blocks["Mesh_198_18_0_1"]
    for line in (
        "router id 198.18.0.2;",
        "local 198.18.0.2 as 64512;",
        "connect delay time 2;",
        "connect retry time 5;",
        "error wait time 5,30;",
        "hold time 7;",
    ):
        assert line in conf
    assert "hold time" not in birdconf.render("198.18.0.2", ["198.18.0.1"], hold_time=None).replace("# hold time", "")


@pytest.mark.parametrize("bad", [{"local_ip": "300.1.1.1"}, {"hold_time": 2}, {"asn": 0}, {"pod_block": "nope"}])
def test_renderer_rejects_bad_input(bad: dict) -> None:
    args = {"local_ip": "198.18.0.1", "peers": ["198.18.0.2"], **bad}
    with pytest.raises(SensorError):
        birdconf.render(**args)


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird (bird2) to parse configs")
@pytest.mark.parametrize("hold", ["6", "default"])
def test_rendered_configs_parse_with_bird(tmp_path: Path, hold: str) -> None:
    ips = [f"198.18.0.{i}" for i in range(1, 6)]
    for ip in ips:
        out = tmp_path / f"{ip}.conf"
        # the module entry point is what vagrant/ provisioning runs
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "sensor.lab.birdconf",
                "--local",
                ip,
                "--mesh",
                *ips,
                "--hold-time",
                hold,
                "--pod-block",
                "198.19.1.0/26",
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert r.returncode == 0, r.stderr
        p = subprocess.run(["bird", "-p", "-c", str(out)], capture_output=True, text=True)
        assert p.returncode == 0, f"{out.read_text()}\n{p.stderr}"
        assert out.read_text().count("protocol bgp Mesh_") == len(ips) - 1


def test_birdconf_entry_point_rejects_bad_hold_time() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor.lab.birdconf",
            "--local",
            "198.18.0.1",
            "--mesh",
            "198.18.0.2",
            "--hold-time",
            "soon",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "hold-time" in r.stderr and "Traceback" not in r.stderr


# ---- parsers (pure)


def test_parse_tcpdump_lines_tagged_and_untagged() -> None:
    plain = (
        "1790000000.123456 aa:bb:cc:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: "
        "Request who-has 198.18.0.3 tell 198.18.0.5, length 28"
    )
    tagged = (
        "1790000001.5 aa:bb:cc:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype 802.1Q (0x8100), length 46: "
        "vlan 100, p 0, ethertype ARP (0x0806), Request who-has 198.18.0.4 tell 198.18.0.6, length 28"
    )
    reply = (
        "1790000002.0 aa:bb:cc:00:00:03 > aa:bb:cc:00:00:01, ethertype ARP (0x0806), length 42: "
        "Reply 198.18.0.3 is-at aa:bb:cc:00:00:03, length 28"
    )
    a, b, c = (parse_tcpdump_line(x) for x in (plain, tagged, reply))
    assert a and (a.kind, a.target, a.sender, a.ts) == (
        "Request",
        "198.18.0.3",
        "198.18.0.5",
        1790000000.123456,
    )
    assert b and (b.kind, b.target, b.sender) == ("Request", "198.18.0.4", "198.18.0.6")
    assert c and (c.kind, c.target) == ("Reply", "198.18.0.3")
    assert parse_tcpdump_line("tcpdump: listening on br0") is None


# ---- bad input: one line, right exit code, nothing built


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nodes", "1"], "--nodes must be 2..254"),
        (["--nodes", "7", "--prefix", "198.18.0.0/29"], "--nodes must be 2..6"),
        (["--nodes", "3", "--prefix", "10.0.0.0/24"], "must lie inside 198.18.0.0/15"),
        (["--nodes", "3", "--vlan", "5000"], "--vlan must be 1..4094"),
        (["--nodes", "3", "--hold-time", "1"], "--hold-time must be 3..65535"),
    ],
)
def test_lab_up_rejects_bad_input(args: list[str], needle: str) -> None:
    name = unique_lab_name()
    r = cli("lab", "up", "--name", name, *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert leftovers(name) == []


def test_lab_bad_name_and_missing_lab() -> None:
    r = cli("lab", "up", "--nodes", "3", "--name", "Bad-Name")
    assert r.returncode == 2 and "bad name" in r.stderr
    r = cli("lab", "status", "--name", unique_lab_name())
    assert r.returncode == 2 and "no lab named" in r.stderr and "Traceback" not in r.stderr


def test_revive_mac_validation() -> None:
    from sensor.errors import SensorError
    from sensor.lab.lab import parse_mac, random_mac

    assert parse_mac("02-00-00-00-01-0A") == "02:00:00:00:01:0a"
    for bad in ("01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:01", "zz:00:00:00:00:01"):
        with pytest.raises(SensorError, match="bad MAC"):
            parse_mac(bad)
    mac = random_mac()
    assert parse_mac(mac) == mac and mac.startswith("02:") and random_mac() != mac
    r = cli("lab", "revive", "--name", unique_lab_name(), "--mac", "02:00:00:00:01:0a", "n1", "n2")
    assert r.returncode == 2 and "--mac takes exactly one node" in r.stderr, r.stderr


# ---- the shared 6-node mesh


# ---- teardown


# ---- vagrant/


def test_vagrantfile_validates(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant binary absent (scripts/install-system.sh installs it)")
    r = subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=ROOT / "vagrant",
        capture_output=True,
        text=True,
        timeout=120,
        # its own home: the caller's may not be writable (make test-unit as any user)
        env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_HOME": str(tmp_path / "vagrant.d")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    # the scripts are valid shell; provisioning renders BIRD configs with the shared renderer, installs with
    # the project's installer and runs the shipped unit (make vm-test boots them: tests/artifacts/test_vm.py)
    for script in ("provision.sh", "box/build.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "vagrant" / script)]).returncode == 0, script
    text = (ROOT / "vagrant" / "provision.sh").read_text()
    assert "-m sensor.lab.birdconf" in text
    assert "make install" in text
    assert "deploy/systemd/arp-sensor.service /etc/systemd/system/" in text


# ---- make demo




# ---- dual stack (--ipv6)


def test_dual_stack_configs_name_ipv6_peers_like_calico_and_keep_the_passive_rule() -> None:
    ips, ips6 = ["198.18.0.1", "198.18.0.2", "198.18.0.3"], ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
    conf = birdconf.mesh(ips, ips6)["198.18.0.2"]
    blocks = dict(re.findall(r"protocol bgp (Mesh_\S+) from bgp_template6 \{(.*?)\n\}", conf, re.S))
    assert set(blocks) == {"Mesh_2001_db8__1", "Mesh_2001_db8__3"}
    assert "passive on" in blocks["Mesh_2001_db8__3"] and "passive on" not in blocks["Mesh_2001_db8__1"]
    assert "local 2001:db8::2 as 64512;" in conf and "router id 198.18.0.2;" in conf
    assert birdconf.protocol_name("2001:db8:0::a") == "Mesh_2001_db8__a"
    assert "bgp_template6" not in birdconf.mesh(ips)["198.18.0.2"]  # IPv4-only configs are unchanged
    with pytest.raises(SensorError):
        birdconf.mesh(ips, ips6[:2])


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird (bird2) to parse configs")
def test_dual_stack_config_parses_with_bird(tmp_path: Path) -> None:
    conf = tmp_path / "b.conf"
    conf.write_text(birdconf.mesh(["198.18.0.1", "198.18.0.2"], ["2001:db8::1", "2001:db8::2"])["198.18.0.1"])
    r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_parse_tcpdump_neighbour_solicitation_lines() -> None:
    ns = ("1790000003.25 aa:bb:cc:00:00:02 > 33:33:ff:00:00:01, ethertype IPv6 (0x86dd), length 86: "
          "2001:db8::2 > ff02::1:ff00:1: ICMP6, neighbor solicitation, who has 2001:db8::1, length 32")
    tagged = ("1790000004.0 aa:bb:cc:00:00:02 > 33:33:ff:00:00:01, ethertype 802.1Q (0x8100), length 90: vlan 100, "
              "p 0, ethertype IPv6 (0x86dd), fe80::1 > ff02::1:ff00:1: ICMP6, neighbor solicitation, who has "
              "2001:db8::1, length 32")
    a, b = parse_tcpdump_line(ns), parse_tcpdump_line(tagged)
    assert a and (a.kind, a.target, a.sender, a.ts) == ("Request", "2001:db8::1", "2001:db8::2", 1790000003.25)
    assert b and (b.kind, b.target, b.sender) == ("Request", "2001:db8::1", "fe80::1")


@pytest.mark.parametrize(("args", "needle"), [
    (["--ipv6", "--prefix6", "fd00::/64"], "must lie inside 2001:db8::/32"),
    (["--ipv6", "--prefix6", "2001:db8::/126"], "too small for 3 nodes"),
    (["--ipv6", "--prefix6", "nope"], "bad IPv6 prefix"),
])
def test_lab_up_rejects_bad_ipv6_prefix(args: list[str], needle: str) -> None:
    name = unique_lab_name()
    r = cli("lab", "up", "--name", name, "--nodes", "3", *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert leftovers(name) == []
