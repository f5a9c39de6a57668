// Inputs for subtune_edge_runtime: raw .npy tensors and images preprocessed the way the manifest says.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "subtune_edge/runtime.hpp"

namespace subtune_edge {

/// Reads a .npy file holding a little-endian float32 C-order array ('<f4', fortran_order False).
/// Anything else (another dtype, Fortran order, a truncated or padded file) throws Error.
/// The shape is returned as stored; use as_batch() to accept [3, H, W] as a batch of one.
Tensor load_npy(const std::filesystem::path& path);

/// Writes `tensor` as a version 1.0 .npy ('<f4', C order).
void save_npy(const std::filesystem::path& path, const Tensor& tensor);

/// [C, H, W] -> [1, C, H, W]; [N, C, H, W] unchanged; any other rank throws Error.
Tensor as_batch(Tensor tensor);

/// True when the file starts with the .npy magic string.
bool is_npy_file(const std::filesystem::path& path);

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // height * width * 3

  RgbImage() = default;
  RgbImage(int w, int h);
  uint8_t* row(int y) { return pixels.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * 3; }
  const uint8_t* row(int y) const {
    return pixels.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * 3;
  }
};

/// Decodes a PNG, JPEG, BMP, TGA or PNM file to RGB (grey is replicated, alpha dropped, as PIL's
/// convert("RGB") does); throws Error with the decoder's reason.
RgbImage decode_image(const std::filesystem::path& path);

/// Resizes like Pillow's Image.resize for 8-bit images (ImagingResample): separable, horizontal then
/// vertical pass, filter support scaled by the downscale factor (antialiased when shrinking),
/// fixed-point coefficients and rounding to 8 bits between the passes. `filter` is one of
/// nearest, box, bilinear, hamming, bicubic (a = -0.5), lanczos.
RgbImage resize_like_pil(const RgbImage& image, int width, int height, const std::string& filter);

/// torchvision's center_crop: pads with zeros where the image is smaller, offsets rounded half to even.
RgbImage center_crop(const RgbImage& image, int width, int height);

/// The size timm's eval transform resizes to before the crop, as [width, height].
std::array<int, 2> eval_resize_size(int image_width, int image_height, const Preprocessing& pre);

/// timm's evaluation transform (exporters/FORMAT.md): resize, center crop, /255, (x - mean) / std,
/// NCHW. Returns [1, 3, H, W].
Tensor preprocess(const RgbImage& image, const Preprocessing& pre);

/// decode_image + preprocess.
Tensor load_image(const std::filesystem::path& path, const Preprocessing& pre);

}  // namespace subtune_edge
