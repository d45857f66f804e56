// SPDX-License-Identifier: MIT
//
// Message passing between two threads, measured in one run, on two cores
// and again on one core: round trip (median, p99) and one-way throughput of
// the runtime channel against an SPSC ring polled without end (the physical
// limit), the same ring always sleeping on a futex, eventfd and a pipe. And
// the cost of waking a receiver that sleeps: the channel against a bare
// futex wake.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <liburing.h>
#include <llmos/channel.hh>
#include <llmos/event_loop.hh>
#include <memory>
#include <pthread.h>
#include <span>
#include <sys/eventfd.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;
using llmos::descriptor;

void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

struct result {
    double median_us, p99_us, mps;
};

// A transport: ping and pong directions; each call moves one message.
struct transport {
    std::function<void()> send_ping, recv_ping, send_pong, recv_pong;
};

result measure(transport& t, int rtts, int one_way, int cpu_a, int cpu_b) {
    std::vector<double> lat(rtts);
    std::thread echo([&] {
        pin(cpu_b);
        for (int i = 0; i < rtts; ++i) {
            t.recv_ping();
            t.send_pong();
        }
        for (int i = 0; i < one_way; ++i) {
            t.recv_ping();
        }
        t.send_pong();
    });
    pin(cpu_a);
    for (int i = 0; i < rtts; ++i) {
        auto t0 = clk::now();
        t.send_ping();
        t.recv_pong();
        lat[i] = std::chrono::duration<double, std::micro>(clk::now() - t0).count();
    }
    auto t0 = clk::now();
    for (int i = 0; i < one_way; ++i) {
        t.send_ping();
    }
    t.recv_pong();
    double secs = std::chrono::duration<double>(clk::now() - t0).count();
    echo.join();
    std::sort(lat.begin(), lat.end());
    return {lat[lat.size() / 2], lat[lat.size() * 99 / 100], one_way / secs};
}

struct ring_pair {
    std::unique_ptr<llmos::channel_ring<1024>> a = std::make_unique<llmos::channel_ring<1024>>();
    std::unique_ptr<llmos::channel_ring<1024>> b = std::make_unique<llmos::channel_ring<1024>>();
    llmos::channel_sender<1024> ta{*a}, tb{*b};
    llmos::channel_receiver<1024> ra, rb;
    ring_pair(uint32_t spin)
        : ra(*a, spin)
        , rb(*b, spin) {}
};

transport channel_transport(ring_pair& p, bool poll_forever) {
    auto recv = [poll_forever](llmos::channel_receiver<1024>& r) {
        descriptor d[1];
        if (poll_forever) {
            while (!r.try_receive(d)) {
            }
        } else {
            r.receive(d);
        }
    };
    return {[&p] {
                p.ta.send({1, 0, 0, 0});
            },
            [&p, recv] { recv(p.ra); },
            [&p] {
                p.tb.send({2, 0, 0, 0});
            },
            [&p, recv] { recv(p.rb); }};
}

transport fd_transport(int ping_w, int ping_r, int pong_w, int pong_r, bool eventfd) {
    auto snd = [eventfd](int fd) {
        uint64_t v = 1;
        if (::write(fd, &v, eventfd ? 8 : 1) < 0) {
            std::abort();
        }
    };
    auto rcv = [eventfd](int fd) {
        uint64_t v;
        if (::read(fd, &v, eventfd ? 8 : 1) < 0) {
            std::abort();
        }
    };
    return {[=] { snd(ping_w); }, [=] { rcv(ping_r); }, [=] { snd(pong_w); }, [=] { rcv(pong_r); }};
}

// Each side runs an event loop; the rings feed the loops as sources and
// the senders ring the peer loop's doorbell (futex or MSG_RING).
struct loop_pair {
    std::unique_ptr<llmos::event_loop> la, lb;
    std::unique_ptr<llmos::channel_ring<1024>> ping = std::make_unique<llmos::channel_ring<1024>>();
    std::unique_ptr<llmos::channel_ring<1024>> pong = std::make_unique<llmos::channel_ring<1024>>();
    uint64_t got_a = 0, got_b = 0, seen_a = 0, seen_b = 0;
    std::function<void(std::span<const descriptor>)> ha = [this](std::span<const descriptor> d) {
        got_a += d.size();
    };
    std::function<void(std::span<const descriptor>)> hb = [this](std::span<const descriptor> d) {
        got_b += d.size();
    };
    using source = llmos::channel_source<1024, std::function<void(std::span<const descriptor>)>>;
    std::unique_ptr<source> sa, sb;
    std::unique_ptr<llmos::channel_sender<1024>> ta, tb;

