// The bundle's tokenizer in C++: SentencePiece (spiece.model) for the pieces, tokenizer.json's added tokens
// ([MASK] with its lstrip, [CLS], ...) split out first, and tokenizers' conventions where SentencePiece's
// differ: a "▁" kept for trailing whitespace, offsets of a word's "▁" on the last space before it.
#pragma once

#include <sentencepiece_processor.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bundle.hpp"

namespace albert {

using Span = std::pair<std::size_t, std::size_t>;  // code point offsets [start, end) in the text

// One text's tokens, no special tokens: what tokenizers' encode(text, add_special_tokens=False) gives.
struct Tokens {
    std::vector<std::int64_t> ids;
    std::vector<Span> offsets;
    std::vector<int> words;  // word index of each token (tokenizers' word_ids)
};

// Model input of one sequence or pair, special tokens included.
struct Encoding {
    std::vector<std::int64_t> ids;
    std::vector<std::int64_t> type_ids;
    std::vector<int> sequence_ids;  // -1 for special tokens, 0 for the text, 1 for the pair
    std::vector<int> words;         // -1 for special tokens
    std::vector<Span> offsets;      // (0, 0) for special tokens
};

class Tokenizer {
public:
    explicit Tokenizer(const Bundle& bundle);

    Tokens tokenize(std::u32string_view text) const;
    // [CLS] A [SEP] (B [SEP]); first/second hold the tokens kept (see truncate_longest_first)
    Encoding encode(const Tokens& first, const Tokens* second) const;
    // what tokenizers' "longest_first" truncation keeps of each sequence for max_length tokens in all
    std::pair<std::size_t, std::size_t> truncate_longest_first(std::size_t first, std::size_t second, bool pair,
                                                               std::size_t max_length) const;
    std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens) const;
    std::int64_t role_id(const std::string& role) const;  // the id of the special token playing role
    bool has_role(const std::string& role) const;
    static constexpr std::size_t kPairSpecialTokens = 3;
    static constexpr std::size_t kSingleSpecialTokens = 2;

private:
    struct AddedToken {
        std::u32string content;
        std::int64_t id = 0;
        bool lstrip = false;
        bool rstrip = false;
        bool special = false;
    };
    enum class Spacing { kSpace, kDeleted, kOther };  // what SentencePiece's normalizer makes of a character

    void append_segment(std::u32string_view text, std::size_t offset, int& word, Tokens& out) const;
    Spacing spacing(char32_t c) const;
    std::vector<int> piece_ids(const std::string& text) const;

    sentencepiece::SentencePieceProcessor processor_;
    TokenizerSettings settings_;
    std::vector<AddedToken> added_;
    std::unordered_map<std::int64_t, const AddedToken*> added_by_id_;
    std::unordered_map<std::string, std::int64_t> added_by_text_;
    std::int64_t space_id_ = 0;                                 // the "▁" piece tokenizers keeps for trailing space
    mutable std::unordered_map<char32_t, Spacing> spacing_;     // a cache: each character probed once
};

}  // namespace albert
