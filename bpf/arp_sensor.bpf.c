/* SPDX-License-Identifier: GPL-2.0 */
/* arp-sensor kernel program (compiled by bcc). One parser, three entry points:
 *   arpsensor_xdp     XDP, ingress
 *   arpsensor_tc_in   tc clsact ingress
 *   arpsensor_tc_eg   tc clsact egress
 * and arpsensor_limctl, never attached: user space runs it with BPF_PROG_TEST_RUN to refresh a limit.
 * Counters are per-CPU and cumulative: no atomics on the hot path, user space computes deltas.
 * Parsing follows xdp-tools' parsing_helpers.h: a cursor, a bounds check before every read. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

#include "arp_sensor.h"

#define VLAN_MAX_DEPTH 2
#define VLAN_VID_MASK 0x0fff
#define ARPHRD_ETHER_BE 0x0100  /* htons(1) */
#define ETH_P_IP_BE 0x0008      /* htons(ETH_P_IP) */
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr_s {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

/* ARP for Ethernet/IPv4: 28 bytes. The IPv4 addresses sit at odd offsets, so they stay byte arrays
 * and are copied out (an unaligned 4-byte load is fine on x86 but not everywhere). */
struct arp_eth_ipv4 {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

BPF_TABLE("lru_percpu_hash", struct arp_key, struct arp_val, arp_counts, ARP_SENSOR_MAX_ENTRIES);
BPF_PERCPU_ARRAY(health, struct health_counters, 1);
BPF_HASH(limits, struct limit_key, struct limit_val, ARP_SENSOR_MAX_LIMITS);
BPF_ARRAY(limits_active, struct limits_active, 1);

static __always_inline struct health_counters *health_get(void)
{
	__u32 zero = 0;

	return health.lookup(&zero);
}

static __always_inline int proto_is_vlan(__u16 h_proto)
{
	return h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD);
}

/* Adds one to the entry for key, creating it (stamped) when missing. BPF_NOEXIST (bcc insert()): when
 * two CPUs create the same key at once, one insert wins and the other gets -EEXIST and adds to the
 * winner's entry, so an entry is stamped exactly once (a second stamp would look like an eviction to
 * user space and re-count the entry). */
static __always_inline void count(struct arp_key *key, struct health_counters *h)
{
	struct arp_val *v = arp_counts.lookup(key);

	if (v) {
		v->count += 1;
		return;
	}
	struct arp_val init = {};
	init.count = 1;
	init.first_seen_ns = bpf_ktime_get_ns();
	if (arp_counts.insert(key, &init) == 0) {
		h->inserts += 1;
		return;
	}
	/* -EEXIST: another CPU created it between our lookup and insert; add to theirs. */
	v = arp_counts.lookup(key);
	if (v)
		v->count += 1;
	else
		h->insert_fail += 1;
}

/* Skips at most VLAN_MAX_DEPTH tags. *vlan gets the outermost VID unless the caller already knows it
 * (tc: the outer tag may have been moved to skb metadata). Returns the inner ethertype, or 0 when the
 * frame ends inside a tag (runt) or has too many tags. */
static __always_inline __u16 parse_vlans(struct hdr_cursor *nh, void *data_end, __u16 h_proto,
					 __u16 *vlan, int have_vlan)
{
#pragma unroll
	for (int i = 0; i < VLAN_MAX_DEPTH; i++) {
		if (!proto_is_vlan(h_proto))
			return h_proto;
		struct vlan_hdr_s *vh = nh->pos;

		if ((void *)(vh + 1) > data_end) {
			struct health_counters *h = health_get();

			if (h)
				h->runt += 1;
			return 0;
		}
		if (!have_vlan) {
			*vlan = bpf_ntohs(vh->h_vlan_TCI) & VLAN_VID_MASK;
			have_vlan = 1;
		}
		h_proto = vh->h_vlan_encapsulated_proto;
		nh->pos = vh + 1;
	}
	if (proto_is_vlan(h_proto)) {
		struct health_counters *h = health_get();

		if (h)
			h->vlan_too_deep += 1;
		return 0;
	}
	return h_proto;
}

/* Token bucket for a request to k->ip; returns 1 to drop. See struct limit_val for the arithmetic
 * and the locking choice. Everything before the hash lookup is one array read: hosts without limits
 * (the default) pay only that, and only for ARP requests. */
static __always_inline int limit_request(struct arp_key *k, struct health_counters *h)
{
	__u32 zero = 0;
	struct limits_active *active = limits_active.lookup(&zero);

	if (!active || active->count == 0)
		return 0;
	struct limit_key lk = {};

	lk.ifindex = k->ifindex;
	lk.ip = k->ip;
	lk.dir = k->dir;
	struct limit_val *l = limits.lookup(&lk);

	if (!l)
		return 0;
	__u64 now = bpf_ktime_get_ns(); /* no helper calls while the lock is held */
	int drop = 0, dry = 0;

	bpf_spin_lock(&l->lock);
	if (now >= l->expires_ns) { /* fail-open: the sensor stopped refreshing it */
		bpf_spin_unlock(&l->lock);
		return 0;
	}
	/* A CPU that read the clock before another one took the lock sees now < last: no refill, and
	 * last never goes backwards. */
	if (now > l->last_refill_ns) {
		__u64 cap = l->burst * l->cost_ns;
		__u64 room = l->tokens_ns < cap ? cap - l->tokens_ns : 0;
		__u64 add = now - l->last_refill_ns;

		l->tokens_ns = add >= room ? cap : l->tokens_ns + add;
		l->last_refill_ns = now;
	}
	if (l->tokens_ns >= l->cost_ns) {
		l->tokens_ns -= l->cost_ns;
		l->passed += 1;
	} else if (l->flags & LIMIT_F_DRY_RUN) {
		l->would_drop += 1; /* no token spent: the same arithmetic as enforce would see */
		dry = 1;
	} else {
		l->dropped += 1;
		drop = 1;
	}
	bpf_spin_unlock(&l->lock);
	if (drop)
		h->ratelimit_dropped += 1;
	else if (dry)
		h->ratelimit_would_drop += 1;
	return drop;
}

/* Counts the frame; returns 1 when a rate limit says drop it (ARP requests only). */
static __always_inline int handle_arp(struct hdr_cursor *nh, void *data, void *data_end, __u32 ifindex,
				      __u8 dir, __u16 vlan)
{
	struct arp_eth_ipv4 *arp = nh->pos;
	struct health_counters *h = health_get();

	if (!h) /* cannot happen for an array map; the verifier wants the check */
		return 0;
	h->arp += 1;
	/* Padding after the 28 bytes (60-byte minimum frames) is normal; less than 28 is not. */
	if ((void *)(arp + 1) > data_end || arp->hrd != ARPHRD_ETHER_BE || arp->pro != ETH_P_IP_BE ||
	    arp->hln != 6 || arp->pln != 4) {
		h->malformed += 1;
		return 0;
	}

	__u16 op = bpf_ntohs(arp->op);
	__u32 spa, tpa;

	__builtin_memcpy(&spa, arp->spa, 4);
	__builtin_memcpy(&tpa, arp->tpa, 4);

	if (op != ARPOP_REQUEST && op != ARPOP_REPLY) {
		h->other_op += 1;
		return 0;
	}

	struct arp_key k = {};

	k.ifindex = ifindex;
	k.vlan = vlan;
	k.dir = dir;
	/* The MAC that speaks in this frame, and whether the Ethernet source agrees (a mismatch is a proxy,
	 * a bridge rewriting, or a spoofer). find_arp checked the Ethernet header is in the frame.
	 * Both MACs sit at even offsets (Ethernet source at 6, sha at 22 + 4 per tag): three 16-bit loads
	 * each, no byte loop. */
	const __u16 *sha = (const __u16 *)arp->sha;
	const __u16 *src = (const __u16 *)((__u8 *)data + 6);
	__u16 *mac = (__u16 *)k.mac;

	mac[0] = sha[0];
	mac[1] = sha[1];
	mac[2] = sha[2];
	if ((src[0] ^ sha[0]) | (src[1] ^ sha[1]) | (src[2] ^ sha[2]))
		k.flags = KEY_F_MAC_MISMATCH;

	/* Order matters and is the documented classification (docs/architecture.md, tests/support/refparse.py):
	 * probe (request from 0.0.0.0), gratuitous (sender == target), request, reply. */
	if (op == ARPOP_REQUEST && spa == 0) {
		h->probe += 1;
		k.kind = ARP_KIND_PROBE;
		k.ip = tpa;
	} else if (spa == tpa) {
		h->gratuitous += 1;
		k.kind = ARP_KIND_GRATUITOUS;
		k.ip = spa;
	} else if (op == ARPOP_REQUEST) {
		h->request += 1;
		k.kind = ARP_KIND_REQUEST;
		k.ip = tpa;
		k.peer = spa;
	} else {
		h->reply += 1;
		k.kind = ARP_KIND_REPLY;
		k.ip = spa;
	}
	count(&k, h);
	/* Counted first: a dropped request still shows in the sensor's counts (the verdict that caused
	 * the limit must not clear because the limit works). */
#ifndef ARP_SENSOR_NO_LIMITS /* defined only by bench/ratelimit.py, to price the limit path */
	if (k.kind == ARP_KIND_REQUEST)
		return limit_request(&k, h);
#endif
	return 0;
}

/* Moves the cursor to the ARP header and returns 1 if the frame is ARP (after at most two VLAN tags). */
static __always_inline int find_arp(struct hdr_cursor *nh, void *data_end, __u16 *vlan, int have_vlan)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end) /* the kernel delivers no frame this short; stay safe anyway */
		return 0;
	nh->pos = eth + 1;
	/* One 16-bit load: struct ethhdr is packed, so eth->h_proto compiles to two byte loads. The
	 * ethertype sits at an even offset of a frame the kernel aligned. */
	__u16 h_proto = *(__u16 *)((__u8 *)eth + 12);

	/* The fast path: every non-ARP, untagged frame leaves here after two compares, touching no map
	 * and not even the context (the interface index is read only for ARP). */
	if (h_proto == bpf_htons(ETH_P_ARP))
		return 1;
	if (!proto_is_vlan(h_proto))
		return 0;
	return parse_vlans(nh, data_end, h_proto, vlan, have_vlan) == bpf_htons(ETH_P_ARP);
}

