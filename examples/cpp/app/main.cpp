// subtune_edge_run EXPORT_DIR INPUT [--topk K]: every task of a subtune-edge export on one input.
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <new>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "subtune_edge/inputs.hpp"
#include "subtune_edge/runtime.hpp"

namespace {

namespace se = subtune_edge;

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

const char* const kUsage =
    "usage: subtune_edge_run EXPORT_DIR INPUT [--topk K] [--json] [--backend onnxruntime|tensorrt]\n"
    "                        [--model FILE] [--precision fp32|fp16|int8] [--threads N]\n"
    "                        [--dump-outputs DIR] [--dump-input FILE.npy]\n"
    "                        [--no-verify] [--ort-format]\n"
    "\n"
    "Runs every task of a subtune-edge export (model.onnx or model.plan + manifest.json) on INPUT and\n"
    "prints, per task, the top-k labels with their softmax scores.\n"
    "\n"
    "  EXPORT_DIR          the directory written by `subtune-edge export`\n"
    "  INPUT               an image (PNG, JPEG, BMP, TGA, PNM), decoded and preprocessed as manifest.json\n"
    "                      says, or a .npy float32 tensor [N, 3, H, W] or [3, H, W], already preprocessed\n"
    "  --topk K            classes per task (default 5)\n"
    "  --json              print JSON instead of text\n"
    "  --backend NAME      onnxruntime (default) or tensorrt\n"
    "  --model FILE        model file inside the export (default model.onnx, or model.plan for tensorrt)\n"
    "  --precision P       onnxruntime: run model.onnx (fp32), model.fp16.onnx (fp16) or model.int8.onnx\n"
    "                      (int8, exported with --int8); tensorrt: the plan's precision is fixed at export\n"
    "  --threads N         ONNX Runtime intra-op threads (default: ONNX Runtime's choice)\n"
    "  --dump-outputs DIR  also write each task's logits to DIR/<output name>.npy\n"
    "  --dump-input FILE   also write the preprocessed input tensor to FILE (.npy)\n"
    "  --no-verify         skip the sha256 check of the model file against manifest.json\n"
    "  --tasks A,C         run only these tasks; a modular export (--modular) then runs trunk.onnx and\n"
    "                      only their branches/<task>.onnx\n"
    "  --ort-format        onnxruntime: run the .ort twin (ONNX Runtime's mobile format, exported with\n"
    "                      --ort-format): model.ort, or the .ort twin of the --model / --precision file\n"
    "  --version           print the runtime's version and backends\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::filesystem::path export_dir;
  std::filesystem::path input;
  int64_t topk = 5;
  bool json = false;
  se::RunnerOptions options;
  std::filesystem::path dump_outputs;
  std::filesystem::path dump_input;
  std::string precision;  // empty: the model file's own (model.onnx)
  bool ort_format = false;  // run model[.fp16|.int8].ort instead of the .onnx file
};

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v < min) {
    throw UsageError(flag + " expects an integer >= " + std::to_string(min) + ", got '" + text + "'");
  }
  return v;
}

// Returns false when the command only asked for help or the version.
bool parse_args(int argc, char** argv, Args& args) {
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return false;
    } else if (a == "--version") {
      std::cout << "subtune_edge_run " << SUBTUNE_EDGE_VERSION << " (backends:";
      for (auto kind : {se::BackendKind::OnnxRuntime, se::BackendKind::TensorRT}) {
        if (se::backend_compiled(kind)) std::cout << ' ' << se::backend_name(kind);
      }
      std::cout << ")\n";
      return false;
    } else if (a == "--topk" || a == "-k") {
      args.topk = parse_int(a, value(), 1);
    } else if (a == "--json") {
      args.json = true;
    } else if (a == "--backend") {
      try {
        args.options.backend = se::parse_backend(value());
      } catch (const se::Error& e) {
        throw UsageError(e.what());
      }
    } else if (a == "--model") {
      args.options.model_file = value();
    } else if (a == "--precision") {
      args.precision = value();
      if (args.precision != "fp32" && args.precision != "fp16" && args.precision != "int8") {
        throw UsageError("--precision expects fp32, fp16 or int8, got '" + args.precision + "'");
      }
    } else if (a == "--threads") {
      args.options.threads = static_cast<int>(parse_int(a, value(), 0));
    } else if (a == "--dump-outputs") {
      args.dump_outputs = value();
    } else if (a == "--dump-input") {
      args.dump_input = value();
    } else if (a == "--tasks") {
      std::stringstream list(value());
      std::string item;
      while (std::getline(list, item, ',')) {
        if (!item.empty()) args.options.tasks.push_back(item);
      }
      if (args.options.tasks.empty()) throw UsageError("--tasks expects a comma-separated list of task names");
    } else if (a == "--no-verify") {
      args.options.verify_hashes = false;
    } else if (a == "--ort-format") {
      args.ort_format = true;
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    throw UsageError(positional.size() < 2 ? "expected EXPORT_DIR and INPUT" : "too many arguments");
  }
  args.export_dir = positional[0];
  args.input = positional[1];
  if (!args.precision.empty()) {
    if (!args.options.model_file.empty()) throw UsageError("pass --model or --precision, not both");
    if (args.options.backend == se::BackendKind::TensorRT) {
      throw UsageError("--precision selects an ONNX file; a TensorRT plan's precision is fixed when it is built");
    }
    args.options.model_file = args.precision == "fp32" ? "model.onnx" : "model." + args.precision + ".onnx";
  }
  if (args.ort_format) {
    // ONNX Runtime loads an .ort file by path as it loads an .onnx one (it tells them apart by the suffix)
    if (args.options.backend == se::BackendKind::TensorRT) throw UsageError("--ort-format runs on --backend onnxruntime");
    std::string& model = args.options.model_file;
    if (model.empty()) model = "model.onnx";
    const std::string suffix = ".onnx";
    if (model.size() <= suffix.size() || model.compare(model.size() - suffix.size(), suffix.size(), suffix) != 0) {
      throw UsageError("--ort-format selects the .ort twin of an .onnx file, not of '" + model + "'");
    }
    model = model.substr(0, model.size() - suffix.size()) + ".ort";
  }
  return true;
}

