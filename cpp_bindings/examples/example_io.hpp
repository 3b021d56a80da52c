// Example helpers: load an RGB image (OpenCV when the examples are built with it, else binary
// PPM "P6"), resize it to the artifact's square input (the Python "square" policy), and the
// PixelGrid that maps original-image pixels onto a tap's feature cells.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "cleandift_rt/errors.hpp"
#include "cleandift_rt/grid.hpp"

#ifdef CLEANDIFT_RT_EXAMPLES_OPENCV
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace example {

/// A packed uint8 RGB image (height, width, 3).
struct RgbImage {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> pixels;
};

#ifdef CLEANDIFT_RT_EXAMPLES_OPENCV
inline RgbImage from_mat(const cv::Mat& bgr) {
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  RgbImage out{rgb.rows, rgb.cols, {}};
  out.pixels.resize(static_cast<size_t>(rgb.rows) * rgb.cols * 3);
  for (int y = 0; y < rgb.rows; ++y) {
    std::copy_n(rgb.ptr<uint8_t>(y), rgb.cols * 3,
                out.pixels.data() + static_cast<size_t>(y) * rgb.cols * 3);
  }
  return out;
}
#endif

/// Read an image file: any format OpenCV decodes, or binary PPM (P6, maxval 255) without it.
inline RgbImage read_image(const std::string& path) {
#ifdef CLEANDIFT_RT_EXAMPLES_OPENCV
  const cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
  if (bgr.empty()) throw cleandift_rt::Error("cannot read image '" + path + "'");
  return from_mat(bgr);
#else
  std::ifstream in(path, std::ios::binary);
  if (!in) throw cleandift_rt::Error("cannot read image '" + path + "'");
  std::string magic;
  int64_t w = 0, h = 0, maxval = 0;
  in >> magic >> w >> h >> maxval;
  in.get();
  if (magic != "P6" || w < 1 || h < 1 || maxval != 255) {
    throw cleandift_rt::Error("'" + path +
                              "' is not a binary PPM (P6, 8-bit); this build has no "
                              "OpenCV: convert it, e.g. `convert image.jpg image.ppm`");
  }
  RgbImage out{h, w, std::vector<uint8_t>(static_cast<size_t>(h * w * 3))};
  in.read(reinterpret_cast<char*>(out.pixels.data()),
          static_cast<std::streamsize>(out.pixels.size()));
  if (!in) throw cleandift_rt::Error("'" + path + "' is truncated");
  return out;
#endif
}

/// Resize to (height, width) ignoring aspect (OpenCV: INTER_AREA shrinking, INTER_CUBIC growing,
/// as the Python runtime; without OpenCV: bilinear with half-pixel centres).
inline RgbImage resize(const RgbImage& src, int64_t height, int64_t width) {
  if (src.height == height && src.width == width) return src;
#ifdef CLEANDIFT_RT_EXAMPLES_OPENCV
  const cv::Mat in(static_cast<int>(src.height), static_cast<int>(src.width), CV_8UC3,
                   const_cast<uint8_t*>(src.pixels.data()));
  cv::Mat out;
  const bool shrink = height * width < src.height * src.width;
  cv::resize(in, out, cv::Size(static_cast<int>(width), static_cast<int>(height)), 0, 0,
             shrink ? cv::INTER_AREA : cv::INTER_CUBIC);
  RgbImage result{height, width, std::vector<uint8_t>(out.data, out.data + height * width * 3)};
  return result;
#else
  RgbImage out{height, width, std::vector<uint8_t>(static_cast<size_t>(height * width * 3))};
  const double sy = static_cast<double>(src.height) / height,
               sx = static_cast<double>(src.width) / width;
  for (int64_t y = 0; y < height; ++y) {
    const double v = std::clamp((y + 0.5) * sy - 0.5, 0.0, static_cast<double>(src.height - 1));
    const int64_t y0 = static_cast<int64_t>(v), y1 = std::min(y0 + 1, src.height - 1);
    const double fy = v - y0;
    for (int64_t x = 0; x < width; ++x) {
      const double u = std::clamp((x + 0.5) * sx - 0.5, 0.0, static_cast<double>(src.width - 1));
      const int64_t x0 = static_cast<int64_t>(u), x1 = std::min(x0 + 1, src.width - 1);
      const double fx = u - x0;
      for (int ch = 0; ch < 3; ++ch) {
        auto at = [&](int64_t yy, int64_t xx) {
          return src.pixels[(yy * src.width + xx) * 3 + ch];
        };
        const double top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx;
        const double bot = at(y1, x0) * (1 - fx) + at(y1, x1) * fx;
        out.pixels[(y * width + x) * 3 + ch] =
            static_cast<uint8_t>(std::lround(top * (1 - fy) + bot * fy));
      }
    }
  }
  return out;
#endif
}

/// Original-image pixels of an (orig_h, orig_w) image stretched to (in_h, in_w), onto the cells
/// of a tap with `stride` input px per cell.
inline cleandift_rt::PixelGrid original_grid(int64_t orig_h, int64_t orig_w, int64_t in_h,
                                             int64_t in_w, int64_t stride) {
  return cleandift_rt::PixelGrid::from_input_transform(
      orig_h, orig_w, static_cast<double>(in_w) / orig_w, static_cast<double>(in_h) / orig_h, 0.0,
      0.0, static_cast<double>(stride), static_cast<double>(stride));
}

/// Index of `name` in the extractor's taps, or an Error listing them.
template <typename Info>
size_t tap_index(const Info& info, const std::string& name) {
  std::string names;
  for (size_t i = 0; i < info.taps.size(); ++i) {
    if (info.taps[i].name == name) return i;
    names += (names.empty() ? "" : ", ") + info.taps[i].name;
  }
  throw cleandift_rt::Error("tap '" + name + "' is not in the artifact (it has " + names + ")");
}

}  // namespace example