int arpsensor_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	__u16 vlan = 0;

	if (find_arp(&nh, data_end, &vlan, 0) &&
	    handle_arp(&nh, data, data_end, ctx->ingress_ifindex, ARP_SENSOR_DIR_INGRESS, vlan))
		return XDP_DROP; /* an ingress limit: protects this host only, the switch already carried it */
	return XDP_PASS;
}

/* tc: the outer VLAN tag may already be in skb metadata (rx untagging, tx offload), so it is read from
 * there first. TC_ACT_UNSPEC lets the next filter in the chain run: we observe, we never decide for
 * someone else's filters (except to drop a rate-limited request). */
static __always_inline int handle_skb(struct __sk_buff *skb, __u8 dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data };
	__u16 vlan = 0;
	int have_vlan = 0;

	if (skb->vlan_present) {
		vlan = skb->vlan_tci & VLAN_VID_MASK;
		have_vlan = 1;
	}
	/* TC_ACT_SHOT only for a request beyond its limit's bucket: on egress that frame never reaches
	 * the switch (the point of limiting); on ingress it only spares this host. */
	if (find_arp(&nh, data_end, &vlan, have_vlan) && handle_arp(&nh, data, data_end, skb->ifindex, dir, vlan))
		return TC_ACT_SHOT;
	return TC_ACT_UNSPEC;
}

