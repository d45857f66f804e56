// SPDX-License-Identifier: MIT
//
// The scheduler core (kmod/core/, compiled for userspace): the treap, the
// ordering the built-in policy promises, the lifecycle state machine, and a
// randomized comparison against a simple reference model.
#include <algorithm>
#include <deque>
#include <gtest/gtest.h>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <tuple>
#include <vector>

extern "C" {
#include "llmos_core.h"
}

namespace {

TEST(treap, matches_an_ordered_set_under_random_inserts_and_erases) {
    llmos_treap t;
    llmos_treap_init(&t);
    std::vector<llmos_tnode> nodes(2000);
    std::set<std::pair<uint64_t, uint64_t>> model;
    std::vector<bool> in(nodes.size());
    std::mt19937 rng(7);
    for (int step = 0; step < 20000; ++step) {
        size_t i = rng() % nodes.size();
        if (in[i]) {
            llmos_treap_erase(&t, &nodes[i]);
            model.erase({nodes[i].k1, nodes[i].k2});
            in[i] = false;
        } else {
            uint64_t k1 = rng() % 50, k2 = i;
            llmos_treap_insert(&t, &nodes[i], k1, k2);
            model.insert({k1, k2});
            in[i] = true;
        }
        ASSERT_EQ(t.nr, model.size());
        if (step % 997 == 0) {
            auto it = model.begin();
            for (auto* n = llmos_treap_first(&t); n; n = llmos_treap_next(n), ++it) {
                ASSERT_NE(it, model.end());
                ASSERT_EQ(std::make_pair(n->k1, n->k2), *it);
            }
            ASSERT_EQ(it, model.end());
        }
    }
    for (size_t i = 0; i < nodes.size(); ++i) {
        EXPECT_EQ(llmos_treap_find(&t, nodes[i].k1, nodes[i].k2) == &nodes[i], bool(in[i]));
    }
}

// A scheduler with its objects, owned by the test.
struct fixture {
    llmos_core_sched s;
    std::vector<std::unique_ptr<llmos_core_req>> reqs;
    std::vector<std::unique_ptr<llmos_core_tenant>> tenants;
    std::vector<std::unique_ptr<llmos_core_worker>> workers;
    uint64_t now = 1000;

