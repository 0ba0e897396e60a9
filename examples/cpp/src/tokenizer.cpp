#include "tokenizer.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "errors.hpp"
#include "utf8.hpp"

namespace albert {
namespace {

const std::string kSpaceSymbol = "\xe2\x96\x81";  // U+2581 "▁", SentencePiece's and tokenizers' Metaspace

bool starts_with(const std::string& text, const std::string& prefix) {
    return text.compare(0, prefix.size(), prefix) == 0;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
    for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
        text.replace(at, from.size(), to);
    return text;
}

// transformers' clean_up_tokenization, for bundles saved with clean_up_tokenization_spaces
std::string clean_up_tokenization(std::string text) {
    for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
             {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
             {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}})
        text = replace_all(std::move(text), from, to);
    return text;
}

}  // namespace

Tokenizer::Tokenizer(const Bundle& bundle) : settings_(bundle.tokenizer) {
    const auto status = processor_.Load(bundle.file("spiece.model").string());
    if (!status.ok())
        throw BundleError(bundle.file("spiece.model").string() + " is not a SentencePiece model (" + status.ToString() +
                          "); re-export the bundle");
    std::ifstream in(bundle.file("tokenizer.json"), std::ios::binary);
    nlohmann::json tokenizer;
    try {
        tokenizer = nlohmann::json::parse(in);
        for (const auto& token : tokenizer.at("added_tokens")) {
            AddedToken added;
            added.content = decode_utf8(token.at("content").get<std::string>());
            added.id = token.at("id").get<std::int64_t>();
            added.lstrip = token.value("lstrip", false);
            added.rstrip = token.value("rstrip", false);
            added.special = token.value("special", false);
            added_.push_back(std::move(added));
        }
    } catch (const nlohmann::json::exception& error) {
        throw BundleError(bundle.file("tokenizer.json").string() + " has no readable added_tokens (" + error.what() + ")");
    }
    for (const auto& token : added_) {
        added_by_id_[token.id] = &token;
        added_by_text_[encode_utf8(token.content)] = token.id;
    }
    for (const auto& [role, text] : settings_.special_tokens) {
        if (added_by_text_.count(text) == 0 && processor_.PieceToId(text) == processor_.unk_id() && role != "unk")
            throw BundleError("the special token " + text + " (" + role + ") is in neither spiece.model nor tokenizer.json");
    }
    space_id_ = processor_.PieceToId(kSpaceSymbol);
}

bool Tokenizer::has_role(const std::string& role) const { return settings_.special_tokens.count(role) > 0; }

std::int64_t Tokenizer::role_id(const std::string& role) const {
    const auto found = settings_.special_tokens.find(role);
    if (found == settings_.special_tokens.end())
        throw BundleError("the bundle's tokenizer defines no " + role + " token (manifest.json tokenizer.special_tokens)");
    const auto added = added_by_text_.find(found->second);
    return added != added_by_text_.end() ? added->second : processor_.PieceToId(found->second);
}

std::vector<int> Tokenizer::piece_ids(const std::string& text) const {
    std::vector<int> ids;
    processor_.Encode(text, &ids);
    return ids;
}

Tokenizer::Spacing Tokenizer::spacing(char32_t c) const {
    const auto cached = spacing_.find(c);
    if (cached != spacing_.end()) return cached->second;
    const auto probe = piece_ids("x" + encode_utf8(std::u32string(1, c)) + "x");
    const auto result = probe == piece_ids("x x") ? Spacing::kSpace
                        : probe == piece_ids("xx") ? Spacing::kDeleted
                                                   : Spacing::kOther;
    spacing_.emplace(c, result);
    return result;
}

