// CUDA cosine argmax: the same exact low-resolution method and results as Matcher::cosine_argmax
// (gram + inverse norms in float64, dots in float32, torch.lerp rounding, running max with ties
// to the lowest y * W + x), as plain CUDA kernels (no libtorch, no cuBLAS).
#pragma once

#include "cleandift_rt/grid.hpp"
#include "cleandift_rt/matcher.hpp"

namespace cleandift_rt {

/// True when the library was built with CUDA and a CUDA device is visible.
bool cuda_matcher_available();

/// Matcher on one CUDA device. Inputs may be host or device pointers (detected per call);
/// results come back to the host. Device inputs are not scanned for NaN/Inf.
/// Throws Error when the library was built without CUDA or the device is missing.
class CudaMatcher {
 public:
  explicit CudaMatcher(int device = 0);

  int device() const { return device_; }

  /// Same contract as Matcher::cosine_argmax.
  PointMatches cosine_argmax(const Descriptors& queries, const FeatureMap& target,
                             const PixelGrid& grid) const;

 private:
  int device_;
};

}  // namespace cleandift_rt