    fixture() { llmos_core_init(&s); }
    ~fixture() {
        while (llmos_core_tenant_pop(&s)) {
        }
    }
    llmos_core_req* submit(uint32_t tenant, uint8_t prio = 0, uint32_t cost = 1) {
        auto r = std::make_unique<llmos_core_req>();
        r->tenant = tenant;
        r->prio = prio;
        r->cost = cost;
        auto spare = std::make_unique<llmos_core_tenant>();
        llmos_core_tenant* sp = spare.get();
        EXPECT_EQ(llmos_core_submit(&s, r.get(), &sp, now++), 0);
        if (!sp) {
            tenants.push_back(std::move(spare));
        }
        reqs.push_back(std::move(r));
        return reqs.back().get();
    }
    llmos_core_worker* worker(uint32_t capacity) {
        auto w = std::make_unique<llmos_core_worker>();
        w->capacity = capacity;
        llmos_core_worker_add(&s, w.get());
        workers.push_back(std::move(w));
        return workers.back().get();
    }
    std::vector<llmos_core_req*> dispatch(llmos_core_worker* w, uint32_t max) {
        std::vector<llmos_core_req*> out(max);
        out.resize(llmos_core_dispatch(&s, w, out.data(), max, now++));
        return out;
    }
    void weight(uint32_t tenant, uint32_t w) {
        auto spare = std::make_unique<llmos_core_tenant>();
        llmos_core_tenant* sp = spare.get();
        ASSERT_EQ(llmos_core_set_weight(&s, tenant, w, &sp), 0);
        if (!sp) {
            tenants.push_back(std::move(spare));
        }
    }
    // Dispatch one request and complete it at once.
    llmos_core_req* serve_one(llmos_core_worker* w) {
        auto got = dispatch(w, 1);
        if (got.empty()) {
            return nullptr;
        }
        EXPECT_EQ(llmos_core_complete(&s, w, got[0], 0, got[0]->cost, 0, 0, now++), 0);
        return got[0];
    }
};

TEST(sched_core, past_max_tenants_the_tenant_idle_the_longest_makes_room) {
    fixture f;
    f.s.max_tenants = 3;
    // A new tenant, with no spare to make it from: what the core says.
    auto submit_new = [&](uint32_t tenant) {
        auto r = std::make_unique<llmos_core_req>();
        r->tenant = tenant;
        r->cost = 1;
        llmos_core_tenant* none = nullptr;
        const int ret = llmos_core_submit(&f.s, r.get(), &none, f.now++);
        if (!ret) {
            f.reqs.push_back(std::move(r));
        }
        return ret;
    };
    auto* a = f.submit(1);
    auto* b = f.submit(2);
    f.weight(3, 500); // a weight of its own: kept
    // At the limit and none idle (1 and 2 have requests, 3 a weight).
    EXPECT_EQ(submit_new(4), -ENOSPC);
    llmos_core_tenant* none = nullptr;
    EXPECT_EQ(llmos_core_set_weight(&f.s, 4, 200, &none), -ENOSPC);
    EXPECT_EQ(f.s.tenants.nr, 3u);
    // 1's request finishes: 1 is idle, and 4 takes its place (from its
    // memory: no spare needed), counters and all.
    auto* w = f.worker(4);
    ASSERT_EQ(f.dispatch(w, 1), std::vector<llmos_core_req*>{a});
    ASSERT_EQ(llmos_core_complete(&f.s, w, a, 0, 9, 0, 0, f.now++), 0);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 1)->served_tokens, 9u);
    EXPECT_EQ(submit_new(4), 0);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 1), nullptr);
    ASSERT_NE(llmos_core_tenant_find(&f.s, 4), nullptr);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 4)->served_tokens, 0u);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 4)->weight, 100u);
    EXPECT_EQ(f.s.stats.tenants_reclaimed, 1u);
    EXPECT_EQ(f.s.tenants.nr, 3u);
    // The finished request of the tenant taken back is still collected.
    EXPECT_EQ(llmos_core_release(&f.s, a), 0);
    // 2 goes idle (cancelled), then 3 (its weight back to the default):
    // 2, idle the longest, goes first; 4 (a live request) never.
    ASSERT_EQ(llmos_core_cancel(&f.s, b, f.now++), 0);
    f.weight(3, 100);
    EXPECT_EQ(submit_new(5), 0);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 2), nullptr);
    EXPECT_NE(llmos_core_tenant_find(&f.s, 3), nullptr);
    EXPECT_EQ(submit_new(6), 0);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 3), nullptr);
    EXPECT_EQ(submit_new(7), -ENOSPC);
    EXPECT_EQ(f.s.stats.tenants_reclaimed, 3u);
    // A tenant that comes back after being taken back starts anew, and
    // the built-in policy serves everyone still queued.
    std::set<uint32_t> served;
    while (auto* r = f.serve_one(w)) {
        served.insert(r->tenant);
    }
    EXPECT_EQ(served, (std::set<uint32_t>{4, 5, 6}));
    EXPECT_EQ(f.s.idle.nr, 3u);
    EXPECT_EQ(submit_new(1), 0);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 4), nullptr);
}

TEST(sched_core, fifo_within_a_tenant) {
    fixture f;
    std::vector<uint64_t> ids;
    for (int i = 0; i < 100; ++i) {
        ids.push_back(f.submit(7)->id);
    }
    auto* w = f.worker(1);
    for (uint64_t id : ids) {
        auto* r = f.serve_one(w);
        ASSERT_NE(r, nullptr);
        EXPECT_EQ(r->id, id);
    }
    EXPECT_EQ(f.serve_one(w), nullptr);
}

