// Modular exports: parse the manifest's "modular" section; run trunk + the requested branches (ONNX Runtime).
#include "modular.hpp"

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
#include <onnxruntime_cxx_api.h>
#endif

#include "backends.hpp"

namespace subtune_edge::detail {

bool load_modular_layout(const std::filesystem::path& export_dir, ModularLayout& layout) {
  const std::filesystem::path path = export_dir / "manifest.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception&) {
    throw Error(path.string() + " is not valid JSON");
  }
  if (!doc.is_object() || !doc.contains("modular") || doc["modular"].is_null()) return false;
  try {
    const nlohmann::json& m = doc["modular"];
    const nlohmann::json& trunk = m.at("trunk");
    if (trunk.contains("file")) layout.trunk_file = trunk.at("file").get<std::string>();
    for (const auto& t : m.at("taps")) layout.taps.push_back(t.at("name").get<std::string>());
    for (const auto& b : m.at("branches")) {
      ModularLayout::Branch branch{b.at("task").get<std::string>(), b.at("output").get<std::string>(),
                                   b.at("file").get<std::string>(), b.at("taps").get<std::vector<std::string>>()};
      layout.branches.push_back(std::move(branch));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": 'modular' is malformed (" + one_line(e.what()) + "); re-export");
  }
  return true;
}

#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
namespace {

class OrtModularEngine final : public ModularEngine {
 public:
  OrtModularEngine(const std::filesystem::path& dir, const Manifest& manifest, ModularLayout layout,
                   const RunnerOptions& options)
      : dir_(dir), manifest_(manifest), layout_(std::move(layout)), verify_(options.verify_hashes),
        env_(ORT_LOGGING_LEVEL_FATAL, "subtune_edge_modular"),
        memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
    // as the Python modular runner: the trunk and branch sessions run one after another, so their workers
    // sleep after a run instead of spinning on the cores the next session needs
    so_.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so_.AddConfigEntry("session.intra_op.allow_spinning", "0");
    if (options.threads > 0) so_.SetIntraOpNumThreads(options.threads);
    trunk_ = open(layout_.trunk_file);
    branch_sessions_.resize(layout_.branches.size());
  }

  TaskOutputs run(const Tensor& batch, const std::vector<std::string>& tasks) override {
    // the requested branches, in manifest order, and the taps they read
    std::vector<std::size_t> wanted;
    std::set<std::string> names(tasks.begin(), tasks.end());
    for (const auto& n : names) {
      bool known = false;
      for (const auto& b : layout_.branches) known = known || b.task == n || b.output == n;
      if (!known) manifest_.task(n);  // throws naming the tasks that exist
    }
    std::set<std::string> need;
    for (std::size_t i = 0; i < layout_.branches.size(); ++i) {
      const auto& b = layout_.branches[i];
      if (names.count(b.task) || names.count(b.output)) {
        wanted.push_back(i);
        need.insert(b.taps.begin(), b.taps.end());
      }
    }
    std::vector<std::string> tap_names;
    for (const auto& t : layout_.taps) {
      if (need.count(t)) tap_names.push_back(t);
    }
    std::vector<const char*> tap_ptrs;
    for (const auto& t : tap_names) tap_ptrs.push_back(t.c_str());
    std::vector<Ort::Value> taps;
    try {
      Ort::Value in = Ort::Value::CreateTensor<float>(memory_, const_cast<float*>(batch.data.data()), batch.data.size(),
                                                      batch.shape.data(), batch.shape.size());
      const char* in_name = manifest_.input_name.c_str();
      taps = trunk_->Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, tap_ptrs.data(), tap_ptrs.size());
      ++runs_[layout_.trunk_file];
    } catch (const Ort::Exception& e) {
      throw Error("ONNX Runtime failed to run " + layout_.trunk_file + ": " + one_line(e.what()));
    }
    TaskOutputs result;
    for (std::size_t i : wanted) {
      const auto& b = layout_.branches[i];
      if (!branch_sessions_[i]) branch_sessions_[i] = open(b.file);
      // views over the trunk's output buffers: the activations are not copied
      std::vector<Ort::Value> inputs;
      std::vector<const char*> in_names;
      for (const auto& t : b.taps) {
        std::size_t k = 0;
        while (tap_names[k] != t) ++k;
        auto info = taps[k].GetTensorTypeAndShapeInfo();
        const std::vector<int64_t> shape = info.GetShape();
        inputs.push_back(Ort::Value::CreateTensor<float>(memory_, taps[k].GetTensorMutableData<float>(),
                                                         info.GetElementCount(), shape.data(), shape.size()));
        in_names.push_back(t.c_str());
      }
      const char* out_name = b.output.c_str();
      std::vector<Ort::Value> out;
      try {
        out = branch_sessions_[i]->Run(Ort::RunOptions{nullptr}, in_names.data(), inputs.data(), inputs.size(),
                                       &out_name, 1);
        ++runs_[b.file];
      } catch (const Ort::Exception& e) {
        throw Error("ONNX Runtime failed to run " + b.file + ": " + one_line(e.what()));
      }
      auto info = out[0].GetTensorTypeAndShapeInfo();
      const float* data = out[0].GetTensorData<float>();
      const int64_t classes = manifest_.task(b.task).num_classes;
      const std::vector<int64_t> expected = {batch.shape[0], classes};
      if (info.GetShape() != expected) {
        throw Error(b.file + " returned shape " + shape_string(info.GetShape()) + ", manifest.json says " +
                    shape_string(expected));
      }
      result.add(b.task, Tensor(info.GetShape(), std::vector<float>(data, data + info.GetElementCount())));
    }
    return result;
  }

  std::map<std::string, int64_t> runs() const override { return runs_; }

 private:
  std::unique_ptr<Ort::Session> open(const std::string& rel) {
    if (verify_) verify_file(manifest_, dir_, rel);
    try {
      return std::make_unique<Ort::Session>(env_, (dir_ / rel).c_str(), so_);
    } catch (const Ort::Exception& e) {
      throw Error("ONNX Runtime cannot load " + (dir_ / rel).string() + ": " + one_line(e.what()));
    }
  }

  std::filesystem::path dir_;
  Manifest manifest_;  // a copy: the Runner owning this engine may move
  ModularLayout layout_;
  bool verify_;
  Ort::Env env_;
  Ort::MemoryInfo memory_;
  Ort::SessionOptions so_;
  std::unique_ptr<Ort::Session> trunk_;
  std::vector<std::unique_ptr<Ort::Session>> branch_sessions_;
  std::map<std::string, int64_t> runs_;
};

}  // namespace

std::unique_ptr<ModularEngine> make_modular_engine(const std::filesystem::path& export_dir, const Manifest& manifest,
                                                   ModularLayout layout, const RunnerOptions& options) {
  try {
    return std::make_unique<OrtModularEngine>(export_dir, manifest, std::move(layout), options);
  } catch (const Ort::Exception& e) {
    throw Error("ONNX Runtime: " + one_line(e.what()));
  }
}
#endif

}  // namespace subtune_edge::detail
