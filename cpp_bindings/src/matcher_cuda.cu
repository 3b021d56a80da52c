// CUDA cosine argmax (see include/cleandift_rt/cuda_matcher.hpp). Kernels, in order:
//   normalize_queries  (K, C) → unit rows (sequential float64 norm per row, as the CPU matcher)
//   cell_gram          (C, h, w) → (5, h, w) float64 neighbour dots, one thread per cell
//   inverse_norms      (H, W) float32 1 / |F̂(p)| from the Gram, one thread per output pixel
//   low_res_dots       (K, h·w) = Q̂ · F, shared-memory tiles, float32 accumulated in C order
//   argmax_tiles       per (query, tile of output pixels): best score / lowest flat index
//   argmax_merge       per query over tiles (ties: lowest flat index)
// This file is compiled with --fmad=false, and the float32 lerps use torch.lerp's formula, so the
// results are bitwise those of the CPU matcher (same operation order, IEEE rounding).
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "cleandift_rt/cuda_matcher.hpp"
#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {
namespace {

constexpr double kNormEps = 1e-12;
constexpr int kTile = 16;             // GEMM tile edge
constexpr int kArgmaxThreads = 256;   // threads per argmax block
constexpr int kPixelsPerThread = 16;  // output pixels per thread in argmax_tiles

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

/// Device allocation released on scope exit.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t count) {
    if (count > 0) check(cudaMalloc(&ptr, count * sizeof(T)), "cudaMalloc");
  }
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

bool on_device(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // clear: a plain host pointer
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

/// A device copy of host data, or the device pointer itself.
template <typename T>
const T* to_device(const T* data, size_t count, DeviceBuffer<T>& storage, cudaStream_t stream) {
  if (on_device(data)) return data;
  check(cudaMemcpyAsync(storage.ptr, data, count * sizeof(T), cudaMemcpyHostToDevice, stream),
        "upload");
  return storage.ptr;
}

__device__ __forceinline__ float lerp_rn(float a, float b, float w) {
  const float d = __fsub_rn(b, a);
  return w < 0.5f ? __fadd_rn(a, __fmul_rn(w, d)) : __fsub_rn(b, __fmul_rn(d, __fsub_rn(1.0f, w)));
}

__global__ void normalize_queries(const float* q, float* qn, int64_t k, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= k) return;
  const float* row = q + i * c;
  double sq = 0.0;
  for (int64_t j = 0; j < c; ++j) sq += static_cast<double>(row[j]) * row[j];
  const float norm = static_cast<float>(fmax(sqrt(sq), kNormEps));
  for (int64_t j = 0; j < c; ++j) qn[i * c + j] = __fdiv_rn(row[j], norm);
}

__global__ void cell_gram(const float* f, double* gram, int64_t c, int64_t h, int64_t w) {
  const int64_t cell = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t hw = h * w;
  if (cell >= hw) return;
  const int64_t i = cell / w, j = cell % w;
  const bool has_right = j + 1 < w, has_down = i + 1 < h;
  double n = 0, right = 0, down = 0, diag = 0, anti = 0;
  for (int64_t ch = 0; ch < c; ++ch) {
    const float* p = f + ch * hw + cell;
    const double a = p[0];
    n += a * a;
    if (has_right) right += a * static_cast<double>(p[1]);
    if (has_down) {
      down += a * static_cast<double>(p[w]);
      if (has_right) {
        diag += a * static_cast<double>(p[w + 1]);
        anti += static_cast<double>(p[1]) * static_cast<double>(p[w]);
      }
    }
  }
  gram[cell] = n;
  gram[hw + cell] = right;
  gram[2 * hw + cell] = down;
  gram[3 * hw + cell] = diag;
  gram[4 * hw + cell] = anti;
}

struct Taps {
  const int32_t* lo;
  const int32_t* hi;
  const float* w_hi;
};

