/* SPDX-License-Identifier: GPL-2.0 */
/* arp-sensor kernel program (compiled by bcc). One parser, three entry points:
 *   arpsensor_xdp     XDP, ingress
 *   arpsensor_tc_in   tc clsact ingress
 *   arpsensor_tc_eg   tc clsact egress
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

BPF_TABLE("lru_percpu_hash", struct target_key, struct target_val, targets, ARP_SENSOR_MAX_TARGETS);
BPF_TABLE("lru_percpu_hash", struct pair_key, struct pair_val, pairs, ARP_SENSOR_MAX_PAIRS);
BPF_PERCPU_ARRAY(health, struct health_counters, 1);

static __always_inline struct health_counters *health_get(void)
{
	__u32 zero = 0;

	return health.lookup(&zero);
}

static __always_inline int proto_is_vlan(__u16 h_proto)
{
	return h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD);
}

/* Returns the per-CPU value for key, creating it (zeroed, stamped) when missing; NULL if the map
 * refused the insert (counted). */
static __always_inline struct target_val *target_get(struct target_key *key, struct health_counters *h)
{
	struct target_val *v = targets.lookup(key);

	if (v)
		return v;
	struct target_val init = {};
	init.first_seen_ns = bpf_ktime_get_ns();
	if (targets.update(key, &init) == 0)
		h->target_inserts += 1;
	/* -EEXIST: another CPU created it between our lookup and update; use theirs. */
	v = targets.lookup(key);
	if (!v)
		h->target_insert_fail += 1;
	return v;
}

static __always_inline void pair_count(struct pair_key *key, struct health_counters *h)
{
	struct pair_val *v = pairs.lookup(key);

	if (!v) {
		struct pair_val init = {};
		init.first_seen_ns = bpf_ktime_get_ns();
		if (pairs.update(key, &init) == 0)
			h->pair_inserts += 1;
		v = pairs.lookup(key);
		if (!v) {
			h->pair_insert_fail += 1;
			return;
		}
	}
	v->requests += 1;
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

static __always_inline void handle_arp(struct hdr_cursor *nh, void *data_end, __u32 ifindex, __u8 dir,
				       __u16 vlan)
{
	struct arp_eth_ipv4 *arp = nh->pos;
	struct health_counters *h = health_get();

	if (!h) /* cannot happen for an array map; the verifier wants the check */
		return;
	h->arp += 1;
	/* Padding after the 28 bytes (60-byte minimum frames) is normal; less than 28 is not. */
	if ((void *)(arp + 1) > data_end || arp->hrd != ARPHRD_ETHER_BE || arp->pro != ETH_P_IP_BE ||
	    arp->hln != 6 || arp->pln != 4) {
		h->malformed += 1;
		return;
	}

	__u16 op = bpf_ntohs(arp->op);
	__u32 spa, tpa;

	__builtin_memcpy(&spa, arp->spa, 4);
	__builtin_memcpy(&tpa, arp->tpa, 4);

	if (op != ARPOP_REQUEST && op != ARPOP_REPLY) {
		h->other_op += 1;
		return;
	}

	struct target_key tk = {};
	struct target_val *tv;

	tk.ifindex = ifindex;
	tk.vlan = vlan;
	tk.dir = dir;

	/* Order matters and is the documented classification (docs/architecture.md):
	 * probe (request from 0.0.0.0), gratuitous (sender == target), request, reply. */
	if (op == ARPOP_REQUEST && spa == 0) {
		h->probe += 1;
		tk.ip = tpa;
		tv = target_get(&tk, h);
		if (tv)
			tv->probes += 1;
		return;
	}
	if (spa == tpa) {
		h->gratuitous += 1;
		tk.ip = spa;
		tv = target_get(&tk, h);
		if (tv)
			tv->gratuitous += 1;
		return;
	}
	if (op == ARPOP_REQUEST) {
		h->request += 1;
		tk.ip = tpa;
		tv = target_get(&tk, h);
		if (tv)
			tv->requests += 1;

		struct pair_key pk = {};

		pk.ifindex = ifindex;
		pk.sender = spa;
		pk.target = tpa;
		pk.vlan = vlan;
		pk.dir = dir;
		pair_count(&pk, h);
		return;
	}
	h->reply += 1;
	tk.ip = spa;
	tv = target_get(&tk, h);
	if (tv)
		tv->replies += 1;
}

static __always_inline void handle_frame(void *data, void *data_end, __u32 ifindex, __u8 dir,
					 __u16 vlan, int have_vlan)
{
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth = nh.pos;

	if ((void *)(eth + 1) > data_end) /* the kernel delivers no frame this short; stay safe anyway */
		return;
	nh.pos = eth + 1;
	__u16 h_proto = eth->h_proto;

	/* The fast path: every non-ARP, untagged frame leaves here after two compares, touching no map. */
	if (h_proto != bpf_htons(ETH_P_ARP)) {
		if (!proto_is_vlan(h_proto))
			return;
		h_proto = parse_vlans(&nh, data_end, h_proto, &vlan, have_vlan);
		if (h_proto != bpf_htons(ETH_P_ARP))
			return;
	}
	handle_arp(&nh, data_end, ifindex, dir, vlan);
}

int arpsensor_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	handle_frame(data, data_end, ctx->ingress_ifindex, ARP_SENSOR_DIR_INGRESS, 0, 0);
	return XDP_PASS;
}

/* tc: the outer VLAN tag may already be in skb metadata (rx untagging, tx offload), so it is read from
 * there first. TC_ACT_UNSPEC lets the next filter in the chain run: we observe, we never decide for
 * someone else's filters. */
static __always_inline int handle_skb(struct __sk_buff *skb, __u8 dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u16 vlan = 0;
	int have_vlan = 0;

	if (skb->vlan_present) {
		vlan = skb->vlan_tci & VLAN_VID_MASK;
		have_vlan = 1;
	}
	handle_frame(data, data_end, skb->ifindex, dir, vlan, have_vlan);
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
