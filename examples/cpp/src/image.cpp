// Images: decode with stb_image, then timm's evaluation transform with Pillow's resampling arithmetic,
// so that the tensor equals what Python computes (torchvision on a PIL image) for the same pixels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "stb_image_decl.hpp"
#include "subtune_edge/inputs.hpp"

namespace subtune_edge {
namespace {

// ---- Pillow's filters (src/libImaging/Resample.c) -------------------------------------------------

constexpr double kPi = 3.14159265358979323846;

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  x = std::fabs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * kPi;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}

double lanczos_filter(double x) { return (-3.0 <= x && x < 3.0) ? sinc_filter(x) * sinc_filter(x / 3) : 0.0; }

struct Filter {
  double (*fn)(double);
  double support;
};

Filter filter_for(const std::string& name) {
  if (name == "box") return {box_filter, 0.5};
  if (name == "bilinear") return {bilinear_filter, 1.0};
  if (name == "hamming") return {hamming_filter, 1.0};
  if (name == "bicubic") return {bicubic_filter, 2.0};
  if (name == "lanczos") return {lanczos_filter, 3.0};
  throw Error("unsupported interpolation '" + name + "'");
}

// 8 bits for the result plus 2 for the over/undershoot of filters with negative lobes.
constexpr int kPrecisionBits = 32 - 8 - 2;

// Coefficients for one axis, in Pillow's fixed point: out[i] = sum_k in[lo[i] + k] * w[i * ksize + k].
struct Coefficients {
  int ksize = 0;
  std::vector<int> lo;
  std::vector<int> count;
  std::vector<int32_t> weights;
};

Coefficients precompute(int in_size, int out_size, const Filter& filter) {
  // Pillow: precompute_coeffs() with box (0, in_size), then normalize_coeffs_8bpc().
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = filter.support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.lo.resize(static_cast<std::size_t>(out_size));
  c.count.resize(static_cast<std::size_t>(out_size));
  c.weights.assign(static_cast<std::size_t>(out_size) * static_cast<std::size_t>(c.ksize), 0);
  std::vector<double> k(static_cast<std::size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.fn((x + xmin - center + 0.5) * ss);
      k[static_cast<std::size_t>(x)] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      double v = k[static_cast<std::size_t>(x)];
      if (ww != 0.0) v /= ww;
      const double fixed = v * (1 << kPrecisionBits);
      c.weights[static_cast<std::size_t>(xx * c.ksize + x)] =
          static_cast<int32_t>(v < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    c.lo[static_cast<std::size_t>(xx)] = xmin;
    c.count[static_cast<std::size_t>(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  const int32_t shifted = v >> kPrecisionBits;  // arithmetic shift: floor, as Pillow's lookup table
  return static_cast<uint8_t>(std::clamp(shifted, 0, 255));
}

RgbImage resample_horizontal(const RgbImage& in, int out_w, const Filter& filter) {
  const Coefficients c = precompute(in.width, out_w, filter);
  RgbImage out(out_w, in.height);
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* src = in.row(y);
    uint8_t* dst = out.row(y);
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* w = &c.weights[static_cast<std::size_t>(xx * c.ksize)];
      const int xmin = c.lo[static_cast<std::size_t>(xx)];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < c.count[static_cast<std::size_t>(xx)]; ++x) {
        const uint8_t* p = src + static_cast<std::ptrdiff_t>(x + xmin) * 3;
        s0 += p[0] * w[x];
        s1 += p[1] * w[x];
        s2 += p[2] * w[x];
      }
      dst[xx * 3 + 0] = clip8(s0);
      dst[xx * 3 + 1] = clip8(s1);
      dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

RgbImage resample_vertical(const RgbImage& in, int out_h, const Filter& filter) {
  const Coefficients c = precompute(in.height, out_h, filter);
  RgbImage out(in.width, out_h);
  const std::size_t row_bytes = static_cast<std::size_t>(in.width) * 3;
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* w = &c.weights[static_cast<std::size_t>(yy * c.ksize)];
    const int ymin = c.lo[static_cast<std::size_t>(yy)];
    const int n = c.count[static_cast<std::size_t>(yy)];
    uint8_t* dst = out.row(yy);
    for (std::size_t i = 0; i < row_bytes; ++i) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < n; ++y) s += in.row(ymin + y)[i] * w[y];
      dst[i] = clip8(s);
    }
  }
  return out;
}

// Pillow resizes with NEAREST through an affine scale (ImagingScaleAffine): positions accumulate in double.
RgbImage resize_nearest(const RgbImage& in, int out_w, int out_h) {
  const double ax = static_cast<double>(static_cast<float>(in.width)) / out_w;
  const double ay = static_cast<double>(static_cast<float>(in.height)) / out_h;
  std::vector<int> xin(static_cast<std::size_t>(out_w));
  double xo = ax * 0.5;
  for (int x = 0; x < out_w; ++x) {
    xin[static_cast<std::size_t>(x)] = std::clamp(xo < 0.0 ? -1 : static_cast<int>(xo), 0, in.width - 1);
    xo += ax;
  }
  RgbImage out(out_w, out_h);
  double yo = ay * 0.5;
  for (int y = 0; y < out_h; ++y) {
    const uint8_t* src = in.row(std::clamp(yo < 0.0 ? -1 : static_cast<int>(yo), 0, in.height - 1));
    uint8_t* dst = out.row(y);
    for (int x = 0; x < out_w; ++x) {
      std::copy_n(src + static_cast<std::ptrdiff_t>(xin[static_cast<std::size_t>(x)]) * 3, 3, dst + x * 3);
    }
    yo += ay;
  }
  return out;
}

// Python's round(): half to even.
int round_half_even(double v) {
  const double r = std::nearbyint(v);  // the default rounding mode rounds ties to even
  return static_cast<int>(r);
}

}  // namespace

RgbImage::RgbImage(int w, int h) : width(w), height(h) {
  if (w < 0 || h < 0) throw Error("negative image size");
  pixels.assign(static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * 3, 0);
}

RgbImage decode_image(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("input " + name + " does not exist");
  int w = 0, h = 0, channels = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> data(stbi_load(name.c_str(), &w, &h, &channels, 3), stbi_image_free);
  if (!data) {
    throw Error("cannot decode image " + name + " (" + stbi_failure_reason() +
                "); inputs are PNG, JPEG, BMP, TGA or PNM images, or .npy float32 tensors");
  }
  RgbImage img(w, h);
  std::copy_n(data.get(), img.pixels.size(), img.pixels.begin());
  return img;
}

RgbImage resize_like_pil(const RgbImage& image, int width, int height, const std::string& filter) {
  if (width <= 0 || height <= 0) throw Error("cannot resize to " + std::to_string(width) + "x" + std::to_string(height));
  if (image.width <= 0 || image.height <= 0) throw Error("cannot resize an empty image");
  if (width == image.width && height == image.height) return image;
  if (filter == "nearest") return resize_nearest(image, width, height);
  const Filter f = filter_for(filter);
  // Two separable passes, each rounding to 8 bits; a pass is skipped where its size does not change.
  if (width == image.width) return resample_vertical(image, height, f);
  if (height == image.height) return resample_horizontal(image, width, f);
  // Which pass runs first changes the rounding. Pillow 13 runs the vertical pass first when it removes
  // more than twice as many rows as the horizontal pass removes columns (measured on Pillow 13.0 over
  // thousands of sizes and every filter); older Pillow always ran the horizontal pass first, which
  // differs from this by at most one 8-bit level on some pixels.
  const int rows_removed = std::max(0, image.height - height);
  const int cols_removed = std::max(0, image.width - width);
  if (rows_removed > 2 * cols_removed) return resample_horizontal(resample_vertical(image, height, f), width, f);
  return resample_vertical(resample_horizontal(image, width, f), height, f);
}

RgbImage center_crop(const RgbImage& image, int width, int height) {
  if (width <= 0 || height <= 0) throw Error("cannot crop to " + std::to_string(width) + "x" + std::to_string(height));
  const RgbImage* src = &image;
  RgbImage padded;
  if (width > image.width || height > image.height) {
    // torchvision pads with zeros, left/top getting the smaller half.
    const int left = width > image.width ? (width - image.width) / 2 : 0;
    const int top = height > image.height ? (height - image.height) / 2 : 0;
    const int right = width > image.width ? (width - image.width + 1) / 2 : 0;
    const int bottom = height > image.height ? (height - image.height + 1) / 2 : 0;
    padded = RgbImage(image.width + left + right, image.height + top + bottom);
    for (int y = 0; y < image.height; ++y) {
      std::copy_n(image.row(y), static_cast<std::size_t>(image.width) * 3, padded.row(y + top) + left * 3);
    }
    src = &padded;
  }
  const int top = round_half_even((src->height - height) / 2.0);
  const int left = round_half_even((src->width - width) / 2.0);
  RgbImage out(width, height);
  for (int y = 0; y < height; ++y) {
    std::copy_n(src->row(y + top) + left * 3, static_cast<std::size_t>(width) * 3, out.row(y));
  }
  return out;
}

std::array<int, 2> eval_resize_size(int image_width, int image_height, const Preprocessing& pre) {
  // timm.data.transforms_factory.transforms_imagenet_eval
  const int scale_h = static_cast<int>(std::floor(static_cast<double>(pre.height) / pre.crop_pct));
  const int scale_w = static_cast<int>(std::floor(static_cast<double>(pre.width) / pre.crop_pct));
  if (pre.crop_mode == "squash") return {scale_w, scale_h};
  if (scale_h == scale_w) {
    // torchvision Resize(int): the shorter side becomes scale, the longer keeps the aspect ratio (truncated).
    const int64_t shorter = std::min(image_width, image_height);
    const int64_t longer = std::max(image_width, image_height);
    const int new_long = static_cast<int>(static_cast<double>(scale_h * longer) / static_cast<double>(shorter));
    return image_width <= image_height ? std::array<int, 2>{scale_h, new_long} : std::array<int, 2>{new_long, scale_h};
  }
  // timm ResizeKeepRatio(longest=0): scale by the smaller ratio, sizes rounded half to even.
  const double ratio_h = static_cast<double>(image_height) / scale_h;
  const double ratio_w = static_cast<double>(image_width) / scale_w;
  const double ratio = std::max(ratio_h, ratio_w) * 0.0 + std::min(ratio_h, ratio_w) * 1.0;
  return {round_half_even(image_width / ratio), round_half_even(image_height / ratio)};
}

Tensor preprocess(const RgbImage& image, const Preprocessing& pre) {
  if (pre.channels != 3) throw Error("images give 3 channels; the export expects " + std::to_string(pre.channels));
  if (image.width <= 0 || image.height <= 0) throw Error("empty image");
  const auto size = eval_resize_size(image.width, image.height, pre);
  const RgbImage resized = resize_like_pil(image, size[0], size[1], pre.interpolation);
  const int h = static_cast<int>(pre.height);
  const int w = static_cast<int>(pre.width);
  const RgbImage crop = center_crop(resized, w, h);

  Tensor t({1, 3, pre.height, pre.width});
  const std::size_t plane = static_cast<std::size_t>(h) * static_cast<std::size_t>(w);
  for (std::size_t c = 0; c < 3; ++c) {
    // As torchvision: to_tensor divides by 255 in float32, then Normalize subtracts and divides in float32.
    const float mean = static_cast<float>(pre.mean[c]);
    const float stdev = static_cast<float>(pre.std[c]);
    float* out = t.data.data() + c * plane;
    for (std::size_t i = 0; i < plane; ++i) {
      const float v = static_cast<float>(crop.pixels[i * 3 + c]) / 255.0f;
      out[i] = (v - mean) / stdev;
    }
  }
  return t;
}

Tensor load_image(const std::filesystem::path& path, const Preprocessing& pre) { return preprocess(decode_image(path), pre); }

}  // namespace subtune_edge