TEST(sched_core, higher_priority_first_then_fifo) {
    fixture f;
    auto* low1 = f.submit(1, 1);
    auto* high1 = f.submit(1, 9);
    auto* mid = f.submit(1, 5);
    auto* high2 = f.submit(1, 9);
    auto* low2 = f.submit(1, 1);
    auto* w = f.worker(8);
    auto got = f.dispatch(w, 8);
    ASSERT_EQ(got.size(), 5u);
    EXPECT_EQ(got, (std::vector<llmos_core_req*>{high1, high2, mid, low1, low2}));
}

TEST(sched_core, wfq_shares_follow_weights_within_2_percent) {
    fixture f;
    const uint32_t weights[] = {100, 200, 300, 400};
    for (uint32_t t = 0; t < 4; ++t) {
        f.weight(t, weights[t]);
    }
    // Every tenant stays backlogged: 10k requests each, mixed costs.
    std::mt19937 rng(1);
    for (int i = 0; i < 10000; ++i) {
        for (uint32_t t = 0; t < 4; ++t) {
            f.submit(t, 0, 1 + rng() % 64);
        }
    }
    auto* w = f.worker(1);
    std::map<uint32_t, uint64_t> tokens;
    uint64_t total = 0;
    for (int i = 0; i < 10000; ++i) {
        auto* r = f.serve_one(w);
        ASSERT_NE(r, nullptr);
        tokens[r->tenant] += r->cost;
        total += r->cost;
    }
    for (uint32_t t = 0; t < 4; ++t) {
        double want = weights[t] / 1000.0;
        double got = double(tokens[t]) / double(total);
        EXPECT_NEAR(got, want, 0.02 * want) << "tenant " << t;
        EXPECT_EQ(llmos_core_tenant_find(&f.s, t)->served_tokens, tokens[t]);
    }
}

TEST(sched_core, a_tenant_that_wakes_up_does_not_take_over) {
    fixture f;
    auto* w = f.worker(1);
    for (int i = 0; i < 1000; ++i) {
        f.submit(1);
    }
    for (int i = 0; i < 500; ++i) {
        f.serve_one(w);
    }
    // Tenant 2 arrives after 500 services of tenant 1: it does not get 500
    // in a row, the two alternate.
    for (int i = 0; i < 100; ++i) {
        f.submit(2);
    }
    int from2 = 0;
    for (int i = 0; i < 100; ++i) {
        from2 += f.serve_one(w)->tenant == 2;
    }
    EXPECT_NEAR(from2, 50, 2);
}

TEST(sched_core, virtual_times_never_wrap) {
    // At weight 1, a request of the largest cost advances its tenant by
    // 2^52: 4096 of them would wrap a 64-bit virtual time, and the tenant
    // that wrapped first would then be served alone for thousands.
    fixture f;
    f.weight(1, 1);
    f.weight(2, 1);
    auto* w = f.worker(1);
    for (int i = 0; i < 5000; ++i) {
        f.submit(1, 0, UINT32_MAX);
        f.submit(2, 0, UINT32_MAX);
    }
    int run = 0, longest = 0;
    uint32_t last = 0;
    for (int i = 0; i < 9000; ++i) {
        auto* r = f.serve_one(w);
        ASSERT_NE(r, nullptr);
        run = r->tenant == last ? run + 1 : 1;
        last = r->tenant;
        longest = std::max(longest, run);
    }
    EXPECT_LE(longest, 2); // they alternate throughout
    EXPECT_GE(f.s.stats.vt_rebases, 1u);
    EXPECT_LT(llmos_core_tenant_find(&f.s, 1)->vtime, LLMOS_CORE_VT_REBASE);
}

// A policy with one FIFO queue whose dispatch moves everything it has,
// whatever its budget.
struct greedy_policy {
    static inline llmos_core_queue q{};
    static int enqueue(llmos_core_sched* s, llmos_core_req* r) {
        return llmos_core_queue_insert(s, &q, r, 0);
    }
    static void dispatch(llmos_core_sched* s, llmos_core_worker* w, uint32_t) {
        llmos_core_queue_move(s, &q, w, UINT32_MAX);
    }
    static constexpr llmos_core_policy ops = {enqueue, dispatch, nullptr};
};

