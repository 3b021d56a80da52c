// Built when no CUDA toolkit was found: the CUDA matcher reports that it is absent.
#include "cleandift_rt/cuda_matcher.hpp"
#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {

bool cuda_matcher_available() { return false; }

CudaMatcher::CudaMatcher(int device) : device_(device) {
  throw Error("this cleandift_rt was built without CUDA (no nvcc found at configure time)");
}

PointMatches CudaMatcher::cosine_argmax(const Descriptors&, const FeatureMap&,
                                        const PixelGrid&) const {
  throw Error("this cleandift_rt was built without CUDA");
}

}  // namespace cleandift_rt
