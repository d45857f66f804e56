// SPDX-License-Identifier: MIT
//
// Tokenizers built from GGUF tokenizer metadata, behaving as llama.cpp's do:
//
// - `llama` (SentencePiece BPE, "SPM"): spaces become U+2581 "▁", one "▁"
//   is put in front of the text (add_space_prefix), then adjacent pieces are
//   merged greedily, best vocabulary score first (ties: leftmost); what is
//   left unmatched falls back to the <0xXX> byte tokens.
// - `gpt2` (byte-level BPE): the text is cut into words by the model's
//   pre-tokenizer (the regex of llama-3, qwen2, gpt-2, smollm or the
//   default one, implemented as scanners over Unicode categories), each
//   word's bytes are mapped to printable characters (GPT-2's
//   bytes_to_unicode) and merged by merge rank (lowest first; ties:
//   leftmost).
//
// In both, control, unknown and user-defined token texts found in the input
// are cut out first and become their token (control and unknown ones only
// with parse_special; user-defined ones always, as in llama.cpp).
//
// Known differences from llama.cpp, all on input it mishandles or
// on conveniences it lacks: ill-formed UTF-8 in a BPE input keeps its
// bytes (llama.cpp substitutes U+FFFD, so decode(encode(x)) != x), and
// in a SentencePiece input is split a byte at a time (llama.cpp's lead-byte
// rule lets a bad lead byte take the next bytes with it, a space's "▁"
// among them, which then decodes as "▁");
// decode() removes the space that add_space_prefix put in front of the
// text (llama.cpp's detokenize keeps it after a BOS); a character with no
// token and no byte token becomes the unknown token (llama.cpp throws or
// drops it); clean_up_tokenization_spaces is not applied on decode (decode
// is the concatenation of pieces).
//
// A vocab is immutable once built: every const method may be called from
// any number of threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmos::engine {

class gguf_file;

/// Token types as GGUF stores them (tokenizer.ggml.token_type).
enum class token_type : int32_t {
    undefined = 0,
    normal = 1,
    unknown = 2,
    control = 3,
    user_defined = 4,
    unused = 5,
    byte = 6,
};

/// Which tokenizer algorithm a vocab runs.
enum class vocab_kind {
    spm, ///< tokenizer.ggml.model "llama"
    bpe, ///< tokenizer.ggml.model "gpt2"
};

/// Byte-level BPE pre-tokenizers (tokenizer.ggml.pre).
enum class bpe_pre {
    default_, ///< "default" or missing: punctuation runs, GPT-2, digit runs, 3 ASCII digits
    gpt2,     ///< "gpt-2", "gpt2", "mpt", "olmo", "phi-2", ...: the GPT-2 regex
    llama3,   ///< "llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", ...
    qwen2,    ///< "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez": llama-3 with single digits
    smollm,   ///< "smollm", "starcoder", "refact", "command-r", ...: digits alone, then GPT-2
};

/// Everything a vocab is built from: the GGUF tokenizer.* keys, decoded.
/// Optional fields left empty take the value llama.cpp uses when the key is
/// missing from the file (so from_gguf() only copies what it finds).
struct vocab_data {
    std::string model;               ///< "llama" or "gpt2"
    std::string pre;                 ///< tokenizer.ggml.pre ("" if missing)
    std::vector<std::string> tokens; ///< token texts, by id
    std::vector<float> scores;       ///< empty (all 0) or one per token
    std::vector<int32_t> types;      ///< empty (all normal) or one per token
    std::vector<std::string> merges; ///< "left right", by rank (gpt2 only)
    /// Special token ids; -1: none. Missing: llama has bos 1, eos 2, unk 0;
    /// gpt2 has bos 11, eos 11; eot is looked up by text ("<|eot_id|>",
    /// "<|im_end|>", ...). A default or an id outside the vocab means none.
    std::optional<int32_t> bos_id, eos_id, unk_id, pad_id, eot_id;
    /// Missing: llama adds BOS and the space prefix; gpt2 adds BOS only with
    /// the llama-3 pre-tokenizer; nobody adds EOS.
    std::optional<bool> add_bos, add_eos, add_space_prefix;
    std::string chat_template; ///< tokenizer.chat_template ("" if missing)
};

