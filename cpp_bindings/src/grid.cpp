#include "cleandift_rt/grid.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {

PointTap bilinear_tap(double u, int64_t n_cells) {
  // grid.py bilinear_weights: clamp, floor, upper = min(lo + 1, n - 1), weights in float64 then
  // cast to float32.
  const double top = static_cast<double>(n_cells - 1);
  const double c = std::min(std::max(u, 0.0), top);
  int64_t lo = static_cast<int64_t>(std::floor(c));
  lo = std::min<int64_t>(lo, n_cells - 1);
  const int64_t hi = std::min<int64_t>(lo + 1, n_cells - 1);
  const double frac = c - static_cast<double>(lo);
  return {static_cast<int32_t>(lo), static_cast<int32_t>(hi), static_cast<float>(1.0 - frac),
          static_cast<float>(frac)};
}

PixelGrid::PixelGrid(int64_t height, int64_t width, double scale_x, double scale_y, double shift_x,
                     double shift_y)
    : height_(height),
      width_(width),
      scale_x_(scale_x),
      scale_y_(scale_y),
      shift_x_(shift_x),
      shift_y_(shift_y) {
  if (height < 1 || width < 1) {
    throw MatchError("grid size must be positive, got (" + std::to_string(height) + ", " +
                     std::to_string(width) + ")");
  }
  if (!std::isfinite(scale_x) || !std::isfinite(scale_y) || !std::isfinite(shift_x) ||
      !std::isfinite(shift_y)) {
    throw MatchError("grid scale and shift must be finite");
  }
}

PixelGrid PixelGrid::interpolate(int64_t feat_h, int64_t feat_w, int64_t out_h, int64_t out_w) {
  if (feat_h < 1 || feat_w < 1) throw MatchError("feature size must be positive");
  if (out_h < 1 || out_w < 1) throw MatchError("output size must be positive");
  const double sx = static_cast<double>(feat_w) / static_cast<double>(out_w);
  const double sy = static_cast<double>(feat_h) / static_cast<double>(out_h);
  return PixelGrid(out_h, out_w, sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5);
}

PixelGrid PixelGrid::identity(int64_t feat_h, int64_t feat_w) {
  return PixelGrid(feat_h, feat_w, 1.0, 1.0, 0.0, 0.0);
}

PixelGrid PixelGrid::from_input_transform(int64_t orig_h, int64_t orig_w, double input_scale_x,
                                          double input_scale_y, double input_offset_x,
                                          double input_offset_y, double stride_x, double stride_y) {
  if (!(stride_x > 0) || !(stride_y > 0) || !(input_scale_x > 0) || !(input_scale_y > 0)) {
    throw MatchError("input scale and stride must be positive");
  }
  const double sx = input_scale_x / stride_x;
  const double sy = input_scale_y / stride_y;
  const double tx = (0.5 * input_scale_x + input_offset_x) / stride_x - 0.5;
  const double ty = (0.5 * input_scale_y + input_offset_y) / stride_y - 0.5;
  return PixelGrid(orig_h, orig_w, sx, sy, tx, ty);
}

static AxisTaps axis_taps(int64_t n_out, double scale, double shift, int64_t n_cells) {
  if (n_cells < 1) throw MatchError("feature axis must have at least one cell");
  AxisTaps taps;
  taps.lo.resize(n_out);
  taps.hi.resize(n_out);
  taps.w_lo.resize(n_out);
  taps.w_hi.resize(n_out);
  for (int64_t i = 0; i < n_out; ++i) {
    const PointTap t = bilinear_tap(static_cast<double>(i) * scale + shift, n_cells);
    taps.lo[i] = t.lo;
    taps.hi[i] = t.hi;
    taps.w_lo[i] = t.w_lo;
    taps.w_hi[i] = t.w_hi;
  }
  return taps;
}

AxisTaps PixelGrid::taps_x(int64_t n_cells) const {
  return axis_taps(width_, scale_x_, shift_x_, n_cells);
}

AxisTaps PixelGrid::taps_y(int64_t n_cells) const {
  return axis_taps(height_, scale_y_, shift_y_, n_cells);
}

bool PixelGrid::contains(double x, double y) const {
  return x >= -0.5 && x <= static_cast<double>(width_) - 0.5 && y >= -0.5 &&
         y <= static_cast<double>(height_) - 0.5;
}

}  // namespace cleandift_rt
