// Internal: the interface every extractor backend implements, and their factories (each defined
// in its backend's source, or in extractor.cpp as a thrower when the backend is not built).
#pragma once

#include <memory>
#include <vector>

#include "cleandift_rt/extractor.hpp"

namespace cleandift_rt {

class Extractor::Backend {
 public:
  virtual ~Backend() = default;
  /// images: validated (count within the batch range, each info.height x info.width, packed rows
  /// of at least width * 3 bytes). Returns one float32 TapTensor per tap in sidecar order.
  virtual std::vector<TapTensor> run(const std::vector<ImageView>& images) = 0;
};

namespace detail {
std::unique_ptr<Extractor::Backend> make_aoti_backend(const ArtifactInfo& info,
                                                      const ExtractorOptions& options);
std::unique_ptr<Extractor::Backend> make_tensorrt_backend(const ArtifactInfo& info,
                                                          const ExtractorOptions& options);
}  // namespace detail

}  // namespace cleandift_rt
