// SPDX-License-Identifier: MIT
//
// The scheduler core as the local backend runs it, natively: requests/s
// through submit -> dispatch -> complete -> release on one core, under a
// mutex as the local backend takes one, with a no-op worker. Two shapes:
// one request at a time, and batches of 32. The baseline, measured in the
// same run: the same round trip through a plain FIFO (a deque of pointers
// under the same mutex), which has no tenants, weights or states. The
// end says what the core costs as a ratio of the two.
#include <benchmark/benchmark.h>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

extern "C" {
#include "llmos_core.h"
}

namespace {

struct bench_sched {
    llmos_core_sched s;
    llmos_core_worker w{};
    std::vector<llmos_core_tenant> tenants;
    std::mutex lock;
    uint64_t now = 1;

    explicit bench_sched(uint32_t capacity)
        : tenants(4) {
        llmos_core_init(&s);
        w.capacity = capacity;
        llmos_core_worker_add(&s, &w);
        for (uint32_t t = 0; t < tenants.size(); ++t) {
            auto* spare = &tenants[t];
            llmos_core_set_weight(&s, t, 100, &spare);
        }
    }
    ~bench_sched() {
        llmos_core_worker_remove(&s, &w);
        while (llmos_core_tenant_pop(&s)) {
        }
    }
};

void sched_core_round_trip(benchmark::State& state) {
    const auto batch = static_cast<uint32_t>(state.range(0));
    bench_sched b(batch);
    std::vector<llmos_core_req> reqs(batch);
    std::vector<llmos_core_req*> out(batch);
    for (auto _ : state) {
        {
            std::lock_guard g(b.lock);
            for (uint32_t i = 0; i < batch; ++i) {
                reqs[i].tenant = i % 4;
                reqs[i].cost = 1;
                llmos_core_submit(&b.s, &reqs[i], nullptr, b.now++);
            }
        }
        uint32_t n;
        {
            std::lock_guard g(b.lock);
            n = llmos_core_dispatch(&b.s, &b.w, out.data(), batch, b.now++);
        }
        {
            std::lock_guard g(b.lock);
            for (uint32_t i = 0; i < n; ++i) {
                llmos_core_complete(&b.s, &b.w, out[i], 0, 1, 0, 0, b.now);
                llmos_core_release(&b.s, out[i]);
            }
        }
        benchmark::DoNotOptimize(n);
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
    state.counters["requests/s"] = benchmark::Counter(
        static_cast<double>(state.iterations()) * batch, benchmark::Counter::kIsRate);
}

BENCHMARK(sched_core_round_trip)->Arg(1)->Arg(32);

// The baseline: the same round trip through a FIFO of pointers.
void fifo_round_trip(benchmark::State& state) {
    const auto batch = static_cast<uint32_t>(state.range(0));
    std::deque<llmos_core_req*> q;
    std::mutex lock;
    std::vector<llmos_core_req> reqs(batch);
    std::vector<llmos_core_req*> out(batch);
    for (auto _ : state) {
        {
            std::lock_guard g(lock);
            for (uint32_t i = 0; i < batch; ++i) {
                reqs[i].tenant = i % 4;
                reqs[i].cost = 1;
                q.push_back(&reqs[i]);
            }
        }
        uint32_t n = 0;
        {
            std::lock_guard g(lock);
            while (n < batch && !q.empty()) {
                out[n++] = q.front();
                q.pop_front();
            }
        }
        {
            std::lock_guard g(lock);
            for (uint32_t i = 0; i < n; ++i) {
                out[i]->state = LLMOS_REQ_COMPLETED;
            }
        }
        benchmark::DoNotOptimize(out.data());
        benchmark::DoNotOptimize(n);
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
    state.counters["requests/s"] = benchmark::Counter(
        static_cast<double>(state.iterations()) * batch, benchmark::Counter::kIsRate);
}

BENCHMARK(fifo_round_trip)->Arg(1)->Arg(32);

// Prints as usual, and keeps each run's requests/s for the ratios.
class rates : public benchmark::ConsoleReporter {
public:
    std::map<std::string, double> rate;
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const Run& r : runs) {
            auto it = r.counters.find("requests/s");
            if (it != r.counters.end() && r.run_type == Run::RT_Iteration) {
                rate[r.benchmark_name()] = it->second.value;
            }
        }
        ConsoleReporter::ReportRuns(runs);
    }
};

} // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    rates r;
    benchmark::RunSpecifiedBenchmarks(&r);
    for (const char* batch : {"1", "32"}) {
        const double core = r.rate["sched_core_round_trip/" + std::string(batch)];
        const double fifo = r.rate["fifo_round_trip/" + std::string(batch)];
        if (core > 0 && fifo > 0) {
            std::printf("sched_core_bench: batch %s: the core runs a request at %.2fx the "
                        "plain FIFO's time (%.0f vs %.0f requests/s)\n",
                        batch, fifo / core, core, fifo);
        }
    }
    benchmark::Shutdown();
    return 0;
}
