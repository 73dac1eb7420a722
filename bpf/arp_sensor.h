/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Structs and enums shared by the kernel program (arp_sensor.bpf.c) and user space. sensor/kernel/layout.py
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

/* One key for everything an ARP frame says, so a frame is counted in one place (its fast-path slot or its
 * LRU entry): per-target totals are sums over entries, done in user space once per interval instead of
 * in the kernel once per frame.
 * IPs are in network byte order, as on the wire. Keys are hashed and compared bytewise: every byte,
 * padding included, is written (zeroed) before use. Layout fixed for issues 15-17
 * (docs/architecture.md, "Kernel program"). */
#define KEY_F_MAC_MISMATCH 1 /* the Ethernet source differs from the MAC the message claims */

struct arp_key {            /* 24 bytes */
	__u32 ifindex;
	__u32 ip;           /* target of requests/probes, speaker of replies/gratuitous */
	__u32 peer;         /* requests: who asked (sender IP); 0 otherwise */
	__u16 vlan;         /* outermost VLAN id, 0 = untagged (or priority-tagged) */
	__u8 dir;           /* ARP_SENSOR_DIR_* */
	__u8 kind;          /* ARP_KIND_* */
	__u8 mac[6];        /* ARP sender hardware address (sha): the asker of a request, the answerer of a
			     * reply or gratuitous ARP, the prober of a probe */
	__u8 flags;         /* KEY_F_* */
	__u8 pad;           /* always 0 */
};

/* IPv6 neighbour discovery (issue 17): the same discipline with 16-byte addresses. The kinds share
 * the ARP kinds' numbers on purpose, so user space sums both families with one code path:
 * NS ~ request, NA solicited ~ reply, NA unsolicited ~ gratuitous, DAD ~ probe. */
#define ND_KIND_NS ARP_KIND_REQUEST
#define ND_KIND_NA_SOLICITED ARP_KIND_REPLY
#define ND_KIND_NA_UNSOLICITED ARP_KIND_GRATUITOUS
#define ND_KIND_NS_DAD ARP_KIND_PROBE

struct nd_key {             /* 48 bytes */
	__u32 ifindex;
	__u16 vlan;
	__u8 dir;
	__u8 kind;          /* ND_KIND_* */
	__u8 mac[6];        /* source link-layer option (NS) / target link-layer option (NA), else eth src */
	__u8 flags;         /* KEY_F_MAC_MISMATCH: option present and != eth src */
	__u8 pad;
	__u8 ip[16];        /* NS/DAD: the target from the message body (not the IPv6 dst); NA: the target */
	__u8 peer[16];      /* NS: the IPv6 source (who asked); 0 for DAD and NA */
};
_Static_assert(sizeof(struct arp_key) == 24, "arp_key: sensor/kernel/layout.py ARP_KEY");
_Static_assert(sizeof(struct nd_key) == 48, "nd_key: sensor/kernel/layout.py ND_KEY");

/* The fast path (issue 15; docs/architecture.md "Kernel program"): a direct-mapped per-CPU array in
 * front of each LRU map, so the common case (a storm: few distinct keys) is counted without a hash-map
 * call. 2 x ARP_SENSOR_FAST_SLOTS slots per CPU, two halves: the program writes only the half that
 * fast_epoch names; user space flips it, waits out an RCU grace period, then reads and zeroes the
 * retired half (its counts are that interval's deltas). A slot with count 0 is free; a frame whose
 * slot holds another key goes to the LRU map, so every frame is counted in exactly one place.
 * Slots: a power of two (the loader overrides it with -D, --fast-slots); 0 turns the fast path off. */
#ifndef ARP_SENSOR_FAST_SLOTS
#define ARP_SENSOR_FAST_SLOTS 1024
#endif
_Static_assert((ARP_SENSOR_FAST_SLOTS & (ARP_SENSOR_FAST_SLOTS - 1)) == 0, "fast slots: a power of two");

/* A slot: the key, then its count and when it was claimed (per CPU). Keys are whole 8-byte words. */
struct arp_fast_slot {      /* 40 bytes */
	struct arp_key key;
	__u64 count;
	__u64 first_seen_ns;
};

struct nd_fast_slot {       /* 64 bytes */
	struct nd_key key;
	__u64 count;
	__u64 first_seen_ns;
};

/* fast_epoch[0], written only by user space: which half the programs write. */
struct fast_epoch {
	__u32 half;
	__u32 pad;
};

/* An LRU entry's value, one for all CPUs: count is cumulative and added to atomically. first_seen_ns is
 * written once, by the CPU that created the entry (BPF_NOEXIST: a second CPU racing to create the same
 * key adds to the first one's entry instead): when user space sees it change, the LRU evicted the entry
 * and it was re-created, so the count restarted. */
struct arp_val {
	__u64 count;
	__u64 first_seen_ns;
};

