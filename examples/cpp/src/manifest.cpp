// manifest.json: parse, validate (exporters/FORMAT.md, format version 1) and check files against it.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "subtune_edge/runtime.hpp"

namespace subtune_edge {
namespace {

using nlohmann::json;

// Typed access to one JSON value with its path, so every message says where the problem is.
class Node {
 public:
  Node(const json& value, std::string path, const std::string& where) : v_(value), path_(std::move(path)), where_(where) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": '" + path_ + "' " + what);
  }

  const json& value() const { return v_; }
  bool has(const std::string& key) const { return v_.is_object() && v_.contains(key); }
  bool is_null() const { return v_.is_null(); }

  Node operator[](const std::string& key) const {
    if (!v_.is_object()) fail("must be an object");
    auto it = v_.find(key);
    if (it == v_.end()) throw Error(where_ + ": '" + child_path(key) + "' is missing");
    return Node(*it, child_path(key), where_);
  }
  Node at(std::size_t i) const { return Node(v_.at(i), path_ + "[" + std::to_string(i) + "]", where_); }

  const json::array_t& array() const {
    if (!v_.is_array()) fail("must be a list");
    return v_.get_ref<const json::array_t&>();
  }
  const json::object_t& object() const {
    if (!v_.is_object()) fail("must be an object");
    return v_.get_ref<const json::object_t&>();
  }
  std::string str() const {
    if (!v_.is_string()) fail("must be a string");
    return v_.get<std::string>();
  }
  bool boolean() const {
    if (!v_.is_boolean()) fail("must be true or false");
    return v_.get<bool>();
  }
  int64_t integer() const {
    if (v_.is_number_integer()) return v_.get<int64_t>();
    if (v_.is_number_float()) {
      const double d = v_.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
    }
    fail("must be an integer");
  }
  double number() const {
    if (!v_.is_number()) fail("must be a number");
    const double d = v_.get<double>();
    if (!std::isfinite(d)) fail("must be a finite number");
    return d;
  }

 private:
  std::string child_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  const json& v_;
  std::string path_;
  const std::string& where_;
};

bool is_hex64(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A manifest must never point outside its export directory.
bool is_safe_relative(const std::string& rel) {
  if (rel.empty() || rel.front() == '/' || rel.find('\\') != std::string::npos) return false;
  std::filesystem::path p(rel);
  for (const auto& part : p) {
    if (part == ".." || part == ".") return false;
  }
  return true;
}

constexpr int64_t kMaxSide = 1 << 14;  // as the image decoder's limit

const std::set<std::string> kFilters = {"nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"};

}  // namespace

