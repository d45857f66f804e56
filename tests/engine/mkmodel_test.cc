// SPDX-License-Identifier: MIT
//
// The engine's test models and their reference: llmos-mkmodel writes every
// weight type, architecture and vocabulary, with the keys, tensor names,
// shapes and types llama.cpp expects, byte-identically for the same
// arguments; the NumPy reference (tests/engine/reference) reproduces the
// external llama.cpp vectors in testdata, its dequantization agrees with
// the engine's dequantize_row on every type, and its forward pass (prefill
// and greedy decode through its KV cache) agrees with a plain float64
// forward pass written here on generated llama and qwen2 models.
//
// The reference runs under python3 with NumPy (`make deps` installs
// python3-numpy); without them those tests are skipped, saying why.
// LLMOS_PYTHON picks the interpreter, LLMOS_MKMODEL the tool.
#include "../support/paths.hh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <iterator>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/quant.hh>
#include <map>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <tuple>
#include <utility>
#include <vector>
#if __has_include(<llmos/engine/vocab.hh>) && __has_include(<llmos/engine/chat.hh>)
#include <llmos/engine/chat.hh>
#include <llmos/engine/vocab.hh>
#define HAVE_ENGINE_VOCAB 1
#endif

using namespace llmos::engine;
namespace fs = std::filesystem;

namespace {

const std::string testdata = llmos::testing::testdata_dir;

std::string reference_dir() {
    return llmos::testing::reference_dir;
}

std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) {
        q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    return q + "'";
}

struct run_result {
    int status = -1; ///< exit status, or -1 when it did not exit
    std::string out; ///< stdout and stderr
};

run_result run(const std::string& cmd) {
    run_result r;
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) {
        return r;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
        r.out.append(buf, n);
    }
    int st = pclose(p);
    r.status = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

/// A folder for this program's files, removed when the tests end.
class scratch : public ::testing::Environment {
public:
    static const fs::path& dir() { return _dir; }
    void SetUp() override {
        std::string t = (fs::temp_directory_path() / "mkmodel_test.XXXXXX").string();
        ASSERT_NE(mkdtemp(t.data()), nullptr);
        _dir = t;
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(_dir, ec);
    }

private:
    static inline fs::path _dir;
};
[[maybe_unused]] auto* const scratch_env = ::testing::AddGlobalTestEnvironment(new scratch);

/// A python3 that has NumPy, or "".
const std::string& python() {
    static const std::string found = [] {
        std::vector<std::string> candidates = {"python3", "/usr/bin/python3"};
        if (const char* p = std::getenv("LLMOS_PYTHON")) {
            candidates.insert(candidates.begin(), p);
        }
        for (const auto& c : candidates) {
            if (run(quote(c) + " -c 'import numpy'").status == 0) {
                return c;
            }
        }
        return std::string();
    }();
    return found;
}

#define REQUIRE_PYTHON()                                                                           \
    do {                                                                                           \
        if (python().empty()) {                                                                    \
            GTEST_SKIP() << "no python3 with NumPy (make deps installs python3-numpy)";            \
        }                                                                                          \
    } while (0)

/// What a generated model is made with.
struct spec {
    std::string arch = "llama";
    std::string type = "f32";
    std::string vocab = "spm";
    bool tied = false;
    uint64_t seed = 1;
    /// Sizes: K-quant rows need n_embd and n_ff multiples of 256.
    uint32_t n_embd = 256, n_layer = 2, n_head = 4, n_head_kv = 2, n_ff = 256, n_vocab = 320;
    std::string extra; ///< more arguments

    std::string args() const {
        std::ostringstream a;
        a << "--arch " << arch << " --type " << type << " --vocab " << vocab << " --seed " << seed
          << " --n-embd " << n_embd << " --n-layer " << n_layer << " --n-head " << n_head
          << " --n-head-kv " << n_head_kv << " --n-ff " << n_ff << " --n-vocab " << n_vocab
          << (tied ? " --tied" : "") << (extra.empty() ? "" : " " + extra);
        return a.str();
    }
};

/// Runs llmos-mkmodel with `args` into a new file; returns its path and the
/// tool's output. Fails the test (and returns "") when the tool fails.
std::string make_model(const std::string& args, std::string* out = nullptr) {
    static int n = 0;
    auto path = (scratch::dir() / ("m" + std::to_string(n++) + ".gguf")).string();
    auto r = run(quote(llmos::testing::mkmodel_path()) + " " + args + " -o " + quote(path));
    EXPECT_EQ(r.status, 0) << "llmos-mkmodel " << args << ":\n" << r.out;
    if (out) {
        *out = r.out;
    }
    return r.status == 0 ? path : "";
}

/// The model of `s`, made once per program.
const std::string& model(const spec& s) {
    static std::map<std::string, std::string> made;
    auto key = s.args();
    auto it = made.find(key);
    if (it == made.end()) {
        it = made.emplace(key, make_model(key)).first;
    }
    return it->second;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::vector<double>> read_rows(const std::string& path) {
    std::vector<std::vector<double>> rows;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        rows.emplace_back(std::istream_iterator<double>(ls), std::istream_iterator<double>());
    }
    return rows;
}

