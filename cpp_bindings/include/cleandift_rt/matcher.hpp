// Cosine-argmax matching on low-resolution feature maps: the C++ twin of
// cleandift_rt/matching (reference.py sample_descriptors / cosine_argmax, lowres.py, api.py
// nearest / mutual_nearest), with the same conventions:
//
// * Feature maps are float32 (C, h, w), channels first, contiguous; descriptor sets are
//   float32 (N, C) row-major. Points are float64 (x, y) pixels of a PixelGrid.
// * Cosine similarity normalises with x / max(|x|, 1e-12) (F.normalize), so a zero vector
//   scores 0 against everything.
// * cosine_argmax is the exact argmax over the target map bilinearly upsampled onto the grid
//   (F.interpolate, align_corners=False), computed from the low-resolution map (one GEMM and a
//   per-cell Gram, streamed running argmax; no upsampled map). Ties: lowest y * W + x.
// * Descriptor-set ties go to the lowest index (torch.argmax).
// * Inputs with NaN/Inf, mismatched channels or points outside the grid throw MatchError.
#pragma once

#include <cstdint>
#include <vector>

#include "cleandift_rt/grid.hpp"

namespace cleandift_rt {

/// A float32 (C, h, w) feature map, contiguous, channels first. Not owned.
struct FeatureMap {
  const float* data = nullptr;
  int64_t channels = 0, height = 0, width = 0;
};

/// A float32 (N, C) descriptor set, row-major. Not owned.
struct Descriptors {
  const float* data = nullptr;
  int64_t count = 0, channels = 0;
};

/// Best target pixel of each query.
struct PointMatches {
  std::vector<int64_t> xy;    ///< (K, 2) int64 (x, y) pixels of the target grid
  std::vector<float> scores;  ///< (K,) float32 cosine similarity at that pixel
};

/// Index pairs between two descriptor sets, sorted by the first index.
struct PairMatches {
  std::vector<int64_t> pairs;  ///< (P, 2) int64 (index in a, index in b)
  std::vector<float> scores;   ///< (P,) float32 cosine similarities
};

struct MatcherOptions {
  int num_threads = 0;  ///< worker threads; 0: std::thread::hardware_concurrency()
};

/// The CPU matcher (threaded with std::thread). Stateless apart from its options: one Matcher
/// may be used from several threads at once.
class Matcher {
 public:
  explicit Matcher(MatcherOptions options = {});

  int num_threads() const { return threads_; }

  /// Bilinear samples of `map` at (K, 2) float64 (x, y) `points` of `grid` (F.interpolate
  /// values at integer points): (K, C) float32 row-major, computed in float32.
  std::vector<float> sample_descriptors(const FeatureMap& map, const double* points_xy,
                                        int64_t count, const PixelGrid& grid) const;

  /// Exact cosine argmax of (K, C) `queries` over `target` upsampled onto `grid`.
  PointMatches cosine_argmax(const Descriptors& queries, const FeatureMap& target,
                             const PixelGrid& grid) const;

  /// sample_descriptors on the source, then cosine_argmax on the target.
  PointMatches match_points(const FeatureMap& source, const PixelGrid& source_grid,
                            const double* points_xy, int64_t count, const FeatureMap& target,
                            const PixelGrid& target_grid) const;

  /// Nearest b (highest cosine) of every row of a: P = N pairs (i, j), or none when M = 0.
  PairMatches nearest(const Descriptors& a, const Descriptors& b) const;

  /// Pairs (i, j) where j is the nearest b of a_i and i the nearest a of b_j.
  PairMatches mutual_nearest(const Descriptors& a, const Descriptors& b) const;

 private:
  int threads_;
};

}  // namespace cleandift_rt
