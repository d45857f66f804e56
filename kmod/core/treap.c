// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * llmos core: intrusive treap, see llmos_treap.h.
 */
#ifdef __KERNEL__
#include <linux/random.h>
#endif

#include "llmos_treap.h"

/* Any non-zero state will do for xorshift: 0 would stay 0. */
#define LLMOS_TREAP_SEED 2463534242u

/*
 * In the kernel each tree starts from a random state, so that nobody who
 * picks keys (tenant ids, deadlines, a policy's keys) can foresee the
 * priorities and make a tree a list; in userspace the same one, so that
 * the host tests see the same shapes every run.
 */
static u32 llmos_treap_seed(void)
{
#ifdef __KERNEL__
	u32 seed = get_random_u32();

	if (seed)
		return seed;
#endif
	return LLMOS_TREAP_SEED;
}

void llmos_treap_init(struct llmos_treap *t)
{
	t->root = NULL;
	t->nr = 0;
	t->seed = llmos_treap_seed();
}

static u32 llmos_treap_rand(struct llmos_treap *t)
{
	u32 x = t->seed;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	t->seed = x;
	return x;
}

static bool llmos_tnode_less(u64 a1, u64 a2, const struct llmos_tnode *b)
{
	return a1 < b->k1 || (a1 == b->k1 && a2 < b->k2);
}

/* Make @x, a child of its parent p, the parent of p. */
static void llmos_treap_rotate_up(struct llmos_treap *t, struct llmos_tnode *x)
{
	struct llmos_tnode *p = x->parent;
	struct llmos_tnode *g = p->parent;

	if (p->left == x) {
		p->left = x->right;
		if (x->right)
			x->right->parent = p;
		x->right = p;
	} else {
		p->right = x->left;
		if (x->left)
			x->left->parent = p;
		x->left = p;
	}
	p->parent = x;
	x->parent = g;
	if (!g)
		t->root = x;
	else if (g->left == p)
		g->left = x;
	else
		g->right = x;
}

void llmos_treap_insert(struct llmos_treap *t, struct llmos_tnode *n,
			u64 k1, u64 k2)
{
	struct llmos_tnode **link = &t->root;
	struct llmos_tnode *parent = NULL;

	n->k1 = k1;
	n->k2 = k2;
	n->left = NULL;
	n->right = NULL;
	n->prio = llmos_treap_rand(t);
	while (*link) {
		parent = *link;
		link = llmos_tnode_less(k1, k2, parent) ? &parent->left :
							  &parent->right;
	}
	n->parent = parent;
	*link = n;
	while (n->parent && n->parent->prio < n->prio)
		llmos_treap_rotate_up(t, n);
	t->nr++;
}

void llmos_treap_erase(struct llmos_treap *t, struct llmos_tnode *n)
{
	struct llmos_tnode *p;

	/* Rotate @n down, below its higher-priority child, to a leaf. */
	while (n->left || n->right) {
		struct llmos_tnode *c;

		if (!n->left)
			c = n->right;
		else if (!n->right)
			c = n->left;
		else
			c = n->left->prio > n->right->prio ? n->left : n->right;
		llmos_treap_rotate_up(t, c);
	}
	p = n->parent;
	if (!p)
		t->root = NULL;
	else if (p->left == n)
		p->left = NULL;
	else
		p->right = NULL;
	n->parent = NULL;
	t->nr--;
}

struct llmos_tnode *llmos_treap_first(const struct llmos_treap *t)
{
	struct llmos_tnode *n = t->root;

	while (n && n->left)
		n = n->left;
	return n;
}

struct llmos_tnode *llmos_treap_next(const struct llmos_tnode *n)
{
	const struct llmos_tnode *p;

	if (n->right) {
		n = n->right;
		while (n->left)
			n = n->left;
		return (struct llmos_tnode *)n;
	}
	for (p = n->parent; p && p->right == n; p = p->parent)
		n = p;
	return (struct llmos_tnode *)p;
}

struct llmos_tnode *llmos_treap_find(const struct llmos_treap *t, u64 k1,
				     u64 k2)
{
	struct llmos_tnode *n = t->root;

	while (n) {
		if (n->k1 == k1 && n->k2 == k2)
			return n;
		n = llmos_tnode_less(k1, k2, n) ? n->left : n->right;
	}
	return NULL;
}