std::vector<int> parse_ints(const std::string& s) {
    std::istringstream in(s);
    return {std::istream_iterator<int>(in), std::istream_iterator<int>()};
}

/// The text after "key" up to the end of its line, in `text`.
std::string field(const std::string& text, const std::string& key) {
    auto at = text.find(key);
    if (at == std::string::npos) {
        return "";
    }
    at += key.size();
    return text.substr(at, text.find('\n', at) - at);
}

std::string join(const std::vector<int>& v, char sep) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) {
        s += (i ? std::string(1, sep) : "") + std::to_string(v[i]);
    }
    return s;
}

/// reference.py's answer: logits rows and the greedy tokens it fed.
struct reference_run {
    std::vector<std::vector<double>> rows;
    std::vector<int> greedy;
};

reference_run run_reference(const std::string& model, const std::vector<int>& tokens, int decode,
                            bool last) {
    static int n = 0;
    auto out = (scratch::dir() / ("logits" + std::to_string(n++) + ".txt")).string();
    auto cmd = quote(python()) + " " + quote(reference_dir() + "/reference.py") + " " +
               quote(model) + " --tokens " + join(tokens, ',') + " --decode " +
               std::to_string(decode) + (last ? " --last" : "") + " --out " + quote(out);
    auto r = run(cmd);
    EXPECT_EQ(r.status, 0) << cmd << "\n" << r.out;
    reference_run rr;
    rr.rows = read_rows(out);
    rr.greedy = parse_ints(field(r.out, "greedy:"));
    return rr;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    EXPECT_EQ(a.size(), b.size());
    double m = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
        m = std::max(m, std::abs(a[i] - b[i]));
    }
    return m;
}

