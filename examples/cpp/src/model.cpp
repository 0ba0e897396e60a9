#include "model.hpp"

#include "errors.hpp"

namespace albert {

Model::Model(const Bundle& bundle) : inputs_(bundle.inputs) {
    try {
        compiled_ = core_.compile_model(bundle.file("model.onnx").string(), "CPU",
                                        ov::hint::inference_precision(ov::element::f32));
        request_ = compiled_.create_infer_request();
    } catch (const ov::Exception& error) {
        throw BundleError("OpenVINO cannot load " + bundle.file("model.onnx").string() + ": " + error.what());
    }
}

std::map<std::string, Output> Model::run(const Encoding& encoding) {
    const std::size_t length = encoding.ids.size();
    const std::vector<std::int64_t> mask(length, 1);
    std::vector<ov::Tensor> tensors;  // alive until infer() returns
    for (const auto& name : inputs_) {
        const std::vector<std::int64_t>* values = name == "input_ids"        ? &encoding.ids
                                                  : name == "attention_mask" ? &mask
                                                  : name == "token_type_ids" ? &encoding.type_ids
                                                                             : nullptr;
        if (values == nullptr) throw BundleError("model.onnx takes an input " + name + " this program does not know");
        ov::Tensor tensor(ov::element::i64, ov::Shape{1, length});
        std::copy(values->begin(), values->end(), tensor.data<std::int64_t>());
        request_.set_tensor(name, tensor);
        tensors.push_back(std::move(tensor));
    }
    request_.infer();
    std::map<std::string, Output> outputs;
    for (const auto& port : compiled_.outputs()) {
        const ov::Tensor tensor = request_.get_tensor(port);
        if (tensor.get_element_type() != ov::element::f32)
            throw BundleError("model.onnx output " + port.get_any_name() + " is not float32");
        Output output;
        const auto shape = tensor.get_shape();
        output.shape.assign(shape.begin() + 1, shape.end());
        const float* data = tensor.data<const float>();
        output.values.assign(data, data + tensor.get_size());
        outputs.emplace(port.get_any_name(), std::move(output));
    }
    return outputs;
}

}  // namespace albert
