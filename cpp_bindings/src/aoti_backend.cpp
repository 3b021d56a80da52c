// AOTInductor backend: runs a FeatureNet .pt2 package through libtorch's AOTIModelPackageLoader.
// The only translation unit of the library that includes libtorch headers.
#include <ATen/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>

#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "backend.hpp"
#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {
namespace {

const char* kModelName = "model";  // AOTInductor's name of the (only) model in a package

std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string libtorch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

/// "2.13.0+cpu" → "2.13.0" (the local build tag does not change the ABI of the package).
std::string release_of(const std::string& version) { return version.substr(0, version.find('+')); }

bool cpu_isa_supported(const std::string& isa) {
  if (isa.empty() || isa == "INVALID_VEC_ISA") return true;  // scalar kernels
#if defined(__x86_64__) || defined(__i386__)
  if (isa == "AVX2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "AVX512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
#endif
  return true;  // other architectures' ISAs: the loader reports what it cannot run
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

class AotiBackend final : public Extractor::Backend {
 public:
  AotiBackend(const ArtifactInfo& info, const ExtractorOptions& options) : info_(info) {
    const std::string name = base_name(info.path), fix = info.rebuild_hint();
    const auto producer = info.producer.find("torch");
    if (producer != info.producer.end() && release_of(producer->second) != libtorch_version()) {
      throw ArtifactError("AOTInductor package '" + name + "' was compiled with torch " +
                          producer->second + ", this library links libtorch " + libtorch_version() +
                          fix);
    }
    std::unordered_map<std::string, std::string> meta;
    try {
      meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(info.path,
                                                                                 kModelName);
    } catch (const std::exception& exc) {
      throw ArtifactError("corrupt AOTInductor package '" + info.path +
                          "': " + one_line(exc.what()) + fix);
    }
    check_package(meta, options, name, fix);
    device_ = options.device == Device::CUDA ? c10::Device(c10::kCUDA, options.device_index)
                                             : c10::Device(c10::kCPU);
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          info.path, kModelName, false, 1,
          options.device == Device::CUDA ? options.device_index : -1);
    } catch (const std::exception& exc) {
      throw ArtifactError("cannot load AOTInductor package '" + info.path +
                          "': " + one_line(exc.what()) + fix);
    }
  }

  std::vector<TapTensor> run(const std::vector<ImageView>& images) override {
    const auto b = static_cast<int64_t>(images.size());
    const int64_t h = info_.height, w = info_.width;
    c10::InferenceMode guard;
    at::Tensor batch;
    const ImageView& first = images.front();
    if (b == 1 && first.row_stride == w * 3) {  // a packed frame: no copy on the CPU
      batch = at::from_blob(const_cast<uint8_t*>(first.data), {1, h, w, 3}, at::kByte);
    } else {
      batch = at::empty({b, h, w, 3}, at::kByte);
      auto* dst = batch.data_ptr<uint8_t>();
      for (int64_t i = 0; i < b; ++i) {
        for (int64_t y = 0; y < h; ++y) {
          std::memcpy(dst + (i * h + y) * w * 3, images[i].data + y * images[i].row_stride,
                      static_cast<size_t>(w * 3));
        }
      }
    }
    if (device_.is_cuda()) batch = batch.to(device_);
    std::vector<at::Tensor> outs;
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      outs = loader_->run({batch});
    } catch (const std::exception& exc) {
      throw Error("AOTInductor run failed: " + one_line(exc.what()));
    }
    if (outs.size() != info_.taps.size()) {
      throw ArtifactError("package returned " + std::to_string(outs.size()) + " outputs for " +
                          std::to_string(info_.taps.size()) + " taps" + info_.rebuild_hint());
    }
    std::vector<TapTensor> taps;
    for (size_t i = 0; i < outs.size(); ++i) {
      const TapSpec& spec = info_.taps[i];
      at::Tensor t = outs[i].to(at::kFloat).contiguous();
      const std::vector<int64_t> want = {b, spec.channels, h / spec.stride, w / spec.stride};
      if (t.sizes().vec() != want) {
        std::ostringstream got;
        got << t.sizes();
        throw ArtifactError("tap '" + spec.name + "' has shape " + got.str() +
                            ", the sidecar says " + std::to_string(spec.channels) +
                            " channels at stride " + std::to_string(spec.stride) +
                            info_.rebuild_hint());
      }
      auto holder = std::make_shared<at::Tensor>(t);
      TapTensor tap;
      tap.name = spec.name;
      tap.shape = want;
      tap.stride = spec.stride;
      tap.data = holder->data_ptr<float>();
      tap.device = device_.is_cuda() ? Device::CUDA : Device::CPU;
      tap.owner = std::shared_ptr<const void>(holder, holder.get());
      taps.push_back(std::move(tap));
    }
    return taps;
  }

 private:
  /// The package's own metadata agrees with the sidecar and with this machine.
  void check_package(const std::unordered_map<std::string, std::string>& meta,
                     const ExtractorOptions& options, const std::string& name,
                     const std::string& fix) const {
    auto get = [&](const std::string& key) {
      const auto it = meta.find(key);
      return it == meta.end() ? std::string() : it->second;
    };
    const std::string want_device = options.device == Device::CUDA ? "cuda" : "cpu";
    const std::string built_for = get("AOTI_DEVICE_KEY");
    if (built_for != want_device) {
      throw ArtifactError("'" + name + "' was compiled for " +
                          (built_for.empty() ? "?" : built_for) + ", not " + want_device + fix);
    }
    if (want_device == "cpu" && !cpu_isa_supported(get("AOTI_CPU_ISA"))) {
      throw ArtifactError("'" + name + "' needs a CPU with " + get("AOTI_CPU_ISA") +
                          ", which this one lacks" + fix);
    }
    std::vector<std::string> taps, channels, strides;
    for (const TapSpec& t : info_.taps) {
      taps.push_back(t.name);
      channels.push_back(std::to_string(t.channels));
      strides.push_back(std::to_string(t.stride));
    }
    const std::string input =
        "uint8 NHWC " + std::to_string(info_.height) + "x" + std::to_string(info_.width);
    const std::pair<std::string, std::string> expected[] = {
        {"cleandift_rt.taps", join(taps)},
        {"cleandift_rt.channels", join(channels)},
        {"cleandift_rt.strides", join(strides)},
        {"cleandift_rt.input", input},
        {"cleandift_rt.batch_min", std::to_string(info_.batch_min)},
        {"cleandift_rt.batch_max", std::to_string(info_.batch_max)},
    };
    for (const auto& [key, value] : expected) {
      const std::string in_package = get(key);
      if (in_package != value) {
        throw ArtifactError("sidecar '" + name + ".json' does not match the package: " + key +
                            " is '" + value + "' in the sidecar, '" + in_package +
                            "' in the package" + fix);
      }
    }
  }

  ArtifactInfo info_;
  c10::Device device_{c10::kCPU};
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::mutex mutex_;
};

}  // namespace

namespace detail {
std::unique_ptr<Extractor::Backend> make_aoti_backend(const ArtifactInfo& info,
                                                      const ExtractorOptions& options) {
  return std::make_unique<AotiBackend>(info, options);
}
}  // namespace detail

}  // namespace cleandift_rt