    explicit loop_pair(llmos::doorbell_kind k) {
        la = llmos::event_loop::create({.bell = k}).value();
        lb = llmos::event_loop::create({.bell = k}).value();
        sa = std::make_unique<source>(*pong, ha);
        sb = std::make_unique<source>(*ping, hb);
        la->add_source(*sa);
        lb->add_source(*sb);
        ta = std::make_unique<llmos::channel_sender<1024>>(*ping, lb->bell(), la.get());
        tb = std::make_unique<llmos::channel_sender<1024>>(*pong, la->bell(), lb.get());
    }
};

transport loop_transport(loop_pair& p) {
    auto recv = [](llmos::event_loop& l, uint64_t& got, uint64_t& seen) {
        while (got == seen) {
            l.run_once();
        }
        ++seen;
    };
    return {[&p] {
                p.ta->send({1, 0, 0, 0});
            },
            [&p, recv] { recv(*p.lb, p.got_b, p.seen_b); },
            [&p] {
                p.tb->send({2, 0, 0, 0});
            },
            [&p, recv] { recv(*p.la, p.got_a, p.seen_a); }};
}

// IORING_OP_MSG_RING per message, the receiver blocking in wait_cqe.
struct msg_ring_pair {
    io_uring a{}, b{};
    msg_ring_pair() {
        if (io_uring_queue_init(256, &a, 0) || io_uring_queue_init(256, &b, 0)) {
            std::abort();
        }
    }
    ~msg_ring_pair() {
        io_uring_queue_exit(&a);
        io_uring_queue_exit(&b);
    }
};

transport msg_ring_transport(msg_ring_pair& p) {
    auto snd = [](io_uring* from, io_uring* to) {
        io_uring_sqe* sqe = io_uring_get_sqe(from);
        io_uring_prep_msg_ring(sqe, to->ring_fd, 0, 1, 0);
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
        io_uring_submit(from);
    };
    auto rcv = [](io_uring* r) {
        io_uring_cqe* cqe;
        if (io_uring_wait_cqe(r, &cqe)) {
            std::abort();
        }
        io_uring_cqe_seen(r, cqe);
    };
    return {[&p, snd] { snd(&p.a, &p.b); }, [&p, rcv] { rcv(&p.b); },
            [&p, snd] { snd(&p.b, &p.a); }, [&p, rcv] { rcv(&p.a); }};
}

void row(const char* name, const result& r, const result& base) {
    std::printf("  %-28s %9.2f %9.2f %13.0f %8.2f %8.2f\n", name, r.median_us, r.p99_us, r.mps,
                r.median_us / base.median_us, r.mps / base.mps);
}

// Wake a receiver that is already asleep: time from send to its return.
enum class waker { bare_futex, channel, loop_futex, loop_msg_ring };

double wake_cost_us(waker how, int rounds) {
    std::atomic<uint32_t> word{0};
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    std::unique_ptr<llmos::event_loop> loop, own;
    if (how == waker::loop_futex || how == waker::loop_msg_ring) {
        auto k =
            how == waker::loop_futex ? llmos::doorbell_kind::futex : llmos::doorbell_kind::msg_ring;
        loop = llmos::event_loop::create({.bell = k, .spin = 0}).value();
        own = llmos::event_loop::create({.bell = k, .spin = 0}).value();
    }
    auto tx = loop ? llmos::channel_sender<16>(*ring, loop->bell(), own.get())
                   : llmos::channel_sender<16>(*ring);
    std::atomic<int64_t> sent_ns{0};
    std::atomic<int> n_got{0};
    std::vector<double> got(rounds);
    std::thread rcv([&] {
        pin(1);
        llmos::channel_receiver<16> rx(*ring, 0);
        uint64_t seen = 0, count = 0;
        auto h = [&](std::span<const descriptor> d) { count += d.size(); };
        llmos::channel_source<16, decltype(h)> src(*ring, h);
        if (loop) {
            loop->add_source(src);
        }
        descriptor d[1];
        for (int i = 0; i < rounds; ++i) {
            if (loop) {
                while (count == seen) {
                    loop->run_once();
                }
                ++seen;
            } else if (how == waker::channel) {
                rx.receive(d);
            } else {
                while (word.load() == 0) {
                    llmos::detail::futex_wait(word, 0, std::nullopt);
                }
                word.store(0);
            }
            auto now = clk::now().time_since_epoch().count();
            got[i] = static_cast<double>(now - sent_ns.load()) / 1000.0;
            n_got.store(i + 1);
        }
    });
    pin(0);
    for (int i = 0; i < rounds; ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(300)); // it is asleep
        sent_ns = clk::now().time_since_epoch().count();
        if (how == waker::bare_futex) {
            word.store(1);
            llmos::detail::futex_wake(word);
        } else {
            tx.send({1, 0, 0, 0});
        }
        while (n_got.load() <= i) {
            std::this_thread::yield();
        }
    }
    rcv.join();
    std::sort(got.begin(), got.end());
    return got[got.size() / 2];
}