/// Reads the tokenizer keys of a GGUF file: tokenizer.ggml.model, .pre,
/// .tokens, .scores, .token_type, .merges, .bos_token_id, .eos_token_id,
/// .unknown_token_id, .padding_token_id, .eot_token_id, .add_bos_token,
/// .add_eos_token, .add_space_prefix and tokenizer.chat_template; what is
/// missing stays empty (vocab's constructor applies the defaults). Throws
/// gguf_error naming the key when a required one (model, tokens; merges for
/// gpt2) is missing or a key has the wrong type. Any thread.
vocab_data from_gguf(const gguf_file& file);

/// A byte range [off, off + len) of a text.
struct text_span {
    size_t off = 0;
    size_t len = 0;
    bool operator==(const text_span&) const = default;
};

/// A tokenizer and its token table.
class vocab {
public:
    /// The longest token text a vocab takes, in bytes. The longest in real
    /// vocabularies: 256 (byte-level BPE: gpt-2, cl100k, o200k and llama-3
    /// all have 128-byte tokens, which the byte mapping stores in up to 256
    /// bytes); 48 (llama-2's 16 "▁"s). What a longer one would cost is the
    /// file's to choose: a chat repeats BOS and EOS each turn, and a
    /// prompt's size in tokens is bounded below by its bytes over the
    /// longest token's.
    static constexpr size_t max_token_bytes = 1024;
    /// The longest control, unknown or user-defined token text: these are
    /// markers ("<|reserved_special_token_250|>", 30 bytes, is llama-3's
    /// longest; a run of 31 "▁", 93 bytes, the longest whitespace token).
    static constexpr size_t max_special_token_bytes = 256;
    /// The most bytes all control, unknown and user-defined token texts may
    /// take together: they are indexed in a byte trie, some 70 bytes of
    /// memory for each. Llama-3's 256 take 7.5 KB; a vocabulary with
    /// tens of thousands of them (image tokens) some 10^5 bytes.
    static constexpr size_t max_special_text_bytes = size_t{1} << 20;

    /// Builds the tokenizer. Throws std::invalid_argument with a clear
    /// message on an unsupported tokenizer.ggml.model or .pre, a scores or
    /// types array whose length is not the token count, a duplicate token
    /// text, a token text longer than max_token_bytes (a special one:
    /// max_special_token_bytes), special token texts of more than
    /// max_special_text_bytes in all, a malformed merge, or add_bos/add_eos
    /// without the token.
    explicit vocab(vocab_data data);
    ~vocab();
    vocab(vocab&&) noexcept;
    vocab& operator=(vocab&&) noexcept;

    /// Token ids of `text`. add_special: put BOS (EOS) around it when the
    /// model asks for that (add_bos/add_eos). parse_special: control and
    /// unknown token texts in `text` (e.g. "<|im_start|>") become those
    /// tokens instead of being tokenized as text. Never fails on any byte
    /// string; allocates. Time and memory grow with the text's length
    /// (the search for special tokens: times the longest one's), not with
    /// the number of special tokens.
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

    /// As encode(text, add_special, true), except that a control or
    /// unknown token's text is that token only where it lies wholly inside
    /// one of `special_at`; elsewhere it is text, as with parse_special =
    /// false. So is a user-defined token whose text occurs inside one of
    /// the spans; other user-defined tokens are tokens everywhere, as
    /// always. This is how a rendered chat is tokenized: the template's
    /// markers are tokens, a message's "<|im_end|>" is not. `special_at`
    /// is sorted by offset, its spans do not overlap; spans past the text
    /// are ignored.
    std::vector<int32_t> encode(std::string_view text, bool add_special,
                                std::span<const text_span> special_at) const;

