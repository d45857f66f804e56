// SPDX-License-Identifier: MIT
//
// GGUF reader: one pass over the header, key/values and tensor infos with a
// bounds-checked cursor. Every count is compared with the bytes left before
// anything is allocated for it, so a corrupt count fails at once; all size
// arithmetic is overflow-checked. Values and names are copied out; tensor
// data stays a view into the mapping.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <llmos/engine/gguf.hh>
#include <mutex>
#include <signal.h>
#include <sstream>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

static_assert(std::endian::native == std::endian::little, "GGUF is read in host byte order");

namespace llmos::engine {

namespace {

constexpr uint64_t max_string_length = uint64_t{1} << 30;
constexpr int max_array_depth = 8;
// What the metadata and tensor infos may hold in all (gguf.hh says why).
constexpr uint64_t max_metadata_values = gguf_limits{}.metadata_values;
constexpr uint64_t max_metadata_text = gguf_limits{}.metadata_text;
constexpr uint64_t max_tensors = gguf_limits{}.tensors;
// Reserved up front at most; more as the values are read.
constexpr uint64_t max_reserve = 4096;

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
    std::ostringstream out;
    out << "gguf: ";
    (out << ... << args);
    throw gguf_error(out.str());
}

/// Fewest bytes a value of `t` takes in the file (a string: its length; an
/// array: element type and count); 0 for an unknown type.
uint64_t min_value_bytes(uint32_t t) {
    switch (static_cast<gguf_type>(t)) {
    case gguf_type::u8:
    case gguf_type::i8:
    case gguf_type::boolean:
        return 1;
    case gguf_type::u16:
    case gguf_type::i16:
        return 2;
    case gguf_type::u32:
    case gguf_type::i32:
    case gguf_type::f32:
        return 4;
    case gguf_type::u64:
    case gguf_type::i64:
    case gguf_type::f64:
    case gguf_type::string:
        return 8;
    case gguf_type::array:
        return 12;
    }
    return 0;
}

/// `x` as an integer of type T when it holds an integer that fits.
template <class T>
std::optional<T> integer_as(const gguf_value& x) {
    return std::visit(
        [](const auto& v) -> std::optional<T> {
            using V = std::remove_cvref_t<decltype(v)>;
            if constexpr (std::is_integral_v<V> && !std::is_same_v<V, bool>) {
                if (std::in_range<T>(v)) {
                    return static_cast<T>(v);
                }
            }
            return std::nullopt;
        },
        x.v);
}

std::optional<float> float_as(const gguf_value& x) {
    if (auto f = x.get_if<float>()) {
        return *f;
    }
    if (auto d = x.get_if<double>()) {
        // Beyond float's range: its infinity (a plain cast is undefined).
        if (std::isfinite(*d) && std::fabs(*d) > std::numeric_limits<float>::max()) {
            return *d > 0 ? std::numeric_limits<float>::infinity()
                          : -std::numeric_limits<float>::infinity();
        }
        return static_cast<float>(*d);
    }
    return std::nullopt;
}

/// `x` for a message: at most 64 characters of to_string.
std::string brief(const gguf_value& x) {
    auto str = x.get_if<std::string>();
    auto s = str && str->size() > 64 ? to_string(str->substr(0, 64)) : to_string(x, 0);
    return s.size() <= 64 ? s : s.substr(0, 60) + " ...";
}

std::string describe_type(const gguf_value& x) {
    std::string s(type_name(x.type()));
    if (auto a = x.get_if<gguf_array>()) {
        s += " of ";
        s += type_name(a->type);
    }
    return s;
}

/// Checks `t`'s n_dims, dims and type and fills in its sizes; `where`
/// ends the messages.
void set_geometry(gguf_tensor& t, const std::string& where) {
    if (t.n_dims < 1 || t.n_dims > 4) {
        fail("tensor ", quoted(t.name), " has n_dims ", t.n_dims, " (must be 1 to 4)", where);
    }
    auto ti = info(t.type);
    if (!ti) {
        fail("tensor ", quoted(t.name), " has unknown ggml type ", uint32_t(t.type), where);
    }
    bool overflow =
        std::any_of(t.ne.begin(), t.ne.end(), [](uint64_t d) { return d > uint64_t(INT64_MAX); }) ||
        __builtin_mul_overflow(t.ne[1], t.ne[2], &t.n_rows) ||
        __builtin_mul_overflow(t.n_rows, t.ne[3], &t.n_rows) ||
        __builtin_mul_overflow(t.ne[0], t.n_rows, &t.n_elements);
    if (overflow || t.n_elements > uint64_t(INT64_MAX)) {
        fail("tensor ", quoted(t.name), " has too many elements: dims ", t.ne[0], " x ", t.ne[1],
             " x ", t.ne[2], " x ", t.ne[3], " overflow 63 bits", where);
    }
    if (t.ne[0] % ti->block_elems != 0) {
        fail("tensor ", quoted(t.name), ": row length ", t.ne[0], " is not a multiple of the ",
             ti->name, " block size ", ti->block_elems, where);
    }
    if (__builtin_mul_overflow(t.ne[0] / ti->block_elems, ti->block_bytes, &t.row_bytes) ||
        __builtin_mul_overflow(t.row_bytes, t.n_rows, &t.n_bytes) ||
        t.n_bytes > uint64_t(INT64_MAX)) {
        fail("tensor ", quoted(t.name), " size overflows 63 bits", where);
    }
}

} // namespace

