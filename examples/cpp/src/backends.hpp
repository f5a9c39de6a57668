// Backend factories (internal). Each lives in its own file, compiled only where its runtime was found.
#pragma once

#include <filesystem>
#include <memory>

#include "subtune_edge/runtime.hpp"

namespace subtune_edge::detail {

#ifdef SUBTUNE_EDGE_HAVE_ONNXRUNTIME
std::unique_ptr<Backend> make_onnxruntime_backend(const std::filesystem::path& model, const Manifest& manifest,
                                                  const RunnerOptions& options);
#endif

#ifdef SUBTUNE_EDGE_HAVE_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const std::filesystem::path& plan, const Manifest& manifest,
                                               const RunnerOptions& options);
#endif

/// Replaces line breaks so that a runtime's message stays one line.
std::string one_line(std::string text);

}  // namespace subtune_edge::detail