TEST(sched_core, a_policy_moves_no_more_than_a_worker_has_room_for) {
    fixture f;
    greedy_policy::q = {};
    ASSERT_EQ(llmos_core_queue_add(&f.s, &greedy_policy::q, 1), 0);
    f.s.policy = &greedy_policy::ops;
    auto* a = f.worker(1);
    auto* b = f.worker(1);
    for (int i = 0; i < 5; ++i) {
        f.submit(1);
    }
    // a takes one; the other four stay in the policy's queue, where b (and
    // the watchdog) find them, not in a's local queue.
    EXPECT_EQ(f.dispatch(a, 1).size(), 1u);
    EXPECT_EQ(a->local.nr, 0u);
    EXPECT_EQ(greedy_policy::q.q.nr, 4u);
    EXPECT_EQ(f.dispatch(b, 1).size(), 1u);
    EXPECT_EQ(greedy_policy::q.q.nr, 3u);
    EXPECT_EQ(f.s.policy_fault, 0u);
    llmos_core_policy_reset(&f.s);
    while (llmos_core_queue_pop(&f.s)) {
    }
}

// A policy with two queues: even-numbered tenants in one, odd in the
// other, the odd one keyed backwards (newest first); dispatch takes the
// odd queue's head.
struct two_queue_policy {
    static inline llmos_core_queue even{}, odd{};
    static int enqueue(llmos_core_sched* s, llmos_core_req* r) {
        return r->tenant % 2 ? llmos_core_queue_insert(s, &odd, r, UINT64_MAX - r->seq)
                             : llmos_core_queue_insert(s, &even, r, 0);
    }
    static void dispatch(llmos_core_sched* s, llmos_core_worker* w, uint32_t budget) {
        llmos_core_queue_move(s, &odd, w, budget);
    }
    static constexpr llmos_core_policy ops = {enqueue, dispatch, nullptr};
};

TEST(sched_core, the_oldest_request_a_policy_holds_is_found_across_its_queues) {
    fixture f;
    two_queue_policy::even = {};
    two_queue_policy::odd = {};
    ASSERT_EQ(llmos_core_queue_add(&f.s, &two_queue_policy::even, 1), 0);
    ASSERT_EQ(llmos_core_queue_add(&f.s, &two_queue_policy::odd, 2), 0);
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), nullptr);
    // Queued before the policy: the built-in queues hold it, not the policy.
    auto* before = f.submit(2);
    f.s.policy = &two_queue_policy::ops;
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), nullptr);
    auto* a = f.submit(1); // odd queue, at its tail (keyed backwards)
    auto* b = f.submit(2);
    auto* c = f.submit(3); // odd queue's head
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), a);
    // Dispatch takes c (the odd queue's head): a stays the oldest; the
    // built-in queues' request goes first, and is not the policy's.
    auto* w = f.worker(2);
    auto got = f.dispatch(w, 2);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0], before);
    EXPECT_EQ(got[1], c);
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), a);
    // a is cancelled: b is the oldest.
    ASSERT_EQ(llmos_core_cancel(&f.s, a, f.now++), 0);
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), b);
    auto* d = f.submit(4);
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), b);
    // The policy goes: its requests go to the built-in queues, and it
    // holds nothing.
    llmos_core_policy_reset(&f.s);
    EXPECT_EQ(llmos_core_policy_oldest(&f.s), nullptr);
    EXPECT_EQ(f.s.held.nr, 0u);
    while (llmos_core_queue_pop(&f.s)) {
    }
    ASSERT_EQ(llmos_core_complete(&f.s, w, before, 0, 1, 0, 0, f.now++), 0);
    ASSERT_EQ(llmos_core_complete(&f.s, w, c, 0, 1, 0, 0, f.now++), 0);
    got = f.dispatch(w, 2);
    EXPECT_EQ(std::set<llmos_core_req*>(got.begin(), got.end()), (std::set<llmos_core_req*>{b, d}));
}

