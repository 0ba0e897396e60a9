// question-answering as the runtime (transformers 4.57's QuestionAnsweringPipeline, default parameters): the
// context cut into windows of max_seq_len tokens overlapping by doc_stride, each window's 12 best spans of at
// most 15 tokens (softmaxed start x end), widened to whole words, answers with the same lower-cased text summed,
// the best one returned.
#include <algorithm>
#include <numeric>
#include <unordered_map>

#include "errors.hpp"
#include "json_line.hpp"
#include "task.hpp"
#include "utf8.hpp"

namespace albert {
namespace {

constexpr std::size_t kMaxSeqLen = 384;
constexpr std::size_t kMaxDocStride = 128;
constexpr std::size_t kMaxAnswerLen = 15;
constexpr std::size_t kCandidates = 1 * 2 + 10;  // top_k * 2 + 10: word alignment may merge some
constexpr float kUndesiredLogit = -10000.0F;

struct Answer {
    double score = 0.0;
    std::size_t start = 0;
    std::size_t end = 0;
    std::u32string text;
};

std::vector<float> masked_softmax(const std::vector<float>& logits, const std::vector<bool>& desired) {
    std::vector<float> masked(desired.size());
    for (std::size_t i = 0; i < desired.size(); ++i) masked[i] = desired[i] ? logits[i] : kUndesiredLogit;
    return softmax(masked.data(), masked.size());
}

class QuestionAnswering final : public Task {
public:
    using Task::Task;

    nlohmann::ordered_json answer(const std::string& line) override {
        const auto item = parse_line(line, "question-answering", {{"question", "context"}}, false);
        for (const char* key : {"question", "context"})
            if (item[key].get<std::string>().empty()) throw InputError(std::string("`") + key + "` cannot be empty");
        const auto question = tokenizer_.tokenize(decode_utf8(item["question"].get<std::string>()));
        const auto context_text = decode_utf8(item["context"].get<std::string>());
        const auto context = tokenizer_.tokenize(context_text);
        if (context.ids.empty()) throw InputError("`context` has no tokens; give a context with words in it");

        const std::size_t max_seq_len = std::min<std::size_t>(bundle_.tokenizer.max_length, kMaxSeqLen);
        const std::size_t stride = std::min(max_seq_len / 2, kMaxDocStride);
        const std::size_t used = question.ids.size() + Tokenizer::kPairSpecialTokens;
        std::size_t budget = used < max_seq_len ? max_seq_len - used : 0;  // context tokens per window
        if (used + context.ids.size() > max_seq_len && budget <= stride)
            throw InputError("the question (" + std::to_string(question.ids.size()) + " tokens) leaves no room for windows of " +
                             std::to_string(max_seq_len) + " tokens with doc_stride " + std::to_string(stride) +
                             "; albert-run-cpp does not cut questions: use albert-run, or a shorter question");
        if (used + context.ids.size() <= max_seq_len) budget = context.ids.size();

        std::vector<Answer> answers;
        std::unordered_map<std::u32string, std::size_t> by_text;  // lower-cased text -> index in answers
        const std::size_t step = budget - std::min(stride, budget - 1);
        for (std::size_t begin = 0;; begin += step) {
            const std::size_t stop = std::min(begin + budget, context.ids.size());
            window(question, context, context_text, begin, stop, answers, by_text);
            if (stop >= context.ids.size()) break;
        }
        if (answers.empty()) return nlohmann::ordered_json::array();
        const auto best = std::max_element(answers.begin(), answers.end(),
                                           [](const Answer& a, const Answer& b) { return a.score < b.score; });
        nlohmann::ordered_json result;
        result["score"] = best->score;
        result["start"] = best->start;
        result["end"] = best->end;
        result["answer"] = encode_utf8(best->text);
        return result;
    }

private:
    void window(const Tokens& question, const Tokens& context, const std::u32string& text, std::size_t begin,
                std::size_t stop, std::vector<Answer>& answers,
                std::unordered_map<std::u32string, std::size_t>& by_text) {
        Tokens part;
        part.ids.assign(context.ids.begin() + begin, context.ids.begin() + stop);
        part.offsets.assign(context.offsets.begin() + begin, context.offsets.begin() + stop);
        part.words.assign(context.words.begin() + begin, context.words.begin() + stop);
        const auto encoding = tokenizer_.encode(question, &part);
        const std::size_t length = encoding.ids.size();
        std::vector<bool> desired(length);
        const auto cls = tokenizer_.role_id("cls");
        for (std::size_t i = 0; i < length; ++i) desired[i] = encoding.sequence_ids[i] == 1 || encoding.ids[i] == cls;
        const auto outputs = model_.run(encoding);
        auto start = masked_softmax(outputs.at("start_logits").values, desired);
        auto end = masked_softmax(outputs.at("end_logits").values, desired);
        start[0] = end[0] = 0.0F;  // CLS is never a span

        // every (s, e) with s <= e < s + max_answer_len; the rest score 0 (numpy's triu/tril)
        std::vector<float> scores(length * length, 0.0F);
        for (std::size_t s = 0; s < length; ++s)
            for (std::size_t e = s; e < std::min(length, s + kMaxAnswerLen); ++e) scores[s * length + e] = start[s] * end[e];
        std::vector<std::size_t> order(scores.size());
        std::iota(order.begin(), order.end(), 0);
        const std::size_t count = std::min(kCandidates, order.size());
        std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](std::size_t a, std::size_t b) {
            return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
        });
        for (std::size_t k = 0; k < count; ++k) {
            const std::size_t s = order[k] / length;
            const std::size_t e = order[k] % length;
            if (!desired[s] || !desired[e]) continue;
            const auto [from, to] = char_span(encoding, s, e);
            Answer answer{static_cast<double>(scores[order[k]]), from, to,
                          from < to && to <= text.size() ? text.substr(from, to - from) : std::u32string()};
            const auto key = lowercase(answer.text);
            const auto same = by_text.find(key);
            if (same != by_text.end()) {
                answers[same->second].score += answer.score;
            } else {
                by_text.emplace(key, answers.size());
                answers.push_back(std::move(answer));
            }
        }
    }

    // the characters of tokens s..e, widened to whole words (tokenizers' word_to_chars within this window)
    static Span char_span(const Encoding& encoding, std::size_t s, std::size_t e) {
        const int first = encoding.words[s];
        const int last = encoding.words[e];
        if (first < 0 || last < 0) return {encoding.offsets[s].first, encoding.offsets[e].second};
        std::size_t from = std::string::npos;
        std::size_t to = 0;
        for (std::size_t i = 0; i < encoding.ids.size(); ++i) {
            if (encoding.sequence_ids[i] != 1) continue;
            if (encoding.words[i] == first) from = std::min(from, encoding.offsets[i].first);
            if (encoding.words[i] == last) to = std::max(to, encoding.offsets[i].second);
        }
        return {from, to};
    }
};

}  // namespace

std::unique_ptr<Task> make_question_answering(const Bundle& bundle, const Tokenizer& tokenizer, Model& model) {
    return std::make_unique<QuestionAnswering>(bundle, tokenizer, model);
}

}  // namespace albert
