// SPDX-License-Identifier: MIT
#include "options.hh"
#include "util.hh"

#include <algorithm>
#include <gtest/gtest.h>
#include <llmos/mindspace.hh>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using llmosctl::parse_size;

TEST(llmosctl_util, parse_size_accepts_numbers_and_binary_suffixes) {
    EXPECT_EQ(parse_size("4096"), 4096u);
    EXPECT_EQ(parse_size("64K"), 65536u);
    EXPECT_EQ(parse_size("64k"), 65536u);
    EXPECT_EQ(parse_size("16M"), 16u << 20);
    EXPECT_EQ(parse_size("16m"), 16u << 20); // every suffix in either case
    EXPECT_EQ(parse_size("1g"), 1u << 30);
    EXPECT_EQ(parse_size("2t"), uint64_t{2} << 40);
    EXPECT_EQ(parse_size("1G"), 1u << 30);
    EXPECT_EQ(parse_size("1GiB"), 1u << 30);
    EXPECT_EQ(parse_size("2TB"), uint64_t{2} << 40);
    EXPECT_EQ(parse_size("0"), 0u);
}

TEST(llmosctl_util, parse_size_refuses_garbage_and_overflow) {
    for (const char* s : {"", "K", "12Q", "1.5G", "-1", "1 G", "1Gb", "1GiBx", "0x10"}) {
        EXPECT_FALSE(parse_size(s)) << s;
    }
    EXPECT_FALSE(parse_size("18446744073709551616"));
    EXPECT_EQ(parse_size("18446744073709551615"), UINT64_MAX);
    EXPECT_FALSE(parse_size("17179869184G"));
    EXPECT_FALSE(parse_size("64K", false));
    EXPECT_EQ(parse_size("64", false), 64u);
}

TEST(llmosctl_util, format_size_is_short_and_exact_when_it_can_be) {
    EXPECT_EQ(llmosctl::format_size(0), "0");
    EXPECT_EQ(llmosctl::format_size(100), "100");
    EXPECT_EQ(llmosctl::format_size(1024), "1K");
    EXPECT_EQ(llmosctl::format_size(1536), "1.5K");
    EXPECT_EQ(llmosctl::format_size(1 << 20), "1M");
    EXPECT_EQ(llmosctl::format_size(uint64_t{3} << 40), "3T");
}

TEST(llmosctl_util, modes_are_octal_permission_bits) {
    EXPECT_EQ(llmosctl::parse_mode(""), 0u);
    EXPECT_EQ(llmosctl::parse_mode("0640"), 0640u);
    EXPECT_EQ(llmosctl::parse_mode("640"), 0640u);
    EXPECT_FALSE(llmosctl::parse_mode("0800"));
    EXPECT_FALSE(llmosctl::parse_mode("1777"));
    EXPECT_FALSE(llmosctl::parse_mode("rw-"));
    EXPECT_EQ(llmosctl::parse_mode("00640"), 0640u); // as chmod reads it
    EXPECT_EQ(llmosctl::parse_mode("0000"), 0u);
    EXPECT_FALSE(llmosctl::parse_mode("01777"));
    EXPECT_FALSE(llmosctl::parse_mode("06400"));
    EXPECT_EQ(llmosctl::format_mode(0640), "0640");
}

