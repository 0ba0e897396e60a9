#include "utf8.hpp"

#include <utf8proc.h>

#include "errors.hpp"

namespace albert {

std::u32string decode_utf8(std::string_view text) {
    std::u32string out;
    out.reserve(text.size());
    const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
    std::size_t at = 0;
    while (at < text.size()) {
        utf8proc_int32_t c = 0;
        const auto used = utf8proc_iterate(bytes + at, static_cast<utf8proc_ssize_t>(text.size() - at), &c);
        if (used < 0) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned>(bytes[at]));
            throw InputError("not valid UTF-8 (byte 0x" + std::string(hex) + " at byte " + std::to_string(at + 1) +
                             "); save the input as UTF-8");
        }
        out.push_back(static_cast<char32_t>(c));
        at += static_cast<std::size_t>(used);
    }
    return out;
}

std::string encode_utf8(std::u32string_view text) {
    std::string out;
    out.reserve(text.size());
    utf8proc_uint8_t buffer[4];
    for (char32_t c : text) {
        const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buffer);
        out.append(reinterpret_cast<const char*>(buffer), static_cast<std::size_t>(n));
    }
    return out;
}

bool is_whitespace(char32_t c) {
    if ((c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85) return true;
    const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return category == UTF8PROC_CATEGORY_ZS || category == UTF8PROC_CATEGORY_ZL || category == UTF8PROC_CATEGORY_ZP;
}

namespace {

constexpr char32_t kDottedCapitalI = 0x130;  // the one character whose full lowercase is two: i + U+0307

void append_lower(std::u32string& out, std::vector<std::size_t>& source, char32_t c, std::size_t from) {
    if (c == kDottedCapitalI) {
        out += U"i\u0307";
        source.insert(source.end(), 2, from);
        return;
    }
    out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    source.push_back(from);
}

}  // namespace

std::u32string lowercase(std::u32string_view text) {
    std::u32string out;
    std::vector<std::size_t> unused;
    for (char32_t c : text) append_lower(out, unused, c, 0);
    return out;
}

Normalized normalize(std::u32string_view text, std::size_t offset, bool lower_case, bool strip_accents) {
    Normalized result;
    result.text.reserve(text.size());
    result.source.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        char32_t c = text[i];
        // tokenizer.json's Replace("``", "\"") and Replace("''", "\""): the quote stands for the pair's second mark
        if ((c == U'`' || c == U'\'') && i + 1 < text.size() && text[i + 1] == c) {
            c = U'"';
            ++i;
        }
        const std::size_t at = offset + i;
        char32_t pieces[32];
        std::size_t count = 1;
        pieces[0] = c;
        if (strip_accents) {  // NFKD then StripAccents (tokenizers removes nonspacing marks)
            utf8proc_int32_t buffer[32];
            int boundclass = 0;
            const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), buffer, 32,
                                                   static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT),
                                                   &boundclass);
            if (n > 0 && n <= 32) {
                count = 0;
                for (utf8proc_ssize_t k = 0; k < n; ++k) {
                    if (utf8proc_category(buffer[k]) != UTF8PROC_CATEGORY_MN) pieces[count++] = static_cast<char32_t>(buffer[k]);
                }
            }
        }
        for (std::size_t k = 0; k < count; ++k) {
            if (lower_case) {
                append_lower(result.text, result.source, pieces[k], at);
            } else {
                result.text.push_back(pieces[k]);
                result.source.push_back(at);
            }
        }
    }
    return result;
}

}  // namespace albert