    /// The bytes token `id` stands for: byte tokens give their byte, SPM
    /// "▁" becomes a space, byte-level BPE characters map back to their
    /// bytes. Control and unknown tokens give "" unless `special`, then
    /// their text; unused ones always give "". The view lives as long as
    /// the vocab; an out-of-range id gives "". No allocation.
    std::string_view token_to_piece(int32_t id, bool special = false) const;

    /// The concatenated pieces of `ids`, minus the one space add_space_prefix
    /// put in front of the text (at the start and after each special
    /// token), so that decode(encode(s, x, false)) == s. Bytes, not
    /// necessarily valid UTF-8 (a multi-byte character may be cut).
    std::string decode(std::span<const int32_t> ids, bool special = false) const;

    /// Whether `id` ends generation (EOS, EOT, <|eom_id|> and the other
    /// end-of-turn tokens llama.cpp knows by text).
    bool is_eog(int32_t id) const;
    /// Whether `id` is a control token.
    bool is_control(int32_t id) const;

    /// The id of the token whose text is exactly `text`, if any.
    std::optional<int32_t> find(std::string_view text) const;

    int32_t n_tokens() const;
    std::string_view token_text(int32_t id) const; ///< raw text ("" if out of range)
    token_type type(int32_t id) const;             ///< undefined if out of range
    float score(int32_t id) const;                 ///< 0 if out of range

    int32_t bos() const;           ///< -1 if none
    int32_t eos() const;           ///< -1 if none
    int32_t eot() const;           ///< -1 if none
    int32_t unk() const;           ///< -1 if none
    int32_t pad() const;           ///< -1 if none
    bool add_bos() const;          ///< encode(add_special) puts BOS first
    bool add_eos() const;          ///< encode(add_special) puts EOS last
    bool add_space_prefix() const; ///< SPM puts "▁" before the text (false for bpe)
    vocab_kind kind() const;
    bpe_pre pre() const;                      ///< meaningful for bpe only
    const std::string& chat_template() const; ///< tokenizer.chat_template, "" if none

    /// The tables and algorithms (vocab_impl.hh, private to the engine).
    struct impl;

private:
    std::vector<int32_t> encode_with(std::string_view text, bool add_special, bool parse_special,
                                     std::optional<std::span<const text_span>> only) const;

    std::unique_ptr<impl> _impl;
};

/// Turns a token stream into text that is always well-formed UTF-8: a
/// character split across tokens is held back until its last byte arrives;
/// bytes that can never form a character become U+FFFD. One per stream
/// (it keeps state); not thread-safe; the vocab must outlive it.
class stream_decoder {
public:
    explicit stream_decoder(const vocab& v, bool special = false)
        : _vocab(&v)
        , _special(special) {}

    /// Appends to `out` the text that token `id` completes (possibly
    /// nothing). Allocates only when `out` grows.
    void push(int32_t id, std::string& out);
    /// The same, returned.
    std::string push(int32_t id);
    /// Appends what is still held back (an unfinished character, as
    /// U+FFFD) and resets the decoder for a new stream.
    void flush(std::string& out);
    /// Bytes held back (0..3).
    size_t pending() const { return _n_pending; }

private:
    void feed(std::string_view bytes, std::string& out);

    const vocab* _vocab;
    bool _special;
    char _pending[4] = {};
    size_t _n_pending = 0;
};

/// Cuts `text` into the words the BPE pre-tokenizer `pre` produces (views
/// into `text`, in order, together covering all of it). Exposed for tests
/// and tools; encode() does this itself. Any thread.
std::vector<std::string_view> pretokenize(bpe_pre pre, std::string_view text);

/// The pre-tokenizer a tokenizer.ggml.pre name selects ("" and "default":
/// default_); nothing for a name this engine does not implement.
std::optional<bpe_pre> parse_bpe_pre(std::string_view name);

} // namespace llmos::engine
