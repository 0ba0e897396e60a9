// UTF-8 <-> code points, and the normalization tokenizer.json applies before SentencePiece (NFKD, accents
// stripped, lowercased, `` and '' as "), each output code point remembering the input code point it came from.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace albert {

std::u32string decode_utf8(std::string_view text);  // throws InputError on invalid UTF-8
std::string encode_utf8(std::u32string_view text);
bool is_whitespace(char32_t c);                      // Rust's char::is_whitespace (tokenizers' lstrip/rstrip)
std::u32string lowercase(std::u32string_view text);  // Python's str.lower for the cases that occur here

struct Normalized {
    std::u32string text;
    std::vector<std::size_t> source;  // per code point of text: the index of the input code point it came from
};

// tokenizer.json's normalizer steps before its Precompiled one; offset: the input's first code point index
Normalized normalize(std::u32string_view text, std::size_t offset, bool lower_case, bool strip_accents);

}  // namespace albert