std::string_view type_name(gguf_type t) {
    static constexpr std::string_view names[] = {"u8",  "i8",  "u16",  "i16",    "u32",
                                                 "i32", "f32", "bool", "string", "array",
                                                 "u64", "i64", "f64"};
    auto i = static_cast<uint32_t>(t);
    return i < std::size(names) ? names[i] : "unknown";
}

bool operator==(const gguf_array& a, const gguf_array& b) {
    return a.type == b.type && a.items == b.items;
}

bool operator==(const gguf_value& a, const gguf_value& b) {
    return a.v == b.v;
}

std::string to_string(const gguf_value& value, size_t max_items) {
    std::ostringstream out;
    std::visit(
        [&](const auto& v) {
            using V = std::remove_cvref_t<decltype(v)>;
            if constexpr (std::is_same_v<V, bool>) {
                out << (v ? "true" : "false");
            } else if constexpr (std::is_same_v<V, std::string>) {
                out << '"';
                for (unsigned char c : v) {
                    if (c == '"' || c == '\\') {
                        out << '\\' << c;
                    } else if (c < 0x20 || c == 0x7f) {
                        char esc[8];
                        std::snprintf(esc, sizeof esc, "\\x%02x", c);
                        out << esc;
                    } else {
                        out << c;
                    }
                }
                out << '"';
            } else if constexpr (std::is_same_v<V, gguf_array>) {
                out << '[';
                for (size_t i = 0; i < v.items.size() && i < max_items; i++) {
                    out << (i ? ", " : "") << to_string(v.items[i], max_items);
                }
                if (v.items.size() > max_items) {
                    out << (max_items ? ", " : "") << "... (" << v.items.size() << " items)";
                }
                out << ']';
            } else if constexpr (std::is_floating_point_v<V>) {
                out.precision(std::is_same_v<V, float> ? 9 : 17);
                out << v;
            } else {
                out << +v; // u8/i8 as numbers
            }
        },
        value.v);
    return out.str();
}

std::string quoted(std::string_view s) {
    constexpr size_t most = 64;
    std::string out = "'";
    for (unsigned char c : s.substr(0, most)) {
        if (c == '\'' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\x%02x", c);
            out += esc;
        } else {
            out += static_cast<char>(c);
        }
    }
    out += '\'';
    if (s.size() > most) {
        out += "... (" + std::to_string(s.size()) + " bytes)";
    }
    return out;
}

// The parser is a friend of gguf_file: it fills the object in one pass.
class gguf_parser {
public:
    explicit gguf_parser(gguf_file& f)
        : _f(f)
        , _b(f._bytes) {}

    void run() {
        _what = "header";
        auto magic = take(4);
        if (std::memcmp(magic, "GGUF", 4) != 0) {
            char hex[32];
            std::snprintf(hex, sizeof hex, "%02x %02x %02x %02x", unsigned(magic[0]),
                          unsigned(magic[1]), unsigned(magic[2]), unsigned(magic[3]));
            fail("bad magic ", hex, " at offset 0 (not a GGUF file)");
        }
        auto version = scalar<uint32_t>();
        if (version != 2 && version != 3) {
            auto swapped = __builtin_bswap32(version);
            if (swapped >= 1 && swapped <= 3) {
                fail("big-endian GGUF (version ", swapped,
                     " byte-swapped) at offset 4 is not supported");
            }
            fail("unsupported version ", version, " at offset 4 (only 2 and 3 are read)");
        }
        _f._version = version;
        auto n_tensors = scalar<uint64_t>();
        auto n_kv = scalar<uint64_t>();
        // Smallest kv: empty key, type, 1-byte value. Smallest tensor info:
        // empty name, n_dims, one dim, type, offset.
        check_count(n_kv, 8 + 4 + 1, "kv count", 16);
        check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor count", 8);

        _f._kvs.reserve(std::min(n_kv, max_reserve));
        for (uint64_t i = 0; i < n_kv; i++) {
            read_kv(i);
        }
        read_alignment();

        _what = "tensor infos";
        check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor count", 8); // in what is left
        if (n_tensors > max_tensors) {
            fail("tensor count ", n_tensors, " at offset 8 is more than ", max_tensors,
                 " (a model has thousands at most)");
        }
        _f._tensors.reserve(std::min(n_tensors, max_reserve));
        for (uint64_t i = 0; i < n_tensors; i++) {
            read_tensor_info(i);
        }
        place_tensors();
    }

private:
    uint64_t remaining() const { return _b.size() - _pos; }

