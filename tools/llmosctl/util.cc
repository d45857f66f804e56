// SPDX-License-Identifier: MIT
#include "util.hh"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <unistd.h>
#include <vector>

namespace llmosctl {

std::optional<uint64_t> parse_size(std::string_view s, bool suffixes) {
    uint64_t v = 0;
    size_t i = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
        uint64_t d = static_cast<uint64_t>(s[i] - '0');
        if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) {
            return std::nullopt;
        }
        v = v * 10 + d;
    }
    if (i == 0) {
        return std::nullopt;
    }
    auto rest = s.substr(i);
    if (rest.empty()) {
        return v;
    }
    if (!suffixes) {
        return std::nullopt;
    }
    unsigned shift = 0;
    switch (rest[0]) {
    case 'K':
    case 'k':
        shift = 10;
        break;
    case 'M':
    case 'm':
        shift = 20;
        break;
    case 'G':
    case 'g':
        shift = 30;
        break;
    case 'T':
    case 't':
        shift = 40;
        break;
    default:
        return std::nullopt;
    }
    rest.remove_prefix(1);
    if (!rest.empty() && rest != "B" && rest != "iB") {
        return std::nullopt;
    }
    if (v > (std::numeric_limits<uint64_t>::max() >> shift)) {
        return std::nullopt;
    }
    return v << shift;
}

std::string format_size(uint64_t bytes) {
    static constexpr const char* units[] = {"", "K", "M", "G", "T", "P", "E"};
    unsigned u = 0;
    double v = static_cast<double>(bytes);
    while (v >= 1024 && u + 1 < std::size(units)) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0) {
        std::snprintf(buf, sizeof(buf), "%llu", static_cast<unsigned long long>(bytes));
    } else if (v == static_cast<double>(static_cast<uint64_t>(v))) {
        std::snprintf(buf, sizeof(buf), "%llu%s", static_cast<unsigned long long>(v), units[u]);
    } else {
        std::snprintf(buf, sizeof(buf), "%.1f%s", v, units[u]);
    }
    return buf;
}

std::optional<uint32_t> parse_mode(std::string_view s) {
    if (s.empty()) {
        return 0;
    }
    // Leading zeros are octal's, as many as chmod takes ("00640").
    while (s.size() > 1 && s[0] == '0') {
        s.remove_prefix(1);
    }
    if (s.size() > 3) {
        return std::nullopt;
    }
    uint32_t m = 0;
    for (char c : s) {
        if (c < '0' || c > '7') {
            return std::nullopt;
        }
        m = m * 8 + static_cast<uint32_t>(c - '0');
    }
    if (m > 0777) {
        return std::nullopt;
    }
    return m;
}

std::string format_mode(uint32_t mode) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "%04o", mode & 07777);
    return buf;
}

int fail(const std::string& what, std::error_code ec) {
    std::fprintf(stderr, "llmosctl: %s: %s\n", what.c_str(), ec.message().c_str());
    return exit_failure;
}

int fail_device(const std::string& path, std::error_code ec) {
    std::string hint;
    if (ec == std::errc::no_such_file_or_directory) {
        hint = " (is the llmos module loaded? insmod llmos.ko)";
    } else if (ec == std::errc::permission_denied) {
        hint = " (needs membership of the device's group, or root)";
    }
    std::fprintf(stderr, "llmosctl: cannot open %s: %s%s\n", path.c_str(), ec.message().c_str(),
                 hint.c_str());
    return exit_failure;
}

int usage(const std::string& message) {
    std::fprintf(stderr, "llmosctl: %s\n", message.c_str());
    return exit_usage;
}

std::string read_at_most(std::istream& in, uint64_t limit) {
    std::string out;
    std::vector<char> buf(1 << 16);
    while (out.size() <= limit &&
           in.read(buf.data(), static_cast<std::streamsize>(
                                   std::min<uint64_t>(buf.size(), limit + 1 - out.size())))
                   .gcount() > 0) {
        out.append(buf.data(), static_cast<size_t>(in.gcount()));
    }
    return out;
}

fill_result fill_from(int fd, std::span<char> to) {
    // No more than this per read(): a signal or a slow pipe stops no more.
    constexpr size_t piece = 1u << 20;
    fill_result r;
    while (r.bytes < to.size()) {
        const size_t want = std::min<uint64_t>(piece, to.size() - r.bytes);
        const ssize_t n = ::read(fd, to.data() + r.bytes, want);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            r.error = std::error_code(errno, std::system_category());
            return r;
        }
        if (n == 0) {
            return r;
        }
        r.bytes += static_cast<uint64_t>(n);
    }
    char probe;
    ssize_t n;
    while ((n = ::read(fd, &probe, 1)) < 0 && errno == EINTR) {
    }
    if (n < 0) {
        r.error = std::error_code(errno, std::system_category());
    }
    r.more = n > 0;
    return r;
}

std::string printable(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        const auto next = i + 1 < s.size() ? static_cast<unsigned char>(s[i + 1]) : 0;
        if (c == 0xc2 && next >= 0x80 && next <= 0x9f) { // U+0080..U+009F
            out += "\\u00";
            out += hex[next >> 4];
            out += hex[next & 15];
            ++i;
        } else if (c < 0x20 || c == 0x7f) {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

} // namespace llmosctl
