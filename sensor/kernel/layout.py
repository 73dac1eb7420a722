"""User-space mirror of bpf/arp_sensor.h: struct formats, and the health counter names read from the
header itself so the two cannot drift apart (tests/test_bpf_prog.py checks the sizes against bcc's)."""

from __future__ import annotations

import re
import struct
from functools import cache
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
HEADER = BPF_DIR / "arp_sensor.h"
PROGRAM = BPF_DIR / "arp_sensor.bpf.c"

DIR_INGRESS, DIR_EGRESS = 0, 1
DIRECTIONS = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}

# struct arp_key {u32 ifindex; be32 ip; be32 peer; u16 vlan; u8 dir; u8 kind; u8 mac[6]; u8 flags; u8 pad;}
ARP_KEY = struct.Struct("<I4s4sHBB6sBx")
# struct nd_key {u32 ifindex; u16 vlan; u8 dir; u8 kind; u8 mac[6]; u8 flags; u8 pad; u8 ip[16]; u8 peer[16];}
ND_KEY = struct.Struct("<IHBB6sBx16s16s")
KEY_F_MAC_MISMATCH = 1
# The family column of the reader's table (user space only: each family has its own kernel map).
FAMILY_IPV4, FAMILY_IPV6 = 4, 6
# struct arp_val {u64 count, first_seen_ns;}
ARP_VAL = struct.Struct("<2Q")
KIND_REQUEST, KIND_REPLY, KIND_GRATUITOUS, KIND_PROBE = 0, 1, 2, 3
# struct nd_key {u32 ifindex; u16 vlan; u8 dir; u8 kind; u8 mac[6]; u8 flags; u8 pad; u8 ip[16]; u8 peer[16];}
ND_KEY = struct.Struct("<IHBB6sBx16s16s")
# The ND kinds share the ARP kinds' numbers: NS ~ request, NA solicited ~ reply, NA unsolicited ~ gratuitous,
# DAD ~ probe.
ND_KIND_NS, ND_KIND_NA_SOLICITED, ND_KIND_NA_UNSOLICITED, ND_KIND_NS_DAD = 0, 1, 2, 3
KEY_F_MAC_MISMATCH = 1
DEFAULT_MAX_ENTRIES = 32768
# struct arp_fast_slot {struct arp_key key; u64 count, first_seen_ns;}: one per-CPU fast-path slot
ARP_FAST_SLOT = struct.Struct("<24s2Q")
# struct nd_fast_slot {struct nd_key key; u64 count, first_seen_ns;}
ND_FAST_SLOT = struct.Struct("<48s2Q")
# struct fast_epoch {u32 half; u32 pad;}
FAST_EPOCH = struct.Struct("<I4x")

# struct limit_key {u32 ifindex; u8 dir; u8 family; u8 pad[2]; u8 ip[16];} (IPv4: 4 bytes, then zeros)
LIMIT_KEY = struct.Struct("<IBB2x16s")
LIMIT_FAMILY_IPV4, LIMIT_FAMILY_IPV6 = 4, 6
# struct limit_val {bpf_spin_lock lock; u32 flags; u64 rate_mpps, cost_ns, burst, tokens_ns, last_refill_ns,
#                   expires_ns, dropped, would_drop, passed;}
LIMIT_VAL = struct.Struct("<4xI9Q")
LIMIT_FIELDS = ("flags", "rate_mpps", "cost_ns", "burst", "tokens_ns", "last_refill_ns", "expires_ns",
                "dropped", "would_drop", "passed")
LIMIT_F_DRY_RUN = 1
LIMITS_ACTIVE = struct.Struct("<Q")
# struct limit_cmd {struct limit_key key; u32 flags; u64 rate_mpps, cost_ns, burst, expires_ns;}
LIMIT_CMD = struct.Struct("<24sI4x4Q")
PROG_LIMCTL = "arpsensor_limctl"

PROG_XDP = "arpsensor_xdp"
PROG_TC_IN = "arpsensor_tc_in"
PROG_TC_EG = "arpsensor_tc_eg"


@cache
def health_names() -> list[str]:
    """Members of `struct health_counters` in the shared header, in order."""
    text = HEADER.read_text()
    body = re.search(r"struct\s+health_counters\s*\{(.*?)\};", text, re.S)
    if not body:
        raise RuntimeError(f"{HEADER}: struct health_counters not found")
    return re.findall(r"^\s*__u64\s+(\w+)\s*;", body.group(1), re.M)


@cache
def health_struct() -> struct.Struct:
    return struct.Struct("<" + "Q" * len(health_names()))


@cache
def header_define(name: str) -> int:
    m = re.search(rf"#define\s+{name}\s+(\d+)", HEADER.read_text())
    if not m:
        raise RuntimeError(f"{HEADER}: #define {name} not found")
    return int(m.group(1))


def default_fast_slots() -> int:
    """ARP_SENSOR_FAST_SLOTS as the header defines it (the loader's -D overrides it)."""
    return header_define("ARP_SENSOR_FAST_SLOTS")
