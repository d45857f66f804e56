// SPDX-License-Identifier: MIT
//
// GGUF reader and writer: the external conformance file (written by
// llama.cpp's gguf-py), writer -> reader round trips of every value type,
// one test per kind of corruption with the message it must give, and a
// deterministic mutation fuzz that accepts only "parses cleanly" or
// gguf_error.
#include "../support/paths.hh"

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <future>
#include <gtest/gtest.h>
#include <iterator>
#include <limits>
#include <llmos/engine/gguf.hh>
#include <string>
#include <sys/stat.h>
#include <typeinfo>
#include <unistd.h>
#include <vector>

using namespace llmos::engine;

namespace {

const std::string tiny_path = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

double test_scale() {
    const char* s = std::getenv("LLMOS_TEST_SCALE");
    double x = s ? std::atof(s) : 1.0;
    return x > 0 ? x : 1.0;
}

// The fuzz cases look for parser crashes and wrong errors, which a
// single thread finds; ThreadSanitizer, which slows them the most and finds
// only races, runs a quarter of their mutants (the other lanes all).
double fuzz_scale() {
#if defined(__SANITIZE_THREAD__)
    return test_scale() / 4;
#else
    return test_scale();
#endif
}

std::vector<std::byte> read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    std::memcpy(b.data(), c.data(), c.size());
    return b;
}

/// The gguf_error message parsing `b` gives, or "(parsed)".
std::string parse_error(std::span<const std::byte> b) {
    try {
        gguf_file::parse(b);
    } catch (const gguf_error& e) {
        return e.what();
    }
    return "(parsed)";
}

#define EXPECT_GGUF_ERROR(bytes, fragment)                                                         \
    do {                                                                                           \
        auto msg_ = parse_error(bytes);                                                            \
        EXPECT_NE(msg_.find(fragment), std::string::npos) << "message: " << msg_;                  \
    } while (0)

/// Raw GGUF bytes, for files no writer would make.
struct raw {
    std::vector<std::byte> b;

    raw& u8(uint8_t x) {
        b.push_back(std::byte{x});
        return *this;
    }
    raw& u32(uint32_t x) { return put(&x, 4); }
    raw& u64(uint64_t x) { return put(&x, 8); }
    raw& str(std::string_view s) { return u64(s.size()).put(s.data(), s.size()); }
    raw& put(const void* p, size_t n) {
        auto c = static_cast<const std::byte*>(p);
        b.insert(b.end(), c, c + n);
        return *this;
    }
    raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
        return put("GGUF", 4).u32(version).u64(n_tensors).u64(n_kv);
    }
    raw& kv_u32(std::string_view key, uint32_t x) { return str(key).u32(4).u32(x); }
    raw& tensor(std::string_view name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
        str(name).u32(uint32_t(dims.size()));
        for (auto d : dims) {
            u64(d);
        }
        return u32(type).u64(offset);
    }
    /// Pads to `align` and appends `n` data bytes.
    raw& data(uint64_t n, uint64_t align = 32) {
        b.resize((b.size() + align - 1) / align * align + n);
        return *this;
    }
};

std::vector<std::byte> pattern(size_t n, uint32_t seed) {
    std::vector<std::byte> b(n);
    for (size_t i = 0; i < n; i++) {
        b[i] = std::byte(uint8_t((i * 131 + seed * 7919) >> 3));
    }
    return b;
}

/// A writer holding every value type and tensors of several types.
gguf_writer every_type_writer(uint32_t version, uint32_t alignment) {
    gguf_writer w(version);
    w.set("general.architecture", "llama");
    w.set_alignment(alignment);
    w.set("u8", uint8_t{255});
    w.set("i8", int8_t{-128});
    w.set("u16", uint16_t{65535});
    w.set("i16", int16_t{-32768});
    w.set("u32", uint32_t{4000000000u});
    w.set("i32", int32_t{-2000000000});
    w.set("f32", 3.5f);
    w.set("true", true);
    w.set("false", false);
    w.set("empty", "");
    w.set("unicode", "h\xc3\xa9llo \xe2\x96\x81\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\xa6\x99");
    w.set("nul", std::string("a\0b", 3));
    w.set("u64", std::numeric_limits<uint64_t>::max());
    w.set("i64", std::numeric_limits<int64_t>::min());
    w.set("f64", -1.25e300);
    w.set("strings", gguf_value::array_of<std::string>({"<unk>", "", "\xe2\x96\x81the"}));
    w.set("f32s", gguf_value::array_of<float>({0.0f, -1.5f, 1e-30f}));
    w.set("i32s", gguf_value::array_of<int32_t>({1, -2, 3}));
    w.set("u8s", gguf_value::array_of<uint8_t>({0, 1, 255}));
    w.set("bools", gguf_value::array(gguf_type::boolean, {true, false}));
    w.set("u64s", gguf_value::array_of<uint64_t>({0, std::numeric_limits<uint64_t>::max()}));
    w.set("f64s", gguf_value::array_of<double>({0.5, -0.25}));
    w.set("empty_strings", gguf_value::array(gguf_type::string, {}));
    w.set("empty_u32s", gguf_value::array(gguf_type::u32, {}));
    w.set("nested",
          gguf_value::array(gguf_type::array, {gguf_value::array_of<std::string>({"a", "bc"}),
                                               gguf_value::array(gguf_type::string, {}),
                                               gguf_value::array_of<int16_t>({-7})}));
    w.set("deep",
          gguf_value::array(
              gguf_type::array,
              {gguf_value::array(gguf_type::array, {gguf_value::array_of<std::string>({"x"})})}));
    w.add_tensor("f32", ggml_type::f32, {4, 3}, pattern(48, 1));
    w.add_tensor("f16", ggml_type::f16, {8}, pattern(16, 2));
    w.add_tensor("q4_0", ggml_type::q4_0, {64, 2}, pattern(2 * 2 * 18, 3));
    w.add_tensor("q8_0", ggml_type::q8_0, {32, 1, 2}, pattern(2 * 34, 4));
    w.add_tensor("q4_k", ggml_type::q4_k, {256, 1, 1, 2}, pattern(2 * 144, 5));
    w.add_tensor("bf16", ggml_type::bf16, {2, 2, 2, 2}, pattern(32, 6));
    return w;
}

/// The bytes a file needs: the end of the last tensor's data.
uint64_t needed_size(const gguf_file& f) {
    uint64_t end = 0;
    for (auto& t : f.tensors()) {
        end = std::max(end, f.data_offset() + t.offset + t.n_bytes);
    }
    return end;
}

} // namespace

