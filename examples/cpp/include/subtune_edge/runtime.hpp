// subtune_edge_runtime: run a subtune-edge export directory (model.onnx / model.plan + manifest.json)
// from C++. One call runs every task on a batch; outputs come back by task name.
//
//   subtune_edge::Runner runner("export-dir");                 // reads + checks manifest.json and hashes
//   subtune_edge::Tensor x = subtune_edge::load_image("cat.jpg", runner.manifest().preprocessing);
//   subtune_edge::TaskOutputs out = runner.run(x);              // every task, one inference
//   for (const auto& [task, logits] : out) ...                  // manifest task order
//
// Every failure (a missing or corrupt export, a hash mismatch, a wrong input) is thrown as
// subtune_edge::Error with a one-line message that says what was expected and what was found.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace subtune_edge {

/// The one exception type the library throws; its message is a single line meant for users.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A dense float32 tensor in C order (row-major).
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape_);  // zero-filled
  Tensor(std::vector<int64_t> shape_, std::vector<float> data_);

  /// Product of the dims; throws Error on a negative dim or overflow.
  static int64_t count(const std::vector<int64_t>& shape);
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
};

/// "[1, 3, 224, 224]"
std::string shape_string(const std::vector<int64_t>& shape);

/// timm's evaluation transform, as recorded in the manifest (see exporters/FORMAT.md).
struct Preprocessing {
  int64_t channels = 3;
  int64_t height = 224;
  int64_t width = 224;
  std::array<double, 3> mean{{0.485, 0.456, 0.406}};
  std::array<double, 3> std{{0.229, 0.224, 0.225}};
  std::string interpolation = "bilinear";  // nearest | bilinear | bicubic | box | hamming | lanczos
  double crop_pct = 0.875;
  std::string crop_mode = "center";        // center | squash
};

struct TaskInfo {
  std::string name;
  std::string output;   // output tensor name in the model
  int64_t num_classes = 0;
  std::vector<std::string> labels;  // empty: classes are named by index
  /// Precision of this task's branch in model.int8.onnx ("int8", or "fp32" where it failed the INT8 gate and was
  /// kept in fp32); empty when the export has no INT8 file.
  std::string int8_precision;

  /// labels[k], or k as text where the export has no labels.
  std::string label(int64_t k) const;
};

struct FileEntry {
  std::string sha256;  // lowercase hex
  uint64_t bytes = 0;
};

/// manifest.json, parsed and checked.
struct Manifest {
  static constexpr const char* kFormat = "subtune-edge.export";
  static constexpr int kFormatVersion = 1;

  int format_version = 0;
  std::string backbone;      // timm model name, for messages
  std::string input_name = "input";
  int64_t channels = 3;
  int64_t height = 0;
  int64_t width = 0;
  int64_t batch_min = 1;
  int64_t batch_max = 1;
  bool batch_dynamic = true;
  Preprocessing preprocessing;
  std::vector<TaskInfo> tasks;
  std::map<std::string, FileEntry> files;  // relative path -> hash and size

  /// Parses and validates manifest text; `where` names the source in messages.
  static Manifest parse(const std::string& json_text, const std::string& where = "manifest.json");
  /// Reads EXPORT_DIR/manifest.json.
  static Manifest load(const std::filesystem::path& export_dir);

  const TaskInfo& task(const std::string& name) const;
  /// Throws Error naming the expected and the actual shape unless `shape` is [N, C, H, W] with N in
  /// the batch range.
  void check_input_shape(const std::vector<int64_t>& shape) const;
};

/// Checks `file` against the manifest entry for `relative` (size, then sha256); throws Error.
void verify_file(const Manifest& manifest, const std::filesystem::path& export_dir, const std::string& relative);

enum class BackendKind { OnnxRuntime, TensorRT };