int argmax(const std::vector<double>& v) {
    return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

// --- What the files must hold, restated from llama.cpp's conventions. ---

ggml_type base(const std::string& type) {
    static const std::map<std::string, ggml_type> m = {
        {"f32", ggml_type::f32},   {"f16", ggml_type::f16},   {"bf16", ggml_type::bf16},
        {"q8_0", ggml_type::q8_0}, {"q4_0", ggml_type::q4_0}, {"q4_1", ggml_type::q4_1},
        {"q5_0", ggml_type::q5_0}, {"q5_1", ggml_type::q5_1}, {"q4_k", ggml_type::q4_k},
        {"q5_k", ggml_type::q5_k}, {"q6_k", ggml_type::q6_k}, {"q4_k_m", ggml_type::q4_k}};
    return m.at(type);
}

/// The type of matrix `name` (rows of `row`) in a model of `s`: llama.cpp's
/// Q4_K_M mix, and its fallback for rows that are not whole blocks
/// (llama_tensor_get_type: the output head to Q8_0, Q4_K -> Q5_0,
/// Q5_K -> Q5_1, Q6_K -> Q8_0; F16 where 32 does not divide the rows).
ggml_type expected_type(const spec& s, const std::string& name, uint32_t layer, uint64_t row) {
    ggml_type t = base(s.type);
    const bool head = name == "output.weight" || (s.tied && name == "token_embd.weight");
    if (s.type == "q4_k_m") {
        const uint32_t n = s.n_layer;
        bool more = layer < n / 8 || layer >= 7 * n / 8 || (layer - n / 8) % 3 == 2;
        bool v_or_down = name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight");
        if (head || (v_or_down && more)) {
            t = ggml_type::q6_k;
        }
    }
    if (!row_bytes(t, row)) {
        static const std::map<ggml_type, ggml_type> fallback = {
            {ggml_type::q4_k, ggml_type::q5_0},
            {ggml_type::q5_k, ggml_type::q5_1},
            {ggml_type::q6_k, ggml_type::q8_0},
        };
        auto f = fallback.find(t);
        t = head ? ggml_type::q8_0 : f != fallback.end() ? f->second : ggml_type::f16;
        if (row % 32 != 0) {
            t = ggml_type::f16;
        }
    }
    return t;
}

struct expected_tensor {
    std::string name;
    std::vector<uint64_t> ne;
    ggml_type type;
};

std::vector<expected_tensor> expected_tensors(const spec& s) {
    const uint64_t e = s.n_embd, kv = e / s.n_head * s.n_head_kv, ff = s.n_ff, v = s.n_vocab;
    std::vector<expected_tensor> t;
    auto mat = [&](const std::string& name, uint64_t row, uint64_t rows, uint32_t layer) {
        t.push_back({name, {row, rows}, expected_type(s, name, layer, row)});
    };
    auto vec = [&](const std::string& name, uint64_t n) {
        t.push_back({name, {n}, ggml_type::f32});
    };
    mat("token_embd.weight", e, v, 0);
    for (uint32_t il = 0; il < s.n_layer; ++il) {
        auto b = "blk." + std::to_string(il) + ".";
        vec(b + "attn_norm.weight", e);
        mat(b + "attn_q.weight", e, e, il);
        mat(b + "attn_k.weight", e, kv, il);
        mat(b + "attn_v.weight", e, kv, il);
        mat(b + "attn_output.weight", e, e, il);
        if (s.arch == "qwen2") {
            vec(b + "attn_q.bias", e);
            vec(b + "attn_k.bias", kv);
            vec(b + "attn_v.bias", kv);
        }
        vec(b + "ffn_norm.weight", e);
        mat(b + "ffn_gate.weight", e, ff, il);
        mat(b + "ffn_up.weight", e, ff, il);
        mat(b + "ffn_down.weight", ff, e, il);
    }
    vec("output_norm.weight", e);
    if (!s.tied) {
        mat("output.weight", e, v, 0);
    }
    return t;
}

void check_model(const spec& s, const std::string& path) {
    SCOPED_TRACE(s.args());
    auto f = gguf_file::open(path);
    const std::string a = s.arch;
    EXPECT_EQ(f.get_string("general.architecture"), a);
    EXPECT_EQ(f.get_u32(a + ".embedding_length"), s.n_embd);
    EXPECT_EQ(f.get_u32(a + ".block_count"), s.n_layer);
    EXPECT_EQ(f.get_u32(a + ".feed_forward_length"), s.n_ff);
    EXPECT_EQ(f.get_u32(a + ".attention.head_count"), s.n_head);
    EXPECT_EQ(f.get_u32(a + ".attention.head_count_kv"), s.n_head_kv);
    EXPECT_EQ(f.get_u32(a + ".rope.dimension_count"), s.n_embd / s.n_head);
    EXPECT_GT(f.get_u32(a + ".context_length"), 0u);
    EXPECT_GT(f.get_f32(a + ".attention.layer_norm_rms_epsilon"), 0.0f);
    EXPECT_EQ(f.get_f32(a + ".rope.freq_base"), a == "qwen2" ? 1e6f : 1e4f);
    static const std::map<std::string, uint32_t> ftype = {
        {"f32", 0},  {"f16", 1},  {"bf16", 32}, {"q4_0", 2},    {"q4_1", 3},  {"q8_0", 7},
        {"q5_0", 8}, {"q5_1", 9}, {"q4_k", 14}, {"q4_k_m", 15}, {"q5_k", 16}, {"q6_k", 18}};
    EXPECT_EQ(f.get_u32("general.file_type"), ftype.at(s.type));

    // The tokenizer.
    auto tokens = f.get_string_array("tokenizer.ggml.tokens");
    auto types = f.get_i32_array("tokenizer.ggml.token_type");
    ASSERT_EQ(tokens.size(), s.n_vocab);
    ASSERT_EQ(types.size(), s.n_vocab);
    auto tmpl = std::string(f.get_string("tokenizer.chat_template"));
    uint32_t bos = f.get_u32("tokenizer.ggml.bos_token_id");
    uint32_t eos = f.get_u32("tokenizer.ggml.eos_token_id");
    ASSERT_LT(bos, s.n_vocab);
    ASSERT_LT(eos, s.n_vocab);
    EXPECT_EQ(types[bos], 3);
    EXPECT_EQ(types[eos], 3);
    if (s.vocab == "spm") {
        EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
        EXPECT_EQ(f.get_f32_array("tokenizer.ggml.scores").size(), s.n_vocab);
        EXPECT_EQ(tokens[0], "<unk>");
        EXPECT_EQ(types[0], 2);
        EXPECT_EQ(bos, 1u);
        EXPECT_EQ(eos, 2u);
        for (int b = 0; b < 256; ++b) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", b);
            EXPECT_EQ(tokens[3 + b], name);
            EXPECT_EQ(types[3 + b], 6);
        }
        EXPECT_NE(tmpl.find("[INST]"), std::string::npos);
    } else {
        EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
        EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), a == "qwen2" ? "qwen2" : "llama-bpe");
        auto merges = f.get_string_array("tokenizer.ggml.merges");
        EXPECT_GE(merges.size(), s.n_vocab - 256 - 5);
        EXPECT_EQ(tokens[0], "!");
        EXPECT_EQ(tokens[bos], a == "qwen2" ? "<|endoftext|>" : "<|begin_of_text|>");
        EXPECT_NE(tmpl.find(a == "qwen2" ? "<|im_start|>" : "<|start_header_id|>"),
                  std::string::npos);
    }

    // The tensors, in llama.cpp's order and shapes.
    auto want = expected_tensors(s);
    ASSERT_EQ(f.tensors().size(), want.size());
    for (const auto& w : want) {
        const auto* t = f.find_tensor(w.name);
        ASSERT_NE(t, nullptr) << w.name;
        EXPECT_EQ(std::vector<uint64_t>(t->dims().begin(), t->dims().end()), w.ne) << w.name;
        EXPECT_EQ(t->type, w.type) << w.name << " is " << info(t->type)->name;
    }

