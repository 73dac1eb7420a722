/* SPDX-License-Identifier: GPL-2.0 */
/* The floor of every per-packet ratio in bench/: BPF_PROG_TEST_RUN of a program that does nothing costs
 * the test-run loop itself (context setup, the indirect call, timing). */
int empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}
