/* SPDX-License-Identifier: GPL-2.0 */
/* arp-sensor kernel program (compiled by bcc). One parser for ARP and IPv6 neighbour discovery, three
 * entry points:
 *   arpsensor_xdp     XDP, ingress
 *   arpsensor_tc_in   tc clsact ingress
 *   arpsensor_tc_eg   tc clsact egress
 * and arpsensor_limctl, never attached: user space runs it with BPF_PROG_TEST_RUN to refresh a limit.
 * A frame is counted in a per-CPU fast-path slot (drained as deltas every interval, no atomics), or else
 * in an LRU map entry shared by all CPUs (cumulative, one atomic add; user space computes deltas).
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
#define IPPROTO_ICMPV6_ 58
#define ND_NEIGHBOUR_SOLICIT 135
#define ND_NEIGHBOUR_ADVERT 136
#define ND_OPT_SOURCE_LL 1
#define ND_OPT_TARGET_LL 2
#define NA_FLAG_SOLICITED 0x40

/* An empty asm that says it changes var: the compiler cannot reason across it (libbpf's bpf_helpers.h). */
#define barrier_var(var) asm volatile("" : "+r"(var))

/* What find_l3 found. */
#define FRAME_OTHER 0
#define FRAME_ARP 1
#define FRAME_IPV6 2

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

/* IPv6 header with 16-bit members: the header sits at offset 14 (+4 per tag), so its addresses are only
 * 2-byte aligned; copying them as halfwords is safe where unaligned 4-byte loads are not. */
struct ipv6_hdr_s {
	__u8 ver_tc;     /* version in the high nibble */
	__u8 tc_flow[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u16 saddr[8];
	__u16 daddr[8];
};

/* NS and NA (RFC 4861 4.3, 4.4): 24 bytes, options follow. */
struct nd_msg_s {
	__u8 type;
	__u8 code;
	__be16 cksum;
	__u8 flags;      /* NA: R, S, O; NS: reserved */
	__u8 reserved[3];
	__u16 target[8];
};

/* A link-layer address option of length 1 (8 bytes). */
struct nd_opt_ll_s {
	__u8 type;
	__u8 len;
	__u8 addr[6];
};

/* The LRU maps behind the fast path hold one value per entry, shared by all CPUs and added to atomically
 * (docs/architecture.md, "Why the LRU maps are not per-CPU"): their memory does not grow with the CPU
 * count, user space reads 16 bytes per entry instead of 16 x CPUs, and the verifier inlines an LRU hash
 * lookup (a per-CPU one is a helper call). The common LRU list, not BPF_F_NO_COMMON_LRU: that flag splits
 * the entries between CPUs, and a storm is not spread over CPUs by RSS. ARP_SENSOR_PERCPU_LRU is defined
 * only by bench/prog_cost.py, to measure the per-CPU maps this program used before against them. */
#ifdef ARP_SENSOR_PERCPU_LRU
BPF_TABLE("lru_percpu_hash", struct arp_key, struct arp_val, arp_counts, ARP_SENSOR_MAX_ENTRIES);
BPF_TABLE("lru_percpu_hash", struct nd_key, struct arp_val, nd_counts, ARP_SENSOR_MAX_ENTRIES);
#define COUNT_ONE(v) ((v)->count += 1)
#else
BPF_TABLE("lru_hash", struct arp_key, struct arp_val, arp_counts, ARP_SENSOR_MAX_ENTRIES);
BPF_TABLE("lru_hash", struct nd_key, struct arp_val, nd_counts, ARP_SENSOR_MAX_ENTRIES);
#define COUNT_ONE(v) __sync_fetch_and_add(&(v)->count, 1)
#endif
BPF_PERCPU_ARRAY(health, struct health_counters, 1);
/* 2 x slots entries (at least 2: a map cannot be empty, and --fast-slots 0 still declares it). */
BPF_PERCPU_ARRAY(arp_fast, struct arp_fast_slot, ARP_SENSOR_FAST_SLOTS ? 2 * ARP_SENSOR_FAST_SLOTS : 2);
BPF_PERCPU_ARRAY(nd_fast, struct nd_fast_slot, ARP_SENSOR_FAST_SLOTS ? 2 * ARP_SENSOR_FAST_SLOTS : 2);
BPF_ARRAY(fast_epoch, struct fast_epoch, 1);
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
		COUNT_ONE(v);
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
		COUNT_ONE(v);
	else
		h->insert_fail += 1;
}