// ---- the external conformance file -------------------------------------

TEST(gguf_testdata, metadata) {
    auto f = gguf_file::open(tiny_path);
    EXPECT_EQ(3u, f.version());
    EXPECT_EQ(32u, f.alignment());
    EXPECT_EQ(23u, f.kv_count());
    EXPECT_EQ("general.architecture", f.kvs().front().key);
    EXPECT_EQ("tokenizer.ggml.add_space_prefix", f.kvs().back().key);
    EXPECT_EQ("llama", f.get_string("general.architecture"));
    EXPECT_EQ("llamaref-tiny", f.get_string("general.name"));
    EXPECT_EQ(64u, f.get_u32("llama.embedding_length"));
    EXPECT_EQ(2u, f.get_u32("llama.block_count"));
    EXPECT_EQ(4u, f.get_u32("llama.attention.head_count"));
    EXPECT_EQ(2u, f.get_u32("llama.attention.head_count_kv"));
    EXPECT_EQ(176u, f.get_u32("llama.feed_forward_length"));
    EXPECT_EQ(256u, f.get_u64("llama.context_length"));
    EXPECT_EQ(16, f.get_i64("llama.rope.dimension_count"));
    EXPECT_EQ(1024u, f.get_u32("llama.vocab_size"));
    EXPECT_FLOAT_EQ(1e-5f, f.get_f32("llama.attention.layer_norm_rms_epsilon"));
    EXPECT_FLOAT_EQ(10000.0f, f.get_f32("llama.rope.freq_base"));
    EXPECT_EQ("llama", f.get_string("tokenizer.ggml.model"));
    EXPECT_EQ(1u, f.get_u32("tokenizer.ggml.bos_token_id"));
    EXPECT_EQ(2u, f.get_u32("tokenizer.ggml.eos_token_id"));
    EXPECT_EQ(0u, f.get_u32("tokenizer.ggml.unknown_token_id"));
    EXPECT_TRUE(f.get_bool("tokenizer.ggml.add_bos_token"));
    EXPECT_FALSE(f.get_bool("tokenizer.ggml.add_eos_token"));

    auto tokens = f.get_string_array("tokenizer.ggml.tokens");
    auto scores = f.get_f32_array("tokenizer.ggml.scores");
    auto types = f.get_i32_array("tokenizer.ggml.token_type");
    ASSERT_EQ(1024u, tokens.size());
    ASSERT_EQ(1024u, scores.size());
    ASSERT_EQ(1024u, types.size());
    EXPECT_EQ("<unk>", tokens[0]);
    EXPECT_EQ("<s>", tokens[1]);
    EXPECT_EQ("</s>", tokens[2]);
    EXPECT_EQ("<0x00>", tokens[3]);
    EXPECT_EQ("<0xFF>", tokens[258]);
    EXPECT_EQ(2, types[0]); // unknown
    EXPECT_EQ(3, types[1]); // control
    EXPECT_EQ(6, types[3]); // byte
    auto arr = f.find("tokenizer.ggml.tokens")->get_if<gguf_array>();
    ASSERT_NE(nullptr, arr);
    EXPECT_EQ(gguf_type::string, arr->type);

    EXPECT_EQ(nullptr, f.find("no.such.key"));
    EXPECT_EQ(std::nullopt, f.find_u32("no.such.key"));
    EXPECT_EQ(std::nullopt, f.find_string("no.such.key"));
    EXPECT_EQ(std::optional<uint32_t>(2), f.find_u32("llama.block_count"));
    EXPECT_EQ(std::optional<bool>(true), f.find_bool("tokenizer.ggml.add_space_prefix"));
}

TEST(gguf_testdata, tensors) {
    auto f = gguf_file::open(tiny_path);
    auto& ts = f.tensors();
    ASSERT_EQ(3u + 9u * 2, ts.size());
    EXPECT_EQ(25056u, f.data_offset());
    EXPECT_EQ("token_embd.weight", ts.front().name);
    EXPECT_EQ("output.weight", ts.back().name);

    auto shape = [&](const char* name) {
        auto t = f.find_tensor(name);
        EXPECT_NE(nullptr, t) << name;
        return t ? std::vector<uint64_t>(t->dims().begin(), t->dims().end())
                 : std::vector<uint64_t>{};
    };
    using dims = std::vector<uint64_t>;
    EXPECT_EQ((dims{64, 1024}), shape("token_embd.weight"));
    EXPECT_EQ((dims{64, 1024}), shape("output.weight"));
    EXPECT_EQ((dims{64}), shape("output_norm.weight"));
    for (int l = 0; l < 2; l++) {
        auto n = [&](const char* s) { return "blk." + std::to_string(l) + "." + s; };
        EXPECT_EQ((dims{64}), shape(n("attn_norm.weight").c_str()));
        EXPECT_EQ((dims{64, 64}), shape(n("attn_q.weight").c_str()));
        EXPECT_EQ((dims{64, 32}), shape(n("attn_k.weight").c_str()));
        EXPECT_EQ((dims{64, 32}), shape(n("attn_v.weight").c_str()));
        EXPECT_EQ((dims{64, 64}), shape(n("attn_output.weight").c_str()));
        EXPECT_EQ((dims{64}), shape(n("ffn_norm.weight").c_str()));
        EXPECT_EQ((dims{64, 176}), shape(n("ffn_gate.weight").c_str()));
        EXPECT_EQ((dims{64, 176}), shape(n("ffn_up.weight").c_str()));
        EXPECT_EQ((dims{176, 64}), shape(n("ffn_down.weight").c_str()));
    }
    EXPECT_EQ(nullptr, f.find_tensor("blk.2.attn_q.weight"));

    auto file = f.bytes();
    for (auto& t : ts) {
        EXPECT_EQ(ggml_type::f32, t.type) << t.name;
        EXPECT_EQ(t.n_elements * 4, t.n_bytes) << t.name;
        EXPECT_EQ(t.ne[0] * 4, t.row_bytes) << t.name;
        EXPECT_EQ(t.n_elements / t.ne[0], t.n_rows) << t.name;
        ASSERT_EQ(t.n_bytes, t.data.size()) << t.name;
        EXPECT_GE(t.data.data(), file.data() + f.data_offset()) << t.name;
        EXPECT_LE(t.data.data() + t.data.size(), file.data() + file.size()) << t.name;
        EXPECT_EQ(f.data_offset() + t.offset, uint64_t(t.data.data() - file.data())) << t.name;
        EXPECT_EQ(0u, reinterpret_cast<uintptr_t>(t.data.data()) % f.alignment()) << t.name;
    }
    EXPECT_EQ(file.size(), needed_size(f)); // the last tensor ends the file

    // Norm weights are all 1 in this file; the embedding is small noise.
    auto norm = f.find_tensor("blk.1.ffn_norm.weight")->data;
    for (size_t i = 0; i < 64; i++) {
        float x;
        std::memcpy(&x, norm.data() + 4 * i, 4);
        ASSERT_EQ(1.0f, x) << i;
    }
    float e;
    std::memcpy(&e, f.find_tensor("token_embd.weight")->data.data(), 4);
    EXPECT_LT(std::abs(e), 0.2f);
    EXPECT_NE(0.0f, e);
}

