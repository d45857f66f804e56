// SPDX-License-Identifier: MIT
//
// The saved-mindspace file format: header encoding, validation of bad
// files, and the save/load round trip (sparse, CRC-checked) on real files.
#include <cstring>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <llmos/ms_file.hh>
#include <random>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace {

class tmpfile {
    std::string _path;
    int _fd;

public:
    tmpfile() {
        char tmpl[] = "/tmp/llmos-ms-file-XXXXXX";
        _fd = ::mkstemp(tmpl);
        _path = tmpl;
    }
    ~tmpfile() {
        ::close(_fd);
        ::unlink(_path.c_str());
    }
    int fd() const { return _fd; }
};

llmos::ms_file_meta sample_meta() {
    llmos::ms_file_meta m;
    m.length = 64 * 1024;
    m.flags = 1;
    m.mode = 0640;
    m.numa_node = -1;
    m.crc32 = 0xdeadbeef;
    m.created_ns = 1234567890123ull;
    m.name = "agent.ctx:7";
    return m;
}

TEST(ms_file, header_round_trips) {
    auto m = sample_meta();
    auto h = llmos::encode_ms_file_header(m);
    auto d = llmos::decode_ms_file_header(h);
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_EQ(d->length, m.length);
    EXPECT_EQ(d->flags, m.flags);
    EXPECT_EQ(d->mode, m.mode);
    EXPECT_EQ(d->numa_node, -1);
    EXPECT_EQ(d->crc32, m.crc32);
    EXPECT_EQ(d->created_ns, m.created_ns);
    EXPECT_EQ(d->name, m.name);
    // Little-endian on disk, whatever the host.
    EXPECT_EQ(std::memcmp(h.data(), "LLMOSMS1", 8), 0);
    EXPECT_EQ(static_cast<unsigned>(h[16]), 0u);
    EXPECT_EQ(static_cast<unsigned>(h[17]), 0x00u);
    EXPECT_EQ(static_cast<unsigned>(h[18]), 0x01u); // 64 KiB = 0x10000
}

TEST(ms_file, bad_headers_are_refused_with_the_right_error) {
    auto good = llmos::encode_ms_file_header(sample_meta());
    auto bad = good;
    bad[0] = std::byte{'X'};
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::not_ms_file);
    bad = good;
    bad[8] = std::byte{2}; // version
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_version);
    bad = good;
    bad[16] = std::byte{1}; // length not page-aligned
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_corrupt);
    bad = good;
    bad[13] = std::byte{1}; // header size
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_corrupt);
    bad = good;
    bad[29] = std::byte{0x10}; // mode beyond 0777
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_corrupt);
    bad = good;
    bad[4000] = std::byte{1}; // reserved bytes
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_corrupt);
    bad = good;
    std::memset(bad.data() + 48, 'a', 64); // name without NUL
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_corrupt);
    // What no mindspace has: a name with a '/', bytes after the name's
    // NUL, flags that are not a saved mindspace's, a node below -1.
    auto m = sample_meta();
    m.name = "bad/name!";
    EXPECT_EQ(llmos::decode_ms_file_header(llmos::encode_ms_file_header(m)).error(),
              llmos::errc::ms_file_corrupt);
    bad = good;
    bad[48 + 20] = std::byte{'x'}; // past "agent.ctx:7" and its NUL
    EXPECT_EQ(llmos::decode_ms_file_header(bad).error(), llmos::errc::ms_file_corrupt);
    m = sample_meta();
    m.flags = 0xffffffff;
    EXPECT_EQ(llmos::decode_ms_file_header(llmos::encode_ms_file_header(m)).error(),
              llmos::errc::ms_file_corrupt);
    m = sample_meta();
    m.numa_node = -77;
    EXPECT_EQ(llmos::decode_ms_file_header(llmos::encode_ms_file_header(m)).error(),
              llmos::errc::ms_file_corrupt);
    m = sample_meta();
    m.name.clear(); // an anonymous mindspace's
    EXPECT_TRUE(llmos::decode_ms_file_header(llmos::encode_ms_file_header(m)));
    EXPECT_EQ(llmos::decode_ms_file_header(std::span{good}.first(100)).error(),
              llmos::errc::not_ms_file);
}