/* count() for the ND map. */
static __always_inline void count_nd(struct nd_key *key, struct health_counters *h)
{
	struct arp_val *v = nd_counts.lookup(key);

	if (v) {
		COUNT_ONE(v);
		return;
	}
	struct arp_val init = {};
	init.count = 1;
	init.first_seen_ns = bpf_ktime_get_ns();
	if (nd_counts.insert(key, &init) == 0) { /* BPF_NOEXIST, as count() */
		h->nd_inserts += 1;
		return;
	}
	v = nd_counts.lookup(key); /* -EEXIST: another CPU created it */
	if (v)
		COUNT_ONE(v);
	else
		h->nd_insert_fail += 1;
}

/* The fast path, shared by both families (struct arp_key, struct nd_key: whole 8-byte words, kept
 * 8-byte aligned on the stack by the callers). Array lookups are inlined by the verifier (per-CPU ones
 * on kernels >= 6.10), so a hit costs a multiply per key word and a compare per key word: no call. */

#define FAST_MUL 0x9E3779B97F4A7C15ULL

/* Index of the key's slot in the current half: a multiplicative hash of the key's words. A multiply
 * carries a bit only upwards, so each round folds the high half back down: without it, keys that differ
 * only in high bits of a word (the last octet of an IP, dir, kind) would all share one slot. */
static __always_inline __u32 fast_index(const __u64 *key, const int words)
{
	__u32 zero = 0;
	struct fast_epoch *ep = fast_epoch.lookup(&zero);
	__u64 x = 0;

	if (!ep)
		return 0;
#pragma unroll
	for (int i = 0; i < words; i++) {
		x = (x ^ key[i]) * FAST_MUL;
		x ^= x >> 32;
	}
	return (ep->half & 1) * ARP_SENSOR_FAST_SLOTS + ((__u32)((x * FAST_MUL) >> 32) & (ARP_SENSOR_FAST_SLOTS - 1));
}

/* Counts the frame in `slot` (words key words, then count, then first_seen_ns) when the slot is free
 * (claim it) or holds this key (hit). Returns 0 when it holds another key: the caller counts the frame
 * in the LRU map instead. Only this CPU writes its slots, and never in the half user space is reading. */
static __always_inline int fast_take(__u64 *slot, const __u64 *key, const int words, struct health_counters *h)
{
	if (slot[words] == 0) {
#pragma unroll
		for (int i = 0; i < words; i++)
			slot[i] = key[i];
		slot[words + 1] = bpf_ktime_get_ns();
		slot[words] = 1;
		h->fast_claims += 1;
		return 1;
	}
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < words; i++)
		diff |= slot[i] ^ key[i];
	if (diff) {
		h->fast_collisions += 1;
		return 0;
	}
	slot[words] += 1;
	h->fast_hits += 1;
	return 1;
}

/* One ARP frame: its fast-path slot, else the LRU map. */
static __always_inline void count_arp(struct arp_key *k, struct health_counters *h)
{
#if ARP_SENSOR_FAST_SLOTS
	__u32 idx = fast_index((const __u64 *)k, sizeof(*k) / 8);
	struct arp_fast_slot *slot = arp_fast.lookup(&idx);

	if (slot && fast_take((__u64 *)slot, (const __u64 *)k, sizeof(*k) / 8, h))
		return;
#endif
	count(k, h);
}