TEST(llmosctl_util, parse_decimal_reads_only_decimal_digits) {
    using llmosctl::parse_decimal;
    std::string why;
    EXPECT_EQ(parse_decimal<uint64_t>("0100", false, why), 100u); // not octal 64
    EXPECT_EQ(parse_decimal<uint64_t>("0", false, why), 0u);
    EXPECT_EQ(parse_decimal<uint64_t>("18446744073709551615", false, why), UINT64_MAX);
    EXPECT_EQ(parse_decimal<uint32_t>("4294967295", false, why), UINT32_MAX);
    EXPECT_EQ(parse_decimal<int64_t>("-9223372036854775808", true, why), INT64_MIN);
    EXPECT_EQ(parse_decimal<int>("-010", true, why), -10);
    for (const char* s : {"", "-", "0x10", "1e3", "+1", " 1", "1 ", "1.0", "0b1", "--1", "1-"}) {
        EXPECT_FALSE(parse_decimal<int>(s, true, why)) << s;
        EXPECT_NE(why.find("is not a decimal integer"), std::string::npos) << s << ": " << why;
    }
    EXPECT_FALSE(parse_decimal<uint64_t>("-1", false, why));
    EXPECT_EQ(why, "must not be negative");
    EXPECT_FALSE(parse_decimal<int>("-1", false, why));
    EXPECT_EQ(why, "must not be negative");
    EXPECT_FALSE(parse_decimal<uint64_t>("18446744073709551616", false, why));
    EXPECT_EQ(why, "'18446744073709551616' is out of range (0..18446744073709551615)");
    EXPECT_FALSE(parse_decimal<uint32_t>("4294967296", false, why));
    EXPECT_FALSE(parse_decimal<int64_t>("99999999999999999999", true, why));
    EXPECT_EQ(why, "'99999999999999999999' is out of range "
                   "(-9223372036854775808..9223372036854775807)");
    EXPECT_FALSE(parse_decimal<int>("-2147483649", true, why));
}

TEST(llmosctl_util, the_decimal_transform_gives_cli11_the_decimal_value) {
    for (const auto& [arg, want] : std::vector<std::pair<std::string, uint64_t>>{
             {"0100", 100}, {"010", 10}, {"00", 0}, {"18446744073709551615", UINT64_MAX}}) {
        CLI::App app;
        uint64_t v = 1;
        app.add_option("--n", v)->transform(llmosctl::decimal<uint64_t>());
        std::vector<std::string> args = {"--n", arg};
        std::reverse(args.begin(), args.end()); // CLI11 takes them last first
        EXPECT_NO_THROW(app.parse(args)) << arg;
        EXPECT_EQ(v, want) << arg;
    }
    for (const char* arg : {"0x10", "-1", "18446744073709551616", "1e3"}) {
        CLI::App app;
        uint64_t v = 1;
        app.add_option("--n", v)->transform(llmosctl::decimal<uint64_t>());
        std::vector<std::string> args = {arg, "--n"};
        EXPECT_THROW(app.parse(args), CLI::ValidationError) << arg;
    }
    // A range check runs on the decimal value.
    CLI::App app;
    uint32_t w = 0;
    app.add_option("w", w)->transform(llmosctl::decimal<uint32_t>())->check(CLI::Range(1, 10000));
    std::vector<std::string> args = {"010000"};
    EXPECT_NO_THROW(app.parse(args));
    EXPECT_EQ(w, 10000u);
}

TEST(llmosctl_util, a_name_option_refuses_the_next_option) {
    CLI::App app;
    std::string name;
    bool json = false;
    app.add_flag("--json", json);
    app.add_option("--name", name)->check(llmosctl::not_an_option());
    std::vector<std::string> args = {"--json", "--name"};
    EXPECT_THROW(app.parse(args), CLI::ValidationError);
    CLI::App ok;
    ok.add_option("--name", name)->check(llmosctl::not_an_option());
    args = {"-x", "--name"}; // one dash: a name may begin with it
    EXPECT_NO_THROW(ok.parse(args));
    EXPECT_EQ(name, "-x");
}

TEST(llmosctl_util, a_text_option_refuses_only_a_lone_option) {
    for (const auto& [value, ok] : std::vector<std::pair<std::string, bool>>{
             {"--json", false}, {"--verbose", false}, {"-- be brief", true}, {"be brief", true}}) {
        CLI::App app;
        std::string text;
        bool json = false;
        app.add_flag("--json,--verbose", json);
        app.add_option("--system", text)->check(llmosctl::not_an_option_word());
        std::vector<std::string> args = {value, "--system"};
        if (ok) {
            EXPECT_NO_THROW(app.parse(args)) << value;
            EXPECT_EQ(text, value);
        } else {
            EXPECT_THROW(app.parse(args), CLI::ValidationError) << value;
        }
    }
}

