// A task head: one input line's item -> albert-run's result for it (default parameters). One file per task.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "bundle.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace albert {

class Task {
public:
    Task(const Bundle& bundle, const Tokenizer& tokenizer, Model& model)
        : bundle_(bundle), tokenizer_(tokenizer), model_(model) {}
    virtual ~Task() = default;
    Task(const Task&) = delete;
    Task& operator=(const Task&) = delete;

    virtual nlohmann::ordered_json answer(const std::string& line) = 0;  // throws InputError

protected:
    const Bundle& bundle_;
    const Tokenizer& tokenizer_;
    Model& model_;
};

std::unique_ptr<Task> make_fill_mask(const Bundle&, const Tokenizer&, Model&);
std::unique_ptr<Task> make_text_classification(const Bundle&, const Tokenizer&, Model&);
std::unique_ptr<Task> make_question_answering(const Bundle&, const Tokenizer&, Model&);

// softmax over one row, in float32 as the runtime's numpy does it
std::vector<float> softmax(const float* logits, std::size_t size);
// the text of an item that must be a non-blank string (a JSON string)
std::u32string text_of(const nlohmann::json& item, const std::string& what);

}  // namespace albert