TEST(sched_core, capacity_bounds_what_a_worker_holds) {
    fixture f;
    for (int i = 0; i < 10; ++i) {
        f.submit(1);
    }
    auto* w = f.worker(3);
    auto got = f.dispatch(w, 10);
    EXPECT_EQ(got.size(), 3u);
    EXPECT_TRUE(f.dispatch(w, 10).empty());
    ASSERT_EQ(llmos_core_complete(&f.s, w, got[0], 0, 1, 0, 0, f.now), 0);
    EXPECT_EQ(f.dispatch(w, 10).size(), 1u);
    EXPECT_EQ(f.s.stats.nr[LLMOS_REQ_DISPATCHED], 3u);
    EXPECT_EQ(f.s.stats.nr[LLMOS_REQ_QUEUED], 6u);
}

TEST(sched_core, lifecycle_rejects_illegal_transitions) {
    fixture f;
    auto* w = f.worker(4);
    auto* other = f.worker(4);
    auto* r = f.submit(1);
    EXPECT_EQ(llmos_core_start(&f.s, w, r, f.now), -ESRCH);                // queued
    EXPECT_EQ(llmos_core_complete(&f.s, w, r, 0, 1, 0, 0, f.now), -ESRCH); // queued
    EXPECT_EQ(llmos_core_release(&f.s, r), -EBUSY);
    ASSERT_EQ(f.dispatch(w, 1).size(), 1u);
    EXPECT_EQ(r->state, LLMOS_REQ_DISPATCHED);
    EXPECT_EQ(llmos_core_start(&f.s, other, r, f.now), -ESRCH); // not its worker
    EXPECT_EQ(llmos_core_complete(&f.s, other, r, 0, 1, 0, 0, f.now), -ESRCH);
    EXPECT_EQ(llmos_core_start(&f.s, w, r, f.now), 0);
    EXPECT_EQ(r->state, LLMOS_REQ_RUNNING);
    EXPECT_EQ(llmos_core_start(&f.s, w, r, f.now), -EINVAL); // already running
    EXPECT_EQ(llmos_core_complete(&f.s, w, r, 0, 42, 4096, 100, f.now), 0);
    EXPECT_EQ(r->state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(r->tokens, 42u);
    EXPECT_EQ(llmos_core_complete(&f.s, w, r, 0, 1, 0, 0, f.now), -ESRCH); // twice
    EXPECT_EQ(llmos_core_cancel(&f.s, r, f.now), -EALREADY);
    EXPECT_EQ(llmos_core_release(&f.s, r), 0);
    EXPECT_EQ(llmos_core_find(&f.s, r->id), nullptr);
    // A failure is final too.
    auto* bad = f.submit(1);
    ASSERT_EQ(f.dispatch(w, 1).size(), 1u);
    EXPECT_EQ(llmos_core_complete(&f.s, w, bad, -5, 0, 0, 0, f.now), 0);
    EXPECT_EQ(bad->state, LLMOS_REQ_FAILED);
    EXPECT_EQ(llmos_core_cancel(&f.s, bad, f.now), -EALREADY);
}

TEST(sched_core, cancel_works_in_every_unfinished_state) {
    fixture f;
    auto* w = f.worker(8);
    auto* queued = f.submit(1);
    auto* dispatched = f.submit(1);
    auto* running = f.submit(1);
    auto got = f.dispatch(w, 2);
    ASSERT_EQ(got.size(), 2u); // the first two: queued, dispatched
    // Swap roles: cancel one of the dispatched ones, start the other.
    ASSERT_EQ(got[0], queued);
    ASSERT_EQ(llmos_core_start(&f.s, w, dispatched, f.now), 0);
    EXPECT_EQ(llmos_core_cancel(&f.s, queued, f.now), 0);     // dispatched
    EXPECT_EQ(llmos_core_cancel(&f.s, dispatched, f.now), 0); // running
    EXPECT_EQ(llmos_core_cancel(&f.s, running, f.now), 0);    // queued
    for (auto* r : {queued, dispatched, running}) {
        EXPECT_EQ(r->state, LLMOS_REQ_CANCELLED);
    }
    EXPECT_EQ(llmos_core_queued(&f.s), 0u);
    EXPECT_EQ(w->inflight.nr, 0u);
    EXPECT_TRUE(f.dispatch(w, 8).empty());
    EXPECT_EQ(f.s.stats.cancelled, 3u);
}

// A request handed back unserved does not cost its tenant twice: equal
// tenants alternate as if it had never been taken.
TEST(sched_core, a_request_given_back_is_not_charged_to_its_tenant_twice) {
    fixture f;
    auto* w = f.worker(1);
    std::vector<llmos_core_req*> a, b;
    for (int i = 0; i < 4; ++i) {
        a.push_back(f.submit(1, 0, 10));
        b.push_back(f.submit(2, 0, 10));
    }
    auto got = f.dispatch(w, 1);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_EQ(got[0], a[0]); // tenant 1 first (a tie: lower id)
    const uint64_t before = llmos_core_tenant_find(&f.s, 1)->vtime;
    ASSERT_EQ(llmos_core_give_back(&f.s, w, got[0]), 0);
    EXPECT_LT(llmos_core_tenant_find(&f.s, 1)->vtime, before) << "refunded";
    // Tenant 1 is as if never served: its request comes first again, then
    // the two alternate.
    std::vector<llmos_core_req*> order;
    for (int i = 0; i < 8; ++i) {
        auto one = f.dispatch(w, 1);
        ASSERT_EQ(one.size(), 1u);
        order.push_back(one[0]);
        EXPECT_EQ(llmos_core_complete(&f.s, w, one[0], 0, 10, 0, 0, f.now), 0);
    }
    EXPECT_EQ(order,
              (std::vector<llmos_core_req*>{a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]}));
    EXPECT_EQ(a[0]->requeues, 0u);
    // Dispatched twice, served once.
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 1)->served_reqs, 4u);
    EXPECT_EQ(llmos_core_tenant_find(&f.s, 2)->served_reqs, 4u);
}

