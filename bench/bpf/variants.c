/* SPDX-License-Identifier: GPL-2.0 */
/* bench/prog_cost.py's "where the time goes" variants: the ARP-request path rebuilt one step at a time as
 * separate XDP programs (compiled by bcc with -DVMAX=<map size>). The parser mirrors the shipped one
 * (ethertype, bounds, hrd/pro/hln/pln, op, sender/target copied out); the key is the 16-byte key the
 * shipped program used before the fast path (issue 15), which v_lru reproduces with its per-CPU LRU map. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>

struct vkey { u32 ifindex; u32 ip; u32 peer; u16 vlan; u8 dir; u8 kind; };
struct vval { u64 count; u64 first_seen_ns; };
BPF_TABLE("lru_percpu_hash", struct vkey, struct vval, m_lru, VMAX);
BPF_TABLE("lru_hash", struct vkey, struct vval, m_lru_shared, VMAX);
BPF_TABLE("percpu_hash", struct vkey, struct vval, m_phash, VMAX);
BPF_TABLE("lru_percpu_hash", u32, struct vval, m_lru4, VMAX);
BPF_PERCPU_ARRAY(v_health, struct vval, 1);
BPF_PERCPU_ARRAY(m_direct, struct vval, 65536);

static __always_inline int parse(struct xdp_md *ctx, struct vkey *k)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_ARP))
        return 0;
    u8 *a = (u8 *)(eth + 1);
    if ((void *)(a + 28) > end)
        return 0;
    if (a[0] != 0 || a[1] != 1 || a[2] != 8 || a[3] != 0 || a[4] != 6 || a[5] != 4)
        return 0;
    __builtin_memcpy(&k->peer, a + 14, 4);
    __builtin_memcpy(&k->ip, a + 24, 4);
    k->ifindex = ctx->ingress_ifindex;
    k->kind = a[7] == 1 ? 0 : 1;
    return 1;
}

static __always_inline void bump_health(void)
{
    u32 zero = 0;
    struct vval *h = v_health.lookup(&zero);
    if (h)
        h->count += 1;
}

int v_ethertype(struct xdp_md *ctx)
{
    /* The least any program that looks for ARP must do: bounds-check the Ethernet header and compare
       the ethertype. What every non-ARP frame costs at the very minimum. */
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    return eth->h_proto == bpf_htons(ETH_P_ARP) ? XDP_DROP : XDP_PASS;
}

int v_ipv6_nexthdr(struct xdp_md *ctx)
{
    /* The least a program that looks for ND must do with any IPv6 frame: the ethertype, then the IPv6
       header's bounds and its next header (58, ICMPv6). */
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6))
        return XDP_PASS;
    u8 *ip6 = (u8 *)(eth + 1);
    if ((void *)(ip6 + 40) > end)
        return XDP_PASS;
    return ip6[6] == 58 ? XDP_DROP : XDP_PASS;
}

int v_icmpv6_type(struct xdp_md *ctx)
{
    /* The same for an ICMPv6 frame: then its type must be read too (ND is types 135 and 136). */
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6))
        return XDP_PASS;
    u8 *ip6 = (u8 *)(eth + 1);
    if ((void *)(ip6 + 41) > end || ip6[6] != 58)
        return XDP_PASS;
    return ip6[40] == 135 || ip6[40] == 136 ? XDP_DROP : XDP_PASS;
}

int v_parse(struct xdp_md *ctx)
{
    struct vkey k = {};
    /* The comparison keeps the parse from being optimised away; no frame matches it. */
    if (parse(ctx, &k) && (k.ip ^ k.peer) == 0xdeadbeef)
        return XDP_DROP;
    return XDP_PASS;
}

int v_parse_health(struct xdp_md *ctx)
{
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        if ((k.ip ^ k.peer) == 0xdeadbeef)
            return XDP_DROP;
    }
    return XDP_PASS;
}

int v_call(struct xdp_md *ctx)
{
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        /* One call into a trivial kernel function: the price of a call and its return here. */
        if ((k.ip ^ k.peer ^ bpf_get_numa_node_id()) == 0xdeadbeef)
            return XDP_DROP;
    }
    return XDP_PASS;
}

int v_lru(struct xdp_md *ctx)
{
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        struct vval *v = m_lru.lookup(&k);
        if (v) {
            v->count += 1;
        } else {
            struct vval init = { .count = 1 };
            m_lru.update(&k, &init);
        }
    }
    return XDP_PASS;
}

int v_lru_shared(struct xdp_md *ctx)
{
    /* The LRU maps the shipped program keeps behind its fast path: one value for all CPUs, an atomic add. */
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        struct vval *v = m_lru_shared.lookup(&k);
        if (v) {
            __sync_fetch_and_add(&v->count, 1);
        } else {
            struct vval init = { .count = 1 };
            m_lru_shared.update(&k, &init);
        }
    }
    return XDP_PASS;
}

int v_lru_only(struct xdp_md *ctx)
{
    struct vkey k = {};
    k.ip = 0x0700000a;
    struct vval *v = m_lru.lookup(&k);
    if (v) {
        v->count += 1;
    } else {
        struct vval init = { .count = 1 };
        m_lru.update(&k, &init);
    }
    return XDP_PASS;
}

int v_lru4(struct xdp_md *ctx)
{
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        u32 ip = k.ip;
        struct vval *v = m_lru4.lookup(&ip);
        if (v) {
            v->count += 1;
        } else {
            struct vval init = { .count = 1 };
            m_lru4.update(&ip, &init);
        }
    }
    return XDP_PASS;
}

int v_phash(struct xdp_md *ctx)
{
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        struct vval *v = m_phash.lookup(&k);
        if (v) {
            v->count += 1;
        } else {
            struct vval init = { .count = 1 };
            m_phash.update(&k, &init);
        }
    }
    return XDP_PASS;
}

int v_direct(struct xdp_md *ctx)
{
    struct vkey k = {};
    if (parse(ctx, &k)) {
        bump_health();
        /* Direct-mapped: slot = hash(target, sender); a real design would keep the key in the slot
           and count collisions. No hashing of a 16-byte key, no bucket walk, no locks. */
        u32 slot = ((k.ip ^ (k.peer * 2654435761u)) * 2654435761u) >> 16;
        struct vval *v = m_direct.lookup(&slot);
        if (v)
            v->count += 1;
    }
    return XDP_PASS;
}
