// Runner: an export directory, checked, with one backend session; plus tensors and top-k.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <system_error>
#include <utility>

#include "backends.hpp"
#include "modular.hpp"
#include "subtune_edge/runtime.hpp"

namespace subtune_edge {

namespace detail {
std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}
}  // namespace detail

// ---- Tensor -------------------------------------------------------------------------------------

int64_t Tensor::count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("negative dimension in shape " + shape_string(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) throw Error("shape " + shape_string(shape) + " is too large");
    n *= d;
  }
  return n;
}

Tensor::Tensor(std::vector<int64_t> shape_) : shape(std::move(shape_)) {
  data.assign(static_cast<std::size_t>(count(shape)), 0.0f);
}

Tensor::Tensor(std::vector<int64_t> shape_, std::vector<float> data_) : shape(std::move(shape_)), data(std::move(data_)) {
  if (count(shape) != static_cast<int64_t>(data.size())) {
    throw Error("tensor of shape " + shape_string(shape) + " given " + std::to_string(data.size()) + " values");
  }
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string TaskInfo::label(int64_t k) const {
  if (k >= 0 && static_cast<std::size_t>(k) < labels.size()) return labels[static_cast<std::size_t>(k)];
  return std::to_string(k);
}

// ---- backends -----------------------------------------------------------------------------------

BackendKind parse_backend(const std::string& name) {
  if (name == "onnxruntime" || name == "ort") return BackendKind::OnnxRuntime;
  if (name == "tensorrt" || name == "trt") return BackendKind::TensorRT;
  throw Error("unknown backend '" + name + "' (use onnxruntime or tensorrt)");
}

std::string backend_name(BackendKind kind) { return kind == BackendKind::TensorRT ? "tensorrt" : "onnxruntime"; }

bool backend_compiled(BackendKind kind) {
  switch (kind) {
    case BackendKind::OnnxRuntime:
#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
      return true;
#else
      return false;
#endif
    case BackendKind::TensorRT:
#ifdef SUBTUNE_EDGE_HAVE_TENSORRT
      return true;
#else
      return false;
#endif
  }
  return false;
}

// ---- TaskOutputs --------------------------------------------------------------------------------

void TaskOutputs::add(std::string task, Tensor logits) { items_.emplace_back(std::move(task), std::move(logits)); }

bool TaskOutputs::contains(const std::string& task) const {
  return std::any_of(items_.begin(), items_.end(), [&](const Item& i) { return i.first == task; });
}

const Tensor& TaskOutputs::operator[](const std::string& task) const {
  for (const auto& item : items_) {
    if (item.first == task) return item.second;
  }
  std::string known;
  for (const auto& item : items_) known += (known.empty() ? "" : ", ") + item.first;
  throw Error("no output for task '" + task + "' (tasks: " + known + ")");
}

// ---- Runner -------------------------------------------------------------------------------------

Runner::Runner(const std::filesystem::path& export_dir, const RunnerOptions& options)
    : dir_(export_dir), manifest_(Manifest::load(export_dir)) {
  if (!backend_compiled(options.backend)) {
    throw Error("this build of subtune_edge_runtime has no " + subtune_edge::backend_name(options.backend) +
                " backend (reconfigure with -DSUBTUNE_EDGE_WITH_" +
                (options.backend == BackendKind::TensorRT ? "TENSORRT" : "ONNXRUNTIME") + "=ON)");
  }
  tasks_ = options.tasks;
#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
  detail::ModularLayout layout;
  if (!tasks_.empty() && options.backend == BackendKind::OnnxRuntime && options.model_file.empty() &&
      detail::load_modular_layout(dir_, layout)) {
    for (const auto& t : tasks_) manifest_.task(t);  // an unknown task is refused before any session
    modular_ = detail::make_modular_engine(dir_, manifest_, std::move(layout), options);
    return;
  }
#endif
  std::string model = options.model_file;
  if (model.empty()) model = options.backend == BackendKind::TensorRT ? "model.plan" : "model.onnx";

  std::error_code ec;
  if (!std::filesystem::is_regular_file(dir_ / model, ec)) {
    if (options.backend == BackendKind::TensorRT && options.model_file.empty()) {
      throw Error(dir_.string() + " has no model.plan: export with --trt on the target device, or use "
                  "--backend onnxruntime");
    }
    if (model == "model.int8.onnx" || model == "model.fp16.onnx") {
      const std::string flag = model == "model.int8.onnx" ? "--int8" : "--fp16";
      if (manifest_.files.find(model) == manifest_.files.end()) {
        throw Error(dir_.string() + " has no " + model + ": re-export with " + flag);
      }
    }
    if (model.size() > 4 && model.compare(model.size() - 4, 4, ".ort") == 0 &&
        manifest_.files.find(model) == manifest_.files.end()) {
      throw Error(dir_.string() + " has no " + model + ": re-export with --ort-format");
    }
    throw Error((dir_ / model).string() + " is missing: the export is incomplete");
  }
  if (options.verify_hashes) {
    verify_file(manifest_, dir_, model);
    // Weights stored beside the graph (ONNX external data: model.onnx.data, ...) are checked too.
    for (const auto& [rel, entry] : manifest_.files) {
      if (rel.size() > model.size() && rel.compare(0, model.size() + 1, model + ".") == 0) {
        verify_file(manifest_, dir_, rel);
      }
    }
  }

  switch (options.backend) {
    case BackendKind::OnnxRuntime:
#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
      backend_ = detail::make_onnxruntime_backend(dir_ / model, manifest_, options);
#endif
      break;
    case BackendKind::TensorRT:
#ifdef SUBTUNE_EDGE_HAVE_TENSORRT
      backend_ = detail::make_tensorrt_backend(dir_ / model, manifest_, options);
#endif
      break;
  }
  if (!backend_) throw Error("no backend could be created");
}

Runner::~Runner() = default;
Runner::Runner(Runner&&) noexcept = default;
Runner& Runner::operator=(Runner&&) noexcept = default;

std::string Runner::backend_name() const {
  if (modular_) return "onnxruntime (modular)";
  return backend_ ? backend_->name() : "none";
}

std::map<std::string, int64_t> Runner::session_runs() const {
  return modular_ ? modular_->runs() : std::map<std::string, int64_t>{};
}

TaskOutputs Runner::run(const Tensor& batch, const std::vector<std::string>& tasks) {
  if (tasks.empty()) throw Error("run: name at least one task");
  for (const auto& t : tasks) manifest_.task(t);  // throws naming the tasks that exist
  if (modular_) {
    manifest_.check_input_shape(batch.shape);
    if (Tensor::count(batch.shape) != batch.numel()) {
      throw Error("input tensor of shape " + shape_string(batch.shape) + " holds " + std::to_string(batch.numel()) +
                  " values");
    }
    return modular_->run(batch, tasks);
  }
  std::vector<std::string> saved;
  saved.swap(tasks_);
  TaskOutputs all;
  try {
    all = run(batch);
  } catch (...) {
    tasks_.swap(saved);
    throw;
  }
  tasks_.swap(saved);
  TaskOutputs result;
  for (const auto& [name, logits] : all) {
    const TaskInfo& info = manifest_.task(name);
    for (const auto& t : tasks) {
      if (t == info.name || t == info.output) {
        result.add(name, logits);
        break;
      }
    }
  }
  return result;
}

TaskOutputs Runner::run(const Tensor& batch) {
  if (!tasks_.empty()) return run(batch, tasks_);
  manifest_.check_input_shape(batch.shape);
  if (Tensor::count(batch.shape) != batch.numel()) {
    throw Error("input tensor of shape " + shape_string(batch.shape) + " holds " + std::to_string(batch.numel()) +
                " values");
  }
  std::vector<Tensor> outputs = backend_->run(batch);
  if (outputs.size() != manifest_.tasks.size()) {
    throw Error(backend_->name() + " returned " + std::to_string(outputs.size()) + " outputs for " +
                std::to_string(manifest_.tasks.size()) + " tasks");
  }
  TaskOutputs result;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const TaskInfo& task = manifest_.tasks[i];
    const std::vector<int64_t> expected = {batch.shape[0], task.num_classes};
    if (outputs[i].shape != expected) {
      throw Error("output '" + task.output + "' has shape " + shape_string(outputs[i].shape) + ", manifest.json says " +
                  shape_string(expected));
    }
    result.add(task.name, std::move(outputs[i]));
  }
  return result;
}

