// model.onnx through OpenVINO's C++ API: compiled once for the CPU at f32 inference precision (OpenVINO
// defaults to bf16 on CPUs with AMX/AVX512-BF16), then run on one window at a time.
#pragma once

#include <openvino/openvino.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "tokenizer.hpp"

namespace albert {

struct Output {
    std::vector<float> values;  // row-major, batch axis removed
    std::vector<std::size_t> shape;
};

class Model {
public:
    explicit Model(const Bundle& bundle);
    // the outputs for one encoding (a batch of one), by name
    std::map<std::string, Output> run(const Encoding& encoding);

private:
    ov::Core core_;
    ov::CompiledModel compiled_;
    ov::InferRequest request_;
    std::vector<std::string> inputs_;
};

}  // namespace albert