// fill_from() with `input` on a pipe and a buffer of `room` bytes.
llmosctl::fill_result fill_pipe(const std::string& input, size_t room, std::string& got) {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    // Written as it is read: more than the pipe holds at once.
    std::thread writer([&] {
        EXPECT_EQ(::write(p[1], input.data(), input.size()), static_cast<ssize_t>(input.size()));
        ::close(p[1]);
    });
    std::vector<char> buf(room, '.');
    const auto r = llmosctl::fill_from(p[0], buf);
    if (r.more || r.error) {
        std::vector<char> rest(input.size());
        while (::read(p[0], rest.data(), rest.size()) > 0) {
        }
    }
    writer.join();
    ::close(p[0]);
    got.assign(buf.begin(), buf.end());
    return r;
}

TEST(llmosctl_util, fill_from_fills_the_buffer_and_tells_of_more) {
    std::string got;
    auto r = fill_pipe("abc", 3, got); // exactly
    EXPECT_EQ(r.bytes, 3u);
    EXPECT_FALSE(r.more);
    EXPECT_FALSE(r.error);
    EXPECT_EQ(got, "abc");
    r = fill_pipe("abcd", 3, got); // a byte more
    EXPECT_EQ(r.bytes, 3u);
    EXPECT_TRUE(r.more);
    EXPECT_EQ(got, "abc") << "the probe's byte goes nowhere";
    r = fill_pipe("ab", 4, got); // less
    EXPECT_EQ(r.bytes, 2u);
    EXPECT_FALSE(r.more);
    EXPECT_EQ(got, "ab..");
    r = fill_pipe("a", 0, got); // no room
    EXPECT_EQ(r.bytes, 0u);
    EXPECT_TRUE(r.more);
    r = fill_pipe("", 0, got);
    EXPECT_FALSE(r.more);
    r = fill_pipe(std::string(3u << 20, 'x'), 3u << 20, got); // several pieces
    EXPECT_EQ(r.bytes, 3u << 20);
    EXPECT_FALSE(r.more);
    EXPECT_EQ(got, std::string(3u << 20, 'x'));
    r = llmosctl::fill_from(-1, {});
    EXPECT_EQ(r.error, std::errc::bad_file_descriptor);
}

TEST(llmosctl_util, printable_writes_out_control_characters) {
    using llmosctl::printable;
    EXPECT_EQ(printable("plain text, caf\xc3\xa9"), "plain text, caf\xc3\xa9");
    EXPECT_EQ(printable("two\nlines\r"), "two\\x0alines\\x0d");
    EXPECT_EQ(printable("\x1b[31mred\x7f"), "\\x1b[31mred\\x7f");
    EXPECT_EQ(printable(std::string("nul\0", 4)), "nul\\x00");
    // C1 controls as UTF-8 (U+009B is a CSI to some terminals).
    EXPECT_EQ(printable("\xc2\x9b[2J"), "\\u009b[2J");
    EXPECT_EQ(printable("\xc2\xa0"), "\xc2\xa0"); // U+00A0 is text
    EXPECT_EQ(printable("\xc2"), "\xc2");
}

TEST(llmosctl_util, a_counter_that_went_down_grew_by_nothing) {
    EXPECT_EQ(llmosctl::counter_delta(10, 4), 6u);
    EXPECT_EQ(llmosctl::counter_delta(4, 4), 0u);
    EXPECT_EQ(llmosctl::counter_delta(3, 10), 0u); // reset, not 2^64 - 7
    EXPECT_EQ(llmosctl::counter_delta(UINT64_MAX, 0), UINT64_MAX);
}

TEST(ms_key, numbers_are_ids_and_the_rest_names) {
    auto k = llmos::ms_key::parse("42");
    EXPECT_EQ(k.id, 42u);
    EXPECT_TRUE(k.name.empty());
    k = llmos::ms_key::parse("conv-42");
    EXPECT_EQ(k.id, 0u);
    EXPECT_EQ(k.name, "conv-42");
    // 0 is no id; 21 digits is too long for one: both stay names (and the
    // module refuses all-digit names, so they cannot exist).
    EXPECT_EQ(llmos::ms_key::parse("0").name, "0");
    EXPECT_EQ(llmos::ms_key::parse("123456789012345678901").name, "123456789012345678901");
    EXPECT_EQ(llmos::ms_key::parse("99999999999999999999").name, "99999999999999999999");
}

} // namespace
