// SPDX-License-Identifier: MIT
//
// GGUF, the file format of llama.cpp models: a header, typed key/value
// metadata, tensor infos, then the aligned tensor data.
//
//   "GGUF" u32:version u64:n_tensors u64:n_kv
//   n_kv    x { string:key u32:value_type value }
//   n_tensors x { string:name u32:n_dims u64:ne[n_dims] u32:ggml_type u64:offset }
//   padding to general.alignment (default 32), then the data section
//
// Strings are u64 length + bytes (no terminator); an array is u32 element
// type, u64 count, then the elements. Everything is little-endian. Versions
// 2 and 3 share this layout (version 1 had 32-bit counts and is refused).
//
// gguf_file reads a file (mmap, zero-copy tensor data) or a byte span and
// validates all of it up front: a corrupt or hostile file gives a
// gguf_error, never a crash or a long loop. Every count is checked against
// the bytes left before anything is allocated, so metadata takes at most
// ~40 bytes of memory per byte of the file's metadata (an array of u8 is
// the worst case); strings are capped at 1 GiB, array nesting at 8 levels.
// gguf_writer produces files that gguf_file (and llama.cpp) read.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <llmos/engine/types.hh>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

namespace llmos::engine {

/// What any GGUF reading or writing failure throws. The message starts with
/// "gguf: " and says what is wrong and where (byte offset, key, tensor).
class gguf_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Metadata value types, numbered as in the file.
enum class gguf_type : uint32_t {
    u8 = 0,
    i8 = 1,
    u16 = 2,
    i16 = 3,
    u32 = 4,
    i32 = 5,
    f32 = 6,
    boolean = 7,
    string = 8,
    array = 9,
    u64 = 10,
    i64 = 11,
    f64 = 12,
};

/// "u8", "string", "array", ...; "unknown" for an id outside the enum.
std::string_view type_name(gguf_type t);

struct gguf_value;

/// An array value: its element type and the elements, each of that type
/// (an array of arrays holds arrays of any element types).
struct gguf_array {
    gguf_type type = gguf_type::u8;
    std::vector<gguf_value> items;
};

/// What a gguf_value holds: the alternative's index is its gguf_type id.
using gguf_storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float,
                                  bool, std::string, gguf_array, uint64_t, int64_t, double>;

namespace detail {
template <class T, class... Ts>
constexpr uint32_t index_of(std::variant<Ts...>*) {
    uint32_t i = 0;
    bool found = ((std::is_same_v<T, Ts> ? true : (++i, false)) || ...);
    return found ? i : UINT32_MAX;
}
} // namespace detail

/// The gguf_type of the storage alternative T; gguf_type(UINT32_MAX) for
/// any other T.
template <class T>
constexpr gguf_type gguf_type_of() {
    return static_cast<gguf_type>(detail::index_of<T>(static_cast<gguf_storage*>(nullptr)));
}

/// A type a gguf_value holds as is (int is i32, unsigned u32, long i64,
/// unsigned long u64, float f32, double f64, std::string, gguf_array).
template <class T>
concept gguf_storable = (gguf_type_of<std::remove_cvref_t<T>>() <= gguf_type::f64);

/// One metadata value.
struct gguf_value {
    gguf_storage v;

    gguf_value() = default;
    /// Implicit, so that values read naturally: w.set("llama.block_count", 32u).
    template <gguf_storable T>
    gguf_value(T&& x)
        : v(std::forward<T>(x)) {}
    gguf_value(const char* s)
        : v(std::string(s)) {}
    gguf_value(std::string_view s)
        : v(std::string(s)) {}

    /// An array of `items`, all of element type `type` (checked when the
    /// value is given to a gguf_writer).
    static gguf_value array(gguf_type type, std::vector<gguf_value> items) {
        return gguf_value(gguf_array{type, std::move(items)});
    }
    /// An array of plain values: array_of<float>(scores), array_of<std::string>(tokens).
    template <class T>
    static gguf_value array_of(std::span<const T> items) {
        std::vector<gguf_value> out(items.begin(), items.end());
        return array(gguf_type_of<T>(), std::move(out));
    }
    template <class T>
    static gguf_value array_of(const std::vector<T>& items) {
        return array_of(std::span<const T>(items));
    }

