// ONNX Runtime backend: one Ort::Session on model.onnx, one Run returning every task output.
#include <onnxruntime_cxx_api.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backends.hpp"
#include "subtune_edge/runtime.hpp"

namespace subtune_edge::detail {
namespace {

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// The C++ API is a header-only wrapper over the versioned C API: a library newer than the headers
// serves the older API version, an older one returns nullptr. Say so instead of crashing later.
void check_api_version() {
  const OrtApiBase* base = OrtGetApiBase();
  if (base == nullptr || base->GetApi(ORT_API_VERSION) == nullptr) {
    const char* have = base ? base->GetVersionString() : "unknown";
    throw Error(std::string("the ONNX Runtime library (") + have + ") does not provide C API version " +
                std::to_string(ORT_API_VERSION) + " that this runner was built with; use ONNX Runtime 1." +
                std::to_string(ORT_API_VERSION) + " or newer");
  }
}

class OnnxRuntimeBackend final : public Backend {
 public:
  OnnxRuntimeBackend(const std::filesystem::path& model, const Manifest& manifest, const RunnerOptions& options)
      : env_(ORT_LOGGING_LEVEL_FATAL, "subtune_edge"),  // errors come back as exceptions, never as log lines
        memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
    Ort::SessionOptions so;
    // the Python side's settings for an app's one session (subtune_edge.runtime.onnxruntime.SINGLE_SESSION,
    // benchmarks/results/session-settings): every graph optimisation, worker threads spinning between runs
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.AddConfigEntry("session.intra_op.allow_spinning", "1");
    if (options.threads > 0) so.SetIntraOpNumThreads(options.threads);
    try {
      session_ = std::make_unique<Ort::Session>(env_, model.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw Error("ONNX Runtime cannot load " + model.string() + ": " + one_line(e.what()));
    }
    check_io(model, manifest);
  }

  std::string name() const override { return "onnxruntime"; }

  std::vector<Tensor> run(const Tensor& input) override {
    std::vector<Ort::Value> outputs;
    try {
      // ONNX Runtime does not write to inputs; the C API takes a non-const pointer all the same.
      Ort::Value in = Ort::Value::CreateTensor<float>(memory_, const_cast<float*>(input.data.data()), input.data.size(),
                                                      input.shape.data(), input.shape.size());
      const char* in_name = input_name_.c_str();
      outputs = session_->Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, output_ptrs_.data(), output_ptrs_.size());
    } catch (const Ort::Exception& e) {
      throw Error("ONNX Runtime failed to run the model: " + one_line(e.what()));
    }
    std::vector<Tensor> result;
    result.reserve(outputs.size());
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      Ort::Value& v = outputs[i];
      if (!v.IsTensor()) throw Error("output '" + output_names_[i] + "' is not a tensor");
      auto info = v.GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        throw Error("output '" + output_names_[i] + "' is not float32");
      }
      const float* data = v.GetTensorData<float>();
      result.emplace_back(info.GetShape(), std::vector<float>(data, data + info.GetElementCount()));
    }
    return result;
  }

 private:
  void check_io(const std::filesystem::path& model, const Manifest& manifest) {
    Ort::AllocatorWithDefaultOptions allocator;
    const std::string file = model.filename().string();
    if (session_->GetInputCount() != 1) {
      throw Error(file + " has " + std::to_string(session_->GetInputCount()) + " inputs; an export has one");
    }
    input_name_ = session_->GetInputNameAllocated(0, allocator).get();
    if (input_name_ != manifest.input_name) {
      throw Error(file + " input is named '" + input_name_ + "' but manifest.json says '" + manifest.input_name + "'");
    }
    const Ort::TypeInfo type_info = session_->GetInputTypeInfo(0);  // owns what in_info refers to
    const auto in_info = type_info.GetTensorTypeAndShapeInfo();
    if (in_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw Error(file + " input is not float32");
    }
    const std::vector<int64_t> dims = in_info.GetShape();
    const std::vector<int64_t> expected = {-1, manifest.channels, manifest.height, manifest.width};
    bool same = dims.size() == 4;
    for (std::size_t d = 1; same && d < 4; ++d) same = dims[d] < 0 || dims[d] == expected[d];
    if (!same) {
      throw Error(file + " input has shape " + shape_string(dims) + " but manifest.json says [batch, " +
                  std::to_string(manifest.channels) + ", " + std::to_string(manifest.height) + ", " +
                  std::to_string(manifest.width) + "]");
    }

    std::vector<std::string> model_outputs;
    for (std::size_t i = 0; i < session_->GetOutputCount(); ++i) {
      model_outputs.emplace_back(session_->GetOutputNameAllocated(i, allocator).get());
    }
    for (const auto& task : manifest.tasks) {
      bool found = false;
      for (const auto& o : model_outputs) found = found || o == task.output;
      if (!found) {
        throw Error(file + " has no output '" + task.output + "' for task '" + task.name + "' (outputs: " +
                    join(model_outputs) + ")");
      }
      output_names_.push_back(task.output);
    }
    for (const auto& n : output_names_) output_ptrs_.push_back(n.c_str());
  }

  Ort::Env env_;
  Ort::MemoryInfo memory_;
  std::unique_ptr<Ort::Session> session_;
  std::string input_name_;
  std::vector<std::string> output_names_;  // manifest task order
  std::vector<const char*> output_ptrs_;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const std::filesystem::path& model, const Manifest& manifest,
                                                  const RunnerOptions& options) {
  check_api_version();
  try {
    return std::make_unique<OnnxRuntimeBackend>(model, manifest, options);
  } catch (const Ort::Exception& e) {
    throw Error("ONNX Runtime: " + one_line(e.what()));
  }
}

}  // namespace subtune_edge::detail
