// Extractor front end: sidecar checks shared by every backend, input validation, dispatch.
#include "cleandift_rt/extractor.hpp"

#include <mutex>
#include <string>

#include "backend.hpp"
#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {

#ifndef CLEANDIFT_RT_HAS_TORCH
namespace detail {
std::unique_ptr<Extractor::Backend> make_aoti_backend(const ArtifactInfo& info,
                                                      const ExtractorOptions&) {
  throw ArtifactError("'" + info.artifact +
                      "' is an AOTInductor package but this cleandift_rt was built without "
                      "libtorch; rebuild cpp_bindings with torch installed");
}
}  // namespace detail
bool built_with_aoti() { return false; }
#else
bool built_with_aoti() { return true; }
#endif

#ifndef CLEANDIFT_RT_HAS_TENSORRT
namespace detail {
std::unique_ptr<Extractor::Backend> make_tensorrt_backend(const ArtifactInfo& info,
                                                          const ExtractorOptions&) {
  throw ArtifactError("'" + info.artifact +
                      "' is a TensorRT engine but this cleandift_rt was built without TensorRT; "
                      "rebuild cpp_bindings where TensorRT and CUDA are installed");
}
}  // namespace detail
bool built_with_tensorrt() { return false; }
#else
bool built_with_tensorrt() { return true; }
#endif

FeatureMap TapTensor::map(int64_t b) const {
  if (device != Device::CPU) throw Error("tap '" + name + "' is on the GPU; map() needs a CPU tap");
  if (shape.size() != 4 || b < 0 || b >= shape[0]) {
    throw Error("tap '" + name + "': batch index " + std::to_string(b) + " out of range");
  }
  const int64_t per_item = shape[1] * shape[2] * shape[3];
  return FeatureMap{data + b * per_item, shape[1], shape[2], shape[3]};
}

namespace {

void check_sidecar(const ArtifactInfo& info) {
  const std::string fix = info.rebuild_hint();
  if (info.input_dtype != "uint8" || info.input_layout != "NHWC") {
    throw ArtifactError("'" + info.artifact + "' takes " + info.input_dtype + " " +
                        info.input_layout + " input; this library feeds uint8 NHWC" + fix);
  }
  if (info.precision != "fp32" && info.precision != "fp16" && info.precision != "bf16") {
    throw ArtifactError("'" + info.artifact + "' has unknown precision '" + info.precision + "'" +
                        fix);
  }
  for (const TapSpec& tap : info.taps) {
    if (info.height % tap.stride != 0 || info.width % tap.stride != 0) {
      throw ArtifactError("'" + info.artifact + "': tap '" + tap.name + "' stride " +
                          std::to_string(tap.stride) + " does not divide the input size" + fix);
    }
  }
}

}  // namespace

Extractor::Extractor(const std::string& artifact, ExtractorOptions options)
    : info_(read_sidecar(artifact)) {
  check_sidecar(info_);
  if (info_.format == "aoti") {
    backend_ = detail::make_aoti_backend(info_, options);
  } else if (info_.format == "engine") {
    backend_ = detail::make_tensorrt_backend(info_, options);
  } else {
    throw ArtifactError("'" + info_.artifact +
                        "' is an ONNX model: C++ runs AOTInductor packages "
                        "and TensorRT engines (cleandift-rt export --format aoti or engine)");
  }
}

Extractor::~Extractor() = default;
Extractor::Extractor(Extractor&&) noexcept = default;
Extractor& Extractor::operator=(Extractor&&) noexcept = default;

const ArtifactInfo& Extractor::info() const { return info_; }

std::vector<TapTensor> Extractor::run(const std::vector<ImageView>& images) {
  if (!backend_) throw Error("this Extractor was moved from");
  const auto count = static_cast<int64_t>(images.size());
  if (count < info_.batch_min || count > info_.batch_max) {
    throw InputSizeError("batch of " + std::to_string(count) + " but this artifact takes " +
                         std::to_string(info_.batch_min) + ".." + std::to_string(info_.batch_max) +
                         info_.rebuild_hint());
  }
  std::vector<ImageView> packed = images;
  for (size_t i = 0; i < packed.size(); ++i) {
    ImageView& img = packed[i];
    if (img.data == nullptr) throw InputSizeError("image " + std::to_string(i) + " has no data");
    if (img.height != info_.height || img.width != info_.width) {
      throw InputSizeError("input is " + std::to_string(img.height) + "x" +
                           std::to_string(img.width) + " but this model takes " +
                           std::to_string(info_.height) + "x" + std::to_string(info_.width) +
                           " (H x W)");
    }
    if (img.row_stride == 0) img.row_stride = img.width * 3;
    if (img.row_stride < img.width * 3) {
      throw InputSizeError(
          "image " + std::to_string(i) + ": row stride " + std::to_string(img.row_stride) +
          " is below width * 3 = " + std::to_string(img.width * 3) + " bytes (uint8 RGB expected)");
    }
  }
  return backend_->run(packed);
}

}  // namespace cleandift_rt
