// albert-run's line formats: an input line as the task's item (plain text or one of its JSON objects), and a
// result as one JSON line the way Python's json.dumps(..., ensure_ascii=False) writes it.
#pragma once

#include <nlohmann/json.hpp>

#include <set>
#include <string>
#include <vector>

namespace albert {

using KeySet = std::set<std::string>;

// The item of one line: a JSON string for plain text (or an object {"text": ...}), else the object itself.
// plain_text: whether the task takes plain text. Throws InputError naming what is wrong.
nlohmann::json parse_line(const std::string& line, const std::string& task, const std::vector<KeySet>& shapes,
                          bool plain_text);

std::string python_json(const nlohmann::ordered_json& value);

}  // namespace albert
