// TensorRT backend (TensorRT 10 API): deserialises a FeatureNet engine and runs it with
// IExecutionContext::setTensorAddress + enqueueV3 on a CUDA stream. Built only when CMake finds
// TensorRT (CLEANDIFT_RT_HAS_TENSORRT). Device buffers are allocated once for the largest batch;
// taps come back to the host as float32 (fp16 outputs are widened on the host).
#include <NvInferRuntime.h>
#include <cuda_runtime.h>

#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "backend.hpp"
#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {
namespace {

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
  }
  std::string last_error;
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

std::string runtime_version() {
  const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch (TensorRT 10)
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
}

std::string release_of(const std::string& version) {  // "10.3.0.26" → "10.3.0"
  std::string out;
  int dots = 0;
  for (char ch : version) {
    if (ch == '.' && ++dots == 3) break;
    if (ch != '.' && (ch < '0' || ch > '9')) break;
    out += ch;
  }
  return out;
}

class TensorRTBackend final : public Extractor::Backend {
 public:
  TensorRTBackend(const ArtifactInfo& info, const ExtractorOptions& options) : info_(info) {
    const std::string fix = info.rebuild_hint();
    if (options.device != Device::CUDA) {
      throw ArtifactError("'" + info.artifact +
                          "' is a TensorRT engine: open it with "
                          "ExtractorOptions{Device::CUDA}");
    }
    const auto built = info.producer.find("tensorrt");
    const std::string here = runtime_version();
    if (built == info.producer.end() || release_of(built->second) != here) {
      throw ArtifactError("engine built with TensorRT " +
                          (built == info.producer.end() ? std::string("unknown") : built->second) +
                          ", this is TensorRT " + here + fix);
    }
    check_cuda(cudaSetDevice(options.device_index), "cudaSetDevice");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, options.device_index), "cudaGetDeviceProperties");
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    const auto target_cc = info.target.find("compute_capability");
    if (target_cc != info.target.end() && target_cc->second != cc &&
        target_cc->second != std::to_string(prop.major) + std::to_string(prop.minor)) {
      throw ArtifactError("engine built for compute capability " + target_cc->second +
                          ", this GPU (" + prop.name + ") is " + cc + fix);
    }
    std::ifstream in(info.path, std::ios::binary);
    const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (runtime_) engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw ArtifactError("cannot deserialize TensorRT engine '" + info.path + "': " +
                          (logger_.last_error.empty() ? "corrupt file" : logger_.last_error) + fix);
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_)
      throw ArtifactError("cannot create a TensorRT execution context (out of GPU memory?)");
    if (engine_->getNbIOTensors() != static_cast<int32_t>(info.taps.size()) + 1) {
      throw ArtifactError("engine has " + std::to_string(engine_->getNbIOTensors()) +
                          " inputs/outputs, the sidecar lists 1 input and " +
                          std::to_string(info.taps.size()) + " taps" + fix);
    }
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    const int64_t b = info.batch_max, h = info.height, w = info.width;
    check_cuda(cudaMalloc(&input_, static_cast<size_t>(b * h * w * 3)), "cudaMalloc");
    for (const TapSpec& tap : info.taps) {
      const nvinfer1::DataType type = engine_->getTensorDataType(tap.name.c_str());
      if (type != nvinfer1::DataType::kFLOAT && type != nvinfer1::DataType::kHALF) {
        throw ArtifactError("tap '" + tap.name + "' is missing from the engine or not fp32/fp16" +
                            fix);
      }
      const size_t elem = type == nvinfer1::DataType::kHALF ? 2 : 4;
      void* ptr = nullptr;
      check_cuda(cudaMalloc(&ptr, elem * b * tap.channels * (h / tap.stride) * (w / tap.stride)),
                 "cudaMalloc");
      outputs_.push_back({ptr, elem});
    }
  }

  ~TensorRTBackend() override {
    for (const auto& out : outputs_) cudaFree(out.ptr);
    if (input_ != nullptr) cudaFree(input_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::vector<TapTensor> run(const std::vector<ImageView>& images) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto b = static_cast<int64_t>(images.size());
    const int64_t h = info_.height, w = info_.width;
    auto* dst = static_cast<uint8_t*>(input_);
    for (int64_t i = 0; i < b; ++i) {  // strided host rows → packed device batch
      check_cuda(cudaMemcpy2DAsync(dst + i * h * w * 3, w * 3, images[i].data, images[i].row_stride,
                                   w * 3, h, cudaMemcpyHostToDevice, stream_),
                 "upload");
    }
    const char* input_name = info_.input_name.c_str();
    if (!context_->setInputShape(input_name, nvinfer1::Dims4{b, h, w, 3}) ||
        !context_->setTensorAddress(input_name, input_)) {
      throw Error("TensorRT rejected input '" + info_.input_name + "': " + logger_.last_error);
    }
    for (size_t t = 0; t < outputs_.size(); ++t) {
      context_->setTensorAddress(info_.taps[t].name.c_str(), outputs_[t].ptr);
    }
    if (!context_->enqueueV3(stream_))
      throw Error("TensorRT execution failed: " + logger_.last_error);
    std::vector<TapTensor> taps;
    std::vector<std::vector<uint8_t>> raw(outputs_.size());
    for (size_t t = 0; t < outputs_.size(); ++t) {
      const TapSpec& spec = info_.taps[t];
      raw[t].resize(outputs_[t].elem * b * spec.channels * (h / spec.stride) * (w / spec.stride));
      check_cuda(cudaMemcpyAsync(raw[t].data(), outputs_[t].ptr, raw[t].size(),
                                 cudaMemcpyDeviceToHost, stream_),
                 "download");
    }
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    for (size_t t = 0; t < outputs_.size(); ++t) {
      const TapSpec& spec = info_.taps[t];
      auto values = std::make_shared<std::vector<float>>(raw[t].size() / outputs_[t].elem);
      if (outputs_[t].elem == 4) {
        std::memcpy(values->data(), raw[t].data(), raw[t].size());
      } else {
        const auto* half = reinterpret_cast<const uint16_t*>(raw[t].data());
        for (size_t i = 0; i < values->size(); ++i) (*values)[i] = half_to_float(half[i]);
      }
      TapTensor tap;
      tap.name = spec.name;
      tap.shape = {b, spec.channels, h / spec.stride, w / spec.stride};
      tap.stride = spec.stride;
      tap.data = values->data();
      tap.device = Device::CPU;
      tap.owner = std::shared_ptr<const void>(values, values.get());
      taps.push_back(std::move(tap));
    }
    return taps;
  }

 private:
  struct Destroy {
    template <typename T>
    void operator()(T* p) const {
      delete p;
    }  // TensorRT 10: objects are deleted directly
  };
  struct Output {
    void* ptr;
    size_t elem;
  };

  ArtifactInfo info_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime, Destroy> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine, Destroy> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext, Destroy> context_;
  cudaStream_t stream_ = nullptr;
  void* input_ = nullptr;
  std::vector<Output> outputs_;
  std::mutex mutex_;
};

}  // namespace

namespace detail {
std::unique_ptr<Extractor::Backend> make_tensorrt_backend(const ArtifactInfo& info,
                                                          const ExtractorOptions& options) {
  return std::make_unique<TensorRTBackend>(info, options);
}
}  // namespace detail

}  // namespace cleandift_rt