TEST(ms_file, crc_matches_zlib_reference) {
    const char* s = "123456789";
    auto crc = llmos::crc32_update(0, std::as_bytes(std::span{s, 9}));
    EXPECT_EQ(crc, 0xCBF43926u); // the CRC-32 check value
}

// A zero-filled, page-aligned buffer like a fresh mindspace.
struct region {
    size_t len;
    std::byte* p;
    explicit region(size_t n)
        : len(n) {
        p = static_cast<std::byte*>(
            ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    }
    ~region() { ::munmap(p, len); }
    std::span<std::byte> span() const { return {p, len}; }
};

TEST(ms_file, save_then_load_round_trips_sparse_data) {
    const size_t len = 8 << 20;
    region src(len);
    std::mt19937 rng(42);
    for (size_t off : {size_t{0}, size_t{4096 * 3}, size_t{5 << 20}, len - 4096}) {
        for (size_t i = 0; i < 4096; ++i) {
            src.p[off + i] = static_cast<std::byte>(rng());
        }
    }
    tmpfile f;
    auto meta = sample_meta();
    ASSERT_FALSE(llmos::save_ms_file(f.fd(), meta, src.span()));
    struct stat st;
    ASSERT_EQ(::fstat(f.fd(), &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size), llmos::ms_file_header_size + len);
    // Four data pages and the header: the rest are holes.
    EXPECT_LT(static_cast<size_t>(st.st_blocks) * 512, size_t{1} << 20);

    auto m = llmos::read_ms_file_meta(f.fd());
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m->length, len);
    EXPECT_EQ(m->name, meta.name);
    region dst(len);
    ASSERT_FALSE(llmos::load_ms_file_data(f.fd(), *m, dst.span()));
    EXPECT_EQ(std::memcmp(src.p, dst.p, len), 0);
}

TEST(ms_file, damaged_or_truncated_data_is_refused) {
    const size_t len = 64 * 1024;
    region src(len);
    std::memset(src.p + 4096, 0x5a, 4096);
    tmpfile f;
    ASSERT_FALSE(llmos::save_ms_file(f.fd(), sample_meta(), src.span()));
    // One flipped byte: the CRC catches it.
    const char x = 'X';
    ASSERT_EQ(::pwrite(f.fd(), &x, 1, llmos::ms_file_header_size + 4096 + 17), 1);
    auto m = llmos::read_ms_file_meta(f.fd());
    ASSERT_TRUE(m);
    region dst(len);
    EXPECT_EQ(llmos::load_ms_file_data(f.fd(), *m, dst.span()), llmos::errc::ms_file_corrupt);
    // A byte written into a hole is caught too.
    ASSERT_FALSE(llmos::save_ms_file(f.fd(), sample_meta(), src.span()));
    ASSERT_EQ(::pwrite(f.fd(), &x, 1, llmos::ms_file_header_size + 40000), 1);
    region dst2(len);
    EXPECT_EQ(llmos::load_ms_file_data(f.fd(), *m, dst2.span()), llmos::errc::ms_file_corrupt);
    // Truncated: the size no longer matches the header.
    ASSERT_EQ(::ftruncate(f.fd(), llmos::ms_file_header_size + len - 4096), 0);
    EXPECT_EQ(llmos::read_ms_file_meta(f.fd()).error(), llmos::errc::ms_file_corrupt);
    ASSERT_EQ(::ftruncate(f.fd(), 100), 0);
    EXPECT_EQ(llmos::read_ms_file_meta(f.fd()).error(), llmos::errc::not_ms_file);
}

TEST(ms_file, crc_of_zeros_matches_the_bytewise_crc) {
    std::vector<std::byte> zeros(300000);
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{4096}, size_t{65537}, zeros.size()}) {
        uint32_t seed = llmos::crc32_update(0, std::as_bytes(std::span{"seed", 4}));
        EXPECT_EQ(llmos::crc32_zeros(seed, n), llmos::crc32_update(seed, std::span{zeros}.first(n)))
            << n;
    }
    // Any length, 2^63 and past it too (zlib's lengths are signed): in
    // steps or at once, the same.
    const uint64_t half = uint64_t{1} << 63;
    EXPECT_EQ(llmos::crc32_zeros(7, half), llmos::crc32_zeros(llmos::crc32_zeros(7, half - 1), 1));
    EXPECT_EQ(llmos::crc32_zeros(7, UINT64_MAX),
              llmos::crc32_zeros(llmos::crc32_zeros(7, half), half - 1));
}

