// SPDX-License-Identifier: MIT
#include "util.hh"

#include <gtest/gtest.h>
#include <llmos/mindspace.hh>

namespace {

using llmosctl::parse_size;

TEST(llmosctl_util, parse_size_accepts_numbers_and_binary_suffixes) {
    EXPECT_EQ(parse_size("4096"), 4096u);
    EXPECT_EQ(parse_size("64K"), 65536u);
    EXPECT_EQ(parse_size("64k"), 65536u);
    EXPECT_EQ(parse_size("16M"), 16u << 20);
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
    EXPECT_FALSE(llmosctl::parse_mode("00640"));
    EXPECT_EQ(llmosctl::format_mode(0640), "0640");
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
