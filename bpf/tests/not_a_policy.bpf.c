// SPDX-License-Identifier: GPL-2.0-only
/*
 * not_a_policy: a struct_ops of another kind, a TCP congestion control.
 * llmosctl sched attach must refuse it before loading anything: pinned as
 * the scheduling policy, it would change how the machine's TCP behaves.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

SEC("struct_ops/nap_ssthresh")
u32 BPF_PROG(nap_ssthresh, struct sock *sk)
{
	return 2;
}

SEC("struct_ops/nap_undo_cwnd")
u32 BPF_PROG(nap_undo_cwnd, struct sock *sk)
{
	return 2;
}

SEC("struct_ops/nap_cong_avoid")
void BPF_PROG(nap_cong_avoid, struct sock *sk, u32 ack, u32 acked)
{
}

SEC(".struct_ops.link")
struct tcp_congestion_ops not_a_policy = {
	.ssthresh	= (void *)nap_ssthresh,
	.undo_cwnd	= (void *)nap_undo_cwnd,
	.cong_avoid	= (void *)nap_cong_avoid,
	.name		= "not_a_policy",
};
