/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * llmos core: an intrusive treap (a binary search tree balanced by random
 * heap priorities), ordered by the pair (k1, k2). Used for every ordered set
 * of the scheduler core: requests by id, queues by key, tenants by id and by
 * virtual time. No allocation, no locking: the caller embeds the nodes and
 * serialises access. Priorities come from a per-tree xorshift generator,
 * seeded at random in the kernel (keys chosen by users cannot make a tree
 * a list: the expected depth stays O(log n)) and with a fixed seed in the
 * userspace build, where the shape of a tree is the same for the same
 * sequence of operations.
 */
#ifndef _LLMOS_CORE_TREAP_H
#define _LLMOS_CORE_TREAP_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include "llmos_core_user.h"
#endif

/**
 * struct llmos_tnode - a treap node, embedded in its owner
 * @parent: parent node, NULL for the root
 * @left: subtree of smaller keys
 * @right: subtree of larger keys
 * @k1: primary key
 * @k2: secondary key (ties of @k1)
 * @prio: heap priority
 */
struct llmos_tnode {
	struct llmos_tnode *parent;
	struct llmos_tnode *left;
	struct llmos_tnode *right;
	u64 k1;
	u64 k2;
	u32 prio;
};

/**
 * struct llmos_treap - a treap
 * @root: the root node, NULL when empty
 * @nr: number of nodes
 * @seed: state of the priority generator
 */
struct llmos_treap {
	struct llmos_tnode *root;
	u32 nr;
	u32 seed;
};

void llmos_treap_init(struct llmos_treap *t);
/* Insert @n with keys (@k1, @k2); the pair must not be in the tree. */
void llmos_treap_insert(struct llmos_treap *t, struct llmos_tnode *n,
			u64 k1, u64 k2);
void llmos_treap_erase(struct llmos_treap *t, struct llmos_tnode *n);
struct llmos_tnode *llmos_treap_first(const struct llmos_treap *t);
struct llmos_tnode *llmos_treap_next(const struct llmos_tnode *n);
struct llmos_tnode *llmos_treap_find(const struct llmos_treap *t, u64 k1,
				     u64 k2);

static inline bool llmos_treap_empty(const struct llmos_treap *t)
{
	return !t->root;
}

#endif /* _LLMOS_CORE_TREAP_H */