    gguf_type type() const { return static_cast<gguf_type>(v.index()); }
    /// The held T, or nullptr when the value is of another type.
    template <class T>
    const T* get_if() const {
        return std::get_if<T>(&v);
    }
};

/// Deep equality (floats compare as floats: NaN != NaN).
bool operator==(const gguf_array& a, const gguf_array& b);
bool operator==(const gguf_value& a, const gguf_value& b);

/// A readable rendering for tools: numbers, quoted strings with escapes,
/// arrays as [a, b, ... (N items)] showing at most `max_items` elements.
std::string to_string(const gguf_value& value, size_t max_items = 8);

/// Installs a SIGBUS handler that, when a read past the end of a file a
/// live gguf_file::open() mapped faults (the file was truncated, or
/// overwritten in place, under it), writes which file to stderr (once),
/// then hands the signal to what handled it before: the process dies of
/// it as it would have. Every other SIGBUS goes to that handler as is.
/// For programs that serve models (a model file is replaced with mv,
/// never copied over). Idempotent.
void report_truncated_models();

/// A name or text from a file, for a message: in single quotes, control
/// bytes, quotes and backslashes escaped, at most its first 64 bytes
/// (then "..." and its length).
std::string quoted(std::string_view s);

/// The most a GGUF file may hold. gguf_file refuses a file past them: a
/// value or a tensor info costs memory out of proportion to its bytes in
/// the file (a u8 value: some 40 bytes for 1; a tensor info some 200 for
/// 35), and a sparse file costs no disk, so without bounds a small file
/// could take any memory. gguf_writer refuses to write past them.
struct gguf_limits {
    /// Metadata values in all, each array and array element included (a
    /// large vocabulary: some 10^6).
    uint64_t metadata_values = uint64_t{1} << 23;
    /// Bytes of keys, string values and tensor names in all (a large
    /// vocabulary: some 10 MB).
    uint64_t metadata_text = uint64_t{1} << 28;
    /// Tensors (a 70B llama has 723; MoE models with split experts some
    /// 10^4).
    uint64_t tensors = uint64_t{1} << 20;
};

/// The longest tensor name gguf_writer writes: the GGUF spec allows 64
/// bytes, llama.cpp 63 (GGML_MAX_NAME, 64, counts the terminating NUL).
/// (gguf_file reads longer ones.)
constexpr size_t gguf_max_tensor_name = 63;

/// general.alignment must be a multiple of this, says the GGUF spec; so is
/// every alignment gguf_writer writes. (gguf_file, as llama.cpp, takes any
/// power of two.)
constexpr uint32_t gguf_min_alignment = 8;

/// One key/value pair, as it appears in the file.
struct gguf_kv {
    std::string key;
    gguf_value value;
};

/// One tensor: its info and (in a gguf_file) a view of its bytes.
struct gguf_tensor {
    std::string name;
    ggml_type type = ggml_type::f32;
    uint32_t n_dims = 0;
    std::array<uint64_t, 4> ne{1, 1, 1, 1}; ///< ne[0] is the row length (fastest varying)
    uint64_t offset = 0;                    ///< from the start of the data section
    uint64_t n_elements = 0;
    uint64_t row_bytes = 0;          ///< bytes of one row of ne[0] elements
    uint64_t n_rows = 0;             ///< ne[1] * ne[2] * ne[3]
    uint64_t n_bytes = 0;            ///< row_bytes * n_rows
    std::span<const std::byte> data; ///< n_bytes, inside the file's bytes

    /// ne[0 .. n_dims).
    std::span<const uint64_t> dims() const { return {ne.data(), n_dims}; }
};

/// A parsed GGUF file. Move-only; owns its mapping when made by open().
/// All const members may be called from any number of threads at once.
class gguf_file {
public:
    /// Maps `path` read-only (MAP_PRIVATE) and parses it. Throws gguf_error
    /// naming the path and strerror when it cannot be opened or mapped, and
    /// for any format error. The mapping lives as long as the object (as
    /// with any mapping, truncating the file under it gives SIGBUS when a
    /// page past its new end is read: report_truncated_models() says which
    /// file it was).
    static gguf_file open(const std::string& path);
    /// Parses `bytes`, which must outlive the object (tests, fuzzing,
    /// memory that already holds a file). Throws gguf_error.
    static gguf_file parse(std::span<const std::byte> bytes);

    gguf_file(gguf_file&&) noexcept = default;
    gguf_file& operator=(gguf_file&&) noexcept = default;
    gguf_file(const gguf_file&) = delete;
    gguf_file& operator=(const gguf_file&) = delete;
    ~gguf_file() = default;

    uint32_t version() const { return _version; }
    /// general.alignment, or 32.
    uint32_t alignment() const { return _alignment; }
    /// Byte offset of the data section in the file.
    uint64_t data_offset() const { return _data_offset; }
    /// The whole file.
    std::span<const std::byte> bytes() const { return _bytes; }
    /// For a file open() mapped: the whole pages inside `range` (a part of
    /// bytes()) leave this process's memory for now (MADV_DONTNEED), as
    /// after a copy of them was made; reading them again maps them back
    /// from the file. Nothing for parse()d bytes or a range outside the
    /// file. Returns the bytes let go. Any thread.
    size_t drop_pages(std::span<const std::byte> range) const noexcept;

    /// The key/value pairs in file order.
    const std::vector<gguf_kv>& kvs() const { return _kvs; }
    size_t kv_count() const { return _kvs.size(); }
    /// The value of `key`, or nullptr.
    const gguf_value* find(std::string_view key) const;

