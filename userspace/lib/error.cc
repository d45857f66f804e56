// SPDX-License-Identifier: MIT
#include <llmos/result.hh>
#include <string>

namespace llmos {
namespace {

class category final : public std::error_category {
public:
    const char* name() const noexcept override { return "llmos"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
        case errc::not_llmos_device:
            return "not an llmos device";
        case errc::abi_mismatch:
            return "the llmos module speaks an incompatible ABI version";
        case errc::not_ms_file:
            return "not a saved llmos mindspace";
        case errc::ms_file_version:
            return "saved mindspace of an unsupported format version";
        case errc::ms_file_corrupt:
            return "saved mindspace is truncated or corrupt";
        case errc::local_ms_damaged:
            return "the local store's file of this mindspace is damaged (not a plain file, its "
                   "header rewritten, or cut short)";
        }
        return "unknown llmos error " + std::to_string(ev);
    }
};

} // namespace

const std::error_category& llmos_category() noexcept {
    static const category c;
    return c;
}

} // namespace llmos
