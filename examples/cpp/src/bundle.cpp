#include "bundle.hpp"

#include <openssl/evp.h>

#include <array>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "errors.hpp"

namespace albert {
namespace {

constexpr int kManifestFormat = 1;
const char* const kRequired[] = {"model.onnx", "tokenizer.json", "spiece.model", "config.json"};

nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw BundleError(path.string() + " cannot be read; is this an albert-export bundle directory?");
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& error) {
        throw BundleError(path.string() + " is not valid JSON (" + error.what() + "); re-export the bundle");
    }
}

bool plain_name(const std::string& name) {
    return !name.empty() && name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
           name != "." && name != "..";
}

}  // namespace

std::string sha256_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw BundleError(path.string() + " cannot be read");
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1)
        throw BundleError("OpenSSL cannot compute sha256");
    std::array<char, 1 << 16> buffer{};
    while (in) {
        in.read(buffer.data(), buffer.size());
        EVP_DigestUpdate(context.get(), buffer.data(), static_cast<std::size_t>(in.gcount()));
    }
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int length = 0;
    EVP_DigestFinal_ex(context.get(), digest.data(), &length);
    static const char* const hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out.push_back(hex[digest[i] >> 4]);
        out.push_back(hex[digest[i] & 15]);
    }
    return out;
}

std::filesystem::path Bundle::file(const std::string& name) const {
    if (files.count(name) == 0)
        throw BundleError(root.string() + "/manifest.json lists no " + name + "; re-export the bundle with albert-export");
    return root / name;
}

Bundle load_bundle(const std::filesystem::path& root) {
    if (!std::filesystem::is_directory(root))
        throw BundleError(root.string() + " is not a directory; pass an albert-export bundle directory");
    const auto manifest = read_json(root / "manifest.json");
    Bundle bundle;
    bundle.root = root;
    try {
        if (manifest.value("format", 0) != kManifestFormat)
            throw BundleError(root.string() + "/manifest.json has format " + manifest.value("format", nlohmann::json()).dump() +
                              "; this program reads format 1");
        bundle.task = manifest.at("task").get<std::string>();
        for (const auto& input : manifest.at("inputs")) bundle.inputs.push_back(input.at("name").get<std::string>());
        const auto& tokenizer = manifest.at("tokenizer");
        bundle.tokenizer.max_length = tokenizer.at("max_length").get<int>();
        bundle.tokenizer.do_lower_case = tokenizer.at("do_lower_case").get<bool>();
        bundle.tokenizer.keep_accents = tokenizer.value("keep_accents", false);
        bundle.tokenizer.clean_up_tokenization_spaces = tokenizer.value("clean_up_tokenization_spaces", false);
        bundle.tokenizer.special_tokens = tokenizer.at("special_tokens").get<std::map<std::string, std::string>>();
        bundle.files = manifest.at("files").get<std::map<std::string, std::string>>();
    } catch (const nlohmann::json::exception& error) {
        throw BundleError(root.string() + "/manifest.json lacks what albert-run needs (" + error.what() + "); re-export the bundle");
    }
    for (const auto& [name, digest] : bundle.files) {
        if (!plain_name(name))
            throw BundleError(root.string() + "/manifest.json lists " + name + ", a path outside the bundle; refusing it");
        const auto path = root / name;
        if (!std::filesystem::is_regular_file(path))
            throw BundleError(path.string() + " is listed in manifest.json but missing; the bundle is incomplete, re-export it");
        if (sha256_file(path) != digest)
            throw BundleError(path.string() + " does not match its sha256 in manifest.json; the file changed since export, re-export the bundle");
    }
    for (const char* name : kRequired) bundle.file(name);
    const auto config = read_json(bundle.file("config.json"));
    if (config.contains("id2label") && config["id2label"].is_object()) {
        for (const auto& [key, value] : config["id2label"].items()) bundle.id2label[std::stoi(key)] = value.get<std::string>();
    }
    if (config.contains("problem_type") && config["problem_type"].is_string())
        bundle.problem_type = config["problem_type"].get<std::string>();
    return bundle;
}

}  // namespace albert
