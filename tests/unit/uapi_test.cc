// SPDX-License-Identifier: MIT
//
// The UAPI header as C++ sees it: layouts that must never change, and the
// encoding rules every command follows (include/uapi/linux/llmos.h).
#include <cstddef>
#include <cstdint>
#include <gtest/gtest.h>
#include <linux/llmos.h>
#include <sys/ioctl.h>
#include <type_traits>

namespace {

// Published layouts: a change here breaks every binary built before it.
static_assert(sizeof(llmos_version) == 24);
static_assert(offsetof(llmos_version, size) == 0);
static_assert(offsetof(llmos_version, flags) == 4);
static_assert(offsetof(llmos_version, out_abi_major) == 8);
static_assert(offsetof(llmos_version, out_abi_minor) == 12);
static_assert(offsetof(llmos_version, out_features) == 16);
static_assert(alignof(llmos_version) == 8);
static_assert(std::is_trivially_copyable_v<llmos_version>);
static_assert(sizeof(llmos_tenant_grant) == 40);
static_assert(offsetof(llmos_tenant_grant, uid) == 8);
static_assert(offsetof(llmos_tenant_grant, first) == 12);
static_assert(offsetof(llmos_tenant_grant, last) == 16);
static_assert(offsetof(llmos_tenant_grant, out_first) == 20);
static_assert(offsetof(llmos_tenant_grant, out_last) == 24);
static_assert(offsetof(llmos_tenant_grant, out_granted) == 28);
static_assert(offsetof(llmos_tenant_grant, out_admin) == 32);
static_assert(offsetof(llmos_tenant_grant, out_worker) == 36);

struct command {
    unsigned long number;
    size_t size;
    size_t align;
    size_t size_offset;
    size_t flags_offset;
    const char* name;
};

#define LLMOS_TEST_COMMAND(ioc, type)                                                              \
    command {                                                                                      \
        ioc, sizeof(type), alignof(type), offsetof(type, size), offsetof(type, flags), #ioc        \
    }

const command commands[] = {
    LLMOS_TEST_COMMAND(LLMOS_IOC_VERSION, llmos_version),
    LLMOS_TEST_COMMAND(LLMOS_IOC_SUBMIT_BATCH, llmos_submit_batch),
    LLMOS_TEST_COMMAND(LLMOS_IOC_TENANT_GRANT, llmos_tenant_grant),
};

TEST(uapi, commands_are_plain_io_numbers_of_the_llmos_type) {
    for (const auto& c : commands) {
        SCOPED_TRACE(c.name);
        EXPECT_EQ(_IOC_TYPE(c.number), LLMOS_TYPE);
        EXPECT_EQ(_IOC_DIR(c.number), static_cast<unsigned>(_IOC_NONE));
        EXPECT_EQ(_IOC_SIZE(c.number), 0u);
        EXPECT_GE(_IOC_NR(c.number), static_cast<unsigned>(LLMOS_CMD_BASE));
        EXPECT_EQ(c.number, static_cast<unsigned long>(_IO(LLMOS_TYPE, _IOC_NR(c.number))));
    }
}

TEST(uapi, command_numbers_are_unique) {
    for (size_t i = 0; i < std::size(commands); ++i) {
        for (size_t j = i + 1; j < std::size(commands); ++j) {
            EXPECT_NE(_IOC_NR(commands[i].number), _IOC_NR(commands[j].number))
                << commands[i].name << " and " << commands[j].name;
        }
    }
}

TEST(uapi, every_struct_starts_with_size_then_flags) {
    for (const auto& c : commands) {
        SCOPED_TRACE(c.name);
        EXPECT_EQ(c.size_offset, 0u);
        EXPECT_EQ(c.flags_offset, 4u);
        // 64-bit fields are __aligned_u64: same layout for 32-bit callers.
        EXPECT_EQ(c.size % 8, 0u);
        EXPECT_LE(c.align, 8u);
    }
}

TEST(uapi, version_is_1_3) {
    EXPECT_EQ(LLMOS_ABI_MAJOR, 1);
    EXPECT_EQ(LLMOS_ABI_MINOR, 3);
}

TEST(uapi, feature_bits_are_distinct_powers_of_two) {
    const uint64_t bits[] = {LLMOS_FEATURE_VERSION,      LLMOS_FEATURE_MINDSPACE,
                             LLMOS_FEATURE_MS_DMABUF,    LLMOS_FEATURE_SCHED,
                             LLMOS_FEATURE_BPF_POLICY,   LLMOS_FEATURE_SCHED_RETURN,
                             LLMOS_FEATURE_TENANT_GRANT, LLMOS_FEATURE_WORKER_GRANT};
    uint64_t seen = 0;
    for (uint64_t b : bits) {
        EXPECT_EQ(b & (b - 1), 0u) << b;
        EXPECT_EQ(seen & b, 0u) << b;
        seen |= b;
    }
}

} // namespace