TEST(sched_core, a_vanished_workers_requests_go_back_to_the_front_in_order) {
    fixture f;
    auto* w = f.worker(3);
    std::vector<llmos_core_req*> first;
    for (int i = 0; i < 3; ++i) {
        first.push_back(f.submit(1));
    }
    auto* later = f.submit(1, 200); // high priority, but submitted later
    auto got = f.dispatch(w, 3);
    ASSERT_EQ(got.size(), 2u + 1u);
    // dispatch took the high-priority one first; hand back everything.
    EXPECT_EQ(llmos_core_start(&f.s, w, got[0], f.now), 0);
    EXPECT_EQ(llmos_core_worker_remove(&f.s, w), 3u);
    EXPECT_EQ(f.s.stats.requeued, 3u);
    auto* w2 = f.worker(10);
    auto again = f.dispatch(w2, 10);
    ASSERT_EQ(again.size(), 4u);
    // The three it held come back first, in submission order.
    std::vector<llmos_core_req*> held(got.begin(), got.end());
    std::sort(held.begin(), held.end(), [](auto* a, auto* b) { return a->seq < b->seq; });
    EXPECT_EQ(std::vector<llmos_core_req*>(again.begin(), again.begin() + 3), held);
    for (auto* r : again) {
        EXPECT_EQ(llmos_core_complete(&f.s, w2, r, 0, 1, 0, 0, f.now), 0);
    }
    EXPECT_EQ(f.s.stats.completed, 4u);
    EXPECT_EQ(later->requeues + first[0]->requeues + first[1]->requeues + first[2]->requeues, 3u);
}