#ifdef HAVE_ENGINE_VOCAB
    // The engine builds a tokenizer from it and round-trips text.
    vocab v(from_gguf(f));
    EXPECT_EQ(v.n_tokens(), static_cast<int32_t>(s.n_vocab));
    const std::string text = "Hello, world! The model asked a question about 2024.";
    auto ids = v.encode(text, false, false);
    EXPECT_LT(ids.size(), text.size()) << "no merges applied";
    EXPECT_EQ(v.decode(ids), text);
    auto fmt = detect_chat_format(tmpl);
    ASSERT_TRUE(fmt.has_value());
    EXPECT_EQ(*fmt, s.vocab == "spm" ? chat_format::llama2
                    : a == "qwen2"   ? chat_format::chatml
                                     : chat_format::llama3);
#endif
}

const std::vector<std::string> all_types = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1",
                                            "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m"};

// Under ThreadSanitizer (llmos-mkmodel five times slower, and its
// quantizing threads the same for every file) each type is made once, the
// architecture and vocabulary taking turns (each pair three times); the
// other lanes make all 48.
TEST(mkmodel, every_type_arch_and_vocab_loads_with_the_right_keys_shapes_and_types) {
    size_t made = 0;
    for (std::string a : {"llama", "qwen2"}) {
        for (std::string v : {"spm", "bpe"}) {
            for (size_t i = 0; i < all_types.size(); ++i) {
                const auto& t = all_types[i];
#if defined(__SANITIZE_THREAD__)
                if (i % 4 != size_t(a == "qwen2") * 2 + size_t(v == "bpe")) {
                    continue;
                }
#endif
                ++made;
                spec s;
                s.arch = a;
                s.vocab = v;
                s.type = t;
                s.tied = (a == "qwen2") == (v == "spm"); // tied and untied, both archs
                auto path = model(s);
                ASSERT_FALSE(path.empty());
                check_model(s, path);
            }
        }
    }
#if defined(__SANITIZE_THREAD__)
    EXPECT_EQ(made, all_types.size());
#else
    EXPECT_EQ(made, 4 * all_types.size());
#endif
}

#ifdef HAVE_ENGINE_VOCAB
TEST(mkmodel, vocab_has_a_piece_for_each_word_of_its_text_when_there_is_room) {
    for (std::string v : {"spm", "bpe"}) {
        SCOPED_TRACE(v);
        auto path = make_model("--preset tiny --n-vocab 4096 --vocab " + v);
        ASSERT_FALSE(path.empty());
        vocab voc(from_gguf(gguf_file::open(path)));
        // SPM puts a space in front by itself; the BPE words start with one.
        std::string text =
            (v == "bpe" ? " " : "") + std::string("The quick brown fox jumps over the lazy");
        auto ids = voc.encode(text, false, false);
        EXPECT_EQ(ids.size(), 8u);
        EXPECT_EQ(voc.token_to_piece(ids[1]), " quick");
    }
}
#endif

TEST(mkmodel, rows_that_are_not_whole_blocks_fall_back_as_llama_cpp_does_and_say_so) {
    // The tiny preset: n_embd 64 is not a whole Q4_K block (Q5_0, the
    // output head Q8_0), FFN 176 not even a whole block of 32 (F16).
    std::string out;
    auto path = make_model("--preset tiny --type q4_k", &out);
    ASSERT_FALSE(path.empty());
    spec s;
    s.type = "q4_k";
    s.n_embd = 64;
    s.n_ff = 176;
    s.n_vocab = 1024;
    check_model(s, path);
    auto f = gguf_file::open(path);
    EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, ggml_type::q5_0);
    EXPECT_EQ(f.find_tensor("token_embd.weight")->type, ggml_type::q5_0);
    EXPECT_EQ(f.find_tensor("output.weight")->type, ggml_type::q8_0);
    EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->type, ggml_type::f16);
    EXPECT_NE(out.find("blk.0.attn_q.weight: rows of 64 are not whole Q4_K blocks, using Q5_0"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("blk.0.ffn_down.weight: rows of 176 are not whole Q4_K blocks, using F16"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("output.weight: rows of 64 are not whole Q4_K blocks, using Q8_0"),
              std::string::npos)
        << out;

    // Q5_K -> Q5_1, Q6_K -> Q8_0; rows of 256 keep their type.
    for (std::string type : {"q5_k", "q6_k", "q4_k_m"}) {
        spec k;
        k.type = type;
        k.n_embd = 320;
        k.n_head = 5;
        k.n_head_kv = 1;
        k.n_ff = 512;
        k.tied = type == "q4_k_m";
        path = model(k);
        check_model(k, path);
        f = gguf_file::open(path);
        const ggml_type want = type == "q5_k"   ? ggml_type::q5_1
                               : type == "q6_k" ? ggml_type::q8_0
                                                : ggml_type::q5_0;
        EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, want) << type;
        EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->type, base(type)) << type;
    }
}

