// A strict reader and a writer for .npy files holding float32 tensors (NumPy format versions 1.0-3.0).
#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include "subtune_edge/inputs.hpp"

namespace subtune_edge {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;
constexpr uint32_t kMaxHeader = 1u << 16;

bool little_endian_host() {
  const uint16_t probe = 1;
  uint8_t first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& file) : s_(text), file_(file) {}

  struct Header {
    std::string descr;
    bool fortran_order = false;
    std::vector<int64_t> shape;
  };

  Header parse() {
    Header h;
    std::map<std::string, bool> seen;
    skip();
    expect('{');
    while (true) {
      skip();
      if (peek() == '}') {
        ++i_;
        break;
      }
      const std::string key = string_literal();
      skip();
      expect(':');
      skip();
      if (seen[key]) fail("repeats key '" + key + "'");
      seen[key] = true;
      if (key == "descr") {
        h.descr = string_literal();
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
      } else if (key == "shape") {
        h.shape = tuple();
      } else {
        fail("has unknown key '" + key + "'");
      }
      skip();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != '}') {
        fail("is malformed");
      }
    }
    skip();
    if (i_ != s_.size()) fail("has trailing characters");
    if (!seen["descr"] || !seen["fortran_order"] || !seen["shape"]) fail("lacks descr, fortran_order or shape");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw Error(file_ + ": .npy header " + what); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string string_literal() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    ++i_;
    const std::size_t end = s_.find(quote, i_);
    if (end == std::string::npos) fail("has an unterminated string");
    std::string out = s_.substr(i_, end - i_);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (true) {
      skip();
      if (peek() == ')') {
        ++i_;
        return dims;
      }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("has a shape that is not a tuple of sizes");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = peek() - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("has a dimension that is too large");
        v = v * 10 + digit;
        ++i_;
      }
      dims.push_back(v);
      skip();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != ')') {
        fail("has a malformed shape");
      }
    }
  }

  const std::string& s_;
  const std::string& file_;
  std::size_t i_ = 0;
};

uint32_t read_le(const unsigned char* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

bool is_npy_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[kMagicSize] = {};
  return in.read(magic, kMagicSize) && std::memcmp(magic, kMagic, kMagicSize) == 0;
}

Tensor load_npy(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("input " + name + " does not exist");
  const uintmax_t file_size = std::filesystem::file_size(path, ec);
  if (ec) throw Error("cannot read " + name + ": " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + name);

  unsigned char pre[12] = {};
  if (!in.read(reinterpret_cast<char*>(pre), 10) || std::memcmp(pre, kMagic, kMagicSize) != 0) {
    throw Error(name + " is not a .npy file (no NumPy magic string)");
  }
  const int major = pre[6];
  std::size_t preamble = 10;
  uint32_t header_len = 0;
  if (major == 1) {
    header_len = read_le(pre + 8, 2);
  } else if (major == 2 || major == 3) {
    if (!in.read(reinterpret_cast<char*>(pre + 10), 2)) throw Error(name + " is truncated");
    header_len = read_le(pre + 8, 4);
    preamble = 12;
  } else {
    throw Error(name + " uses .npy format version " + std::to_string(major) + "; supported: 1, 2, 3");
  }
  if (header_len > kMaxHeader || preamble + header_len > file_size) throw Error(name + " has a corrupt .npy header");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len))) throw Error(name + " is truncated");

  const auto h = HeaderParser(header, name).parse();
  if (h.descr != "<f4") {
    throw Error(name + " holds dtype '" + h.descr + "'; the runner reads little-endian float32 ('<f4'): save it with "
                "array.astype(numpy.float32)");
  }
  if (h.fortran_order) {
    throw Error(name + " is in Fortran order; save a C-order array (numpy.ascontiguousarray)");
  }
  if (!little_endian_host()) throw Error("reading .npy files needs a little-endian host");

  const int64_t count = Tensor::count(h.shape);
  const uintmax_t data_bytes = file_size - preamble - header_len;
  if (static_cast<uintmax_t>(count) > std::numeric_limits<uintmax_t>::max() / sizeof(float) ||
      data_bytes != static_cast<uintmax_t>(count) * sizeof(float)) {
    throw Error(name + " holds " + std::to_string(data_bytes) + " data bytes, but shape " + shape_string(h.shape) +
                " needs " + std::to_string(count * static_cast<int64_t>(sizeof(float))));
  }
  Tensor t;
  t.shape = h.shape;
  t.data.resize(static_cast<std::size_t>(count));
  if (count > 0 && !in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(data_bytes))) {
    throw Error(name + " is truncated");
  }
  return t;
}

void save_npy(const std::filesystem::path& path, const Tensor& tensor) {
  if (Tensor::count(tensor.shape) != tensor.numel()) throw Error("save_npy: tensor data does not match its shape");
  std::string shape = "(";
  for (std::size_t i = 0; i < tensor.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(tensor.shape[i]);
  shape += tensor.shape.size() == 1 ? ",)" : ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces so that the data starts on a 64-byte boundary; the header ends with a newline.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  if (header.size() > 0xffff) throw Error("save_npy: shape too long");

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot write " + path.string());
  const char preamble[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', '\x01', '\x00',
                             static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)};
  out.write(preamble, sizeof(preamble));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(tensor.data.data()),
            static_cast<std::streamsize>(tensor.data.size() * sizeof(float)));
  if (!out) throw Error("cannot write " + path.string());
}

Tensor as_batch(Tensor tensor) {
  if (tensor.shape.size() == 3) {
    tensor.shape.insert(tensor.shape.begin(), 1);
    return tensor;
  }
  if (tensor.shape.size() == 4) return tensor;
  throw Error("input has shape " + shape_string(tensor.shape) + "; expected [N, 3, H, W] or [3, H, W]");
}

}  // namespace subtune_edge
