// text-classification as the runtime (transformers 4.57's TextClassificationPipeline, top_k not given): the best
// label and its score; a plain text gives [{label, score}], a {"text", "text_pair"} object {label, score}.
#include <algorithm>

#include "errors.hpp"
#include "json_line.hpp"
#include "task.hpp"

namespace albert {
namespace {

class TextClassification final : public Task {
public:
    using Task::Task;

    nlohmann::ordered_json answer(const std::string& line) override {
        const auto item = parse_line(line, "text-classification", {{"text"}, {"text", "text_pair"}}, true);
        const bool pair = item.is_object();
        auto first = tokenizer_.tokenize(text_of(pair ? item["text"] : item, "text"));
        Tokens second;
        if (pair) second = tokenizer_.tokenize(text_of(item["text_pair"], "text_pair"));
        const auto kept = tokenizer_.truncate_longest_first(first.ids.size(), second.ids.size(), pair,
                                                            bundle_.tokenizer.max_length);
        for (auto* tokens : {&first, &second}) {
            const auto n = tokens == &first ? kept.first : kept.second;
            tokens->ids.resize(std::min(n, tokens->ids.size()));
            tokens->offsets.resize(tokens->ids.size());
            tokens->words.resize(tokens->ids.size());
        }
        const auto outputs = model_.run(tokenizer_.encode(first, pair ? &second : nullptr));
        const auto& logits = outputs.at("logits").values;
        const std::size_t labels = bundle_.id2label.empty() ? logits.size() : bundle_.id2label.size();
        std::vector<float> scores;
        const auto& problem = bundle_.problem_type;
        if (problem == "regression") {
            scores = logits;
        } else if (problem == "multi_label_classification" || labels == 1) {
            for (const float x : logits) scores.push_back(1.0F / (1.0F + std::exp(-x)));
        } else {
            scores = softmax(logits.data(), logits.size());
        }
        const auto best = static_cast<std::size_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
        const auto label = bundle_.id2label.find(static_cast<int>(best));
        nlohmann::ordered_json result;
        result["label"] = label != bundle_.id2label.end() ? label->second : "LABEL_" + std::to_string(best);
        result["score"] = static_cast<double>(scores[best]);
        if (pair) return result;
        return nlohmann::ordered_json::array({result});
    }
};

}  // namespace

std::unique_ptr<Task> make_text_classification(const Bundle& bundle, const Tokenizer& tokenizer, Model& model) {
    return std::make_unique<TextClassification>(bundle, tokenizer, model);
}

}  // namespace albert