TEST(sched_core, dispatch_latency_histogram_counts_first_dispatches) {
    fixture f;
    auto* w = f.worker(1);
    auto* r = f.submit(1);
    f.now += 5000; // ~5 us
    ASSERT_EQ(f.dispatch(w, 1).size(), 1u);
    uint64_t total = 0;
    for (auto c : f.s.stats.lat_hist) {
        total += c;
    }
    EXPECT_EQ(total, 1u);
    EXPECT_EQ(f.s.stats.lat_hist[2], 1u); // 4..8 us
    (void)r;
}

// The dispatch time is that of the worker holding the request: none once it
// is back in its queue, so a request cancelled there reports 0 (no worker
// will write for it) even though a worker had it once; and a request
// dispatched again is counted (latency, tenant service) once.
TEST(sched_core, a_requeued_request_has_no_dispatch_time_until_dispatched_again) {
    fixture f;
    auto* a = f.worker(1);
    auto* r = f.submit(1);
    ASSERT_EQ(f.dispatch(a, 1).size(), 1u);
    EXPECT_NE(r->t_dispatch, 0u);
    EXPECT_EQ(llmos_core_worker_remove(&f.s, a), 1u); // its worker vanished
    EXPECT_EQ(r->state, LLMOS_REQ_QUEUED);
    EXPECT_EQ(r->t_dispatch, 0u);
    auto* b = f.worker(1);
    f.now += 100;
    ASSERT_EQ(f.dispatch(b, 1).size(), 1u);
    EXPECT_EQ(r->t_dispatch, f.now - 1);
    EXPECT_EQ(llmos_core_give_back(&f.s, b, r), 0); // handed back this time
    EXPECT_EQ(r->t_dispatch, 0u);
    EXPECT_EQ(llmos_core_cancel(&f.s, r, f.now++), 0);
    EXPECT_EQ(r->state, LLMOS_REQ_CANCELLED);
    EXPECT_EQ(r->t_dispatch, 0u);
    uint64_t total = 0;
    for (auto c : f.s.stats.lat_hist) {
        total += c;
    }
    EXPECT_EQ(total, 1u);
    auto* t = llmos_core_tenant_find(&f.s, 1);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->served_reqs, 1u);
    // Cancelled while a worker holds it, it keeps that worker's time.
    auto* c = f.submit(1);
    ASSERT_EQ(f.dispatch(b, 1).size(), 1u);
    const uint64_t took = c->t_dispatch;
    EXPECT_NE(took, 0u);
    EXPECT_EQ(llmos_core_cancel(&f.s, c, f.now++), 0);
    EXPECT_EQ(c->t_dispatch, took);
}