__global__ void inverse_norms(const double* gram, int64_t h, int64_t w, Taps rows, Taps cols,
                              int64_t big_h, int64_t big_w, float* inv) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= big_h * big_w) return;
  const int64_t y = p / big_w, x = p % big_w, hw = h * w;
  const double* n = gram;
  const double* right = gram + hw;
  const double* down = gram + 2 * hw;
  const double* diag = gram + 3 * hw;
  const double* anti = gram + 4 * hw;
  const int64_t r0 = rows.lo[y], r1 = rows.hi[y];
  const double a1 = static_cast<double>(rows.w_hi[y]);
  const double a0 = 1.0 - a1;
  const bool same_r = r0 == r1;
  // Row-interpolated cell norms and right dots (same expressions as the CPU matcher).
  auto norm_g = [&](int64_t c) {
    const double cross_n = same_r ? n[r0 * w + c] : down[r0 * w + c];
    return a0 * a0 * n[r0 * w + c] + a1 * a1 * n[r1 * w + c] + 2.0 * a0 * a1 * cross_n;
  };
  auto right_g = [&](int64_t c) {
    const double cross_x = same_r ? 2.0 * right[r0 * w + c] : diag[r0 * w + c] + anti[r0 * w + c];
    return a0 * a0 * right[r0 * w + c] + a1 * a1 * right[r1 * w + c] + a0 * a1 * cross_x;
  };
  const int64_t c0 = cols.lo[x], c1 = cols.hi[x];
  const double b1 = static_cast<double>(cols.w_hi[x]);
  const double b0 = 1.0 - b1;
  const double n0 = norm_g(c0), n1 = norm_g(c1);
  const double cross = c0 == c1 ? n0 : right_g(c0);
  const double sq = b0 * b0 * n0 + b1 * b1 * n1 + 2.0 * b0 * b1 * cross;
  const double norm = fmax(sqrt(fmax(sq, 0.0)), kNormEps);
  inv[p] = static_cast<float>(1.0 / norm);
}

/// dots[k][p] = sum_c qn[k][c] * f[c][p], accumulated in channel order.
__global__ void low_res_dots(const float* f, const float* qn, float* dots, int64_t hw, int64_t k,
                             int64_t c) {
  __shared__ float qs[kTile][kTile + 1];
  __shared__ float fs[kTile][kTile + 1];
  const int64_t p = blockIdx.x * static_cast<int64_t>(kTile) + threadIdx.x;
  const int64_t q = blockIdx.y * static_cast<int64_t>(kTile) + threadIdx.y;
  float acc = 0.0f;
  for (int64_t c0 = 0; c0 < c; c0 += kTile) {
    const int64_t qrow = blockIdx.y * static_cast<int64_t>(kTile) + threadIdx.y;
    const int64_t qcol = c0 + threadIdx.x;
    qs[threadIdx.y][threadIdx.x] = (qrow < k && qcol < c) ? qn[qrow * c + qcol] : 0.0f;
    const int64_t frow = c0 + threadIdx.y;
    fs[threadIdx.y][threadIdx.x] = (frow < c && p < hw) ? f[frow * hw + p] : 0.0f;
    __syncthreads();
    const int64_t span = c - c0 < kTile ? c - c0 : kTile;
    for (int64_t j = 0; j < span; ++j) {
      acc = __fadd_rn(acc, __fmul_rn(fs[j][threadIdx.x], qs[threadIdx.y][j]));
    }
    __syncthreads();
  }
  if (p < hw && q < k) dots[q * hw + p] = acc;
}