    const unsigned char* take(uint64_t n) {
        if (n > remaining()) {
            fail("truncated file: ", _what, " at offset ", _pos, " needs ", n, " bytes, ",
                 remaining(), " left");
        }
        auto p = reinterpret_cast<const unsigned char*>(_b.data()) + _pos;
        _pos += n;
        return p;
    }

    template <class T>
    T scalar() {
        T x;
        std::memcpy(&x, take(sizeof x), sizeof x);
        return x;
    }

    void check_count(uint64_t n, uint64_t min_bytes, const char* what, uint64_t at) {
        if (n > remaining() / min_bytes) {
            fail(what, " ", n, " at offset ", at, " cannot fit in the ", remaining(),
                 " bytes left (", _what, ")");
        }
    }

    std::string string() {
        auto at = _pos;
        auto n = scalar<uint64_t>();
        if (n > max_string_length) {
            fail("string length ", n, " at offset ", at, " is too large (", _what, ")");
        }
        _text += n;
        if (_text > max_metadata_text) {
            fail("the metadata's text passes ", max_metadata_text, " bytes at offset ", at, " (",
                 _what, ")");
        }
        auto p = take(n);
        return std::string(reinterpret_cast<const char*>(p), n);
    }

    gguf_value value(uint32_t type, int depth) {
        if (++_values > max_metadata_values) {
            fail("the metadata holds more than ", max_metadata_values, " values at offset ", _pos,
                 " (", _what, ")");
        }
        switch (static_cast<gguf_type>(type)) {
        case gguf_type::u8:
            return scalar<uint8_t>();
        case gguf_type::i8:
            return scalar<int8_t>();
        case gguf_type::u16:
            return scalar<uint16_t>();
        case gguf_type::i16:
            return scalar<int16_t>();
        case gguf_type::u32:
            return scalar<uint32_t>();
        case gguf_type::i32:
            return scalar<int32_t>();
        case gguf_type::f32:
            return scalar<float>();
        case gguf_type::u64:
            return scalar<uint64_t>();
        case gguf_type::i64:
            return scalar<int64_t>();
        case gguf_type::f64:
            return scalar<double>();
        case gguf_type::boolean: {
            auto at = _pos;
            auto b = scalar<uint8_t>();
            if (b > 1) {
                fail("bool ", unsigned(b), " at offset ", at, " is neither 0 nor 1 (", _what, ")");
            }
            return b == 1;
        }
        case gguf_type::string:
            return string();
        case gguf_type::array:
            return array(depth);
        }
        fail("unknown value type ", type, " (", _what, ")");
    }

    gguf_value array(int depth) {
        auto at = _pos;
        auto type = scalar<uint32_t>();
        auto min = min_value_bytes(type);
        if (min == 0) {
            fail("unknown array element type ", type, " at offset ", at, " (", _what, ")");
        }
        if (type == uint32_t(gguf_type::array) && depth + 1 >= max_array_depth) {
            fail("arrays nested deeper than ", max_array_depth, " at offset ", at, " (", _what,
                 ")");
        }
        auto n = scalar<uint64_t>();
        check_count(n, min, "array count", at + 4);
        gguf_array a{static_cast<gguf_type>(type), {}};
        a.items.reserve(std::min(n, max_reserve));
        for (uint64_t i = 0; i < n; i++) {
            a.items.push_back(value(type, depth + 1));
        }
        return gguf_value(std::move(a));
    }

    void read_kv(uint64_t i) {
        _what = "key of kv #" + std::to_string(i);
        auto key = string();
        _what = "kv " + quoted(key);
        auto at = _pos;
        auto type = scalar<uint32_t>();
        if (min_value_bytes(type) == 0) {
            fail("unknown value type ", type, " at offset ", at, " (", _what, ")");
        }
        auto v = value(type, 0);
        if (!_f._kv_index.emplace(key, _f._kvs.size()).second) {
            fail("duplicate key ", quoted(key), " at offset ", at);
        }
        _f._kvs.push_back({std::move(key), std::move(v)});
    }

    void read_alignment() {
        auto v = _f.find("general.alignment");
        if (!v) {
            return;
        }
        auto a = integer_as<uint32_t>(*v);
        if (!a || *a == 0 || !std::has_single_bit(*a)) {
            fail("general.alignment must be a nonzero power of two, got ", describe_type(*v), " ",
                 brief(*v));
        }
        _f._alignment = *a;
    }

