#include "json_line.hpp"

#include "errors.hpp"

namespace albert {
namespace {

std::string keys_of(const KeySet& keys) {
    std::string out = "[";
    for (const auto& key : keys) out += (out.size() > 1 ? ", \"" : "\"") + key + "\"";
    return out + "]";
}

}  // namespace

nlohmann::json parse_line(const std::string& line, const std::string& task, const std::vector<KeySet>& shapes,
                          bool plain_text) {
    std::string expected;
    for (const auto& shape : shapes) expected += (expected.empty() ? "" : " or ") + keys_of(shape);
    const auto first = line.find_first_not_of(" \t\r\n\f\v");
    if (first == std::string::npos || line[first] != '{') {
        if (!plain_text) throw InputError(task + " takes JSON objects with keys " + expected + ", not plain text");
        return line;
    }
    nlohmann::json item;
    try {
        item = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& error) {
        throw InputError("invalid JSON (at byte " + std::to_string(error.byte) + ")");
    }
    KeySet keys;
    if (item.is_object())
        for (const auto& [key, value] : item.items()) keys.insert(key);
    bool known = false;
    for (const auto& shape : shapes) known = known || shape == keys;
    if (!item.is_object() || !known)
        throw InputError(task + " takes a JSON object with keys " + expected + "; got " +
                         (item.is_object() ? keys_of(keys) : "a JSON " + std::string(item.type_name())));
    for (const auto& [key, value] : item.items()) {
        if (!value.is_string()) throw InputError("`" + key + "` must be a string, got " + value.dump());
    }
    if (keys == KeySet{"text"}) return item["text"];
    return item;
}

std::string python_json(const nlohmann::ordered_json& value) {
    if (value.is_object()) {
        std::string out = "{";
        for (auto it = value.begin(); it != value.end(); ++it) {
            if (it != value.begin()) out += ", ";
            out += nlohmann::ordered_json(it.key()).dump() + ": " + python_json(it.value());
        }
        return out + "}";
    }
    if (value.is_array()) {
        std::string out = "[";
        for (std::size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + python_json(value[i]);
        return out + "]";
    }
    return value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict);
}

}  // namespace albert