/* Global health counters: one per-CPU struct, so the ARP path does one array lookup however many
 * counters it bumps, and non-ARP frames touch no map at all (frames seen come from the interface's own
 * statistics in user space). sensor/kernel/layout.py reads the member names from here: keep one __u64 per
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
	__u64 ratelimit_dropped;   /* ARP requests dropped by a rate limit (enforce entries) */
	__u64 ratelimit_would_drop; /* ARP requests a dry-run limit let through but enforce would drop */
	__u64 nd;                 /* ICMPv6 type 135/136 right after the IPv6 header (after at most two tags) */
	__u64 nd_solicit;
	__u64 nd_dad;
	__u64 nd_advert_solicited;
	__u64 nd_advert_unsolicited;
	__u64 nd_malformed;       /* ND but cut inside its 24 bytes, IPv6 version != 6, code != 0 or hop limit != 255 */
	__u64 nd_ext_hdr;         /* IPv6 whose next header is an extension header: not walked, never counted as ND */
	__u64 nd_inserts;         /* new nd_counts entries */
	__u64 nd_insert_fail;
	__u64 fast_hits;          /* frames counted in a fast-path slot already holding their key */
	__u64 fast_claims;        /* frames that claimed an empty fast-path slot for their key */
	__u64 fast_collisions;    /* slot held another key: counted in the LRU map instead */
};

/* Rate limits (docs/ratelimit.md). User space (sensor/kernel/limitmap.py) owns the entries; the kernel only
 * spends tokens and counts. A plain (not LRU) hash: keys come from user space, never from the wire, and
 * an entry must not vanish under a live limit. */
#ifndef ARP_SENSOR_MAX_LIMITS
#define ARP_SENSOR_MAX_LIMITS 4096
#endif

/* Entries apply to ARP requests and IPv6 neighbour solicitations only (not probes or DAD: RFC 5227 and
 * RFC 4862 conflict detection must never be throttled; not gratuitous ARP, replies or advertisements).
 * The VLAN is not part of the key: verdicts are per IP and a target IP is unique within the L2 domains
 * arp-sensor watches. */
#define LIMIT_FAMILY_IPV4 4
#define LIMIT_FAMILY_IPV6 6

struct limit_key {
	__u32 ifindex;
	__u8 dir;    /* ARP_SENSOR_DIR_*: egress limits this host's own requests (what reaches the switch) */
	__u8 family; /* LIMIT_FAMILY_* */
	__u8 pad[2];
	__u8 ip[16]; /* target of the requests/solicitations, wire order; IPv4: its 4 bytes, then zeros */
};

#define LIMIT_F_DRY_RUN 1 /* count would_drop, pass everything */

/* A token bucket. Tokens are fixed point in nanoseconds of credit: one request costs cost_ns
 * (= 1e9 / rate), the bucket holds at most burst * cost_ns, and elapsed time refills it 1:1. So the
 * per-packet arithmetic is adds and compares, with no multiplication that could overflow and no
 * division. One bucket shared by all CPUs under bpf_spin_lock rather than per-CPU buckets: a per-CPU
 * bucket lets N CPUs pass N x burst and N x rate, and a storm's requests are spread over CPUs by
 * whichever CPU runs the sender (BIRD, the neighbour timer), so the limit would depend on the CPU
 * count. The lock is only ever taken for a limited target, a few packets per second by design.
 * Fail-open: an entry whose expires_ns (bpf_ktime_get_ns clock) has passed is ignored. */
struct limit_val {
	struct bpf_spin_lock lock;
	__u32 flags;          /* LIMIT_F_* */
	__u64 rate_mpps;      /* rate in milli-packets per second (informational: cost_ns is what counts) */
	__u64 cost_ns;        /* credit one request costs: 1e9 / rate */
	__u64 burst;          /* bucket depth in requests */
	__u64 tokens_ns;      /* current credit, 0 .. burst * cost_ns */
	__u64 last_refill_ns;
	__u64 expires_ns;     /* ignored (pass, uncounted) from this time on */
	__u64 dropped;        /* requests dropped (enforce) */
	__u64 would_drop;     /* requests a dry-run entry would have dropped */
	__u64 passed;         /* requests within the bucket */
};

/* A refresh, run by user space through arpsensor_limctl with BPF_PROG_TEST_RUN (the "frame" is this
 * struct): new config and expiry written under the entry's lock, so the kernel's counters and tokens are
 * never overwritten with a stale copy, as a lookup-then-update from user space would. */
struct limit_cmd {
	struct limit_key key;
	__u32 flags;
	__u64 rate_mpps;
	__u64 cost_ns;
	__u64 burst;
	__u64 expires_ns;
};

/* limits_active[0]: how many entries the limits map holds, written by user space after each change.
 * Checked before any hash lookup, so a host without limits pays one array read per ARP request. */
struct limits_active {
	__u64 count;
};

#endif /* ARP_SENSOR_H */