    void read_tensor_info(uint64_t i) {
        _what = "name of tensor info #" + std::to_string(i);
        gguf_tensor t;
        t.name = string();
        _what = "tensor info " + quoted(t.name);
        auto at = _pos;
        t.n_dims = scalar<uint32_t>();
        if (t.n_dims < 1 || t.n_dims > 4) {
            fail("tensor ", quoted(t.name), " has n_dims ", t.n_dims, " at offset ", at,
                 " (must be 1 to 4)");
        }
        for (uint32_t d = 0; d < t.n_dims; d++) {
            t.ne[d] = scalar<uint64_t>();
        }
        at = _pos;
        t.type = static_cast<ggml_type>(scalar<uint32_t>());
        set_geometry(t, " at offset " + std::to_string(at));
        t.offset = scalar<uint64_t>();
        if (!_f._tensor_index.emplace(t.name, _f._tensors.size()).second) {
            fail("duplicate tensor ", quoted(t.name), " (tensor info #", i, ")");
        }
        _f._tensors.push_back(std::move(t));
    }

    void place_tensors() {
        uint64_t align = _f._alignment;
        _f._data_offset = (_pos + align - 1) / align * align;
        if (_f._data_offset > _b.size() && !_f._tensors.empty()) {
            fail("truncated file: the data section at offset ", _f._data_offset,
                 " starts beyond the end of the file (size ", _b.size(), ")");
        }
        uint64_t data_size = _b.size() - std::min<uint64_t>(_f._data_offset, _b.size());
        for (auto& t : _f._tensors) {
            if (t.offset % align != 0) {
                fail("tensor ", quoted(t.name), " offset ", t.offset,
                     " is not a multiple of alignment ", align);
            }
            if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
                fail("tensor ", quoted(t.name), " data [", t.offset, ", +", t.n_bytes,
                     ") lies beyond the end of the file (data section at ", _f._data_offset,
                     ", file size ", _b.size(), ")");
            }
            t.data = _b.subspan(_f._data_offset + t.offset, t.n_bytes);
        }
        // An empty tensor overlaps nothing, wherever it is.
        std::vector<const gguf_tensor*> by_offset;
        by_offset.reserve(_f._tensors.size());
        for (auto& t : _f._tensors) {
            if (t.n_bytes) {
                by_offset.push_back(&t);
            }
        }
        std::sort(by_offset.begin(), by_offset.end(),
                  [](auto a, auto b) { return a->offset < b->offset; });
        for (size_t i = 1; i < by_offset.size(); i++) {
            auto a = by_offset[i - 1];
            auto b = by_offset[i];
            if (a->offset + a->n_bytes > b->offset) {
                fail("tensors ", quoted(a->name), " and ", quoted(b->name),
                     " overlap at data offset ", b->offset);
            }
        }
    }

    gguf_file& _f;
    std::span<const std::byte> _b;
    uint64_t _pos = 0;
    std::string _what;    // what is being read, for messages
    uint64_t _values = 0; // metadata values read, array elements included
    uint64_t _text = 0;   // bytes of metadata strings read (keys included)
};

