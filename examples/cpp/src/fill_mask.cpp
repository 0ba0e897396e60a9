// fill-mask as the runtime (transformers 4.57's FillMaskPipeline): the 5 best tokens per [MASK], best first;
// a text with several masks gives one list per mask, whose `sequence` keeps the other masks.
#include <algorithm>
#include <numeric>

#include "errors.hpp"
#include "json_line.hpp"
#include "task.hpp"
#include "utf8.hpp"

namespace albert {
namespace {

constexpr std::size_t kTopK = 5;

class FillMask final : public Task {
public:
    using Task::Task;

    nlohmann::ordered_json answer(const std::string& line) override {
        const auto item = parse_line(line, "fill-mask", {{"text"}}, true);
        const auto text = text_of(item, "text");
        const auto mask_id = tokenizer_.role_id("mask");
        const auto tokens = tokenizer_.tokenize(text);
        const auto kept = tokenizer_.truncate_longest_first(tokens.ids.size(), 0, false, bundle_.tokenizer.max_length);
        Tokens first = tokens;
        first.ids.resize(kept.first);
        first.offsets.resize(kept.first);
        first.words.resize(kept.first);
        const auto encoding = tokenizer_.encode(first, nullptr);
        std::vector<std::size_t> masks;
        for (std::size_t i = 0; i < encoding.ids.size(); ++i)
            if (encoding.ids[i] == mask_id) masks.push_back(i);
        if (masks.empty()) {
            const auto mask = bundle_.tokenizer.special_tokens.at("mask");
            throw InputError("No mask_token (" + mask + ") found on the input: " + line.substr(0, 80));
        }
        const auto outputs = model_.run(encoding);
        const auto& logits = outputs.at("logits");
        const std::size_t vocab = logits.shape.at(1);
        const bool single = masks.size() == 1;
        const bool has_pad = tokenizer_.has_role("pad");
        const auto pad_id = has_pad ? tokenizer_.role_id("pad") : -1;
        nlohmann::ordered_json rows = nlohmann::ordered_json::array();
        for (const auto position : masks) {
            const auto probs = softmax(logits.values.data() + position * vocab, vocab);
            std::vector<std::size_t> order(vocab);
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return probs[a] > probs[b]; });
            nlohmann::ordered_json row = nlohmann::ordered_json::array();
            for (std::size_t k = 0; k < std::min(kTopK, vocab); ++k) {
                const auto token = static_cast<std::int64_t>(order[k]);
                std::vector<std::int64_t> filled;
                for (std::size_t i = 0; i < encoding.ids.size(); ++i) {
                    const auto id = i == position ? token : encoding.ids[i];
                    if (!has_pad || id != pad_id) filled.push_back(id);
                }
                nlohmann::ordered_json entry;
                entry["score"] = static_cast<double>(probs[order[k]]);
                entry["token"] = token;
                entry["token_str"] = tokenizer_.decode({token}, false);
                entry["sequence"] = tokenizer_.decode(filled, single);
                row.push_back(std::move(entry));
            }
            rows.push_back(std::move(row));
        }
        return single ? rows[0] : rows;
    }
};

}  // namespace

std::vector<float> softmax(const float* logits, std::size_t size) {
    const float top = *std::max_element(logits, logits + size);
    std::vector<float> out(size);
    float sum = 0.0F;
    for (std::size_t i = 0; i < size; ++i) sum += out[i] = std::exp(logits[i] - top);
    for (auto& value : out) value /= sum;
    return out;
}

std::u32string text_of(const nlohmann::json& item, const std::string& what) {
    if (!item.is_string()) throw InputError(what + " must be a string");
    auto text = decode_utf8(item.get<std::string>());
    if (std::all_of(text.begin(), text.end(), is_whitespace))
        throw InputError(what + " is empty; give at least one non-blank character");
    return text;
}

std::unique_ptr<Task> make_fill_mask(const Bundle& bundle, const Tokenizer& tokenizer, Model& model) {
    return std::make_unique<FillMask>(bundle, tokenizer, model);
}

}  // namespace albert
