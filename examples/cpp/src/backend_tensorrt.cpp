// TensorRT backend: deserialize model.plan, bind named I/O tensors, enqueueV3 on one CUDA stream.
// Compiled only with -DSUBTUNE_EDGE_WITH_TENSORRT=ON (TensorRT 8.5 or newer: 10.x on JetPack 6).
#include <NvInferRuntime.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "backends.hpp"
#include "subtune_edge/runtime.hpp"

#if NV_TENSORRT_MAJOR < 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR < 5)
#error "the TensorRT backend needs TensorRT 8.5 or newer (named I/O tensors and enqueueV3)"
#endif

namespace subtune_edge::detail {
namespace {

// Keeps TensorRT's last error for our exception message instead of printing it.
class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, char const* msg) noexcept override {
    if (severity > Severity::kERROR || msg == nullptr) return;
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      last_ = one_line(msg);
    } catch (...) {
      // Out of memory while recording a message: keep the previous one.
    }
  }
  std::string last() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_.empty() ? "no details from TensorRT" : last_;
  }

 private:
  mutable std::mutex mutex_;
  std::string last_;
};

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  void* reserve(std::size_t bytes) {
    if (bytes > bytes_) {
      if (ptr_ != nullptr) cudaFree(ptr_);
      ptr_ = nullptr;
      bytes_ = 0;
      cuda_check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
      bytes_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

std::vector<int64_t> to_shape(const nvinfer1::Dims& dims) {
  std::vector<int64_t> shape;
  for (int32_t i = 0; i < dims.nbDims; ++i) shape.push_back(static_cast<int64_t>(dims.d[i]));
  return shape;
}

class TensorRtBackend final : public Backend {
 public:
  TensorRtBackend(const std::filesystem::path& plan, const Manifest& manifest) : manifest_(manifest) {
    std::ifstream in(plan, std::ios::binary);
    if (!in) throw Error("cannot read " + plan.string());
    const std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error("TensorRT runtime could not be created: " + logger_.last());
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw Error("TensorRT cannot deserialize " + plan.filename().string() + " (" + logger_.last() +
                  "); a plan runs only on the TensorRT version and GPU it was built with: rebuild it on this device");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT could not create an execution context: " + logger_.last());
    check_io(plan.filename().string());
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    outputs_.resize(manifest_.tasks.size());
  }

  ~TensorRtBackend() override {
    context_.reset();  // before the engine and runtime that own it
    engine_.reset();
    runtime_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "tensorrt"; }

  std::vector<Tensor> run(const Tensor& input) override {
    const char* in_name = manifest_.input_name.c_str();
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(input.shape.size());
    for (std::size_t i = 0; i < input.shape.size(); ++i) {
      dims.d[i] = static_cast<decltype(dims.d[0] + 0)>(input.shape[i]);
    }
    if (!context_->setInputShape(in_name, dims)) {
      throw Error("TensorRT rejects input shape " + shape_string(input.shape) + " (the plan was built for batch " +
                  std::to_string(profile_min_) + ".." + std::to_string(profile_max_) + "): " + logger_.last());
    }
    const std::size_t in_bytes = input.data.size() * sizeof(float);
    void* d_in = input_buffer_.reserve(in_bytes);
    cuda_check(cudaMemcpyAsync(d_in, input.data.data(), in_bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    if (!context_->setTensorAddress(in_name, d_in)) throw Error("TensorRT: cannot bind input: " + logger_.last());

    std::vector<Tensor> result(manifest_.tasks.size());
    for (std::size_t i = 0; i < manifest_.tasks.size(); ++i) {
      const char* out_name = manifest_.tasks[i].output.c_str();
      result[i].shape = to_shape(context_->getTensorShape(out_name));
      result[i].data.resize(static_cast<std::size_t>(Tensor::count(result[i].shape)));
      void* d_out = outputs_[i].reserve(std::max<std::size_t>(result[i].data.size() * sizeof(float), 1));
      if (!context_->setTensorAddress(out_name, d_out)) {
        throw Error(std::string("TensorRT: cannot bind output '") + out_name + "': " + logger_.last());
      }
    }
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT inference failed: " + logger_.last());
    for (std::size_t i = 0; i < result.size(); ++i) {
      cuda_check(cudaMemcpyAsync(result[i].data.data(), outputs_[i].get(), result[i].data.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync");
    }
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return result;
  }

 private:
  void check_io(const std::string& file) {
    bool input_found = false;
    std::vector<std::string> outputs;
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
        if (manifest_.input_name != name) {
          throw Error(file + " has input '" + name + "' but manifest.json names only '" + manifest_.input_name + "'");
        }
        input_found = true;
      } else {
        outputs.emplace_back(name);
      }
      if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT) {
        throw Error(file + ": tensor '" + name + "' is not float32 (an export's inputs and outputs are)");
      }
    }
    if (!input_found) throw Error(file + " has no input '" + manifest_.input_name + "'");
    for (const auto& task : manifest_.tasks) {
      bool found = false;
      for (const auto& o : outputs) found = found || o == task.output;
      if (!found) throw Error(file + " has no output '" + task.output + "' for task '" + task.name + "'");
    }
    const char* in_name = manifest_.input_name.c_str();
    if (engine_->getNbOptimizationProfiles() > 0) {
      profile_min_ = static_cast<int64_t>(engine_->getProfileShape(in_name, 0, nvinfer1::OptProfileSelector::kMIN).d[0]);
      profile_max_ = static_cast<int64_t>(engine_->getProfileShape(in_name, 0, nvinfer1::OptProfileSelector::kMAX).d[0]);
    } else {
      profile_min_ = profile_max_ = static_cast<int64_t>(engine_->getTensorShape(in_name).d[0]);
    }
  }

  Manifest manifest_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer input_buffer_;
  std::vector<DeviceBuffer> outputs_;
  int64_t profile_min_ = 0;
  int64_t profile_max_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const std::filesystem::path& plan, const Manifest& manifest,
                                               const RunnerOptions& /*options*/) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    throw Error("the TensorRT backend needs a CUDA GPU, and none is visible");
  }
  return std::make_unique<TensorRtBackend>(plan, manifest);
}

}  // namespace subtune_edge::detail
