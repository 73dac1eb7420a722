/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Structs and enums shared by the kernel program (arp_sensor.bpf.c) and user space. sensor/layout.py
 * reads the health enum names from this file and mirrors the structs with struct formats that a test
 * checks against the sizes bcc computes. Keep members naturally aligned and every per-CPU value a
 * multiple of 8 bytes: the kernel copies per-CPU values in 8-byte slots. */
#ifndef ARP_SENSOR_H
#define ARP_SENSOR_H

#define ARP_SENSOR_DIR_INGRESS 0
#define ARP_SENSOR_DIR_EGRESS 1

/* Map size; the loader overrides it with -D (--max-entries). The map is LRU: keys come from the wire, so
 * an attacker choosing random target IPs only evicts old entries (counted, see health). */
#ifndef ARP_SENSOR_MAX_ENTRIES
#define ARP_SENSOR_MAX_ENTRIES 32768
#endif

/* What an entry counts. */
#define ARP_KIND_REQUEST 0    /* requests for ip, asked by peer */
#define ARP_KIND_REPLY 1      /* replies sent by ip (peer = 0) */
#define ARP_KIND_GRATUITOUS 2 /* gratuitous ARP announcing ip (sender == target; peer = 0) */
#define ARP_KIND_PROBE 3      /* address probes for ip (sender 0.0.0.0; peer = 0) */

/* One map for everything, so an ARP frame costs exactly one hash lookup: per-target totals are sums
 * over entries, done in user space once per interval instead of in the kernel once per frame.
 * IPs are in network byte order, as on the wire. */
struct arp_key {
	__u32 ifindex;
	__u32 ip;   /* target of requests/probes, sender of replies/gratuitous */
	__u32 peer; /* requests: who asked (sender IP); 0 otherwise */
	__u16 vlan; /* outermost VLAN id, 0 = untagged (or priority-tagged) */
	__u8 dir;   /* ARP_SENSOR_DIR_* */
	__u8 kind;  /* ARP_KIND_* */
};

/* Per-CPU, cumulative. first_seen_ns is written once, on the CPU that created the entry: when user
 * space sees it change, the LRU evicted the entry and it was re-created, so the count restarted. */
struct arp_val {
	__u64 count;
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
	__u64 inserts;            /* new map entries (inserts minus live entries = evictions) */
	__u64 insert_fail;        /* map update failed: classified and counted here, not per entry */
};

#endif /* ARP_SENSOR_H */