TEST(mkmodel, presets_have_the_shapes_of_the_popular_models) {
    struct preset {
        const char* name;
        const char* arch;
        const char* type;
        const char* vocab;
        bool tied;
        uint32_t n_embd, n_head, n_head_kv, n_ff;
    };
    // Sizes as in each model's config.json; vocabularies cut down and one
    // layer so that the files stay small.
    const preset presets[] = {
        {"tinyllama", "llama", "q4_0", "spm", false, 2048, 32, 4, 5632},
        {"qwen25-05b", "qwen2", "q4_k_m", "bpe", true, 896, 14, 2, 4864},
        {"smollm-135m", "llama", "q4_k_m", "bpe", true, 576, 9, 3, 1536},
        {"smollm-360m", "llama", "q5_k", "bpe", true, 960, 15, 5, 2560},
    };
    std::map<std::string, std::string> paths;
    for (const auto& p : presets) {
        SCOPED_TRACE(p.name);
        const spec want{.arch = p.arch,
                        .type = p.type,
                        .vocab = p.vocab,
                        .tied = p.tied,
                        .n_embd = p.n_embd,
                        .n_layer = 1,
                        .n_head = p.n_head,
                        .n_head_kv = p.n_head_kv,
                        .n_ff = p.n_ff,
                        .n_vocab = 2048};
        std::string out;
        auto path = make_model(std::string("--preset ") + p.name +
                                   " --n-layer 1 --n-vocab 2048 --type " + p.type,
                               &out);
        ASSERT_FALSE(path.empty());
        check_model(want, path);
        EXPECT_EQ(out.find("rows of 2048"), std::string::npos) << out; // whole blocks
        paths[p.name] = path;
    }
    // The popular models' Q4_K_M files hold Q5_0 and Q8_0 where rows of
    // 896 are not whole Q4_K/Q6_K blocks, as generated here.
    auto f = gguf_file::open(paths["qwen25-05b"]);
    EXPECT_EQ(f.find_tensor("token_embd.weight")->type, ggml_type::q8_0);
    EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, ggml_type::q5_0);
    EXPECT_EQ(f.find_tensor("blk.0.attn_v.weight")->type, ggml_type::q8_0);
    EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->type, ggml_type::q6_k);
    EXPECT_EQ(f.get_f32("qwen2.rope.freq_base"), 1e6f);

    // Unless told otherwise, a preset has 2 layers and the model's own
    // vocabulary (narrow here, to keep the file small).
    f = gguf_file::open(
        make_model("--preset smollm-135m --type q8_0 --n-embd 64 --n-head 1 --n-head-kv 1"));
    EXPECT_EQ(f.get_u32("llama.block_count"), 2u);
    EXPECT_EQ(f.get_u32("llama.vocab_size"), 49152u);
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
    // and the preset's choices can be overridden.
    f = gguf_file::open(make_model("--preset smollm-135m --untied --vocab spm --n-vocab 1024"));
    EXPECT_NE(f.find_tensor("output.weight"), nullptr);
    EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
}

TEST(mkmodel, same_arguments_give_the_same_bytes_and_another_seed_other_weights) {
    spec s;
    s.type = "q4_k_m";
    s.vocab = "bpe";
    auto a = read_bytes(model(s));
    // Another run, with another number of quantizing threads.
    auto b = read_bytes(make_model(s.args() + " --threads 3"));
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == b) << "two runs with the same arguments differ";

    s.seed = 2;
    auto fa = gguf_file::open(model(spec{.type = "q4_k_m", .vocab = "bpe"}));
    auto fb = gguf_file::open(model(s));
    EXPECT_EQ(fa.get_string_array("tokenizer.ggml.tokens"),
              fb.get_string_array("tokenizer.ggml.tokens"))
        << "the vocabulary must not depend on the seed";
    for (const auto& t : fa.tensors()) {
        const auto* u = fb.find_tensor(t.name);
        ASSERT_NE(u, nullptr);
        EXPECT_EQ(t.type, u->type);
        EXPECT_FALSE(std::equal(t.data.begin(), t.data.end(), u->data.begin(), u->data.end()))
            << t.name << " is the same with seed 2";
    }
}

TEST(mkmodel, rejects_bad_sizes) {
    auto r = run(quote(llmos::testing::mkmodel_path()) + " --n-embd 60 --n-head 8 -o " +
                 quote((scratch::dir() / "bad.gguf").string()));
    EXPECT_EQ(r.status, 2) << r.out;
    EXPECT_NE(r.out.find("n_embd must be n_head times an even head size"), std::string::npos);
    r = run(quote(llmos::testing::mkmodel_path()) + " --n-vocab 100 -o " +
            quote((scratch::dir() / "bad.gguf").string()));
    EXPECT_EQ(r.status, 2) << r.out;
    // What the engine would refuse to load (model.cc wants both finite and
    // positive) is refused here.
    for (std::string bad : {"--rope-base inf", "--rope-base nan", "--rope-base 0", "--rms-eps inf",
                            "--rms-eps -1e-5", "--rope-base 1e39"}) {
        r = run(quote(llmos::testing::mkmodel_path()) + " " + bad + " -o " +
                quote((scratch::dir() / "bad.gguf").string()));
        EXPECT_EQ(r.status, 2) << bad << ": " << r.out;
        EXPECT_NE(r.out.find("rope base and rms eps must be finite and positive"),
                  std::string::npos)
            << bad << ": " << r.out;
    }
    EXPECT_FALSE(fs::exists(scratch::dir() / "bad.gguf"));
}