// gguf-py and this writer lay files out the same way: copying every kv and
// tensor gives the original bytes back.
TEST(gguf_testdata, rewrite_is_byte_identical) {
    auto f = gguf_file::open(tiny_path);
    gguf_writer w(f.version());
    for (auto& kv : f.kvs()) {
        w.set(kv.key, kv.value);
    }
    for (auto& t : f.tensors()) {
        w.add_tensor(t.name, t.type, t.dims(), t.data);
    }
    auto out = w.write();
    auto in = f.bytes();
    ASSERT_EQ(in.size(), out.size());
    EXPECT_EQ(0, std::memcmp(in.data(), out.data(), in.size()));
}

TEST(gguf_testdata, move_keeps_views) {
    auto f = gguf_file::open(tiny_path);
    auto data = f.find_tensor("output.weight")->data;
    gguf_file g = std::move(f);
    EXPECT_EQ(data.data(), g.find_tensor("output.weight")->data.data());
    EXPECT_EQ(64u, g.get_u32("llama.embedding_length"));
    gguf_file h = gguf_file::open(tiny_path);
    h = std::move(g);
    EXPECT_EQ(data.data(), h.find_tensor("output.weight")->data.data());
}

TEST(gguf_testdata, typed_getter_errors) {
    auto f = gguf_file::open(tiny_path);
    auto error = [&](auto fn) -> std::string {
        try {
            fn();
        } catch (const gguf_error& e) {
            return e.what();
        }
        return "(no error)";
    };
    EXPECT_EQ("gguf: missing key 'llama.nope'", error([&] { f.get_u32("llama.nope"); }));
    EXPECT_EQ("gguf: key 'general.name' is string, expected bool",
              error([&] { f.get_bool("general.name"); }));
    EXPECT_NE(std::string::npos, error([&] {
                                     f.get_u32("general.architecture");
                                 }).find("key 'general.architecture' is string"));
    EXPECT_NE(std::string::npos,
              error([&] { f.get_f32_array("tokenizer.ggml.tokens"); })
                  .find("key 'tokenizer.ggml.tokens' is array of string: element 0 is string "
                        "\"<unk>\", expected f32"));
    EXPECT_NE(std::string::npos,
              error([&] { f.get_string_array("llama.block_count"); }).find("is u32"));
    EXPECT_NE(std::string::npos,
              error([&] { f.find_string("llama.block_count"); }).find("expected string"));
}

// ---- writer -> reader ----------------------------------------------------

class gguf_round_trip : public testing::TestWithParam<std::tuple<uint32_t, uint32_t>> {};

TEST_P(gguf_round_trip, every_type) {
    auto [version, alignment] = GetParam();
    auto w = every_type_writer(version, alignment);
    auto bytes = w.write();
    auto f = gguf_file::parse(bytes);
    EXPECT_EQ(version, f.version());
    EXPECT_EQ(alignment, f.alignment());
    EXPECT_EQ(0u, f.data_offset() % alignment);
    EXPECT_EQ(0u, bytes.size() % alignment);
    if (alignment == 32) {
        EXPECT_EQ(nullptr, f.find("general.alignment")); // the default is not written
    } else {
        EXPECT_EQ(alignment, f.get_u32("general.alignment"));
    }

    // Same kvs in the same order, deep-equal.
    auto ref = every_type_writer(version, alignment);
    std::vector<std::string> keys;
    for (auto& kv : f.kvs()) {
        keys.push_back(kv.key);
    }
    ASSERT_EQ(alignment == 32 ? 27u : 28u, keys.size());
    EXPECT_EQ("general.architecture", keys[0]);
    EXPECT_EQ("deep", keys.back());
    EXPECT_EQ(gguf_value(uint8_t{255}), *f.find("u8"));
    EXPECT_EQ(gguf_type::i8, f.find("i8")->type());
    EXPECT_EQ(-128, f.get_i64("i8"));
    EXPECT_EQ(65535u, f.get_u32("u16"));
    EXPECT_EQ(-32768, f.get_i64("i16"));
    EXPECT_EQ(4000000000u, f.get_u32("u32"));
    EXPECT_EQ(-2000000000, f.get_i64("i32"));
    EXPECT_EQ(3.5f, f.get_f32("f32"));
    EXPECT_TRUE(f.get_bool("true"));
    EXPECT_FALSE(f.get_bool("false"));
    EXPECT_EQ("", f.get_string("empty"));
    EXPECT_EQ("h\xc3\xa9llo \xe2\x96\x81\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\xa6\x99",
              f.get_string("unicode"));
    EXPECT_EQ(std::string_view("a\0b", 3), f.get_string("nul"));
    EXPECT_EQ(std::numeric_limits<uint64_t>::max(), f.get_u64("u64"));
    EXPECT_EQ(std::numeric_limits<int64_t>::min(), f.get_i64("i64"));
    EXPECT_EQ(-1.25e300, *f.find("f64")->get_if<double>());
    // Read as f32: beyond its range, its infinity (a plain cast is undefined).
    EXPECT_EQ(-std::numeric_limits<float>::infinity(), f.get_f32("f64"));
    EXPECT_EQ((std::vector<std::string>{"<unk>", "", "\xe2\x96\x81the"}),
              f.get_string_array("strings"));
    EXPECT_EQ((std::vector<float>{0.0f, -1.5f, 1e-30f}), f.get_f32_array("f32s"));
    EXPECT_EQ((std::vector<float>{0.5f, -0.25f}), f.get_f32_array("f64s"));
    EXPECT_EQ((std::vector<int32_t>{1, -2, 3}), f.get_i32_array("i32s"));
    EXPECT_EQ((std::vector<int32_t>{0, 1, 255}), f.get_i32_array("u8s"));
    EXPECT_TRUE(f.get_string_array("empty_strings").empty());
    EXPECT_EQ(gguf_type::string, f.find("empty_strings")->get_if<gguf_array>()->type);
    EXPECT_EQ(gguf_type::u32, f.find("empty_u32s")->get_if<gguf_array>()->type);
    auto nested = f.find("nested")->get_if<gguf_array>();
    ASSERT_NE(nullptr, nested);
    ASSERT_EQ(3u, nested->items.size());
    EXPECT_EQ(gguf_value::array_of<std::string>({"a", "bc"}), nested->items[0]);
    EXPECT_EQ(gguf_value::array(gguf_type::string, {}), nested->items[1]);
    EXPECT_EQ(gguf_value::array_of<int16_t>({-7}), nested->items[2]);
    EXPECT_EQ("[[\"a\", \"bc\"], [], [-7]]", to_string(*f.find("nested")));
    EXPECT_EQ("\"a\\x00b\"", to_string(*f.find("nul")));
    // Every kv deep-equals what was set (the writer's own copy, re-read).
    auto again = gguf_file::parse(bytes);
    for (size_t i = 0; i < f.kv_count(); i++) {
        EXPECT_EQ(f.kvs()[i].key, again.kvs()[i].key);
        EXPECT_TRUE(f.kvs()[i].value == again.kvs()[i].value) << f.kvs()[i].key;
    }

    // Tensors: shapes, types, sizes, bytes.
    struct expect {
        const char* name;
        ggml_type type;
        std::vector<uint64_t> dims;
        size_t bytes;
        uint32_t seed;
    };
    std::vector<expect> want = {
        {"f32", ggml_type::f32, {4, 3}, 48, 1},
        {"f16", ggml_type::f16, {8}, 16, 2},
        {"q4_0", ggml_type::q4_0, {64, 2}, 72, 3},
        {"q8_0", ggml_type::q8_0, {32, 1, 2}, 68, 4},
        {"q4_k", ggml_type::q4_k, {256, 1, 1, 2}, 288, 5},
        {"bf16", ggml_type::bf16, {2, 2, 2, 2}, 32, 6},
    };
    ASSERT_EQ(want.size(), f.tensors().size());
    for (size_t i = 0; i < want.size(); i++) {
        auto& t = f.tensors()[i];
        EXPECT_EQ(want[i].name, t.name);
        EXPECT_EQ(want[i].type, t.type);
        EXPECT_EQ(want[i].dims, std::vector<uint64_t>(t.dims().begin(), t.dims().end()));
        EXPECT_EQ(want[i].bytes, t.n_bytes);
        EXPECT_EQ(*row_bytes(t.type, t.ne[0]), t.row_bytes);
        EXPECT_EQ(0u, t.offset % alignment);
        auto p = pattern(want[i].bytes, want[i].seed);
        ASSERT_EQ(p.size(), t.data.size());
        EXPECT_EQ(0, std::memcmp(p.data(), t.data.data(), p.size())) << t.name;
    }

    // Byte-identical on repeat, and when rebuilt from what was read.
    EXPECT_EQ(bytes, w.write());
    gguf_writer copy(version);
    for (auto& kv : f.kvs()) {
        copy.set(kv.key, kv.value);
    }
    for (auto& t : f.tensors()) {
        copy.add_tensor(t.name, t.type, t.dims(), t.data);
    }
    EXPECT_EQ(bytes, copy.write());
}