Manifest Manifest::parse(const std::string& json_text, const std::string& where) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    const std::string msg = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 5: ..."
    const auto pos = msg.find("parse error");
    throw Error(where + " is not valid JSON (" + (pos == std::string::npos ? msg : msg.substr(pos)) + ")");
  }
  Node root(doc, "", where);
  if (!doc.is_object()) throw Error(where + " is not a JSON object");

  Manifest m;
  if (!root.has("format") || !root["format"].value().is_string() || root["format"].str() != kFormat) {
    throw Error(where + " is not a subtune-edge export manifest (its 'format' is not '" + std::string(kFormat) + "')");
  }
  m.format_version = static_cast<int>(root["format_version"].integer());
  if (m.format_version != kFormatVersion) {
    throw Error(where + " has format_version " + std::to_string(m.format_version) + "; this runner reads version " +
                std::to_string(kFormatVersion) +
                (m.format_version > kFormatVersion ? " (the export is newer: update the runner)" : ""));
  }
  if (root.has("backbone") && root["backbone"].has("model_name")) m.backbone = root["backbone"]["model_name"].str();

  // input
  Node input = root["input"];
  m.input_name = input["name"].str();
  if (input.has("dtype") && input["dtype"].str() != "float32") input["dtype"].fail("must be \"float32\"");
  if (input.has("layout") && input["layout"].str() != "NCHW") input["layout"].fail("must be \"NCHW\"");
  Node shape = input["shape"];
  if (shape.array().size() != 4) shape.fail("must have 4 dims [batch, C, H, W]");
  m.channels = shape.at(1).integer();
  m.height = shape.at(2).integer();
  m.width = shape.at(3).integer();
  if (m.channels <= 0 || m.height <= 0 || m.width <= 0) shape.fail("must have positive C, H, W");
  if (m.height > kMaxSide || m.width > kMaxSide) shape.fail("is larger than " + std::to_string(kMaxSide) + " pixels");

  // batch
  Node batch = root["batch"];
  m.batch_min = batch["min"].integer();
  m.batch_max = batch["max"].integer();
  m.batch_dynamic = batch.has("dynamic") ? batch["dynamic"].boolean() : true;
  if (m.batch_min < 1 || m.batch_max < m.batch_min) batch.fail("must have 1 <= min <= max");
  if (!shape.at(0).value().is_string()) {  // a fixed batch
    const int64_t fixed = shape.at(0).integer();
    if (fixed < m.batch_min || fixed > m.batch_max) shape.at(0).fail("is outside the batch range");
  }

  // preprocessing
  Node pre = root["preprocessing"];
  Preprocessing& p = m.preprocessing;
  Node size = pre["input_size"];
  if (size.array().size() != 3) size.fail("must be [C, H, W]");
  p.channels = size.at(0).integer();
  p.height = size.at(1).integer();
  p.width = size.at(2).integer();
  if (p.channels != m.channels || p.height != m.height || p.width != m.width) {
    size.fail("does not match input.shape " + shape_string({m.channels, m.height, m.width}));
  }
  if (m.channels != 3) shape.fail("must have 3 channels (RGB)");
  for (const char* key : {"mean", "std"}) {
    if (!pre.has(key) || pre[key].is_null()) continue;  // timm's defaults (ImageNet), as create_transform
    Node list = pre[key];
    if (list.array().size() != 3) {
      list.fail("must have one value per channel (3)");
    }
    for (std::size_t c = 0; c < 3; ++c) {
      const double v = list.at(c).number();
      if (std::string(key) == "std" && !(v > 0.0)) list.at(c).fail("must be positive");
      (std::string(key) == "mean" ? p.mean : p.std)[c] = v;
    }
  }
  p.interpolation = pre.has("interpolation") && !pre["interpolation"].is_null() ? pre["interpolation"].str() : "bilinear";
  if (!kFilters.count(p.interpolation)) {
    pre["interpolation"].fail("is '" + p.interpolation +
                              "'; supported: nearest, box, bilinear, hamming, bicubic, lanczos");
  }
  p.crop_pct = pre.has("crop_pct") && !pre["crop_pct"].is_null() ? pre["crop_pct"].number() : 0.875;
  if (!(p.crop_pct > 0.0 && p.crop_pct <= 4.0)) pre["crop_pct"].fail("must be in (0, 4]");
  p.crop_mode = pre.has("crop_mode") && !pre["crop_mode"].is_null() ? pre["crop_mode"].str() : "center";
  if (p.crop_mode != "center" && p.crop_mode != "squash") {
    pre["crop_mode"].fail("is '" + p.crop_mode + "'; this runner supports center and squash");
  }

  // tasks
  Node tasks = root["tasks"];
  if (tasks.array().empty()) tasks.fail("is empty");
  std::set<std::string> names, outputs;
  for (std::size_t i = 0; i < tasks.array().size(); ++i) {
    Node t = tasks.at(i);
    TaskInfo info;
    info.name = t["name"].str();
    if (info.name.empty()) t["name"].fail("is empty");
    info.output = t.has("output") ? t["output"].str() : info.name;
    if (!names.insert(info.name).second) t["name"].fail("repeats task '" + info.name + "'");
    if (!outputs.insert(info.output).second) t["output"].fail("repeats output '" + info.output + "'");
    Node tshape = t["shape"];
    if (tshape.array().size() != 2) tshape.fail("must be [batch, num_classes]");
    info.num_classes = tshape.at(1).integer();
    if (info.num_classes < 1) tshape.at(1).fail("must be positive");
    if (t.has("labels") && !t["labels"].is_null()) {
      Node labels = t["labels"];
      for (std::size_t k = 0; k < labels.array().size(); ++k) info.labels.push_back(labels.at(k).str());
      if (!info.labels.empty() && static_cast<int64_t>(info.labels.size()) != info.num_classes) {
        labels.fail("has " + std::to_string(info.labels.size()) + " labels for " + std::to_string(info.num_classes) +
                    " classes");
      }
    }
    if (t.has("int8") && !t["int8"].is_null()) {
      Node q = t["int8"];
      info.int8_precision = q["precision"].str();
      if (info.int8_precision != "int8" && info.int8_precision != "fp32" && info.int8_precision != "mixed")
        q["precision"].fail("must be \"int8\", \"mixed\" or \"fp32\"");
    }
    m.tasks.push_back(std::move(info));
  }

  // files
  for (const auto& [rel, entry] : root["files"].object()) {
    Node f(entry, "files." + rel, where);
    if (!is_safe_relative(rel)) f.fail("is not a path inside the export directory");
    FileEntry fe;
    fe.sha256 = f["sha256"].str();
    std::transform(fe.sha256.begin(), fe.sha256.end(), fe.sha256.begin(),
                   [](char c) { return static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c); });
    if (!is_hex64(fe.sha256)) f["sha256"].fail("is not a sha256 hex digest");
    const int64_t bytes = f["bytes"].integer();
    if (bytes < 0) f["bytes"].fail("is negative");
    fe.bytes = static_cast<uint64_t>(bytes);
    m.files.emplace(rel, std::move(fe));
  }
  return m;
}