namespace {

// The files open() mapped, for the SIGBUS handler: fixed slots that it
// reads without locks (a slot is written while `state` is 1, read when 2).
struct mapped_file {
    std::atomic<int> state{0}; // 0 free, 1 being written, 2 live
    const std::byte* addr = nullptr;
    size_t length = 0;
    char path[240] = {};
};
constexpr int max_mapped_files = 64;
mapped_file mapped_files[max_mapped_files];

int remember_mapping(const std::byte* addr, size_t length, const std::string& path) noexcept {
    for (int i = 0; i < max_mapped_files; ++i) {
        int free = 0;
        auto& m = mapped_files[i];
        if (m.state.compare_exchange_strong(free, 1)) {
            m.addr = addr;
            m.length = length;
            const size_t n = std::min(path.size(), sizeof m.path - 1);
            std::memcpy(m.path, path.data(), n);
            m.path[n] = '\0';
            m.state.store(2);
            return i + 1;
        }
    }
    return 0; // not reported, served all the same
}

void write_all(const char* s, size_t n) noexcept {
    while (n) {
        ssize_t w = ::write(STDERR_FILENO, s, n);
        if (w <= 0) {
            return;
        }
        s += w;
        n -= static_cast<size_t>(w);
    }
}

struct sigaction sigbus_before; // what SIGBUS did before ours
std::atomic_flag sigbus_told = ATOMIC_FLAG_INIT;

/// Whether a SIGBUS with this code is a fault of the access that raised
/// it (it happens again when the access runs again).
bool is_fault(int code) {
    return code == BUS_ADRALN || code == BUS_ADRERR || code == BUS_OBJERR || code == BUS_MCEERR_AR;
}

/// Says which model file a read past its end was in, once, in one write.
void tell_truncated(const siginfo_t* si) {
    const auto* at = static_cast<const std::byte*>(si->si_addr);
    for (auto& m : mapped_files) {
        if (m.state.load() != 2 || at < m.addr || at >= m.addr + m.length) {
            continue;
        }
        static const char a[] = "gguf: the model file '";
        static const char b[] =
            "' became shorter while mapped (truncated, or overwritten in place: replace "
            "model files with mv, not cp); a read past its end faults (SIGBUS)\n";
        char line[sizeof a + sizeof m.path + sizeof b];
        size_t n = 0;
        std::memcpy(line, a, sizeof a - 1);
        n += sizeof a - 1;
        const size_t p = ::strnlen(m.path, sizeof m.path);
        std::memcpy(line + n, m.path, p);
        n += p;
        std::memcpy(line + n, b, sizeof b - 1);
        n += sizeof b - 1;
        // Still that file (not freed and taken again while copied), and
        // only the first thread to fault says it.
        if (m.state.load() == 2 && at >= m.addr && at < m.addr + m.length &&
            !sigbus_told.test_and_set()) {
            write_all(line, n);
        }
        return;
    }
}

void on_sigbus(int sig, siginfo_t* si, void* ctx) {
    const int saved_errno = errno;
    // A fault past the end of a mapped file: BUS_ADRERR (si_addr is only
    // an address for a fault; a sent signal's holds the sender).
    if (si->si_code == BUS_ADRERR) {
        tell_truncated(si);
    }
    // Then as if this handler were not there: the one before it runs,
    // with SIGBUS blocked meanwhile (this handler's mask), and reset first
    // if it asked for that.
    const bool fault = is_fault(si->si_code);
    if (sigbus_before.sa_handler == SIG_IGN && !fault) {
        errno = saved_errno;
        return; // ignored, as it was
    }
    if (sigbus_before.sa_handler != SIG_DFL && sigbus_before.sa_handler != SIG_IGN) {
        if (sigbus_before.sa_flags & SA_RESETHAND) {
            struct sigaction dfl {};
            dfl.sa_handler = SIG_DFL;
            ::sigaction(sig, &dfl, nullptr);
        }
        errno = saved_errno;
        if (sigbus_before.sa_flags & SA_SIGINFO) {
            sigbus_before.sa_sigaction(sig, si, ctx);
        } else {
            sigbus_before.sa_handler(sig);
        }
        errno = saved_errno;
        return;
    }
    // The default action (or "ignored", which the kernel does not honour
    // for a fault): put it back and let the access fault again, or, for a
    // signal that was sent, send it again (delivered once this returns).
    ::sigaction(sig, &sigbus_before, nullptr);
    if (!fault) {
        ::raise(sig);
    }
    errno = saved_errno;
}

} // namespace

void report_truncated_models() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGBUS, &sa, &sigbus_before);
    });
}

void gguf_file::unmapper::operator()(std::byte* addr) const noexcept {
    if (slot > 0) {
        mapped_files[slot - 1].state.store(0);
    }
    ::munmap(addr, length);
}

gguf_file gguf_file::parse(std::span<const std::byte> bytes) {
    gguf_file f;
    f._bytes = bytes;
    gguf_parser(f).run();
    return f;
}

gguf_file gguf_file::open(const std::string& path) {
    // O_NONBLOCK: a FIFO (or a device) is refused below, not waited on.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        fail("cannot open '", path, "': ", std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        fail("cannot stat '", path, "': ", std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail("'", path, "' is not a regular file");
    }
    gguf_file f;
    if (st.st_size > 0) {
        auto len = static_cast<size_t>(st.st_size);
        void* addr = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
        int e = errno;
        ::close(fd);
        if (addr == MAP_FAILED) {
            fail("cannot map '", path, "': ", std::strerror(e));
        }
        auto* base = static_cast<std::byte*>(addr);
        f._map =
            std::unique_ptr<std::byte, unmapper>(base, {len, remember_mapping(base, len, path)});
        f._bytes = {f._map.get(), len};
    } else {
        ::close(fd);
    }
    try {
        gguf_parser(f).run();
    } catch (const gguf_error& e) {
        throw gguf_error(std::string(e.what()) + " (in '" + path + "')");
    } catch (const std::bad_alloc&) {
        throw gguf_error("gguf: out of memory reading the metadata (in '" + path + "')");
    }
    return f;
}

size_t gguf_file::drop_pages(std::span<const std::byte> range) const noexcept {
    if (!_map || range.empty() || range.data() < _bytes.data() ||
        range.data() + range.size() > _bytes.data() + _bytes.size()) {
        return 0;
    }
    const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = (reinterpret_cast<uintptr_t>(range.data()) + page - 1) / page * page;
    const auto end = (reinterpret_cast<uintptr_t>(range.data()) + range.size()) / page * page;
    if (end <= begin ||
        ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) != 0) {
        return 0;
    }
    return end - begin;
}