TEST_P(gguf_round_trip, to_path_atomically) {
    auto [version, alignment] = GetParam();
    auto dir = std::filesystem::temp_directory_path() /
               ("gguf_test." + std::to_string(::getpid()) + "." + std::to_string(version) + "." +
                std::to_string(alignment));
    std::filesystem::create_directories(dir);
    auto path = (dir / "model.gguf").string();
    auto w = every_type_writer(version, alignment);
    w.write(path);
    w.write(path); // replaces the file
    EXPECT_EQ(w.write(), read_all(path));
    auto f = gguf_file::open(path);
    EXPECT_EQ(version, f.version());
    EXPECT_EQ(6u, f.tensors().size());
    EXPECT_EQ(1u, std::distance(std::filesystem::directory_iterator(dir),
                                std::filesystem::directory_iterator()))
        << "a temporary file was left behind";
    std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(versions_alignments, gguf_round_trip,
                         testing::Combine(testing::Values(2u, 3u), testing::Values(32u, 64u)));

/// This process's resident memory, bytes.
size_t resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    size_t pages = 0;
    size_t resident = 0;
    statm >> pages >> resident;
    return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

// A model file cut short under its mapping: the process still dies of the
// fault (nothing can be read there), but says which file it was.
TEST(gguf_file, a_model_file_cut_short_while_mapped_is_named_when_it_faults) {
    const std::string path =
        (std::filesystem::temp_directory_path() / ("gguf-cut-" + std::to_string(::getpid())))
            .string();
    std::filesystem::copy_file(tiny_path, path, std::filesystem::copy_options::overwrite_existing);
    auto read_past_the_cut = [&] {
        auto f = gguf_file::open(path);
        llmos::engine::report_truncated_models();
        const auto& last = f.tensors().back();
        ASSERT_EQ(0, ::truncate(path.c_str(), static_cast<off_t>(f.data_offset())));
        volatile std::byte b = last.data[last.data.size() - 1];
        (void)b;
    };
    EXPECT_EXIT(
        read_past_the_cut(), [](int) { return true; },
        "gguf: the model file '" + path + "' became shorter while mapped");
    std::filesystem::remove(path);
    // Another SIGBUS is as it was (what handled it before handles it: the
    // default action, or a sanitizer's report): the process still dies.
    EXPECT_EXIT(
        {
            llmos::engine::report_truncated_models();
            ::raise(SIGBUS);
        },
        [](int st) { return WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0); }, "");
}