// Randomized: the core against a reference that tracks who holds what.
TEST(sched_core, randomized_against_a_reference_model) {
    fixture f;
    std::mt19937 rng(12345);
    std::map<uint64_t, llmos_core_req*> live; // not finished
    std::map<uint64_t, int> completions;      // id -> times completed
    std::map<uint64_t, llmos_core_worker*> holder;
    // Per tenant: what the reference says comes next, ordered by
    // (requeued ? 0 : 256 - prio, submission sequence).
    using qkey = std::tuple<uint64_t, uint64_t, uint64_t>; // k1, seq, id
    std::map<uint32_t, std::set<qkey>> queued;
    std::map<uint64_t, qkey> key_of;
    auto enqueue = [&](llmos_core_req* r, bool requeued) {
        qkey k{requeued ? 0 : 256 - r->prio, r->seq, r->id};
        queued[r->tenant].insert(k);
        key_of[r->id] = k;
    };
    auto dequeue = [&](llmos_core_req* r) {
        queued[r->tenant].erase(key_of[r->id]);
        key_of.erase(r->id);
    };
    std::vector<llmos_core_worker*> workers{f.worker(1), f.worker(4), f.worker(16)};
    uint64_t submitted = 0, finished = 0;
    for (int step = 0; step < 50000; ++step) {
        int op = static_cast<int>(rng() % 100);
        if (op < 35) {
            auto* r = f.submit(rng() % 5, static_cast<uint8_t>(rng() % 3), 1 + rng() % 10);
            live[r->id] = r;
            enqueue(r, false);
            ++submitted;
        } else if (op < 60) {
            auto* w = workers[rng() % workers.size()];
            uint32_t before = w->inflight.nr;
            auto got = f.dispatch(w, 1 + rng() % 8);
            ASSERT_LE(before + got.size(), w->capacity);
            for (auto* r : got) {
                ASSERT_TRUE(live.count(r->id));
                ASSERT_FALSE(holder.count(r->id)) << "dispatched twice";
                // The head of its tenant's queue, as the reference orders it.
                ASSERT_EQ(std::get<2>(*queued[r->tenant].begin()), r->id);
                dequeue(r);
                holder[r->id] = w;
            }
        } else if (op < 85 && !holder.empty()) {
            auto it = std::next(holder.begin(), rng() % holder.size());
            auto* r = live[it->first];
            if (rng() % 3 == 0 && r->state == LLMOS_REQ_DISPATCHED) {
                ASSERT_EQ(llmos_core_start(&f.s, it->second, r, f.now), 0);
                continue;
            }
            ASSERT_EQ(llmos_core_complete(&f.s, it->second, r, 0, 1, 0, 0, f.now), 0);
            completions[r->id]++;
            holder.erase(it);
            live.erase(r->id);
            ++finished;
        } else if (op < 90 && !live.empty()) {
            auto it = std::next(live.begin(), rng() % live.size());
            ASSERT_EQ(llmos_core_cancel(&f.s, it->second, f.now), 0);
            if (!holder.erase(it->first)) {
                dequeue(it->second);
            }
            live.erase(it);
            ++finished;
        } else if (op < 92) {
            // A worker vanishes; a new one takes its place.
            size_t i = rng() % workers.size();
            uint32_t held = 0;
            for (auto& [id, w] : holder) {
                held += w == workers[i];
            }
            ASSERT_EQ(llmos_core_worker_remove(&f.s, workers[i]), held);
            for (auto it = holder.begin(); it != holder.end();) {
                if (it->second == workers[i]) {
                    enqueue(live[it->first], true);
                    it = holder.erase(it);
                } else {
                    ++it;
                }
            }
            workers[i] = f.worker(1 + rng() % 16);
        } else if (op < 94) {
            f.weight(rng() % 5, 1 + rng() % 1000);
        }
        // Invariants.
        ASSERT_EQ(f.s.stats.nr[LLMOS_REQ_QUEUED] + f.s.stats.nr[LLMOS_REQ_DISPATCHED] +
                      f.s.stats.nr[LLMOS_REQ_RUNNING],
                  live.size());
        ASSERT_EQ(f.s.stats.nr[LLMOS_REQ_DISPATCHED] + f.s.stats.nr[LLMOS_REQ_RUNNING],
                  holder.size());
    }
    // Drain: everything left completes exactly once.
    auto* w = f.worker(1000);
    for (auto& [id, r] : live) {
        if (holder.count(id)) {
            ASSERT_EQ(llmos_core_complete(&f.s, holder[id], r, 0, 1, 0, 0, f.now), 0);
            completions[id]++;
        }
    }
    for (;;) {
        auto got = f.dispatch(w, 1000);
        if (got.empty()) {
            break;
        }
        for (auto* r : got) {
            ASSERT_EQ(llmos_core_complete(&f.s, w, r, 0, 1, 0, 0, f.now), 0);
            completions[r->id]++;
        }
    }
    for (auto& [id, n] : completions) {
        ASSERT_EQ(n, 1) << "request " << id;
    }
    EXPECT_EQ(f.s.stats.nr[LLMOS_REQ_QUEUED], 0u);
    EXPECT_EQ(f.s.stats.completed + f.s.stats.cancelled, submitted);
    (void)finished;
}

} // namespace