const gguf_value* gguf_file::find(std::string_view key) const {
    auto it = _kv_index.find(key);
    return it == _kv_index.end() ? nullptr : &_kvs[it->second].value;
}

const gguf_value& gguf_file::require(std::string_view key) const {
    auto v = find(key);
    if (!v) {
        fail("missing key '", key, "'");
    }
    return *v;
}

const gguf_tensor* gguf_file::find_tensor(std::string_view name) const {
    auto it = _tensor_index.find(name);
    return it == _tensor_index.end() ? nullptr : &_tensors[it->second];
}

namespace {

template <class T>
T as_integer(std::string_view key, const gguf_value& v, std::string_view want) {
    auto x = integer_as<T>(v);
    if (!x) {
        fail("key '", key, "' is ", describe_type(v), " ", brief(v), ", expected ", want);
    }
    return *x;
}

float as_f32(std::string_view key, const gguf_value& v) {
    auto x = float_as(v);
    if (!x) {
        fail("key '", key, "' is ", describe_type(v), ", expected f32 or f64");
    }
    return *x;
}

std::string_view as_string(std::string_view key, const gguf_value& v) {
    auto s = v.get_if<std::string>();
    if (!s) {
        fail("key '", key, "' is ", describe_type(v), ", expected string");
    }
    return *s;
}

bool as_bool(std::string_view key, const gguf_value& v) {
    auto b = v.get_if<bool>();
    if (!b) {
        fail("key '", key, "' is ", describe_type(v), ", expected bool");
    }
    return *b;
}

const gguf_array& as_array(std::string_view key, const gguf_value& v, std::string_view of) {
    auto a = v.get_if<gguf_array>();
    if (!a) {
        fail("key '", key, "' is ", describe_type(v), ", expected array of ", of);
    }
    return *a;
}

/// Each element of the array at `key` converted by `conv` (an optional).
template <class T, class Conv>
std::vector<T> convert_array(std::string_view key, const gguf_value& v, std::string_view of,
                             Conv conv) {
    auto& a = as_array(key, v, of);
    std::vector<T> out;
    out.reserve(a.items.size());
    for (size_t i = 0; i < a.items.size(); i++) {
        auto x = conv(a.items[i]);
        if (!x) {
            fail("key '", key, "' is ", describe_type(v), ": element ", i, " is ",
                 describe_type(a.items[i]), " ", brief(a.items[i]), ", expected ", of);
        }
        out.push_back(std::move(*x));
    }
    return out;
}

} // namespace

std::string_view gguf_file::get_string(std::string_view key) const {
    return as_string(key, require(key));
}

uint32_t gguf_file::get_u32(std::string_view key) const {
    return as_integer<uint32_t>(key, require(key), "an integer in u32 range");
}

uint64_t gguf_file::get_u64(std::string_view key) const {
    return as_integer<uint64_t>(key, require(key), "an integer in u64 range");
}

int64_t gguf_file::get_i64(std::string_view key) const {
    return as_integer<int64_t>(key, require(key), "an integer in i64 range");
}

float gguf_file::get_f32(std::string_view key) const {
    return as_f32(key, require(key));
}

bool gguf_file::get_bool(std::string_view key) const {
    return as_bool(key, require(key));
}

std::vector<std::string> gguf_file::get_string_array(std::string_view key) const {
    return convert_array<std::string>(key, require(key), "string", [](const gguf_value& x) {
        auto s = x.get_if<std::string>();
        return s ? std::optional<std::string>(*s) : std::nullopt;
    });
}

std::vector<float> gguf_file::get_f32_array(std::string_view key) const {
    return convert_array<float>(key, require(key), "f32", float_as);
}

std::vector<int32_t> gguf_file::get_i32_array(std::string_view key) const {
    return convert_array<int32_t>(key, require(key), "an integer in i32 range",
                                  integer_as<int32_t>);
}

std::optional<std::string_view> gguf_file::find_string(std::string_view key) const {
    auto v = find(key);
    return v ? std::optional(as_string(key, *v)) : std::nullopt;
}

std::optional<uint32_t> gguf_file::find_u32(std::string_view key) const {
    auto v = find(key);
    return v ? std::optional(as_integer<uint32_t>(key, *v, "an integer in u32 range"))
             : std::nullopt;
}

std::optional<uint64_t> gguf_file::find_u64(std::string_view key) const {
    auto v = find(key);
    return v ? std::optional(as_integer<uint64_t>(key, *v, "an integer in u64 range"))
             : std::nullopt;
}

std::optional<int64_t> gguf_file::find_i64(std::string_view key) const {
    auto v = find(key);
    return v ? std::optional(as_integer<int64_t>(key, *v, "an integer in i64 range"))
             : std::nullopt;
}

std::optional<float> gguf_file::find_f32(std::string_view key) const {
    auto v = find(key);
    return v ? std::optional(as_f32(key, *v)) : std::nullopt;
}