/// "onnxruntime" / "ort" / "tensorrt" / "trt" -> kind; throws Error otherwise.
BackendKind parse_backend(const std::string& name);
std::string backend_name(BackendKind kind);
/// Whether this build was compiled with the backend.
bool backend_compiled(BackendKind kind);

struct RunnerOptions {
  BackendKind backend = BackendKind::OnnxRuntime;
  /// File to run, relative to the export directory; empty: model.onnx (ONNX Runtime) or model.plan (TensorRT).
  std::string model_file;
  /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose.
  int threads = 0;
  /// Check the sha256 of the model file(s) against the manifest before loading them.
  bool verify_hashes = true;
  /// Run only these tasks (names or output names; empty: every task). On a modular export (exported with
  /// --modular) the runner then loads trunk.onnx and only the branches it is asked for, never model.onnx.
  std::vector<std::string> tasks;
};

namespace detail {
class ModularEngine;
}

/// Per-task outputs, in the manifest's task order, each [N, num_classes] logits.
class TaskOutputs {
 public:
  using Item = std::pair<std::string, Tensor>;

  void add(std::string task, Tensor logits);
  /// The output of `task`; throws Error naming the tasks that exist.
  const Tensor& operator[](const std::string& task) const;
  bool contains(const std::string& task) const;
  std::size_t size() const { return items_.size(); }
  std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  std::vector<Item>::const_iterator end() const { return items_.end(); }

 private:
  std::vector<Item> items_;
};

/// One runtime behind one small interface: run the fused graph, return outputs in task order.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  /// `input` is already checked against the manifest; returns one tensor per manifest task.
  virtual std::vector<Tensor> run(const Tensor& input) = 0;
};

/// An export directory, loaded: the manifest plus a backend session on its model file.
/// Construction checks manifest.json and the sha256 of the model file, then creates the session;
/// run() is not safe to call from several threads at once (use one Runner per thread).
class Runner {
 public:
  explicit Runner(const std::filesystem::path& export_dir, const RunnerOptions& options = {});
  ~Runner();
  Runner(Runner&&) noexcept;
  Runner& operator=(Runner&&) noexcept;
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  const Manifest& manifest() const { return manifest_; }
  const std::filesystem::path& export_dir() const { return dir_; }
  std::string backend_name() const;

  /// Runs every task on `batch` ([N, C, H, W] float32, preprocessed); throws Error on a wrong shape.
  /// With RunnerOptions::tasks, runs only those.
  TaskOutputs run(const Tensor& batch);
  /// Runs only `tasks` (names or output names) on `batch`, chosen per inference. On a modular export only their
  /// branches run, on the trunk's taps they read; on a fused graph the other outputs are computed but not returned.
  TaskOutputs run(const Tensor& batch, const std::vector<std::string>& tasks);
  /// Whether this runner runs trunk.onnx + branches/ (RunnerOptions::tasks on a modular export).
  bool modular() const { return modular_ != nullptr; }
  /// Session runs per file of a modular runner ("trunk.onnx", "branches/a.onnx"); empty otherwise.
  std::map<std::string, int64_t> session_runs() const;

 private:
  std::filesystem::path dir_;
  Manifest manifest_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::string> tasks_;                  // RunnerOptions::tasks
  std::unique_ptr<detail::ModularEngine> modular_;  // set for RunnerOptions::tasks on a modular export
};

struct Prediction {
  int64_t index = 0;
  std::string label;
  double score = 0.0;  // softmax probability
};

/// The k most likely classes of row `row` of `logits` ([N, C]), by softmax score, ties by lower index.
std::vector<Prediction> top_k(const TaskInfo& task, const Tensor& logits, int64_t row, int64_t k);

/// Lowercase hex sha256 of a file's bytes; throws Error if it cannot be read.
std::string sha256_file(const std::filesystem::path& path);
/// Lowercase hex sha256 of a buffer.
std::string sha256_hex(const void* data, std::size_t size);

}  // namespace subtune_edge