/// Block (tile, query): the best score and lowest flat index over the tile's output pixels.
__global__ void argmax_tiles(const float* dots, const float* inv, Taps rows, Taps cols, int64_t w,
                             int64_t hw, int64_t big_h, int64_t big_w, float* tile_val,
                             long long* tile_idx) {
  __shared__ float s_val[kArgmaxThreads];
  __shared__ long long s_idx[kArgmaxThreads];
  const int64_t query = blockIdx.y, tile = blockIdx.x, n_tiles = gridDim.x;
  const int64_t n_pix = big_h * big_w;
  const float* d = dots + query * hw;
  float best = -INFINITY;
  long long best_idx = 0x7fffffffffffffffLL;
  const int64_t base = tile * static_cast<int64_t>(kArgmaxThreads) * kPixelsPerThread;
  for (int i = 0; i < kPixelsPerThread; ++i) {
    const int64_t p = base + i * kArgmaxThreads + threadIdx.x;  // increasing per thread
    if (p >= n_pix) break;
    const int64_t y = p / big_w, x = p % big_w;
    const int64_t r0 = rows.lo[y] * w, r1 = rows.hi[y] * w;
    const float a1 = rows.w_hi[y];
    const int64_t c0 = cols.lo[x], c1 = cols.hi[x];
    const float e0 = lerp_rn(d[r0 + c0], d[r1 + c0], a1);
    const float e1 = lerp_rn(d[r0 + c1], d[r1 + c1], a1);
    const float s = __fmul_rn(lerp_rn(e0, e1, cols.w_hi[x]), inv[p]);
    if (s > best) {  // pixels come in increasing order: strict keeps the lowest index
      best = s;
      best_idx = p;
    }
  }
  s_val[threadIdx.x] = best;
  s_idx[threadIdx.x] = best_idx;
  __syncthreads();
  for (int step = kArgmaxThreads / 2; step > 0; step /= 2) {
    if (threadIdx.x < step) {
      const float v = s_val[threadIdx.x + step];
      const long long j = s_idx[threadIdx.x + step];
      if (v > s_val[threadIdx.x] || (v == s_val[threadIdx.x] && j < s_idx[threadIdx.x])) {
        s_val[threadIdx.x] = v;
        s_idx[threadIdx.x] = j;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    tile_val[query * n_tiles + tile] = s_val[0];
    tile_idx[query * n_tiles + tile] = s_idx[0];
  }
}

__global__ void argmax_merge(const float* tile_val, const long long* tile_idx, int64_t n_tiles,
                             int64_t k, float* best_val, long long* best_idx) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= k) return;
  float v = -INFINITY;
  long long idx = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {  // tiles in pixel order: strict keeps the lowest
    if (tile_val[q * n_tiles + t] > v) {
      v = tile_val[q * n_tiles + t];
      idx = tile_idx[q * n_tiles + t];
    }
  }
  best_val[q] = v;
  best_idx[q] = idx;
}

int64_t blocks_for(int64_t n, int64_t threads) { return (n + threads - 1) / threads; }

void check_host_finite(const float* data, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i]))
      throw MatchError(std::string(name) + " contains NaN or Inf values");
  }
}

}  // namespace

bool cuda_matcher_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

CudaMatcher::CudaMatcher(int device) : device_(device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    throw Error("CUDA device " + std::to_string(device) + " is not available (" +
                std::to_string(count) + " visible)");
  }
}

