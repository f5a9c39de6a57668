// Modular exports (internal): trunk.onnx + branches/<output>.onnx, run for a task list per inference.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "subtune_edge/runtime.hpp"

namespace subtune_edge::detail {

/// The manifest's "modular" section (exporters/FORMAT.md), as far as running it needs.
struct ModularLayout {
  struct Branch {
    std::string task;
    std::string output;
    std::string file;
    std::vector<std::string> taps;
  };
  std::string trunk_file = "trunk.onnx";
  std::vector<std::string> taps;  // the trunk's outputs, shallowest first
  std::vector<Branch> branches;   // manifest task order
};

/// EXPORT_DIR/manifest.json's "modular" section, or false when the export has none; throws Error when malformed.
bool load_modular_layout(const std::filesystem::path& export_dir, ModularLayout& layout);

/// Runs the trunk once for the taps the requested tasks read, then only their branch sessions
/// (created on first use, hashes checked then). The trunk's outputs are handed to the branches as
/// tensors over the same memory: no copies.
class ModularEngine {
 public:
  virtual ~ModularEngine() = default;
  virtual TaskOutputs run(const Tensor& batch, const std::vector<std::string>& tasks) = 0;
  /// Session runs per file since construction ("trunk.onnx", "branches/a.onnx", ...).
  virtual std::map<std::string, int64_t> runs() const = 0;
};

#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
std::unique_ptr<ModularEngine> make_modular_engine(const std::filesystem::path& export_dir, const Manifest& manifest,
                                                   ModularLayout layout, const RunnerOptions& options);
#endif

}  // namespace subtune_edge::detail
