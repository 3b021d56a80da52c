// Internal: a minimal parallel_for over task indices with std::thread (exceptions of a task are
// rethrown in the caller) and a blocked float32 GEMM kernel shared by the CPU matcher.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace cleandift_rt::detail {

/// Run fn(task) for task in [0, n_tasks) on up to `threads` threads (the caller is one of them).
template <typename Fn>
void parallel_for(int64_t n_tasks, int threads, Fn&& fn) {
  if (n_tasks <= 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n_tasks));
  if (workers == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&]() {
    for (int64_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) {
      try {
        fn(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n_tasks);  // stop handing out tasks
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int i = 1; i < workers; ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

/// out[m - m0][n] = sum_k at[k * lda + m] * bt[k * ldb + n] for m in [m0, m1), n in [0, n_cols):
/// a GEMM with both operands given transposed (k-major), accumulated in float32 in k order.
/// out has row stride n_cols. Serial; callers parallelise over row blocks.
inline void gemm_tn_rows(const float* at, int64_t lda, const float* bt, int64_t ldb, int64_t kdim,
                         int64_t m0, int64_t m1, int64_t n_cols, float* out) {
  constexpr int64_t kBlockM = 16, kBlockN = 512;
  std::fill(out, out + (m1 - m0) * n_cols, 0.0f);
  for (int64_t mb = m0; mb < m1; mb += kBlockM) {
    const int64_t me = std::min(m1, mb + kBlockM);
    for (int64_t nb = 0; nb < n_cols; nb += kBlockN) {
      const int64_t ne = std::min(n_cols, nb + kBlockN);
      for (int64_t k = 0; k < kdim; ++k) {
        const float* brow = bt + k * ldb;
        for (int64_t m = mb; m < me; ++m) {
          const float a = at[k * lda + m];
          float* orow = out + (m - m0) * n_cols;
          for (int64_t n = nb; n < ne; ++n) orow[n] += a * brow[n];
        }
      }
    }
  }
}

}  // namespace cleandift_rt::detail