/* One ND frame: the same fast path with its own array (same epoch), else the ND LRU map. */
static __always_inline void count_nd_fast(struct nd_key *k, struct health_counters *h)
{
#if ARP_SENSOR_FAST_SLOTS
	__u32 idx = fast_index((const __u64 *)k, sizeof(*k) / 8);
	struct nd_fast_slot *slot = nd_fast.lookup(&idx);

	if (slot && fast_take((__u64 *)slot, (const __u64 *)k, sizeof(*k) / 8, h))
		return;
#endif
	count_nd(k, h);
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

/* Whether any limit exists: one array read, all that hosts without limits (the default) pay, and only
 * for ARP requests and neighbour solicitations. */
static __always_inline int limits_on(void)
{
	__u32 zero = 0;
	struct limits_active *active = limits_active.lookup(&zero);

	return active && active->count != 0;
}

/* Token bucket of the entry for lk, if any; returns 1 to drop. See struct limit_val for the arithmetic
 * and the locking choice. */
static __always_inline int limit_take(struct limit_key *lk, struct health_counters *h)
{
	struct limit_val *l = limits.lookup(lk);

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

/* An ARP request to k->ip; returns 1 to drop. */
static __always_inline int limit_request(struct arp_key *k, struct health_counters *h)
{
	if (!limits_on())
		return 0;
	struct limit_key lk = {};

	lk.ifindex = k->ifindex;
	lk.dir = k->dir;
	lk.family = LIMIT_FAMILY_IPV4;
	__builtin_memcpy(lk.ip, &k->ip, 4);
	return limit_take(&lk, h);
}

/* A neighbour solicitation (never DAD) for k->ip; returns 1 to drop. */
static __always_inline int limit_solicit(struct nd_key *k, struct health_counters *h)
{
	if (!limits_on())
		return 0;
	struct limit_key lk = {};

	lk.ifindex = k->ifindex;
	lk.dir = k->dir;
	lk.family = LIMIT_FAMILY_IPV6;
	__builtin_memcpy(lk.ip, k->ip, 16);
	return limit_take(&lk, h);
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

	struct arp_key k __attribute__((aligned(8))) = {}; /* read as 8-byte words by the fast path */

	k.ifindex = ifindex;
	k.vlan = vlan;
	k.dir = dir;
	/* The MAC that speaks in this frame, and whether the Ethernet source agrees (a mismatch is a proxy,
	 * a bridge rewriting, or a spoofer). find_l3 checked the Ethernet header is in the frame.
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
	count_arp(&k, h);
	/* Counted first: a dropped request still shows in the sensor's counts (the verdict that caused
	 * the limit must not clear because the limit works). */
#ifndef ARP_SENSOR_NO_LIMITS /* defined only by bench/ratelimit.py, to price the limit path */
	if (k.kind == ARP_KIND_REQUEST)
		return limit_request(&k, h);
#endif
	return 0;
}

/* IPv6 extension headers (IANA registry): not walked, see handle_nd. One shift and mask for the six
 * below 64 (0 hop-by-hop, 43 routing, 44 fragment, 50 ESP, 51 AH, 60 destination options). */
static __always_inline int ipv6_is_ext_hdr(__u8 nh)
{
	const __u64 low = (1ULL << 0) | (1ULL << 43) | (1ULL << 44) | (1ULL << 50) | (1ULL << 51) | (1ULL << 60);

	if (nh < 64)
		return (low >> nh) & 1;
	return nh == 135 || nh == 139 || nh == 140 || nh == 253 || nh == 254;
}

/* Counts an NS or NA (the cursor is at the IPv6 header); returns 1 when a rate limit says drop it.
 * Rules (sensor/refparse.py is the reference): next header 58 directly, ICMPv6 type 135/136, then 24
 * bytes present, version 6, code 0, hop limit 255, else nd_malformed. Extension headers before ICMPv6
 * are not walked (counted nd_ext_hdr): ND is link-local and Linux, BIRD's hosts and routers send it
 * without any; walking a chain would cost every IPv6 frame a loop. An IPv6 frame that is not ND leaves
 * after the next-header and type compares, touching no map. */
static __always_inline int handle_nd(struct hdr_cursor *nh, void *data_end, struct ethhdr *eth, __u32 ifindex,
				     __u8 dir, __u16 vlan)
{
	struct ipv6_hdr_s *ip6 = nh->pos;

	if ((void *)(ip6 + 1) > data_end) /* cannot be known to be ND */
		return 0;
	if (ip6->nexthdr != IPPROTO_ICMPV6_) {
		if (ipv6_is_ext_hdr(ip6->nexthdr)) {
			struct health_counters *h = health_get();

			if (h)
				h->nd_ext_hdr += 1;
		}
		return 0;
	}
	struct nd_msg_s *nd = (void *)(ip6 + 1);

	if ((void *)&nd->code > data_end) /* not even the type byte */
		return 0;
	if (nd->type != ND_NEIGHBOUR_SOLICIT && nd->type != ND_NEIGHBOUR_ADVERT)
		return 0;
	struct health_counters *h = health_get();

	if (!h)
		return 0;
	h->nd += 1;
	if ((void *)(nd + 1) > data_end || (ip6->ver_tc >> 4) != 6 || nd->code != 0 || ip6->hop_limit != 255) {
		h->nd_malformed += 1;
		return 0;
	}
	int ns = nd->type == ND_NEIGHBOUR_SOLICIT;
	struct nd_key k __attribute__((aligned(8))) = {}; /* read as 8-byte words by the fast path */

	k.ifindex = ifindex;
	k.vlan = vlan;
	k.dir = dir;
	__builtin_memcpy(k.ip, nd->target, 16);
	/* The MAC: the link-layer option if it is the first one, else the Ethernet source. */
	struct nd_opt_ll_s *opt = (void *)(nd + 1);

	if ((void *)(opt + 1) <= data_end && opt->type == (ns ? ND_OPT_SOURCE_LL : ND_OPT_TARGET_LL) &&
	    opt->len == 1) {
		__u8 diff = 0;

		__builtin_memcpy(k.mac, opt->addr, 6);
#pragma unroll
		for (int i = 0; i < 6; i++) /* no memcmp in BPF: it would be a call */
			diff |= opt->addr[i] ^ eth->h_source[i];
		if (diff)
			k.flags = KEY_F_MAC_MISMATCH;
	} else {
		__builtin_memcpy(k.mac, eth->h_source, 6);
	}
	if (ns) {
		__u16 any = 0;

#pragma unroll
		for (int i = 0; i < 8; i++)
			any |= ip6->saddr[i];
		if (!any) {
			h->nd_dad += 1;
			k.kind = ND_KIND_NS_DAD;
		} else {
			h->nd_solicit += 1;
			k.kind = ND_KIND_NS;
			__builtin_memcpy(k.peer, ip6->saddr, 16);
		}
	} else if (nd->flags & NA_FLAG_SOLICITED) {
		h->nd_advert_solicited += 1;
		k.kind = ND_KIND_NA_SOLICITED;
	} else {
		h->nd_advert_unsolicited += 1;
		k.kind = ND_KIND_NA_UNSOLICITED;
	}
	count_nd_fast(&k, h);
	/* Counted first, as for ARP requests. */
#ifndef ARP_SENSOR_NO_LIMITS
	if (k.kind == ND_KIND_NS)
		return limit_solicit(&k, h);
#endif
	return 0;
}

/* Moves the cursor past the Ethernet header and at most two VLAN tags; returns FRAME_ARP or FRAME_IPV6
 * (cursor at that header), else FRAME_OTHER. */
static __always_inline int find_l3(struct hdr_cursor *nh, void *data_end, __u16 *vlan, int have_vlan)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end) /* the kernel delivers no frame this short; stay safe anyway */
		return FRAME_OTHER;
	nh->pos = eth + 1;
	/* One 16-bit load: struct ethhdr is packed, so eth->h_proto compiles to two byte loads. The
	 * ethertype sits at an even offset of a frame the kernel aligned. */
	__u16 h_proto = *(__u16 *)((__u8 *)eth + 12);

	/* The ethertypes by how common they are: IPv4 leaves after one compare touching no map and not even
	 * the context (the interface index is read only for ARP and ND), IPv6 after two and its next header,
	 * ARP after three (docs/benchmarks.md, "Where the time goes (non-ARP)"). barrier_var() (as in
	 * libbpf's bpf_helpers.h) keeps clang from merging the compares into a search tree, which put IPv6
	 * behind four. */
	if (h_proto == bpf_htons(ETH_P_IP))
		return FRAME_OTHER;
	barrier_var(h_proto);
	if (h_proto == bpf_htons(ETH_P_IPV6))
		return FRAME_IPV6;
	barrier_var(h_proto);
	if (h_proto == bpf_htons(ETH_P_ARP))
		return FRAME_ARP;
	if (proto_is_vlan(h_proto)) {
		h_proto = parse_vlans(nh, data_end, h_proto, vlan, have_vlan);
		if (h_proto == bpf_htons(ETH_P_ARP))
			return FRAME_ARP;
	}
	return h_proto == bpf_htons(ETH_P_IPV6) ? FRAME_IPV6 : FRAME_OTHER;
}

int arpsensor_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	__u16 vlan = 0;
	int l3 = find_l3(&nh, data_end, &vlan, 0);

	/* A drop is an ingress limit: it protects this host only, the switch already carried the frame. */
	if (l3 == FRAME_ARP) {
		if (handle_arp(&nh, data, data_end, ctx->ingress_ifindex, ARP_SENSOR_DIR_INGRESS, vlan))
			return XDP_DROP;
	} else if (l3 == FRAME_IPV6) {
		if (handle_nd(&nh, data_end, data, ctx->ingress_ifindex, ARP_SENSOR_DIR_INGRESS, vlan))
			return XDP_DROP;
	}
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
	int l3 = find_l3(&nh, data_end, &vlan, have_vlan);

	if (l3 == FRAME_ARP) {
		if (handle_arp(&nh, data, data_end, skb->ifindex, dir, vlan))
			return TC_ACT_SHOT;
	} else if (l3 == FRAME_IPV6) {
		if (handle_nd(&nh, data_end, data, skb->ifindex, dir, vlan))
			return TC_ACT_SHOT;
	}
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
	k.dir = c->key.dir;
	k.family = c->key.family;
	__builtin_memcpy(k.ip, c->key.ip, 16);
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
