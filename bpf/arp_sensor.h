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

/* Global health counters: one per-CPU struct, so the ARP path does one array lookup however many
 * counters it bumps, and non-ARP frames touch no map at all (frames seen come from the interface's own
 * statistics in user space). sensor/layout.py reads the member names from here: keep one __u64 per
 * line. */
struct health_counters {
	__u64 arp;                /* frames with ethertype ARP (after at most two VLAN tags) */
	__u64 request;
	__u64 reply;
	__u64 gratuitous;
	__u64 probe;
	__u64 other_op;           /* valid header, operation neither request nor reply (RARP, InARP...) */
	__u64 malformed;          /* ethertype ARP but truncated or not Ethernet/IPv4 (hrd 1, pro 0x0800, 6, 4) */
	__u64 runt;               /* cut inside a VLAN tag */
	__u64 vlan_too_deep;      /* a third VLAN tag: not parsed further */
	__u64 target_inserts;     /* new entries in the targets map (minus live entries = evictions) */
	__u64 target_insert_fail; /* map update failed: classified and counted here, not per target */
	__u64 pair_inserts;
	__u64 pair_insert_fail;
};

#endif /* ARP_SENSOR_H */