Manifest Manifest::load(const std::filesystem::path& export_dir) {
  std::error_code ec;
  if (!std::filesystem::exists(export_dir, ec)) {
    throw Error("export directory " + export_dir.string() + " does not exist");
  }
  if (!std::filesystem::is_directory(export_dir, ec)) {
    throw Error(export_dir.string() + " is not a directory (pass the export directory, which holds manifest.json)");
  }
  const auto path = export_dir / "manifest.json";
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw Error(export_dir.string() + " has no manifest.json: not a subtune-edge export (or an unfinished one)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error("read error in " + path.string());
  return parse(text.str(), path.string());
}

const TaskInfo& Manifest::task(const std::string& name) const {
  for (const auto& t : tasks) {
    if (t.name == name) return t;
  }
  std::string known;
  for (const auto& t : tasks) known += (known.empty() ? "" : ", ") + t.name;
  throw Error("the export has no task '" + name + "' (tasks: " + known + ")");
}

void Manifest::check_input_shape(const std::vector<int64_t>& shape) const {
  const std::string expected = "[N, " + std::to_string(channels) + ", " + std::to_string(height) + ", " +
                               std::to_string(width) + "] with N in " + std::to_string(batch_min) + ".." +
                               std::to_string(batch_max);
  const bool dims_ok = shape.size() == 4 && shape[1] == channels && shape[2] == height && shape[3] == width;
  if (!dims_ok) {
    throw Error("input shape " + shape_string(shape) + " does not match the export: expected " + expected);
  }
  if (shape[0] < batch_min || shape[0] > batch_max) {
    throw Error("input batch " + std::to_string(shape[0]) + " is outside the export's batch range: expected " +
                expected);
  }
}

void verify_file(const Manifest& manifest, const std::filesystem::path& export_dir, const std::string& relative) {
  const auto entry = manifest.files.find(relative);
  if (entry == manifest.files.end()) {
    throw Error("manifest.json lists no hash for " + relative + ": the export is incomplete or not from subtune-edge");
  }
  const auto path = export_dir / relative;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw Error(path.string() + " is missing, but manifest.json lists it: the export is incomplete");
  }
  const auto bytes = std::filesystem::file_size(path, ec);
  if (ec) throw Error("cannot read " + path.string() + ": " + ec.message());
  if (bytes != entry->second.bytes) {
    throw Error(relative + " has " + std::to_string(bytes) + " bytes but manifest.json says " +
                std::to_string(entry->second.bytes) + ": the export is corrupt or was changed after export");
  }
  const std::string actual = sha256_file(path);
  if (actual != entry->second.sha256) {
    throw Error(relative + " does not match its sha256 in manifest.json (expected " + entry->second.sha256.substr(0, 12) +
                "..., got " + actual.substr(0, 12) + "...): the export is corrupt or was changed after export");
  }
}

}  // namespace subtune_edge