PointMatches CudaMatcher::cosine_argmax(const Descriptors& queries, const FeatureMap& target,
                                        const PixelGrid& grid) const {
  const int64_t k = queries.count, c = target.channels, h = target.height, w = target.width;
  if (c < 1 || h < 1 || w < 1 || target.data == nullptr) {
    throw MatchError("target has an empty channel or spatial dimension");
  }
  if (queries.channels != c) {
    throw MatchError("channel mismatch: queries have " + std::to_string(queries.channels) +
                     ", target has " + std::to_string(c));
  }
  PointMatches result;
  result.xy.assign(static_cast<size_t>(2 * k), 0);
  result.scores.assign(static_cast<size_t>(k), 0.0f);
  if (k == 0) return result;
  const int64_t hw = h * w, big_h = grid.height(), big_w = grid.width(), n_pix = big_h * big_w;
  if (!on_device(target.data)) check_host_finite(target.data, c * hw, "target");
  if (!on_device(queries.data)) check_host_finite(queries.data, k * c, "queries");

  check(cudaSetDevice(device_), "cudaSetDevice");
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } stream_guard{stream};

  const AxisTaps rows = grid.taps_y(h), cols = grid.taps_x(w);
  DeviceBuffer<float> target_copy(on_device(target.data) ? 0 : c * hw);
  DeviceBuffer<float> query_copy(on_device(queries.data) ? 0 : k * c);
  const float* d_target = to_device(target.data, c * hw, target_copy, stream);
  const float* d_queries = to_device(queries.data, k * c, query_copy, stream);
  DeviceBuffer<int32_t> taps_i(2 * (big_h + big_w));
  DeviceBuffer<float> taps_w(big_h + big_w);
  std::vector<int32_t> host_i;
  std::vector<float> host_w;
  for (const AxisTaps* t : {&rows, &cols}) {
    host_i.insert(host_i.end(), t->lo.begin(), t->lo.end());
    host_i.insert(host_i.end(), t->hi.begin(), t->hi.end());
    host_w.insert(host_w.end(), t->w_hi.begin(), t->w_hi.end());
  }
  check(cudaMemcpyAsync(taps_i.ptr, host_i.data(), host_i.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice, stream),
        "upload taps");
  check(cudaMemcpyAsync(taps_w.ptr, host_w.data(), host_w.size() * sizeof(float),
                        cudaMemcpyHostToDevice, stream),
        "upload taps");
  const Taps d_rows{taps_i.ptr, taps_i.ptr + big_h, taps_w.ptr};
  const Taps d_cols{taps_i.ptr + 2 * big_h, taps_i.ptr + 2 * big_h + big_w, taps_w.ptr + big_h};

  DeviceBuffer<float> qn(k * c), inv(n_pix), dots(k * hw);
  DeviceBuffer<double> gram(5 * hw);
  normalize_queries<<<blocks_for(k, 128), 128, 0, stream>>>(d_queries, qn.ptr, k, c);
  cell_gram<<<blocks_for(hw, 128), 128, 0, stream>>>(d_target, gram.ptr, c, h, w);
  inverse_norms<<<blocks_for(n_pix, 256), 256, 0, stream>>>(gram.ptr, h, w, d_rows, d_cols, big_h,
                                                            big_w, inv.ptr);
  const dim3 gemm_grid(static_cast<unsigned>(blocks_for(hw, kTile)),
                       static_cast<unsigned>(blocks_for(k, kTile)));
  low_res_dots<<<gemm_grid, dim3(kTile, kTile), 0, stream>>>(d_target, qn.ptr, dots.ptr, hw, k, c);
  const int64_t n_tiles = blocks_for(n_pix, kArgmaxThreads * kPixelsPerThread);
  if (k > 65535) throw MatchError("the CUDA matcher takes at most 65535 queries per call");
  DeviceBuffer<float> tile_val(k * n_tiles), best_val(k);
  DeviceBuffer<long long> tile_idx(k * n_tiles), best_idx(k);
  argmax_tiles<<<dim3(static_cast<unsigned>(n_tiles), static_cast<unsigned>(k)), kArgmaxThreads, 0,
                 stream>>>(dots.ptr, inv.ptr, d_rows, d_cols, w, hw, big_h, big_w, tile_val.ptr,
                           tile_idx.ptr);
  argmax_merge<<<blocks_for(k, 128), 128, 0, stream>>>(tile_val.ptr, tile_idx.ptr, n_tiles, k,
                                                       best_val.ptr, best_idx.ptr);
  check(cudaGetLastError(), "kernel launch");
  std::vector<long long> idx(static_cast<size_t>(k));
  check(cudaMemcpyAsync(idx.data(), best_idx.ptr, k * sizeof(long long), cudaMemcpyDeviceToHost,
                        stream),
        "download");
  check(cudaMemcpyAsync(result.scores.data(), best_val.ptr, k * sizeof(float),
                        cudaMemcpyDeviceToHost, stream),
        "download");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  for (int64_t q = 0; q < k; ++q) {
    result.xy[2 * q] = idx[q] % big_w;
    result.xy[2 * q + 1] = idx[q] / big_w;
  }
  return result;
}

}  // namespace cleandift_rt