TEST(gguf_file, dropped_pages_leave_memory_and_read_back_the_same) {
    auto dir =
        std::filesystem::temp_directory_path() / ("gguf_test.drop." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto path = (dir / "big.gguf").string();
    std::vector<float> v(4 << 20); // 16 MiB of tensor data
    for (size_t i = 0; i < v.size(); ++i) {
        v[i] = static_cast<float>(i % 1000);
    }
    gguf_writer w;
    w.add_tensor("big", ggml_type::f32, {v.size()}, std::as_bytes(std::span(v)));
    w.write(path);
    auto f = gguf_file::open(path);
    const std::span<const std::byte> data = f.tensors()[0].data;
    auto sum = [&] {
        double s = 0;
        const auto* p = reinterpret_cast<const float*>(data.data());
        for (size_t i = 0; i < v.size(); ++i) {
            s += p[i];
        }
        return s;
    };
    const double want = sum(); // every page mapped in
    const size_t before = resident_bytes();
    const size_t dropped = f.drop_pages(data);
    const size_t after = resident_bytes();
    EXPECT_GE(dropped, data.size() - 2 * static_cast<size_t>(::sysconf(_SC_PAGESIZE)));
    EXPECT_LE(dropped, data.size());
    EXPECT_GE(before - std::min(before, after), dropped / 2) << before << " -> " << after;
    EXPECT_EQ(sum(), want); // read back from the file
    // Nothing to let go: outside the file, empty, or bytes that were parsed.
    EXPECT_EQ(f.drop_pages({}), 0u);
    EXPECT_EQ(f.drop_pages(std::as_bytes(std::span(v))), 0u);
    const auto bytes = read_all(path);
    auto parsed = gguf_file::parse(bytes);
    EXPECT_EQ(parsed.drop_pages(parsed.tensors()[0].data), 0u);
    EXPECT_EQ(parsed.tensors()[0].data[4], data[4]);
    std::filesystem::remove_all(dir);
}

TEST(gguf_writer, empty_file) {
    gguf_writer w;
    auto bytes = w.write();
    EXPECT_EQ(32u, bytes.size()); // 24-byte header padded to the alignment
    auto f = gguf_file::parse(bytes);
    EXPECT_EQ(0u, f.kv_count());
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_EQ(32u, f.data_offset());
}

TEST(gguf_writer, set_replaces_in_place_and_erase) {
    gguf_writer w;
    w.set("a", 1u);
    w.set("b", 2u);
    w.set("a", "now a string");
    auto f = gguf_file::parse(w.write());
    ASSERT_EQ(2u, f.kv_count());
    EXPECT_EQ("a", f.kvs()[0].key);
    EXPECT_EQ("now a string", f.get_string("a"));
    EXPECT_TRUE(w.erase("a"));
    EXPECT_FALSE(w.erase("a"));
    w.set_alignment(128);
    EXPECT_EQ(128u, w.alignment());
    w.set_alignment(32);
    EXPECT_EQ(nullptr, gguf_file::parse(w.write()).find("general.alignment"));
}

namespace {
// What `fn` throws as a gguf_error, or "(no error)".
template <typename Fn>
std::string error(Fn fn) {
    try {
        fn();
    } catch (const gguf_error& e) {
        return e.what();
    }
    return "(no error)";
}
} // namespace

TEST(gguf_writer, refuses_bad_input) {
    EXPECT_NE(std::string::npos, error([] { gguf_writer w(1); }).find("cannot write version 1"));
    gguf_writer w;
    auto f32 = pattern(16, 0);
    w.add_tensor("w", ggml_type::f32, {4}, f32);
    EXPECT_EQ("gguf: duplicate tensor 'w'",
              error([&] { w.add_tensor("w", ggml_type::f32, {4}, f32); }));
    EXPECT_EQ("gguf: tensor 'x' has 16 bytes of data, its shape needs 32", error([&] {
                  w.add_tensor("x", ggml_type::f32, {4, 2}, f32);
              }));
    EXPECT_NE(std::string::npos,
              error([&] {
                  w.add_tensor("x", ggml_type::q4_0, {16}, f32);
              }).find("row length 16 is not a multiple of the Q4_0 block size 32"));
    EXPECT_NE(std::string::npos,
              error([&] { w.add_tensor("x", ggml_type::f32, {}, f32); }).find("n_dims 0"));
    EXPECT_NE(std::string::npos, error([&] {
                                     w.add_tensor("x", ggml_type::f32, {1, 1, 1, 1, 4}, f32);
                                 }).find("n_dims 5"));
    EXPECT_NE(std::string::npos, error([&] {
                                     w.add_tensor("x", ggml_type(4), {4}, f32);
                                 }).find("unknown ggml type 4"));
    EXPECT_NE(std::string::npos, error([&] {
                                     w.set("a", gguf_value::array(gguf_type::u32, {1u, "x"}));
                                 }).find("element 1 of an array of u32 is string"));
    EXPECT_NE(std::string::npos,
              error([&] { w.set_alignment(3); }).find("a power of two, 8 or more"));
    EXPECT_NE(std::string::npos,
              error([&] { w.set("general.alignment", 0u); }).find("a power of two"));
    EXPECT_NE(std::string::npos,
              error([&] { w.set("general.alignment", "64"); }).find("got string"));
    EXPECT_EQ(32u, w.alignment());
    gguf_value deep = gguf_value::array(gguf_type::u8, {});
    for (int i = 0; i < 8; i++) {
        deep = gguf_value::array(gguf_type::array, {deep});
    }
    EXPECT_NE(std::string::npos, error([&] { w.set("deep", deep); }).find("nested deeper"));
    EXPECT_NE(std::string::npos, error([&] {
                                     w.write("/nonexistent-dir/x.gguf");
                                 }).find("cannot create '/nonexistent-dir/x.gguf.tmp."));
}

// What the writer writes, the GGUF spec, llama.cpp and gguf_file take: an
// alignment that is a multiple of 8, tensor names of 63 bytes at most,
// and metadata and tensor counts within the reader's limits (shown here
// with lower ones: the defaults take hundreds of MB to pass).
TEST(gguf_writer, keeps_to_the_spec_and_the_readers_limits) {
    gguf_writer w;
    for (uint32_t a : {1u, 2u, 4u}) {
        EXPECT_EQ("gguf: general.alignment must be a power of two, 8 or more (GGUF wants a "
                  "multiple of 8), got u32 " +
                      std::to_string(a),
                  error([&] { w.set_alignment(a); }));
        EXPECT_NE(std::string::npos,
                  error([&] { w.set("general.alignment", uint64_t{a}); }).find("8 or more"));
    }
    EXPECT_EQ(32u, w.alignment());
    w.set_alignment(gguf_min_alignment);
    const std::string longest(gguf_max_tensor_name, 'n');
    w.add_tensor(longest, ggml_type::f32, {3}, pattern(12, 1));
    w.add_tensor("next", ggml_type::f32, {1}, pattern(4, 2));
    auto bytes = w.write();
    auto f = gguf_file::parse(bytes);
    EXPECT_EQ(8u, f.alignment());
    EXPECT_EQ(16u, f.find_tensor("next")->offset); // 12 bytes, padded to 8
    EXPECT_EQ(longest, f.tensors()[0].name);
    EXPECT_EQ("gguf: tensor name '" + std::string(64, 'n') +
                  "' is 64 bytes long; GGUF takes 63 at most",
              error([&] { w.add_tensor(longest + "n", ggml_type::f32, {1}, pattern(4, 3)); }));

    // 5 values (the array and its 3 elements are 4) and 11 bytes of text
    // (keys "k" and "arr", strings "a", "b", "c", tensor names "t1", "t2").
    const gguf_limits exact{.metadata_values = 5, .metadata_text = 11, .tensors = 2};
    auto fill = [](gguf_writer& x) {
        x.set("k", 1u);
        x.set("arr", gguf_value::array(gguf_type::string, {"a", "b", "c"}));
        x.set("s", "");
        x.erase("s"); // what is erased counts no more
        x.add_tensor("t1", ggml_type::f32, {1}, pattern(4, 1));
        x.add_tensor("t2", ggml_type::f32, {1}, pattern(4, 2));
    };
    gguf_writer at(3, exact);
    fill(at);
    EXPECT_EQ(2u, gguf_file::parse(at.write()).tensors().size());
    EXPECT_EQ("gguf: tensor 't3' would be one more than the 2 tensors a file may have",
              error([&] { at.add_tensor("t3", ggml_type::f32, {1}, pattern(4, 3)); }));
    gguf_writer values(3, {.metadata_values = 4});
    fill(values);
    EXPECT_EQ("gguf: the metadata holds 5 values, more than the 4 a file may have",
              error([&] { values.write(); }));
    gguf_writer text(3, {.metadata_text = 10});
    fill(text);
    EXPECT_EQ("gguf: the metadata's keys, strings and tensor names take 11 bytes, more than the "
              "10 a file may have",
              error([&] { text.write(); }));

    // Refused so, a write to a path leaves no file and no descriptor behind.
    auto dir =
        std::filesystem::temp_directory_path() / ("gguf_test.limits." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto fds = [] {
        return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                             std::filesystem::directory_iterator());
    };
    const auto open_before = fds();
    EXPECT_NE(std::string::npos,
              error([&] { values.write((dir / "m.gguf").string()); }).find("5 values"));
    EXPECT_EQ(open_before, fds());
    EXPECT_EQ(0, std::distance(std::filesystem::directory_iterator(dir),
                               std::filesystem::directory_iterator()))
        << "a temporary file was left behind";
    std::filesystem::remove_all(dir);
}

// ---- corrupt files -----------------------------------------------------

TEST(gguf_errors, open) {
    try {
        gguf_file::open("/nonexistent/model.gguf");
        FAIL() << "opened a missing file";
    } catch (const gguf_error& e) {
        EXPECT_EQ(std::string("gguf: cannot open '/nonexistent/model.gguf': ") +
                      std::strerror(ENOENT),
                  e.what());
    }
    try {
        gguf_file::open("/");
        FAIL() << "opened a directory";
    } catch (const gguf_error& e) {
        EXPECT_EQ(std::string("gguf: '/' is not a regular file"), e.what());
    }
    try {
        gguf_file::open("/dev/null");
        FAIL() << "opened /dev/null";
    } catch (const gguf_error& e) {
        EXPECT_NE(nullptr, std::strstr(e.what(), "not a regular file"));
    }
}

// A FIFO is refused at once: opening it must not wait for a writer (a
// model path from an HTTP request would hang its connection for good).
TEST(gguf_errors, a_fifo_is_refused_without_waiting_for_a_writer) {
    const auto dir =
        std::filesystem::temp_directory_path() / ("gguf_fifo_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto fifo = (dir / "model.gguf").string();
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
    auto opened = std::async(std::launch::async, [&] {
        try {
            gguf_file::open(fifo);
            return std::string("opened");
        } catch (const gguf_error& e) {
            return std::string(e.what());
        }
    });
    if (opened.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        ADD_FAILURE() << "open of a FIFO waits for a writer";
        // Let it go: a writer comes and goes.
        int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (w >= 0) {
            ::close(w);
        }
    }
    EXPECT_EQ(opened.get(), "gguf: '" + fifo + "' is not a regular file");
    std::filesystem::remove_all(dir);
}

TEST(gguf_errors, header) {
    EXPECT_GGUF_ERROR(std::span<const std::byte>(),
                      "truncated file: header at offset 0 needs 4 bytes, 0 left");
    EXPECT_GGUF_ERROR(raw().put("GGML", 4).u32(3).u64(0).u64(0).b,
                      "bad magic 47 47 4d 4c at offset 0 (not a GGUF file)");
    EXPECT_GGUF_ERROR(raw().header(0, 0, 1).b, "unsupported version 1 at offset 4");
    EXPECT_GGUF_ERROR(raw().header(0, 0, 99).b, "unsupported version 99 at offset 4");
    EXPECT_GGUF_ERROR(raw().header(0, 0, 0x03000000).b, "big-endian GGUF (version 3");
    EXPECT_GGUF_ERROR(raw().header(0, 0, 0x02000000).b, "big-endian GGUF (version 2");
    EXPECT_GGUF_ERROR(raw().put("GGUF", 4).u32(3).u64(0).u32(0).b,
                      "truncated file: header at offset 16 needs 8 bytes, 4 left");
    EXPECT_GGUF_ERROR(raw().header(0, uint64_t{1} << 62).b,
                      "kv count 4611686018427387904 at offset 16 cannot fit in the 0 bytes left");
    EXPECT_GGUF_ERROR(raw().header(~uint64_t{0}, 0).u64(0).b,
                      "tensor count 18446744073709551615 at offset 8 cannot fit");
    EXPECT_GGUF_ERROR(raw().header(2, 0).tensor("a", {1}, 0, 0).b, "tensor count 2");
    {
        // Room in the file for more tensor infos than any model has: each
        // would cost some 200 bytes of memory for 32 zero bytes.
        raw many = raw().header((uint64_t{1} << 20) + 1, 0);
        many.b.resize(many.b.size() + ((size_t{1} << 20) + 1) * 40);
        EXPECT_GGUF_ERROR(many.b, "tensor count 1048577 at offset 8 is more than 1048576");
    }
    // Versions 2 and 3 with nothing in them are fine, with or without padding.
    EXPECT_EQ("(parsed)", parse_error(raw().header(0, 0, 2).b));
    EXPECT_EQ("(parsed)", parse_error(raw().header(0, 0, 3).data(0).b));
}

TEST(gguf_errors, kvs) {
    EXPECT_GGUF_ERROR(raw().header(0, 1).u64(uint64_t{1} << 62).u64(0).b,
                      "string length 4611686018427387904 at offset 24 is too large (key of kv #0)");
    EXPECT_GGUF_ERROR(raw().header(0, 1).u64(100).put("abc", 3).u32(0).b,
                      "truncated file: key of kv #0 at offset 32 needs 100 bytes, 7 left");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("k").u32(8).u64(1000).put("x", 1).b,
                      "truncated file: kv 'k' at offset 45 needs 1000 bytes, 1 left");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("k").u32(13).u32(0).b,
                      "unknown value type 13 at offset 33 (kv 'k')");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("k").u32(9).u32(77).u64(0).b,
                      "unknown array element type 77 at offset 37 (kv 'k')");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("k").u32(9).u32(4).u64(uint64_t{1} << 60).u32(1).b,
                      "array count 1152921504606846976 at offset 41 cannot fit in the 4 bytes "
                      "left (kv 'k')");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("k").u32(9).u32(8).u64(3).str("a").b,
                      "array count 3 at offset 41 cannot fit");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("k").u32(7).u8(2).b,
                      "bool 2 at offset 37 is neither 0 nor 1 (kv 'k')");
    EXPECT_GGUF_ERROR(raw().header(0, 2).kv_u32("dup", 1).kv_u32("dup", 2).b,
                      "duplicate key 'dup' at offset");
    raw deep;
    deep.header(0, 1).str("k").u32(9);
    for (int i = 0; i < 20; i++) {
        deep.u32(9).u64(1);
    }
    deep.u32(4).u64(0);
    EXPECT_GGUF_ERROR(deep.b, "arrays nested deeper than 8");
    EXPECT_GGUF_ERROR(raw().header(0, 1).kv_u32("general.alignment", 0).b,
                      "general.alignment must be a nonzero power of two, got u32 0");
    EXPECT_GGUF_ERROR(raw().header(0, 1).kv_u32("general.alignment", 3).b,
                      "general.alignment must be a nonzero power of two, got u32 3");
    EXPECT_GGUF_ERROR(raw().header(0, 1).str("general.alignment").u32(8).str("64").b,
                      "got string \"64\"");
    // Any integer type holding a power of two is taken.
    auto ok = raw().header(0, 1).str("general.alignment").u32(10).u64(64).b;
    EXPECT_EQ(64u, gguf_file::parse(ok).alignment());
}