    // Typed getters. get_X throws gguf_error when the key is missing or its
    // value does not convert; find_X returns nullopt for a missing key and
    // throws like get_X for one of the wrong type. Integers: any integer
    // type whose value fits (not bool). f32: f32 or f64. Arrays: every
    // element must convert.
    std::string_view get_string(std::string_view key) const;
    uint32_t get_u32(std::string_view key) const;
    uint64_t get_u64(std::string_view key) const;
    int64_t get_i64(std::string_view key) const;
    float get_f32(std::string_view key) const;
    bool get_bool(std::string_view key) const;
    std::vector<std::string> get_string_array(std::string_view key) const;
    std::vector<float> get_f32_array(std::string_view key) const;
    std::vector<int32_t> get_i32_array(std::string_view key) const;
    std::optional<std::string_view> find_string(std::string_view key) const;
    std::optional<uint32_t> find_u32(std::string_view key) const;
    std::optional<uint64_t> find_u64(std::string_view key) const;
    std::optional<int64_t> find_i64(std::string_view key) const;
    std::optional<float> find_f32(std::string_view key) const;
    std::optional<bool> find_bool(std::string_view key) const;

    /// The tensors in file order.
    const std::vector<gguf_tensor>& tensors() const { return _tensors; }
    /// The tensor named `name`, or nullptr.
    const gguf_tensor* find_tensor(std::string_view name) const;

private:
    struct unmapper {
        size_t length;
        int slot; ///< 1 + its slot in the table report_truncated_models() reads; 0: none
        void operator()(std::byte* addr) const noexcept;
    };
    friend class gguf_parser;

    gguf_file() = default;
    const gguf_value& require(std::string_view key) const;

    std::unique_ptr<std::byte, unmapper> _map;
    std::span<const std::byte> _bytes;
    uint32_t _version = 0;
    uint32_t _alignment = 32;
    uint64_t _data_offset = 0;
    std::vector<gguf_kv> _kvs;
    std::map<std::string, size_t, std::less<>> _kv_index;
    std::vector<gguf_tensor> _tensors;
    std::map<std::string, size_t, std::less<>> _tensor_index;
};

/// Builds a GGUF file in memory. Not thread-safe; the output is a function
/// of the calls only (the same calls give the same bytes).
class gguf_writer {
public:
    /// A writer for GGUF `version` 2 or 3; throws gguf_error otherwise.
    /// It writes files within `limits`: lower ones than the defaults (for
    /// a reader that takes less) make it refuse sooner; higher ones count
    /// as the defaults, which are what gguf_file reads.
    explicit gguf_writer(uint32_t version = 3, const gguf_limits& limits = {});

    /// Sets `key` (replacing an existing value in place, else appending).
    /// Throws gguf_error for an array whose elements are not of its type,
    /// or an invalid general.alignment.
    void set(std::string key, gguf_value value);
    /// Removes `key`; returns whether it was there.
    bool erase(std::string_view key);
    /// Sets the data alignment: a power of two, gguf_min_alignment or more
    /// (throws gguf_error otherwise); written as general.alignment (u32)
    /// unless it is the default 32.
    void set_alignment(uint32_t alignment);
    uint32_t alignment() const { return _alignment; }

    /// Appends a tensor of `dims` (ne order, 1 to 4 of them) whose bytes
    /// `data` (copied) are exactly row_bytes(type, dims[0]) * rows. Throws
    /// gguf_error for a duplicate name, a name longer than
    /// gguf_max_tensor_name, more tensors than the limits allow, bad dims
    /// or type, or a size mismatch.
    void add_tensor(std::string name, ggml_type type, std::span<const uint64_t> dims,
                    std::span<const std::byte> data);
    void add_tensor(std::string name, ggml_type type, std::initializer_list<uint64_t> dims,
                    std::span<const std::byte> data) {
        add_tensor(std::move(name), type, std::span<const uint64_t>(dims.begin(), dims.size()),
                   data);
    }

    /// The whole file. Throws gguf_error when the metadata passes the
    /// limits (values or text in all).
    std::vector<std::byte> write() const;
    /// Writes the file to `path` atomically (a temporary file in the same
    /// directory, fsync, rename). Throws gguf_error as write() does, and
    /// with the path and strerror on failure, leaving no temporary behind.
    void write(const std::string& path) const;

private:
    std::vector<std::byte> header() const;

    uint32_t _version;
    uint32_t _alignment = 32;
    gguf_limits _limits;
    std::vector<gguf_kv> _kvs;
    std::vector<gguf_tensor> _tensors; // shapes and sizes (offsets are set when writing)
    std::map<std::string, size_t, std::less<>> _tensor_index; // name -> index in _tensors
    std::vector<std::vector<std::byte>> _data;
};

} // namespace llmos::engine
