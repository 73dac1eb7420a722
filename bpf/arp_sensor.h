/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Structs and enums shared by the kernel program (arp_sensor.bpf.c) and user space. sensor/layout.py
 * reads the health enum names from this file and mirrors the structs with struct formats that a test
 * checks against the sizes bcc computes. Keep members naturally aligned and every per-CPU value a
 * multiple of 8 bytes: the kernel copies per-CPU values in 8-byte slots. */
#ifndef ARP_SENSOR_H
#define ARP_SENSOR_H

#define ARP_SENSOR_DIR_INGRESS 0
#define ARP_SENSOR_DIR_EGRESS 1

/* Map sizes; the loader overrides them with -D (--max-targets, --max-pairs). Both maps are LRU: the keys
 * come from the wire, so an attacker choosing random target IPs only evicts old entries. */
#ifndef ARP_SENSOR_MAX_TARGETS
#define ARP_SENSOR_MAX_TARGETS 8192
#endif
#ifndef ARP_SENSOR_MAX_PAIRS
#define ARP_SENSOR_MAX_PAIRS 16384
#endif

/* Where an IP was seen. ip is in network byte order, as on the wire. */
struct target_key {
	__u32 ifindex;
	__u32 ip;   /* target of requests/probes, sender of replies/gratuitous */
	__u16 vlan; /* outermost VLAN id, 0 = untagged (or priority-tagged) */
	__u8 dir;   /* ARP_SENSOR_DIR_* */
	__u8 pad;
};

/* Per-CPU, cumulative. first_seen_ns is written once, on the CPU that created the entry: when user
 * space sees it change, the entry was evicted and re-created, so the counters restarted at zero. */
struct target_val {
	__u64 requests;   /* requests asking for ip */
	__u64 replies;    /* replies sent by ip */
	__u64 gratuitous; /* gratuitous ARP announcing ip (sender ip == target ip) */
	__u64 probes;     /* address probes for ip (sender ip 0.0.0.0) */
	__u64 first_seen_ns;
};

/* Who asked for whom: requests only. */
struct pair_key {
	__u32 ifindex;
	__u32 sender; /* network byte order */
	__u32 target; /* network byte order */
	__u16 vlan;
	__u8 dir;
	__u8 pad;
};

struct pair_val {
	__u64 requests;
	__u64 first_seen_ns;
};

/* Global health counters, one slot each in a per-CPU array. User space reads the names from this enum,
 * so add new counters before HEALTH_MAX and keep the H_ prefix and one enumerator per line. */
enum health_counter {
	H_FRAMES = 0,         /* frames our programs saw (XDP: every frame; tc: what its filters pass) */
	H_ARP,                /* frames with ethertype ARP (after at most two VLAN tags) */
	H_REQUEST,
	H_REPLY,
	H_GRATUITOUS,
	H_PROBE,
	H_OTHER_OP,           /* valid header, operation neither request nor reply (RARP, InARP...) */
	H_MALFORMED,          /* ethertype ARP but truncated or not Ethernet/IPv4 (hrd 1, pro 0x0800, 6, 4) */
	H_RUNT,               /* shorter than an Ethernet header, or cut inside a VLAN tag */
	H_VLAN_TOO_DEEP,      /* a third VLAN tag: not parsed further */
	H_TARGET_INSERTS,     /* new entries in the targets map (minus live entries = evictions) */
	H_TARGET_INSERT_FAIL, /* map update failed: the frame was classified but not counted per target */
	H_PAIR_INSERTS,
	H_PAIR_INSERT_FAIL,
	HEALTH_MAX,
};

#endif /* ARP_SENSOR_H */