se::Tensor load_input(const Args& args, const se::Manifest& manifest) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(args.input, ec)) throw se::Error("input " + args.input.string() + " does not exist");
  if (se::is_npy_file(args.input)) return se::as_batch(se::load_npy(args.input));
  return se::load_image(args.input, manifest.preprocessing);
}

std::string format_score(double score) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(4) << score;
  return s.str();
}

void print_text(const se::Manifest& manifest, const se::TaskOutputs& outputs, int64_t batch, int64_t k) {
  for (int64_t row = 0; row < batch; ++row) {
    for (const auto& [task, logits] : outputs) {
      std::cout << '[' << row << "] " << task << ':';
      const auto top = se::top_k(manifest.task(task), logits, row, k);
      for (std::size_t i = 0; i < top.size(); ++i) {
        std::cout << (i ? ", " : " ") << top[i].label << " (" << format_score(top[i].score) << ')';
      }
      std::cout << '\n';
    }
  }
}

void print_json(const Args& args, const se::Runner& runner, const se::Tensor& input, const se::TaskOutputs& outputs) {
  nlohmann::ordered_json doc;
  doc["export"] = args.export_dir.string();
  doc["input"] = args.input.string();
  doc["input_shape"] = input.shape;
  doc["backend"] = runner.backend_name();
  doc["topk"] = args.topk;
  nlohmann::ordered_json tasks = nlohmann::ordered_json::object();
  for (const auto& [task, logits] : outputs) {
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (int64_t row = 0; row < input.shape[0]; ++row) {
      nlohmann::ordered_json preds = nlohmann::ordered_json::array();
      for (const auto& p : se::top_k(runner.manifest().task(task), logits, row, args.topk)) {
        preds.push_back({{"index", p.index}, {"label", p.label}, {"score", p.score}});
      }
      rows.push_back(std::move(preds));
    }
    tasks[task] = std::move(rows);
  }
  doc["tasks"] = std::move(tasks);
  if (runner.modular()) doc["session_runs"] = runner.session_runs();
  if (!args.precision.empty()) doc["precision"] = args.precision;
  std::cout << doc.dump(2) << '\n';
}

int run(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, args)) return 0;

  se::Runner runner(args.export_dir, args.options);
  const se::Tensor input = load_input(args, runner.manifest());
  if (!args.dump_input.empty()) se::save_npy(args.dump_input, input);
  const se::TaskOutputs outputs = runner.run(input);

  if (!args.dump_outputs.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(args.dump_outputs, ec);
    if (ec) throw se::Error("cannot create " + args.dump_outputs.string() + ": " + ec.message());
    for (const auto& [task, logits] : outputs) {
      // Output names are identifiers (the exporter sanitises task names), so they make safe file names.
      const std::string& name = runner.manifest().task(task).output;
      if (name.find('/') != std::string::npos || name.find('\\') != std::string::npos || name == "." || name == "..") {
        throw se::Error("output name '" + name + "' cannot be used as a file name for --dump-outputs");
      }
      se::save_npy(args.dump_outputs / (name + ".npy"), logits);
    }
  }
  if (args.json) {
    print_json(args, runner, input, outputs);
  } else {
    print_text(runner.manifest(), outputs, input.shape[0], args.topk);
  }
  std::cout.flush();
  if (!std::cout) throw se::Error("cannot write the results to standard output");
  return 0;
}

std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << one_line(e.what()) << " (see --help)\n";
    return kExitUsage;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << one_line(e.what()) << '\n';
  } catch (...) {
    std::cerr << "error: unexpected failure\n";
  }
  return kExitError;
}