TEST(gguf_errors, metadata_is_bounded_and_names_are_quoted_short) {
    // 2^23 values at most, however few bytes each takes in the file.
    raw many;
    const uint64_t n = (uint64_t{1} << 23) + 1;
    many.header(0, 1).str("k").u32(9).u32(0).u64(n);
    many.b.resize(many.b.size() + n);
    EXPECT_GGUF_ERROR(many.b, "the metadata holds more than 8388608 values");
    // A long key with control bytes: escaped, cut at 64 bytes.
    std::string key(1000, 'a');
    key[3] = '\0';
    key[4] = '\n';
    auto msg = parse_error(raw().header(0, 1).str(key).u32(13).u32(0).b);
    EXPECT_NE(msg.find("(kv 'aaa\\x00\\x0aaaa"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'... (1000 bytes))"), std::string::npos) << msg;
    EXPECT_LT(msg.size(), 200u);
    EXPECT_EQ(llmos::engine::quoted("it's"), "'it\\'s'");
    // An empty tensor overlaps nothing, inside another's bytes or at its start.
    EXPECT_EQ("(parsed)", parse_error(raw()
                                          .header(3, 0)
                                          .tensor("a", {64}, 0, 0)
                                          .tensor("e", {0}, 0, 32)
                                          .tensor("f", {0}, 0, 0)
                                          .data(256)
                                          .b));
}

TEST(gguf_errors, tensor_infos) {
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {}, 0, 0).u64(0).b,
                      "tensor 't' has n_dims 0 at offset 33 (must be 1 to 4)");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).b,
                      "tensor 't' has n_dims 5");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {4}, 99, 0).data(16).b,
                      "tensor 't' has unknown ggml type 99 at offset 45");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {4}, 4, 0).data(16).b, "unknown ggml type 4");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {33}, 2, 0).data(64).b,
                      "tensor 't': row length 33 is not a multiple of the Q4_0 block size 32");
    EXPECT_GGUF_ERROR(
        raw().header(1, 0).tensor("t", {uint64_t{1} << 32, uint64_t{1} << 32}, 0, 0).b,
        "tensor 't' has too many elements");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {0, ~uint64_t{0}}, 0, 0).b,
                      "too many elements");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {uint64_t{1} << 62}, 0, 0).b,
                      "tensor 't' size overflows 63 bits");
    EXPECT_GGUF_ERROR(raw().header(1, 0).str("t").u32(2).u64(4).u64(1).u32(0).u32(0).b,
                      "truncated file: tensor info 't' at offset 57 needs 8 bytes, 4 left");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {4}, 0, 4).data(64).b,
                      "tensor 't' offset 4 is not a multiple of alignment 32");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {8}, 0, 0).data(31).b,
                      "tensor 't' data [0, +32) lies beyond the end of the file (data section at "
                      "64, file size 95)");
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("t", {8}, 0, ~uint64_t{31}).data(32).b,
                      "lies beyond the end of the file");
    EXPECT_GGUF_ERROR(raw().header(2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).data(64).b,
                      "duplicate tensor 't' (tensor info #1)");
    EXPECT_GGUF_ERROR(raw().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).data(96).b,
                      "tensors 'a' and 'b' overlap at data offset 32");
    // The alignment from the kvs applies to the offsets and the data section.
    auto aligned =
        raw().header(1, 1).kv_u32("general.alignment", 64).tensor("t", {8}, 0, 0).data(32, 64).b;
    auto f = gguf_file::parse(aligned);
    EXPECT_EQ(128u, f.data_offset());
    EXPECT_EQ(aligned.data() + 128, f.tensors()[0].data.data());
    // An empty tensor takes no bytes, but the data section must be there.
    EXPECT_EQ("(parsed)", parse_error(raw().header(1, 0).tensor("e", {0, 5}, 0, 0).data(0).b));
    EXPECT_GGUF_ERROR(raw().header(1, 0).tensor("e", {0}, 0, 0).b,
                      "truncated file: the data section at offset 64 starts beyond the end of "
                      "the file (size 57)");
}