// CPU a receiver burns while nothing comes: one message, then 300 ms of
// nothing; its thread's CPU time over that time, in % of one core.
double idle_cpu_percent(bool loop) {
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    auto l = llmos::event_loop::create({}).value();
    std::atomic<bool> stop{false};
    std::atomic<double> pct{0};
    std::thread rcv([&] {
        pin(1);
        uint64_t count = 0;
        auto h = [&](std::span<const descriptor> d) { count += d.size(); };
        llmos::channel_source<16, decltype(h)> src(*ring, h);
        llmos::channel_receiver<16> rx(*ring);
        if (loop) {
            l->add_source(src);
        }
        descriptor d[1];
        auto cpu = [] {
            timespec ts{};
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
            return ts.tv_sec * 1e9 + ts.tv_nsec;
        };
        double c0 = 0;
        auto t0 = clk::now();
        bool first = true;
        while (!stop) {
            if (loop) {
                l->run_once();
            } else {
                rx.receive(d);
            }
            if (first) {
                first = false;
                c0 = cpu();
                t0 = clk::now();
            }
        }
        double wall = std::chrono::duration<double, std::nano>(clk::now() - t0).count();
        pct = 100.0 * (cpu() - c0) / wall;
    });
    pin(0);
    llmos::channel_sender<16> tx =
        loop ? llmos::channel_sender<16>(*ring, l->bell()) : llmos::channel_sender<16>(*ring);
    tx.send({1, 0, 0, 0});
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    stop = true;
    tx.send({2, 0, 0, 0}); // wakes it to see `stop`
    rcv.join();
    return pct;
}

} // namespace

int main(int argc, char** argv) {
    int rtts = argc > 1 ? std::atoi(argv[1]) : 100000;
    for (auto [a, b, where] : {std::tuple{0, 1, "two cores"}, std::tuple{0, 0, "one core"}}) {
        int n = a == b ? rtts / 20 : rtts; // one core: every hop is a switch
        std::printf("# channel_bench, %s: %d round trips, %d one-way messages\n", where, n, n * 10);
        std::printf("# %-28s %9s %9s %13s %8s %8s\n", "transport", "rtt p50", "rtt p99", "msgs/s",
                    "rtt x", "tput x");
        ring_pair poll(0), runtime(4000), sleepy(0);
        auto tp = channel_transport(poll, true);
        // On one core a poller spins until preempted: a few hops show it.
        int pn = a == b ? 50 : n;
        auto base = measure(tp, pn, pn * 10, a, b);
        row("spsc busy-poll (limit)", base, base);
        auto tr = channel_transport(runtime, false);
        row("llmos channel (spin+futex)", measure(tr, n, n * 10, a, b), base);
        loop_pair lf(llmos::doorbell_kind::futex), lm(llmos::doorbell_kind::msg_ring);
        auto tlf = loop_transport(lf);
        row("loop, futex doorbell", measure(tlf, n, n * 10, a, b), base);
        auto tlm = loop_transport(lm);
        row("loop, MSG_RING doorbell", measure(tlm, n, n * 10, a, b), base);
        auto ts = channel_transport(sleepy, false);
        row("spsc + futex, no spin", measure(ts, n, n * 10, a, b), base);
        int e1 = eventfd(0, EFD_SEMAPHORE), e2 = eventfd(0, EFD_SEMAPHORE);
        auto te = fd_transport(e1, e1, e2, e2, true);
        row("eventfd", measure(te, n / 4, n, a, b), base);
        int p1[2], p2[2];
        if (pipe(p1) || pipe(p2)) {
            return 1;
        }
        auto tpipe = fd_transport(p1[1], p1[0], p2[1], p2[0], false);
        row("pipe", measure(tpipe, n / 4, n, a, b), base);
        msg_ring_pair mr;
        auto tmr = msg_ring_transport(mr);
        row("MSG_RING per message", measure(tmr, n / 4, n, a, b), base);
        close(e1);
        close(e2);
        for (int fd : {p1[0], p1[1], p2[0], p2[1]}) {
            close(fd);
        }
    }
    double bare = wake_cost_us(waker::bare_futex, 2000);
    double chan = wake_cost_us(waker::channel, 2000);
    double lfut = wake_cost_us(waker::loop_futex, 2000);
    double lmsg = wake_cost_us(waker::loop_msg_ring, 2000);
    std::printf("# waking a sleeping receiver (two cores, median): bare futex %.2f us, "
                "channel %.2f us (%.2fx), loop+futex doorbell %.2f us (%.2fx), "
                "loop+MSG_RING doorbell %.2f us (%.2fx)\n",
                bare, chan, chan / bare, lfut, lfut / bare, lmsg, lmsg / bare);
    std::printf("# idle CPU once the spin window ends (300 ms without messages): channel "
                "receiver %.2f%% of a core, event loop %.2f%%\n",
                idle_cpu_percent(false), idle_cpu_percent(true));
    return 0;
}
