// A bundle directory as albert-run reads it: manifest.json (task, inputs, tokenizer settings), every listed
// file's sha256 checked before anything is loaded, and config.json's labels.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace albert {

struct TokenizerSettings {
    int max_length = 0;
    bool do_lower_case = true;
    bool keep_accents = false;
    bool clean_up_tokenization_spaces = false;
    std::map<std::string, std::string> special_tokens;  // role ("cls", "sep", "pad", "mask", "unk") -> token
};

struct Bundle {
    std::filesystem::path root;
    std::string task;
    std::vector<std::string> inputs;  // the model's input names, in the manifest's order
    TokenizerSettings tokenizer;
    std::map<std::string, std::string> files;  // name -> sha256 (hex)
    std::map<int, std::string> id2label;       // config.json
    std::string problem_type;                  // config.json; "" when null

    std::filesystem::path file(const std::string& name) const;  // a listed file's path; BundleError otherwise
};

// Reads manifest.json and config.json and verifies every listed sha256; throws BundleError.
Bundle load_bundle(const std::filesystem::path& root);

std::string sha256_file(const std::filesystem::path& path);  // lowercase hex

}  // namespace albert