std::optional<bool> gguf_file::find_bool(std::string_view key) const {
    auto v = find(key);
    return v ? std::optional(as_bool(key, *v)) : std::nullopt;
}

// ---- writer -------------------------------------------------------------

namespace {

constexpr uint32_t default_alignment = 32;

/// Values (each array and element included) and text bytes in `v`, as
/// the reader counts them against gguf_limits.
struct metadata_size {
    uint64_t values = 0;
    uint64_t text = 0;
};

void add_size(const gguf_value& v, metadata_size& size) {
    ++size.values;
    if (auto s = v.get_if<std::string>()) {
        size.text += s->size();
    } else if (auto a = v.get_if<gguf_array>()) {
        for (auto& item : a->items) {
            add_size(item, size);
        }
    }
}

/// Checks that `v` is something the reader takes back: array elements of
/// the array's type, nesting and string lengths within the reader's limits.
void check_value(const std::string& key, const gguf_value& v, int depth) {
    if (auto s = v.get_if<std::string>(); s && s->size() > max_string_length) {
        fail("kv '", key, "': string of ", s->size(), " bytes is too long");
    }
    auto a = v.get_if<gguf_array>();
    if (!a) {
        return;
    }
    if (min_value_bytes(uint32_t(a->type)) == 0) {
        fail("kv '", key, "': unknown array element type ", uint32_t(a->type));
    }
    if (a->type == gguf_type::array && depth + 1 >= max_array_depth) {
        fail("kv '", key, "': arrays nested deeper than ", max_array_depth);
    }
    for (size_t i = 0; i < a->items.size(); i++) {
        if (a->items[i].type() != a->type) {
            fail("kv '", key, "': element ", i, " of an array of ", type_name(a->type), " is ",
                 type_name(a->items[i].type()));
        }
        check_value(key, a->items[i], depth + 1);
    }
}

uint32_t check_alignment(const gguf_value& v) {
    auto a = integer_as<uint32_t>(v);
    if (!a || !std::has_single_bit(*a) || *a < gguf_min_alignment) {
        fail("general.alignment must be a power of two, ", gguf_min_alignment,
             " or more (GGUF wants a multiple of ", gguf_min_alignment, "), got ", describe_type(v),
             " ", brief(v));
    }
    return *a;
}

uint64_t align_up(uint64_t x, uint64_t alignment) {
    return (x + alignment - 1) / alignment * alignment;
}

class emitter {
public:
    explicit emitter(std::vector<std::byte>& out)
        : _out(out) {}

    template <class T>
    void scalar(T x) {
        auto p = reinterpret_cast<const std::byte*>(&x);
        _out.insert(_out.end(), p, p + sizeof x);
    }

    void string(std::string_view s) {
        scalar<uint64_t>(s.size());
        auto p = reinterpret_cast<const std::byte*>(s.data());
        _out.insert(_out.end(), p, p + s.size());
    }

    void value(const gguf_value& v) {
        std::visit(
            [&](const auto& x) {
                using V = std::remove_cvref_t<decltype(x)>;
                if constexpr (std::is_same_v<V, std::string>) {
                    string(x);
                } else if constexpr (std::is_same_v<V, gguf_array>) {
                    scalar<uint32_t>(uint32_t(x.type));
                    scalar<uint64_t>(x.items.size());
                    for (auto& item : x.items) {
                        value(item);
                    }
                } else if constexpr (std::is_same_v<V, bool>) {
                    scalar<uint8_t>(x ? 1 : 0);
                } else {
                    scalar<V>(x);
                }
            },
            v.v);
    }

    void pad_to(uint64_t alignment) { _out.resize(align_up(_out.size(), alignment)); }

private:
    std::vector<std::byte>& _out;
};

} // namespace

gguf_writer::gguf_writer(uint32_t version, const gguf_limits& limits)
    : _version(version)
    , _limits{std::min(limits.metadata_values, max_metadata_values),
              std::min(limits.metadata_text, max_metadata_text),
              std::min(limits.tensors, max_tensors)} {
    if (version != 2 && version != 3) {
        fail("cannot write version ", version, " (only 2 and 3)");
    }
}

void gguf_writer::set(std::string key, gguf_value value) {
    if (key.size() > max_string_length) {
        fail("key of ", key.size(), " bytes is too long");
    }
    check_value(key, value, 0);
    if (key == "general.alignment") {
        _alignment = check_alignment(value);
        value = gguf_value(_alignment); // llama.cpp reads it only as a u32
    }
    for (auto& kv : _kvs) {
        if (kv.key == key) {
            kv.value = std::move(value);
            return;
        }
    }
    _kvs.push_back({std::move(key), std::move(value)});
}

