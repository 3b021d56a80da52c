// Output pixel grids and their affine map onto low-resolution feature cells; the C++ twin of
// cleandift_rt/matching/grid.py (same conventions, same float64 index arithmetic).
//
// * Sizes are (H, W) (rows, columns); points are (x, y) pixels with centres at integers.
// * Feature cell j is centred at feature coordinate u = j.
// * Output pixel (x, y) maps to u = x * scale_x + shift_x, v = y * scale_y + shift_y.
// * Bilinear taps clamp the feature coordinate to [0, n - 1] first, exactly as
//   F.interpolate(mode="bilinear", align_corners=False) does at the borders.
#pragma once

#include <cstdint>
#include <vector>

namespace cleandift_rt {

/// Two-tap bilinear interpolation along one axis for every output pixel of that axis.
struct AxisTaps {
  std::vector<int32_t> lo;  ///< (n_out,) lower neighbour cell
  std::vector<int32_t> hi;  ///< (n_out,) upper neighbour cell (== lo at the upper edge)
  std::vector<float> w_lo;  ///< (n_out,) float32 weight of lo: float32(1 - frac)
  std::vector<float> w_hi;  ///< (n_out,) float32 weight of hi: float32(frac)
};

/// Bilinear taps of one (unclamped) feature coordinate u on an axis of n_cells cells.
struct PointTap {
  int32_t lo, hi;
  float w_lo, w_hi;
};
PointTap bilinear_tap(double u, int64_t n_cells);

/// An output pixel grid of `height` x `width` and its affine map to feature-cell coordinates.
class PixelGrid {
 public:
  /// Explicit grid. Throws MatchError for a non-positive size or non-finite scale / shift.
  PixelGrid(int64_t height, int64_t width, double scale_x, double scale_y, double shift_x,
            double shift_y);

  /// F.interpolate(size=(out_h, out_w), mode="bilinear", align_corners=False) over an
  /// (feat_h, feat_w) map: per axis scale = n_feat / n_out and shift = 0.5 * scale - 0.5.
  static PixelGrid interpolate(int64_t feat_h, int64_t feat_w, int64_t out_h, int64_t out_w);

  /// The feature grid itself: output pixel (x, y) is feature cell (x, y).
  static PixelGrid identity(int64_t feat_h, int64_t feat_w);

  /// Grid over an original image resized by `input_scale` (network px per original px) and
  /// offset by `input_offset` (network px, e.g. padding) into a network with `stride` px per
  /// feature cell: u = x * (s_in / stride) + ((0.5 * s_in + o) / stride - 0.5).
  static PixelGrid from_input_transform(int64_t orig_h, int64_t orig_w, double input_scale_x,
                                        double input_scale_y, double input_offset_x,
                                        double input_offset_y, double stride_x, double stride_y);

  int64_t height() const { return height_; }
  int64_t width() const { return width_; }
  double scale_x() const { return scale_x_; }
  double scale_y() const { return scale_y_; }
  double shift_x() const { return shift_x_; }
  double shift_y() const { return shift_y_; }

  /// Taps of every output column onto n_cells feature columns (axis x), or of every output row
  /// onto n_cells feature rows (axis y).
  AxisTaps taps_x(int64_t n_cells) const;
  AxisTaps taps_y(int64_t n_cells) const;

  /// Whether (x, y) lies in [-0.5, W - 0.5] x [-0.5, H - 0.5] (NaN: false).
  bool contains(double x, double y) const;

 private:
  int64_t height_, width_;
  double scale_x_, scale_y_, shift_x_, shift_y_;
};

}  // namespace cleandift_rt