TEST(ms_file, save_reads_only_the_given_data_ranges) {
    const size_t len = 1 << 20;
    region src(len);
    std::memset(src.p + 8192, 0x11, 4096);
    std::memset(src.p + 65536, 0x22, 8192);
    // Protect everything, then open up only the data ranges: touching
    // anything else would fault.
    ASSERT_EQ(::mprotect(src.p, len, PROT_NONE), 0);
    ASSERT_EQ(::mprotect(src.p + 8192, 4096, PROT_READ), 0);
    ASSERT_EQ(::mprotect(src.p + 65536, 8192, PROT_READ), 0);
    std::vector<llmos::byte_range> ranges{{8192, 4096}, {65536, 8192}};
    tmpfile f;
    ASSERT_FALSE(llmos::save_ms_file(f.fd(), sample_meta(), src.span(), &ranges));
    ASSERT_EQ(::mprotect(src.p, len, PROT_READ), 0);
    auto m = llmos::read_ms_file_meta(f.fd());
    ASSERT_TRUE(m);
    EXPECT_EQ(m->crc32, llmos::crc32_update(0, src.span()));
    region dst(len);
    ASSERT_FALSE(llmos::load_ms_file_data(f.fd(), *m, dst.span()));
    EXPECT_EQ(std::memcmp(src.p, dst.p, len), 0);
    // Ranges out of order or past the end are refused.
    std::vector<llmos::byte_range> bad{{65536, 8192}, {8192, 4096}};
    EXPECT_EQ(llmos::save_ms_file(f.fd(), sample_meta(), src.span(), &bad),
              std::errc::invalid_argument);
    bad = {{len - 4096, 8192}};
    EXPECT_EQ(llmos::save_ms_file(f.fd(), sample_meta(), src.span(), &bad),
              std::errc::invalid_argument);
}

// What would make a file that cannot be loaded is refused before the file
// is touched: the one there still loads.
TEST(ms_file, save_refuses_what_could_not_be_loaded_and_keeps_the_file) {
    region src(16384);
    std::memset(src.p, 0x33, 4096);
    tmpfile f;
    ASSERT_FALSE(llmos::save_ms_file(f.fd(), sample_meta(), src.span()));
    auto still_loads = [&] {
        auto m = llmos::read_ms_file_meta(f.fd());
        ASSERT_TRUE(m) << m.error().message();
        region dst(16384);
        ASSERT_FALSE(llmos::load_ms_file_data(f.fd(), *m, dst.span()));
        EXPECT_EQ(std::memcmp(src.p, dst.p, 16384), 0);
    };
    auto refused = [&](const llmos::ms_file_meta& m, std::span<const std::byte> data,
                       const std::vector<llmos::byte_range>* ranges = nullptr) {
        EXPECT_EQ(llmos::save_ms_file(f.fd(), m, data, ranges), std::errc::invalid_argument);
        still_loads();
    };
    refused(sample_meta(), src.span().first(100));
    refused(sample_meta(), {});
    auto m = sample_meta();
    m.mode = 01777;
    refused(m, src.span());
    m = sample_meta();
    m.flags = 0x80;
    refused(m, src.span());
    m = sample_meta();
    m.name = "bad/name";
    refused(m, src.span());
    m = sample_meta();
    m.numa_node = -2;
    refused(m, src.span());
    const std::vector<llmos::byte_range> unsorted{{8192, 4096}, {0, 4096}};
    refused(sample_meta(), src.span(), &unsorted);
    // An O_APPEND fd would put every page at the end.
    const int app = ::fcntl(f.fd(), F_DUPFD_CLOEXEC, 0);
    ASSERT_GE(app, 0);
    ASSERT_EQ(::fcntl(app, F_SETFL, O_APPEND), 0);
    EXPECT_EQ(llmos::save_ms_file(app, sample_meta(), src.span()), std::errc::invalid_argument);
    ASSERT_EQ(::fcntl(app, F_SETFL, 0), 0); // the file description is shared
    ::close(app);
    still_loads();
}

TEST(ms_file, destination_must_match_the_length) {
    region dst(8192);
    auto m = sample_meta();
    tmpfile f;
    EXPECT_EQ(llmos::load_ms_file_data(f.fd(), m, dst.span()), std::errc::invalid_argument);
}

} // namespace