bool gguf_writer::erase(std::string_view key) {
    auto it = std::find_if(_kvs.begin(), _kvs.end(), [&](auto& kv) { return kv.key == key; });
    if (it == _kvs.end()) {
        return false;
    }
    _kvs.erase(it);
    if (key == "general.alignment") {
        _alignment = default_alignment;
    }
    return true;
}

void gguf_writer::set_alignment(uint32_t alignment) {
    if (alignment == default_alignment) {
        erase("general.alignment");
    } else {
        set("general.alignment", alignment);
    }
}

void gguf_writer::add_tensor(std::string name, ggml_type type, std::span<const uint64_t> dims,
                             std::span<const std::byte> data) {
    if (name.size() > gguf_max_tensor_name) {
        fail("tensor name ", quoted(name), " is ", name.size(), " bytes long; GGUF takes ",
             gguf_max_tensor_name, " at most");
    }
    if (_tensor_index.count(name)) {
        fail("duplicate tensor '", name, "'");
    }
    if (_tensors.size() >= _limits.tensors) {
        fail("tensor ", quoted(name), " would be one more than the ", _limits.tensors,
             " tensors a file may have");
    }
    gguf_tensor t;
    t.name = std::move(name);
    t.type = type;
    t.n_dims = static_cast<uint32_t>(std::min<size_t>(dims.size(), UINT32_MAX));
    std::copy_n(dims.begin(), std::min<size_t>(dims.size(), 4), t.ne.begin());
    set_geometry(t, "");
    if (data.size() != t.n_bytes) {
        fail("tensor ", quoted(t.name), " has ", data.size(), " bytes of data, its shape needs ",
             t.n_bytes);
    }
    _data.emplace_back(data.begin(), data.end());
    _tensor_index.emplace(t.name, _tensors.size());
    _tensors.push_back(std::move(t));
}

std::vector<std::byte> gguf_writer::header() const {
    metadata_size size;
    for (auto& kv : _kvs) {
        size.text += kv.key.size();
        add_size(kv.value, size);
    }
    for (auto& t : _tensors) {
        size.text += t.name.size();
    }
    if (size.values > _limits.metadata_values) {
        fail("the metadata holds ", size.values, " values, more than the ", _limits.metadata_values,
             " a file may have");
    }
    if (size.text > _limits.metadata_text) {
        fail("the metadata's keys, strings and tensor names take ", size.text,
             " bytes, more than the ", _limits.metadata_text, " a file may have");
    }
    std::vector<std::byte> out;
    emitter e(out);
    out.insert(out.end(), {std::byte{'G'}, std::byte{'G'}, std::byte{'U'}, std::byte{'F'}});
    e.scalar<uint32_t>(_version);
    e.scalar<uint64_t>(_tensors.size());
    e.scalar<uint64_t>(_kvs.size());
    for (auto& kv : _kvs) {
        e.string(kv.key);
        e.scalar<uint32_t>(uint32_t(kv.value.type()));
        e.value(kv.value);
    }
    uint64_t offset = 0;
    for (auto& t : _tensors) {
        e.string(t.name);
        e.scalar<uint32_t>(t.n_dims);
        for (auto d : t.dims()) {
            e.scalar<uint64_t>(d);
        }
        e.scalar<uint32_t>(uint32_t(t.type));
        e.scalar<uint64_t>(offset);
        offset += align_up(t.n_bytes, _alignment);
    }
    e.pad_to(_alignment);
    return out;
}

std::vector<std::byte> gguf_writer::write() const {
    auto out = header();
    emitter e(out);
    for (auto& d : _data) {
        out.insert(out.end(), d.begin(), d.end());
        e.pad_to(_alignment);
    }
    return out;
}

void gguf_writer::write(const std::string& path) const {
    auto head = header(); // before the file: it may throw
    static std::atomic<uint64_t> serial;
    auto tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(serial++);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        fail("cannot create '", tmp, "': ", std::strerror(errno));
    }
    auto give_up = [&](const char* what) {
        int e = errno;
        if (fd >= 0) {
            ::close(fd);
        }
        ::unlink(tmp.c_str());
        fail("cannot ", what, " '", path, "': ", std::strerror(e));
    };
    auto put = [&](const std::byte* p, size_t n) {
        while (n > 0) {
            auto w = ::write(fd, p, n);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w <= 0) {
                errno = w == 0 ? EIO : errno;
                give_up("write");
            }
            p += w;
            n -= size_t(w);
        }
    };
    put(head.data(), head.size());
    static const std::byte zeros[256] = {};
    for (auto& d : _data) {
        put(d.data(), d.size());
        for (auto pad = align_up(d.size(), _alignment) - d.size(); pad > 0;) {
            auto n = std::min<uint64_t>(pad, sizeof zeros);
            put(zeros, n);
            pad -= n;
        }
    }
    if (::fsync(fd) != 0) {
        give_up("sync");
    }
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) {
        give_up("close");
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        give_up("rename onto");
    }
}

} // namespace llmos::engine