// ---- top-k --------------------------------------------------------------------------------------

std::vector<Prediction> top_k(const TaskInfo& task, const Tensor& logits, int64_t row, int64_t k) {
  if (logits.shape.size() != 2 || row < 0 || row >= logits.shape[0]) {
    throw Error("top_k: no row " + std::to_string(row) + " in logits of shape " + shape_string(logits.shape));
  }
  const int64_t classes = logits.shape[1];
  const float* x = logits.data.data() + row * classes;
  std::vector<int64_t> order(static_cast<std::size_t>(classes));
  std::iota(order.begin(), order.end(), int64_t{0});
  // NaN sorts last, so the order stays a strict weak ordering whatever the model returned.
  auto key = [x](int64_t c) {
    return std::isnan(x[c]) ? -std::numeric_limits<double>::infinity() : static_cast<double>(x[c]);
  };
  std::stable_sort(order.begin(), order.end(), [&key](int64_t a, int64_t b) { return key(a) > key(b); });

  const double peak = classes > 0 ? key(order[0]) : 0.0;
  double total = 0.0;
  for (int64_t c = 0; c < classes; ++c) total += std::exp(key(c) - peak);

  std::vector<Prediction> out;
  const int64_t n = std::min(std::max<int64_t>(k, 0), classes);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = order[static_cast<std::size_t>(i)];
    out.push_back({c, task.label(c), std::exp(key(c) - peak) / total});
  }
  return out;
}

}  // namespace subtune_edge