void Tokenizer::append_segment(std::u32string_view text, std::size_t offset, int& word, Tokens& out) const {
    const auto normalized = normalize(text, offset, settings_.do_lower_case, !settings_.keep_accents);
    const auto& chars = normalized.text;
    if (chars.empty()) return;
    std::string utf8;
    std::vector<std::size_t> char_at_byte;  // byte offset in utf8 -> code point index in chars
    for (std::size_t i = 0; i < chars.size(); ++i) {
        const auto bytes = encode_utf8(std::u32string_view(&chars[i], 1));
        char_at_byte.insert(char_at_byte.end(), bytes.size(), i);
        utf8 += bytes;
    }
    char_at_byte.push_back(chars.size());
    const auto source_span = [&](std::size_t start, std::size_t end) -> Span {  // chars [start, end) -> input
        if (end <= start) return {normalized.source[start], normalized.source[start] + 1};
        return {normalized.source[start], normalized.source[end - 1] + 1};
    };
    const auto pieces = processor_.EncodeAsImmutableProto(utf8);
    std::size_t previous_end = 0;
    bool first = true;
    for (const auto& piece : pieces.pieces()) {
        const std::size_t begin = char_at_byte[piece.begin()];
        const std::size_t end = char_at_byte[piece.end()];
        std::size_t start = begin;
        const bool spaced = starts_with(piece.piece(), kSpaceSymbol);
        if (spaced) {
            // tokenizers puts a word's "▁" on the last space before it (SentencePiece on the first, or nowhere
            // when it stripped the text's leading spaces)
            std::size_t content = begin;
            while (content < end && spacing(chars[content]) != Spacing::kOther) ++content;
            for (std::size_t k = previous_end; k < content; ++k) {
                if (spacing(chars[k]) == Spacing::kSpace) start = k;
            }
        }
        if (spaced || first) ++word;
        first = false;
        out.ids.push_back(piece.id());
        out.offsets.push_back(start < end ? source_span(start, end) : source_span(start, start));
        out.words.push_back(word);
        previous_end = std::max(previous_end, end);
    }
    // tokenizers keeps a "▁" for whitespace at the end, SentencePiece drops it
    for (std::size_t k = chars.size(); k-- > 0;) {
        const auto kind = spacing(chars[k]);
        if (kind == Spacing::kOther) break;
        if (kind == Spacing::kSpace) {
            out.ids.push_back(space_id_);
            out.offsets.push_back(source_span(k, k + 1));
            out.words.push_back(++word);
            break;
        }
    }
}

Tokens Tokenizer::tokenize(std::u32string_view text) const {
    Tokens out;
    int word = -1;
    std::size_t segment = 0;  // start of the text not yet tokenized
    std::size_t at = 0;
    while (at < text.size()) {
        const AddedToken* match = nullptr;  // leftmost-longest, as tokenizers' added vocabulary matches
        for (const auto& token : added_) {
            if (!token.content.empty() && text.compare(at, token.content.size(), token.content) == 0 &&
                (match == nullptr || token.content.size() > match->content.size()))
                match = &token;
        }
        if (match == nullptr) {
            ++at;
            continue;
        }
        std::size_t start = at;
        std::size_t stop = at + match->content.size();
        if (match->lstrip)
            while (start > segment && is_whitespace(text[start - 1])) --start;
        if (match->rstrip)
            while (stop < text.size() && is_whitespace(text[stop])) ++stop;
        append_segment(text.substr(segment, start - segment), segment, word, out);
        out.ids.push_back(match->id);
        out.offsets.push_back({start, stop});
        out.words.push_back(++word);
        segment = at = stop;
    }
    append_segment(text.substr(segment), segment, word, out);
    return out;
}

std::pair<std::size_t, std::size_t> Tokenizer::truncate_longest_first(std::size_t first, std::size_t second, bool pair,
                                                                      std::size_t max_length) const {
    const std::size_t special = pair ? kPairSpecialTokens : kSingleSpecialTokens;
    const std::size_t budget = max_length > special ? max_length - special : 0;
    while (first + second > budget) {
        if (first > second) {
            --first;
        } else {
            --second;
        }
    }
    return {first, second};
}

Encoding Tokenizer::encode(const Tokens& first, const Tokens* second) const {
    Encoding out;
    const auto special = [&](const std::string& role, int type) {
        out.ids.push_back(role_id(role));
        out.type_ids.push_back(type);
        out.sequence_ids.push_back(-1);
        out.words.push_back(-1);
        out.offsets.push_back({0, 0});
    };
    const auto sequence = [&](const Tokens& tokens, int type) {
        for (std::size_t i = 0; i < tokens.ids.size(); ++i) {
            out.ids.push_back(tokens.ids[i]);
            out.type_ids.push_back(type);
            out.sequence_ids.push_back(type);
            out.words.push_back(tokens.words[i]);
            out.offsets.push_back(tokens.offsets[i]);
        }
    };
    special("cls", 0);
    sequence(first, 0);
    special("sep", 0);
    if (second != nullptr) {
        sequence(*second, 1);
        special("sep", 1);
    }
    return out;
}

std::string Tokenizer::decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens) const {
    std::string out;
    bool first = true;
    for (const auto id : ids) {
        const auto added = added_by_id_.find(id);
        if (added != added_by_id_.end() && added->second->special && skip_special_tokens) continue;
        std::string token = added != added_by_id_.end() ? encode_utf8(added->second->content)
                                                        : processor_.IdToPiece(static_cast<int>(id));
        // tokenizers' Metaspace decoder: "▁" is a space, except in the first token, where it is dropped
        out += replace_all(std::move(token), kSpaceSymbol, first ? "" : " ");
        first = false;
    }
    return settings_.clean_up_tokenization_spaces ? clean_up_tokenization(std::move(out)) : out;
}

}  // namespace albert