TEST(mkmodel, weights_have_the_documented_distribution) {
    auto f = gguf_file::open(model(spec{}));
    auto stats = [&](const char* name) {
        const auto* t = f.find_tensor(name);
        std::vector<float> x(t->n_elements);
        EXPECT_EQ(dequantize_row(t->type, t->data.data(), x.data(), t->n_elements),
                  quant_status::ok);
        double s = 0, ss = 0;
        for (float v : x) {
            s += v;
            ss += static_cast<double>(v) * v;
        }
        double mean = s / x.size();
        return std::pair{mean, std::sqrt(ss / x.size() - mean * mean)};
    };
    auto [m, sd] = stats("token_embd.weight");
    EXPECT_NEAR(m, 0.0, 1e-3);
    EXPECT_NEAR(sd, 0.02, 1e-3);
    std::tie(m, sd) = stats("blk.1.ffn_norm.weight");
    EXPECT_NEAR(m, 1.0, 0.01);
    EXPECT_NEAR(sd, 0.02, 0.01);
}

// --- The reference against the external vectors. ---

void check_testdata_prompt(const std::string& prompt, bool full_logits) {
    SCOPED_TRACE(prompt);
    std::ifstream in(testdata + "/llama-tiny-f32." + prompt + ".txt");
    std::string txt((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto tokens = parse_ints(field(field(txt, "prompt_tokens"), ":"));
    auto g = txt.find("greedy_");
    ASSERT_NE(g, std::string::npos);
    auto greedy = parse_ints(field(txt.substr(g), ":"));
    ASSERT_FALSE(tokens.empty());
    ASSERT_FALSE(greedy.empty());

    auto r = run_reference(testdata + "/llama-tiny-f32.gguf", tokens,
                           static_cast<int>(greedy.size()), true);
    ASSERT_EQ(r.rows.size(), greedy.size() + 1);
    ASSERT_EQ(r.rows[0].size(), 1024u);
    EXPECT_EQ(r.greedy, greedy);
    if (full_logits) {
        auto want = read_rows(testdata + "/llama-tiny-f32." + prompt + ".logits");
        std::vector<double> w;
        for (auto& row : want) {
            w.insert(w.end(), row.begin(), row.end());
        }
        EXPECT_LT(max_abs_diff(r.rows[0], w), 1e-5);
    }
    // The first 16 logits and the argmax as printed (6 decimals).
    auto first = field(txt, "last_pos_logits[0:16]:");
    std::istringstream fs16(first);
    for (int i = 0; i < 16; ++i) {
        double x;
        ASSERT_TRUE(fs16 >> x);
        EXPECT_NEAR(r.rows[0][i], x, 1.5e-6) << "logit " << i;
    }
    EXPECT_EQ(argmax(r.rows[0]), parse_ints(field(txt, "argmax:"))[0]);
}

TEST(numpy_reference, reproduces_llama_cpp_on_the_testdata_model) {
    REQUIRE_PYTHON();
    check_testdata_prompt("hello", true);
    check_testdata_prompt("fox", true);
    check_testdata_prompt("bytes", false);
}

// --- The reference's dequantization against the engine's. ---

TEST(numpy_reference, dequantizes_every_type_as_the_engine_does) {
    REQUIRE_PYTHON();
    std::vector<spec> specs;
    for (const auto& type : all_types) {
        spec s;
        s.type = type;
        specs.push_back(s);
    }
    // Rows of 320: the K-quants' fallbacks (Q5_0, Q5_1, Q8_0) beside them.
    for (std::string type : {"q4_k_m", "q5_k"}) {
        specs.push_back({.type = type, .n_embd = 320, .n_head = 5, .n_head_kv = 1, .n_ff = 512});
    }
    std::map<ggml_type, int> all_seen;
    for (const auto& s : specs) {
        const std::string type = s.type + "-" + std::to_string(s.n_embd);
        SCOPED_TRACE(type);
        const auto& path = model(s);
        auto dump = scratch::dir() / ("dump-" + type);
        fs::create_directories(dump);
        auto r = run(quote(python()) + " " + quote(reference_dir() + "/gguf_read.py") + " " +
                     quote(path) + " --dump " + quote(dump.string()));
        ASSERT_EQ(r.status, 0) << r.out;
        auto f = gguf_file::open(path);
        std::map<ggml_type, int> seen;
        for (const auto& t : f.tensors()) {
            std::vector<float> engine(t.n_elements), ref(t.n_elements);
            for (uint64_t row = 0; row < t.n_rows; ++row) {
                ASSERT_EQ(dequantize_row(t.type, t.data.data() + row * t.row_bytes,
                                         engine.data() + row * t.ne[0],
                                         static_cast<int64_t>(t.ne[0])),
                          quant_status::ok);
            }
            std::ifstream in(dump / (t.name + ".f32"), std::ios::binary);
            in.read(reinterpret_cast<char*>(ref.data()),
                    static_cast<std::streamsize>(ref.size() * sizeof(float)));
            ASSERT_TRUE(in && in.peek() == EOF) << t.name << ": size of the reference dump";
            double diff = 0;
            for (size_t i = 0; i < ref.size(); ++i) {
                diff = std::max(diff, static_cast<double>(std::abs(engine[i] - ref[i])));
            }
            EXPECT_LE(diff, 1e-6) << t.name << " (" << info(t.type)->name << ")";
            ++seen[t.type];
            ++all_seen[t.type];
        }
        EXPECT_GT(seen[base(s.type)], 0);
    }
    for (const ggml_type t : {ggml_type::f32, ggml_type::f16, ggml_type::bf16, ggml_type::q8_0,
                              ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1,
                              ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k}) {
        EXPECT_GT(all_seen[t], 0) << info(t)->name << " was not compared";
    }
}

// --- The reference's forward pass against a plain one written here. ---

/// A llama/qwen2 forward pass in float64 over the whole sequence, with the
/// weights dequantized by the engine: the straightforward loops, for
/// cross-checking the vectorized reference (and its KV cache).
class plain_model {
public:
    explicit plain_model(const std::string& path)
        : _f(gguf_file::open(path)) {
        _arch = std::string(_f.get_string("general.architecture"));
        _n_embd = _f.get_u32(_arch + ".embedding_length");
        _n_layer = _f.get_u32(_arch + ".block_count");
        _n_head = _f.get_u32(_arch + ".attention.head_count");
        _n_head_kv = _f.get_u32(_arch + ".attention.head_count_kv");
        _hd = _n_embd / _n_head;
        _n_rot = _f.find_u32(_arch + ".rope.dimension_count").value_or(_hd);
        _eps = _f.get_f32(_arch + ".attention.layer_norm_rms_epsilon");
        _base = _f.get_f32(_arch + ".rope.freq_base");
    }

    /// Logits of every position of `tokens`.
    std::vector<std::vector<double>> forward(const std::vector<int>& tokens) {
        const size_t T = tokens.size(), E = _n_embd;
        const auto& emb = w("token_embd.weight");
        std::vector<std::vector<double>> x(T);
        for (size_t t = 0; t < T; ++t) {
            x[t].assign(emb.begin() + tokens[t] * E, emb.begin() + (tokens[t] + 1) * E);
        }
        for (uint32_t il = 0; il < _n_layer; ++il) {
            auto p = "blk." + std::to_string(il) + ".";
            std::vector<std::vector<double>> q(T), k(T), v(T);
            for (size_t t = 0; t < T; ++t) {
                auto h = norm(x[t], p + "attn_norm.weight");
                q[t] = rope(linear(h, p + "attn_q"), t, _n_head);
                k[t] = rope(linear(h, p + "attn_k"), t, _n_head_kv);
                v[t] = linear(h, p + "attn_v");
            }
            for (size_t t = 0; t < T; ++t) {
                std::vector<double> o(E, 0.0);
                for (uint32_t hq = 0; hq < _n_head; ++hq) {
                    const size_t hk = hq / (_n_head / _n_head_kv);
                    std::vector<double> s(t + 1);
                    double mx = -INFINITY, sum = 0;
                    for (size_t u = 0; u <= t; ++u) {
                        double d = 0;
                        for (size_t i = 0; i < _hd; ++i) {
                            d += q[t][hq * _hd + i] * k[u][hk * _hd + i];
                        }
                        s[u] = d / std::sqrt(static_cast<double>(_hd));
                        mx = std::max(mx, s[u]);
                    }
                    for (auto& e : s) {
                        e = std::exp(e - mx);
                        sum += e;
                    }
                    for (size_t u = 0; u <= t; ++u) {
                        for (size_t i = 0; i < _hd; ++i) {
                            o[hq * _hd + i] += s[u] / sum * v[u][hk * _hd + i];
                        }
                    }
                }
                add(x[t], linear(o, p + "attn_output"));
                auto h = norm(x[t], p + "ffn_norm.weight");
                auto g = linear(h, p + "ffn_gate");
                auto up = linear(h, p + "ffn_up");
                for (size_t i = 0; i < g.size(); ++i) {
                    g[i] = g[i] / (1.0 + std::exp(-g[i])) * up[i];
                }
                add(x[t], linear(g, p + "ffn_down"));
            }
        }
        std::vector<std::vector<double>> logits(T);
        const std::string head = _f.find_tensor("output.weight") ? "output" : "token_embd";
        for (size_t t = 0; t < T; ++t) {
            logits[t] = linear(norm(x[t], "output_norm.weight"), head);
        }
        return logits;
    }

private:
    const std::vector<double>& w(const std::string& name) {
        auto it = _w.find(name);
        if (it == _w.end()) {
            const auto* t = _f.find_tensor(name);
            std::vector<float> f(t->n_elements);
            for (uint64_t r = 0; r < t->n_rows; ++r) {
                dequantize_row(t->type, t->data.data() + r * t->row_bytes, f.data() + r * t->ne[0],
                               static_cast<int64_t>(t->ne[0]));
            }
            it = _w.emplace(name, std::vector<double>(f.begin(), f.end())).first;
        }
        return it->second;
    }
    std::vector<double> linear(const std::vector<double>& x, const std::string& name) {
        const auto& m = w(name + ".weight");
        const size_t n = x.size(), rows = m.size() / n;
        std::vector<double> y(rows, 0.0);
        for (size_t r = 0; r < rows; ++r) {
            for (size_t i = 0; i < n; ++i) {
                y[r] += m[r * n + i] * x[i];
            }
        }
        if (_f.find_tensor(name + ".bias")) {
            add(y, w(name + ".bias"));
        }
        return y;
    }
    std::vector<double> norm(const std::vector<double>& x, const std::string& name) {
        double ss = 0;
        for (double e : x) {
            ss += e * e;
        }
        const double scale = 1.0 / std::sqrt(ss / x.size() + _eps);
        const auto& g = w(name);
        std::vector<double> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) {
            y[i] = x[i] * scale * g[i];
        }
        return y;
    }
    std::vector<double> rope(std::vector<double> x, size_t pos, size_t heads) {
        const bool neox = _arch == "qwen2";
        for (size_t h = 0; h < heads; ++h) {
            double* e = x.data() + h * _hd;
            for (size_t i = 0; i < _n_rot / 2; ++i) {
                const double th = pos * std::pow(static_cast<double>(_base), -2.0 * i / _n_rot);
                const size_t a = neox ? i : 2 * i, b = neox ? i + _n_rot / 2 : 2 * i + 1;
                const double x0 = e[a], x1 = e[b];
                e[a] = x0 * std::cos(th) - x1 * std::sin(th);
                e[b] = x0 * std::sin(th) + x1 * std::cos(th);
            }
        }
        return x;
    }
    static void add(std::vector<double>& a, const std::vector<double>& b) {
        for (size_t i = 0; i < a.size(); ++i) {
            a[i] += b[i];
        }
    }

    gguf_file _f;
    std::map<std::string, std::vector<double>> _w;
    std::string _arch;
    uint32_t _n_embd = 0, _n_layer = 0, _n_head = 0, _n_head_kv = 0, _hd = 0, _n_rot = 0;
    double _eps = 0, _base = 0;
};

/// Checks the reference's prefill and `decode` greedy steps on `path`
/// against plain_model over the whole sequence (prompt and fed tokens).
void check_forward(const std::string& path, const std::vector<int>& prompt, int decode,
                   double tol) {
    SCOPED_TRACE(path);
    auto r = run_reference(path, prompt, decode, false);
    ASSERT_EQ(r.greedy.size(), static_cast<size_t>(decode));
    ASSERT_EQ(r.rows.size(), prompt.size() + decode);
    auto seq = prompt;
    seq.insert(seq.end(), r.greedy.begin(), r.greedy.end());
    auto want = plain_model(path).forward(seq);
    double diff = 0;
    for (size_t t = 0; t < seq.size(); ++t) {
        diff = std::max(diff, max_abs_diff(r.rows[t], want[t]));
        if (t + 1 >= prompt.size() && t + 1 < seq.size()) {
            // Greedy: the argmax (lowest id on ties) of the row before.
            EXPECT_EQ(seq[t + 1], argmax(want[t])) << "step " << t + 1 - prompt.size();
        }
    }
    EXPECT_LT(diff, tol);
}

TEST(numpy_reference, forward_agrees_with_a_plain_forward_pass_on_generated_models) {
    REQUIRE_PYTHON();
    // llama: adjacent-pair RoPE, GQA, untied; 32 decode steps on the tiny preset.
    check_forward(make_model("--preset tiny --seed 7"), {1, 300, 301, 302, 303, 304}, 32, 1e-6);
    // qwen2: NeoX RoPE, Q/K/V biases, K-quant mix, tied embeddings.
    spec q;
    q.arch = "qwen2";
    q.vocab = "bpe";
    q.type = "q4_k_m";
    q.tied = true;
    check_forward(model(q), {5, 6, 7, 8, 9}, 4, 1e-6);
    spec l;
    l.type = "q6_k";
    l.n_head_kv = 1; // every query head on one KV head
    check_forward(model(l), {1, 2, 3}, 3, 1e-6);
}

TEST(numpy_reference, plain_forward_pass_reproduces_the_testdata_too) {
    // The plain pass is itself checked against llama.cpp's vectors.
    std::ifstream in(testdata + "/llama-tiny-f32.hello.txt");
    std::string txt((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto tokens = parse_ints(field(field(txt, "prompt_tokens"), ":"));
    auto logits = plain_model(testdata + "/llama-tiny-f32.gguf").forward(tokens);
    auto want = read_rows(testdata + "/llama-tiny-f32.hello.logits");
    std::vector<double> w;
    for (auto& row : want) {
        w.insert(w.end(), row.begin(), row.end());
    }
    EXPECT_LT(max_abs_diff(logits.back(), w), 1e-5);
}

} // namespace