int arpsensor_tc_in(struct __sk_buff *skb)
{
	return handle_skb(skb, ARP_SENSOR_DIR_INGRESS);
}

int arpsensor_tc_eg(struct __sk_buff *skb)
{
	return handle_skb(skb, ARP_SENSOR_DIR_EGRESS);
}


/* Refreshes one limit under its lock (struct limit_cmd). Returns XDP_PASS when done, XDP_DROP when the
 * entry does not exist (user space creates it with BPF_NOEXIST), XDP_ABORTED on a short command. */
int arpsensor_limctl(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct limit_cmd *c = data;

	if ((void *)(c + 1) > data_end)
		return XDP_ABORTED;
	struct limit_key k = {};

	k.ifindex = c->key.ifindex;
	k.ip = c->key.ip;
	k.dir = c->key.dir;
	struct limit_val *l = limits.lookup(&k);

	if (!l)
		return XDP_DROP;
	__u32 flags = c->flags;
	__u64 rate = c->rate_mpps, cost = c->cost_ns, burst = c->burst, expires = c->expires_ns;

	bpf_spin_lock(&l->lock);
	l->flags = flags;
	l->rate_mpps = rate;
	l->cost_ns = cost;
	l->burst = burst;
	l->expires_ns = expires;
	if (l->tokens_ns > burst * cost) /* a smaller bucket now */
		l->tokens_ns = burst * cost;
	bpf_spin_unlock(&l->lock);
	return XDP_PASS;
}