// Every proper prefix of a valid file either lacks tensor bytes (and throws
// gguf_error) or only lacks trailing padding (and parses the same).
TEST(gguf_errors, every_truncation) {
    auto bytes = every_type_writer(3, 64).write();
    auto needed = needed_size(gguf_file::parse(bytes));
    ASSERT_LT(needed, bytes.size()); // the last tensor is padded
    for (size_t n = 0; n < bytes.size(); n++) {
        auto prefix = std::span<const std::byte>(bytes).first(n);
        auto msg = parse_error(prefix);
        if (n < needed) {
            EXPECT_EQ(0u, msg.rfind("gguf: ", 0)) << n << ": " << msg;
            EXPECT_NE("(parsed)", msg) << n;
        } else {
            EXPECT_EQ("(parsed)", msg) << n;
        }
    }
}

// ---- fuzz ----------------------------------------------------------------

namespace {

struct splitmix {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }
};

/// Applies 1 to 4 random mutations at offsets below `limit`.
void mutate(std::vector<std::byte>& b, splitmix& r, size_t limit) {
    static const uint64_t interesting[] = {0,
                                           1,
                                           2,
                                           3,
                                           4,
                                           5,
                                           8,
                                           9,
                                           12,
                                           13,
                                           31,
                                           32,
                                           33,
                                           64,
                                           0x7f,
                                           0x80,
                                           0xff,
                                           0x7fffffff,
                                           0x80000000,
                                           0xffffffff,
                                           uint64_t{1} << 30,
                                           (uint64_t{1} << 30) + 1,
                                           uint64_t{1} << 62,
                                           ~uint64_t{0} >> 1,
                                           ~uint64_t{0}};
    int n = 1 + int(r.below(4));
    for (int i = 0; i < n && !b.empty(); i++) {
        size_t at = r.below(std::min(limit, b.size()));
        switch (r.below(7)) {
        case 0:
            b[at] ^= std::byte(1u << r.below(8));
            break;
        case 1: {
            static const uint8_t v[] = {0x00, 0xff, 0x7f, 0x80};
            b[at] = std::byte{v[r.below(4)]};
            break;
        }
        case 2:
        case 3: {
            uint64_t x = r.below(2) ? interesting[r.below(std::size(interesting))] : r.next();
            size_t w = r.below(2) ? 8 : 4;
            std::memcpy(b.data() + at, &x, std::min(w, b.size() - at));
            break;
        }
        case 4:
            b.resize(at);
            break;
        case 5: {
            auto k = 1 + r.below(16);
            std::vector<std::byte> ins(k);
            for (auto& c : ins) {
                c = std::byte(r.next());
            }
            b.insert(b.begin() + long(at), ins.begin(), ins.end());
            break;
        }
        case 6:
            b.erase(b.begin() + long(at),
                    b.begin() + long(std::min(b.size(), at + 1 + r.below(16))));
            break;
        }
    }
}

