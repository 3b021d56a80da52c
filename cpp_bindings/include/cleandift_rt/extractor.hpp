// Extractor: opens an exported FeatureNet artifact by its metadata sidecar and runs batches of
// uint8 RGB images given as raw buffers. The header needs no libtorch / TensorRT headers.
//
//   cleandift_rt::Extractor ex("tiny.pt2");                  // AOTInductor package (libtorch)
//   cleandift_rt::ImageView img{mat.data, mat.rows, mat.cols, (int64_t)mat.step};  // cv::Mat RGB
//   std::vector<cleandift_rt::TapTensor> taps = ex.run({img});
//   cleandift_rt::FeatureMap us6 = taps[0].map(0);          // (C, h, w) of image 0
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cleandift_rt/artifact.hpp"
#include "cleandift_rt/matcher.hpp"

namespace cleandift_rt {

enum class Device { CPU, CUDA };

/// One uint8 RGB image, rows `row_stride` bytes apart (0: packed, width * 3). Not owned.
struct ImageView {
  const uint8_t* data = nullptr;
  int64_t height = 0, width = 0;
  int64_t row_stride = 0;
};

/// One tap of a batch: float32 (B, C, h, w), contiguous, on `device`; `owner` keeps the memory
/// alive (copies of a TapTensor share it).
struct TapTensor {
  std::string name;
  std::vector<int64_t> shape;  ///< {B, C, h, w}
  int64_t stride = 0;          ///< input px per feature cell
  const float* data = nullptr;
  Device device = Device::CPU;
  std::shared_ptr<const void> owner;

  /// (C, h, w) view of batch item b (CPU taps; throws Error otherwise or for a bad b).
  FeatureMap map(int64_t b) const;
};

struct ExtractorOptions {
  Device device = Device::CPU;  ///< where the artifact runs (must be what it was compiled for)
  int device_index = 0;         ///< CUDA device
};

/// Loads and runs one artifact. AOTInductor packages (format "aoti", .pt2) run through
/// libtorch's AOTIModelPackageLoader; TensorRT engines (format "engine") through the TensorRT
/// runtime (when the library was built with them). The constructor checks the sidecar (format
/// version, input layout/dtype, taps against the package, producer torch version, device) and
/// throws ArtifactError with one line and the rebuild command on a mismatch.
///
/// Thread safety: run() may be called from several threads; calls are serialised inside.
class Extractor {
 public:
  explicit Extractor(const std::string& artifact, ExtractorOptions options = {});
  ~Extractor();
  Extractor(Extractor&&) noexcept;
  Extractor& operator=(Extractor&&) noexcept;

  const ArtifactInfo& info() const;

  /// Run a batch (size within the artifact's batch range, each image exactly its input size):
  /// one TapTensor per tap, in info().taps order. One packed batch of 1 goes to the graph
  /// without a copy; otherwise images are packed into one (B, H, W, 3) buffer.
  /// Throws InputSizeError for a wrong size / batch, Error when the run fails.
  std::vector<TapTensor> run(const std::vector<ImageView>& images);

  class Backend;  // implementation interface (src/backend.hpp)

 private:
  ArtifactInfo info_;
  std::unique_ptr<Backend> backend_;
};

/// Whether this build of the library can run AOTInductor packages / TensorRT engines.
bool built_with_aoti();
bool built_with_tensorrt();

}  // namespace cleandift_rt
