// albert-run-cpp BUNDLE [INPUT|-]: albert-run's input lines in, albert-run's JSON answers out (default
// parameters), for fill-mask, text-classification and question-answering bundles.
// albert-run-cpp --tokenize BUNDLE [INPUT|-]: each line's text (or JSON string) as {"ids", "offsets", "words"},
// what tokenizers' encode(text) gives (tests/test_cpp.py compares them).
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "bundle.hpp"
#include "errors.hpp"
#include "json_line.hpp"
#include "model.hpp"
#include "task.hpp"
#include "tokenizer.hpp"
#include "utf8.hpp"

namespace {

constexpr const char* kProgram = "albert-run-cpp";
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

std::unique_ptr<albert::Task> task_for(const albert::Bundle& bundle, const albert::Tokenizer& tokenizer,
                                       albert::Model& model) {
    if (bundle.task == "fill-mask") return albert::make_fill_mask(bundle, tokenizer, model);
    if (bundle.task == "text-classification") return albert::make_text_classification(bundle, tokenizer, model);
    if (bundle.task == "question-answering") return albert::make_question_answering(bundle, tokenizer, model);
    throw albert::BundleError("the bundle's task is " + bundle.task +
                              "; albert-run-cpp answers fill-mask, text-classification and question-answering (albert-run answers every task)");
}

// albert-run's line checks: a trailing \r dropped, a byte order mark on line 1 skipped, blank lines refused
std::string checked_line(std::string line, std::size_t number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (number == 1 && line.rfind("\xef\xbb\xbf", 0) == 0) line.erase(0, 3);
    if (line.find_first_not_of(" \t\n\v\f\r") == std::string::npos)
        throw albert::InputError("blank line; give one input per line (output line N answers input line N)");
    return line;
}

nlohmann::ordered_json tokenized(const albert::Tokenizer& tokenizer, const std::string& line) {
    const auto text = line.rfind('"', 0) == 0 ? nlohmann::json::parse(line).get<std::string>() : line;
    const auto encoding = tokenizer.encode(tokenizer.tokenize(albert::decode_utf8(text)), nullptr);
    nlohmann::ordered_json result;
    result["ids"] = encoding.ids;
    result["offsets"] = nlohmann::ordered_json::array();
    result["words"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < encoding.ids.size(); ++i) {
        result["offsets"].push_back({encoding.offsets[i].first, encoding.offsets[i].second});
        result["words"].push_back(encoding.words[i] < 0 ? nlohmann::ordered_json() : nlohmann::ordered_json(encoding.words[i]));
    }
    return result;
}

int run(const std::string& bundle_dir, std::istream& in, bool tokenize_only) {
    const auto bundle = albert::load_bundle(bundle_dir);
    const albert::Tokenizer tokenizer(bundle);
    std::unique_ptr<albert::Model> model;
    std::unique_ptr<albert::Task> task;
    if (!tokenize_only) {
        model = std::make_unique<albert::Model>(bundle);
        task = task_for(bundle, tokenizer, *model);
    }
    std::string line;
    for (std::size_t number = 1; std::getline(in, line); ++number) {
        try {
            const auto checked = checked_line(line, number);
            const auto result = tokenize_only ? tokenized(tokenizer, checked) : task->answer(checked);
            std::cout << albert::python_json(result) << '\n' << std::flush;
        } catch (const albert::InputError& error) {
            std::cerr << kProgram << ": line " << number << ": " << error.what() << '\n';
            return kExitFailure;
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const bool tokenize_only = argc > 1 && std::string(argv[1]) == "--tokenize";
    if (tokenize_only) {
        --argc;
        ++argv;
    }
    if (argc < 2 || argc > 3 || std::string(argv[1]).rfind('-', 0) == 0) {
        std::cerr << "usage: " << kProgram << " [--tokenize] BUNDLE [INPUT|-]\n";
        return kExitUsage;
    }
    try {
        const std::string input = argc == 3 ? argv[2] : "-";
        if (input == "-") return run(argv[1], std::cin, tokenize_only);
        std::ifstream file(input, std::ios::binary);
        if (!file) {
            std::cerr << kProgram << ": error: cannot read " << input << "; pass a file of input lines or - for stdin\n";
            return kExitUsage;
        }
        return run(argv[1], file, tokenize_only);
    } catch (const std::exception& error) {
        std::cerr << kProgram << ": error: " << error.what() << '\n';
        return kExitFailure;
    }
}
