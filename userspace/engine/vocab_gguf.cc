// SPDX-License-Identifier: MIT
//
// vocab_data from a GGUF file's tokenizer.* keys.
#include <llmos/engine/gguf.hh>
#include <llmos/engine/vocab.hh>

namespace llmos::engine {

namespace {

/// An id key: -1 when the stored value does not fit an id.
std::optional<int32_t> find_id(const gguf_file& f, std::string_view key) {
    const std::optional<uint32_t> v = f.find_u32(key);
    if (!v) {
        return std::nullopt;
    }
    return *v <= static_cast<uint32_t>(INT32_MAX) ? static_cast<int32_t>(*v) : -1;
}

} // namespace

vocab_data from_gguf(const gguf_file& f) {
    vocab_data d;
    d.model = std::string(f.get_string("tokenizer.ggml.model"));
    d.pre = std::string(f.find_string("tokenizer.ggml.pre").value_or(""));
    d.tokens = f.get_string_array("tokenizer.ggml.tokens");
    if (f.find("tokenizer.ggml.scores") != nullptr) {
        d.scores = f.get_f32_array("tokenizer.ggml.scores");
    }
    if (f.find("tokenizer.ggml.token_type") != nullptr) {
        d.types = f.get_i32_array("tokenizer.ggml.token_type");
    }
    if (f.find("tokenizer.ggml.merges") != nullptr) {
        d.merges = f.get_string_array("tokenizer.ggml.merges");
    } else if (d.model == "gpt2") {
        throw gguf_error("gguf: tokenizer.ggml.merges is missing (a 'gpt2' tokenizer needs it)");
    }
    d.bos_id = find_id(f, "tokenizer.ggml.bos_token_id");
    d.eos_id = find_id(f, "tokenizer.ggml.eos_token_id");
    d.unk_id = find_id(f, "tokenizer.ggml.unknown_token_id");
    d.pad_id = find_id(f, "tokenizer.ggml.padding_token_id");
    d.eot_id = find_id(f, "tokenizer.ggml.eot_token_id");
    d.add_bos = f.find_bool("tokenizer.ggml.add_bos_token");
    d.add_eos = f.find_bool("tokenizer.ggml.add_eos_token");
    d.add_space_prefix = f.find_bool("tokenizer.ggml.add_space_prefix");
    d.chat_template = std::string(f.find_string("tokenizer.chat_template").value_or(""));
    return d;
}

} // namespace llmos::engine
