// SPDX-License-Identifier: MIT
//
// llmosd in a child process, for the end-to-end tests and the load bench:
// started with the local backend in a state directory of its own, on
// loopback (any free port, read back from --port-file) or on a unix
// socket; its stderr goes to DIR/log; SIGTERM and a wait when it goes.
#pragma once

#include <algorithm>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <httplib.h>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace llmos::testing {

class llmosd_process {
public:
    std::string dir;       ///< state: ms/ (the local backend), port, log
    std::string unix_path; ///< empty: loopback
    pid_t pid = -1;
    int port = 0; ///< 0 until it listens (loopback)

    /// Runs `program` (llmosd) with "--backend local", then `args`, then
    /// where to listen (127.0.0.1 unless `args` has --listen); returns once it answers, or after
    /// `wait` (port then stays 0 and ready() false: the caller asserts and shows log()).
    llmosd_process(const std::string& program, std::string state, std::vector<std::string> args,
                   std::string unix_sock = {},
                   std::chrono::milliseconds wait = std::chrono::seconds(60))
        : dir(std::move(state))
        , unix_path(std::move(unix_sock)) {
        std::filesystem::create_directories(dir);
        std::filesystem::remove(dir + "/port");
        args.insert(args.begin(), {program, "--backend", "local"});
        if (unix_path.empty()) {
            // On 127.0.0.1 unless `args` name another address (whose port
            // 0 is reached on 127.0.0.1 too: a wildcard one).
            if (std::find(args.begin(), args.end(), "--listen") == args.end()) {
                args.insert(args.end(), {"--listen", "127.0.0.1:0"});
            }
            args.insert(args.end(), {"--port-file", dir + "/port"});
        } else {
            args.insert(args.end(), {"--unix", unix_path});
        }
        pid = ::fork();
        if (pid == 0) {
            ::setenv("LLMOS_LOCAL_DIR", (dir + "/ms").c_str(), 1);
            std::vector<char*> argv;
            for (auto& a : args) {
                argv.push_back(a.data());
            }
            argv.push_back(nullptr);
            int log = ::open((dir + "/log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            ::dup2(log, 2);
            ::execv(program.c_str(), argv.data());
            ::_exit(127);
        }
        const auto until = std::chrono::steady_clock::now() + wait;
        while (!ready() && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    llmosd_process(const llmosd_process&) = delete;
    llmosd_process& operator=(const llmosd_process&) = delete;
    ~llmosd_process() { stop(); }

    /// Listening: its port file names a port, or its unix socket answers
    /// /health (the socket exists before it accepts).
    bool ready() {
        if (!unix_path.empty()) {
            if (!std::filesystem::exists(unix_path)) {
                return false;
            }
            httplib::Client c(unix_path, 80);
            c.set_address_family(AF_UNIX);
            auto r = c.Get("/health");
            return r && r->status == 200;
        }
        if (!port) {
            std::ifstream in(dir + "/port");
            in >> port;
        }
        return port > 0;
    }
    /// A client of its loopback port (60 s read timeout).
    httplib::Client client() const {
        httplib::Client c("127.0.0.1", port);
        c.set_read_timeout(60, 0);
        return c;
    }
    /// SIGTERM and wait; the exit status (128 + signal when killed).
    int stop() {
        if (pid <= 0) {
            return -1;
        }
        ::kill(pid, SIGTERM);
        int st = 0;
        ::waitpid(pid, &st, 0);
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    /// Waits up to `limit` for it to exit by itself: its exit status (128 +
    /// signal when killed), or -1 if it still runs.
    int wait_exit(std::chrono::milliseconds limit) {
        const auto until = std::chrono::steady_clock::now() + limit;
        while (pid > 0) {
            int st = 0;
            if (::waitpid(pid, &st, WNOHANG) == pid) {
                pid = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
            if (std::chrono::steady_clock::now() >= until) {
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return -1;
    }
    /// What it wrote to stderr.
    std::string log() const {
        std::ifstream in(dir + "/log");
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    }
};

} // namespace llmos::testing