/// Everything a parsed file promises: spans inside the buffer, aligned,
/// sized; every string and value readable.
void check_parsed(const gguf_file& f, std::span<const std::byte> b) {
    uint64_t sum = 0;
    auto touch = [&](auto&& self, const gguf_value& v) -> void {
        if (auto s = v.get_if<std::string>()) {
            for (char c : *s) {
                sum += uint8_t(c);
            }
        } else if (auto a = v.get_if<gguf_array>()) {
            for (auto& item : a->items) {
                ASSERT_EQ(a->type, item.type());
                self(self, item);
            }
        }
    };
    for (auto& kv : f.kvs()) {
        sum += kv.key.size();
        touch(touch, kv.value);
        sum += to_string(kv.value, 4).size();
        ASSERT_EQ(&kv.value, f.find(kv.key));
    }
    if (!f.tensors().empty()) {
        ASSERT_LE(f.data_offset(), b.size());
    }
    for (auto& t : f.tensors()) {
        ASSERT_EQ(&t, f.find_tensor(t.name));
        ASSERT_EQ(t.n_bytes, t.data.size());
        ASSERT_GE(t.data.data(), b.data() + f.data_offset());
        ASSERT_LE(t.data.data() + t.data.size(), b.data() + b.size());
        ASSERT_EQ(0u, uint64_t(t.data.data() - b.data()) % f.alignment());
        ASSERT_EQ(*row_bytes(t.type, t.ne[0]) * t.n_rows, t.n_bytes);
        if (!t.data.empty()) { // its ends are readable (ASan checks the buffer's bounds)
            sum += uint8_t(t.data.front()) + uint8_t(t.data.back());
        }
    }
    volatile uint64_t sink = sum;
    (void)sink;
}

/// Fuzzes `base` for `iterations`, mutating its first `limit` bytes;
/// returns how many mutants parsed.
size_t fuzz(const std::vector<std::byte>& base, size_t limit, size_t iterations, uint64_t seed) {
    splitmix r{seed};
    size_t parsed = 0;
    for (size_t i = 0; i < iterations; i++) {
        auto b = base;
        mutate(b, r, limit);
        try {
            auto f = gguf_file::parse(b);
            check_parsed(f, b);
            if (testing::Test::HasFatalFailure()) {
                ADD_FAILURE() << "iteration " << i << " (seed " << seed << ")";
                return parsed;
            }
            parsed++;
        } catch (const gguf_error& e) {
            if (std::strncmp(e.what(), "gguf: ", 6) != 0) {
                ADD_FAILURE() << "iteration " << i << ": message " << e.what();
            }
        } catch (const std::exception& e) {
            ADD_FAILURE() << "iteration " << i << " (seed " << seed << ") threw "
                          << typeid(e).name() << ": " << e.what();
            return parsed;
        }
    }
    return parsed;
}

} // namespace

TEST(gguf_fuzz, writer_file) {
    auto base = every_type_writer(3, 32).write();
    size_t n = size_t(20000 * fuzz_scale());
    auto t0 = std::chrono::steady_clock::now();
    auto parsed = fuzz(base, base.size(), n, 1);
    auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0);
    std::printf("%zu mutants of a %zu-byte file: %zu parsed, %zu rejected, %.0f ms\n", n,
                base.size(), parsed, n - parsed, ms.count());
    EXPECT_GT(parsed, n / 100); // both outcomes are exercised
    EXPECT_LT(parsed, n);
}

TEST(gguf_fuzz, testdata_header) {
    auto base = read_all(tiny_path);
    ASSERT_EQ(919264u, base.size());
    size_t n = size_t(2000 * fuzz_scale());
    auto t0 = std::chrono::steady_clock::now();
    auto parsed = fuzz(base, 64 * 1024, n, 2);
    auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0);
    std::printf("%zu mutants of the first 64 KiB of %s: %zu parsed, %.0f ms\n", n,
                tiny_path.c_str(), parsed, ms.count());
    EXPECT_GT(parsed, 0u);
    EXPECT_LT(parsed, n);
}
