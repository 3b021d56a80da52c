// CPU matcher: the low-resolution exact cosine argmax of cleandift_rt/matching/lowres.py and the
// descriptor-set matchers of api.py, threaded with std::thread (see parallel.hpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <thread>

#include "cleandift_rt/errors.hpp"
#include "cleandift_rt/matcher.hpp"
#include "parallel.hpp"

namespace cleandift_rt {
namespace {

using detail::gemm_tn_rows;
using detail::parallel_for;

constexpr double kNormEps = 1e-12;  // F.normalize's denominator floor
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::string shape3(int64_t a, int64_t b, int64_t c) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + ")";
}

bool all_finite(const float* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) return false;
  }
  return true;
}

void check_map(const FeatureMap& map, const char* name) {
  if (map.channels < 1 || map.height < 1 || map.width < 1) {
    throw MatchError(std::string(name) + " has an empty channel or spatial dimension: " +
                     shape3(map.channels, map.height, map.width));
  }
  if (map.data == nullptr) throw MatchError(std::string(name) + " has no data");
  if (!all_finite(map.data, map.channels * map.height * map.width)) {
    throw MatchError(std::string(name) + " contains NaN or Inf values");
  }
}

void check_descriptors(const Descriptors& d, const char* name) {
  if (d.count < 0 || d.channels < 1) {
    throw MatchError(std::string(name) + " must have shape (N, C) with C >= 1");
  }
  if (d.count > 0 && d.data == nullptr) throw MatchError(std::string(name) + " has no data");
  if (!all_finite(d.data, d.count * d.channels)) {
    throw MatchError(std::string(name) + " contains NaN or Inf values");
  }
}

/// (N, C) rows divided by max(|row|, 1e-12), the norm accumulated in float64.
std::vector<float> normalized_rows(const Descriptors& d) {
  std::vector<float> out(static_cast<size_t>(d.count * d.channels));
  for (int64_t i = 0; i < d.count; ++i) {
    const float* row = d.data + i * d.channels;
    double sq = 0.0;
    for (int64_t c = 0; c < d.channels; ++c) sq += static_cast<double>(row[c]) * row[c];
    const float norm = static_cast<float>(std::max(std::sqrt(sq), kNormEps));
    for (int64_t c = 0; c < d.channels; ++c) out[i * d.channels + c] = row[c] / norm;
  }
  return out;
}

/// (N, C) → (C, N).
std::vector<float> transposed(const std::vector<float>& rows, int64_t n, int64_t c) {
  std::vector<float> out(static_cast<size_t>(n * c));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < c; ++j) out[j * n + i] = rows[i * c + j];
  }
  return out;
}

/// torch.lerp's float formula: start + w (end - start) for w < 0.5, else end - (end - start)(1 -
/// w).
inline float lerp(float start, float end, float weight) {
  return weight < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

/// lowres.py cell_gram: (5, h, w) float64 [norm², right, down, diagonal, anti-diagonal].
std::vector<double> cell_gram(const FeatureMap& t, int threads) {
  const int64_t c = t.channels, h = t.height, w = t.width, hw = h * w;
  std::vector<double> gram(static_cast<size_t>(5 * hw), 0.0);
  parallel_for(h, threads, [&](int64_t i) {
    double* n = gram.data() + i * w;
    double* right = n + hw;
    double* down = n + 2 * hw;
    double* diag = n + 3 * hw;
    double* anti = n + 4 * hw;
    const bool has_down = i + 1 < h;
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* f = t.data + ch * hw + i * w;
      const float* g = has_down ? f + w : nullptr;
      for (int64_t j = 0; j < w; ++j) {
        const double a = f[j];
        n[j] += a * a;
        if (j + 1 < w) right[j] += a * static_cast<double>(f[j + 1]);
        if (has_down) {
          down[j] += a * static_cast<double>(g[j]);
          if (j + 1 < w) {
            diag[j] += a * static_cast<double>(g[j + 1]);
            anti[j] += static_cast<double>(f[j + 1]) * static_cast<double>(g[j]);
          }
        }
      }
    }
  });
  return gram;
}

/// lowres.py inverse_norms: (H, W) float32 1 / max(|F̂(p)|, 1e-12) from the cell Gram.
std::vector<float> inverse_norms(const std::vector<double>& gram, int64_t h, int64_t w,
                                 const AxisTaps& rows, const AxisTaps& cols, int threads) {
  const int64_t hw = h * w;
  const int64_t big_h = static_cast<int64_t>(rows.lo.size());
  const int64_t big_w = static_cast<int64_t>(cols.lo.size());
  const double* n = gram.data();
  const double* right = n + hw;
  const double* down = n + 2 * hw;
  const double* diag = n + 3 * hw;
  const double* anti = n + 4 * hw;
  std::vector<float> out(static_cast<size_t>(big_h * big_w));
  parallel_for(big_h, threads, [&](int64_t y) {
    std::vector<double> norm_g(w), right_g(w);
    const int64_t r0 = rows.lo[y], r1 = rows.hi[y];
    const double a1 = static_cast<double>(rows.w_hi[y]);
    const double a0 = 1.0 - a1;
    const bool same_r = r0 == r1;
    for (int64_t c = 0; c < w; ++c) {
      const double n0 = n[r0 * w + c], n1 = n[r1 * w + c];
      const double cross_n = same_r ? n0 : down[r0 * w + c];
      const double cross_x = same_r ? 2.0 * right[r0 * w + c] : diag[r0 * w + c] + anti[r0 * w + c];
      norm_g[c] = a0 * a0 * n0 + a1 * a1 * n1 + 2.0 * a0 * a1 * cross_n;
      right_g[c] = a0 * a0 * right[r0 * w + c] + a1 * a1 * right[r1 * w + c] + a0 * a1 * cross_x;
    }
    for (int64_t x = 0; x < big_w; ++x) {
      const int64_t c0 = cols.lo[x], c1 = cols.hi[x];
      const double b1 = static_cast<double>(cols.w_hi[x]);
      const double b0 = 1.0 - b1;
      const double n0 = norm_g[c0], n1 = norm_g[c1];
      const double cross = c0 == c1 ? n0 : right_g[c0];
      const double sq = b0 * b0 * n0 + b1 * b1 * n1 + 2.0 * b0 * b1 * cross;
      const double norm = std::max(std::sqrt(std::max(sq, 0.0)), kNormEps);
      out[y * big_w + x] = static_cast<float>(1.0 / norm);
    }
  });
  return out;
}

/// The streamed running argmax of queries [s0, s0 + ks) (columns of qn_t, row stride k_all):
/// dots (h·w, ks) by one GEMM, then tasks of (query chunk, band of output rows), each with a
/// running max per query, merged band by band (earlier band = lower flat index keeps ties).
void stream_argmax(const float* qn_t, int64_t k_all, int64_t ks, const FeatureMap& target,
                   const AxisTaps& rows, const AxisTaps& cols, const std::vector<float>& inv,
                   int64_t big_h, int64_t big_w, std::vector<float>& dots, int64_t* out_xy,
                   float* out_scores, int threads) {
  const int64_t c = target.channels, w = target.width, hw = target.height * target.width;
  // Low-resolution dots (h·w, ks): rows of ks contiguous floats, gathered by the row lerps.
  std::vector<float> qs(static_cast<size_t>(c * ks));
  for (int64_t ch = 0; ch < c; ++ch) {
    std::copy_n(qn_t + ch * k_all, ks, qs.data() + ch * ks);
  }
  dots.resize(static_cast<size_t>(hw * ks));
  constexpr int64_t kDotRows = 64;
  parallel_for((hw + kDotRows - 1) / kDotRows, threads, [&](int64_t block) {
    const int64_t m0 = block * kDotRows, m1 = std::min(hw, m0 + kDotRows);
    gemm_tn_rows(target.data, hw, qs.data(), ks, c, m0, m1, ks, dots.data() + m0 * ks);
  });

  constexpr int64_t kQueryChunk = 64;
  const int64_t n_chunks = (ks + kQueryChunk - 1) / kQueryChunk;
  const int64_t want_bands = std::max<int64_t>(1, (4 * threads + n_chunks - 1) / n_chunks);
  const int64_t band_rows = std::max<int64_t>(1, (big_h + want_bands - 1) / want_bands);
  const int64_t n_bands = (big_h + band_rows - 1) / band_rows;
  std::vector<float> band_best(static_cast<size_t>(n_bands * ks), kNegInf);
  std::vector<int64_t> band_idx(static_cast<size_t>(n_bands * ks), 0);
  parallel_for(n_chunks * n_bands, threads, [&](int64_t task) {
    const int64_t chunk = task / n_bands, band = task % n_bands;
    const int64_t k0 = chunk * kQueryChunk, kc = std::min(ks, k0 + kQueryChunk) - k0;
    const int64_t y0 = band * band_rows, y1 = std::min(big_h, y0 + band_rows);
    float* best = band_best.data() + band * ks + k0;
    int64_t* best_idx = band_idx.data() + band * ks + k0;
    std::vector<float> drow(static_cast<size_t>(w * kc)), s(static_cast<size_t>(kc));
    for (int64_t y = y0; y < y1; ++y) {
      const float* d0 = dots.data() + rows.lo[y] * w * ks + k0;
      const float* d1 = dots.data() + rows.hi[y] * w * ks + k0;
      const float a1 = rows.w_hi[y];
      for (int64_t col = 0; col < w; ++col) {
        for (int64_t q = 0; q < kc; ++q) {
          drow[col * kc + q] = lerp(d0[col * ks + q], d1[col * ks + q], a1);
        }
      }
      const float* inv_row = inv.data() + y * big_w;
      for (int64_t x = 0; x < big_w; ++x) {
        const float* e0 = drow.data() + cols.lo[x] * kc;
        const float* e1 = drow.data() + cols.hi[x] * kc;
        const float b1 = cols.w_hi[x], scale = inv_row[x];
        const int64_t flat = y * big_w + x;
        for (int64_t q = 0; q < kc; ++q) s[q] = lerp(e0[q], e1[q], b1) * scale;
        for (int64_t q = 0; q < kc; ++q) {
          if (s[q] > best[q]) {  // strictly greater: the lowest flat index wins ties
            best[q] = s[q];
            best_idx[q] = flat;
          }
        }
      }
    }
  });
  for (int64_t q = 0; q < ks; ++q) {
    float best = kNegInf;
    int64_t idx = 0;
    for (int64_t band = 0; band < n_bands; ++band) {
      if (band_best[band * ks + q] > best) {
        best = band_best[band * ks + q];
        idx = band_idx[band * ks + q];
      }
    }
    out_xy[2 * q] = idx % big_w;
    out_xy[2 * q + 1] = idx / big_w;
    out_scores[q] = best;
  }
}

}  // namespace

Matcher::Matcher(MatcherOptions options) : threads_(options.num_threads) {
  if (threads_ < 0) throw MatchError("num_threads must be >= 0");
  if (threads_ == 0) threads_ = std::max(1u, std::thread::hardware_concurrency());
}

std::vector<float> Matcher::sample_descriptors(const FeatureMap& map, const double* points_xy,
                                               int64_t count, const PixelGrid& grid) const {
  check_map(map, "feature_map");
  if (count < 0) throw MatchError("point count must be >= 0");
  const int64_t c = map.channels, h = map.height, w = map.width, hw = h * w;
  for (int64_t k = 0; k < count; ++k) {
    if (!grid.contains(points_xy[2 * k], points_xy[2 * k + 1])) {
      throw MatchError("points must lie in [-0.5, " + std::to_string(grid.width() - 0.5) +
                       "] x [-0.5, " + std::to_string(grid.height() - 0.5) + "]");
    }
  }
  std::vector<float> out(static_cast<size_t>(count * c));
  parallel_for(count, count >= 64 ? threads_ : 1, [&](int64_t k) {
    const double u = points_xy[2 * k] * grid.scale_x() + grid.shift_x();
    const double v = points_xy[2 * k + 1] * grid.scale_y() + grid.shift_y();
    const PointTap tx = bilinear_tap(u, w), ty = bilinear_tap(v, h);
    const int64_t i00 = ty.lo * w + tx.lo, i01 = ty.lo * w + tx.hi;
    const int64_t i10 = ty.hi * w + tx.lo, i11 = ty.hi * w + tx.hi;
    float* row = out.data() + k * c;
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* f = map.data + ch * hw;
      const float top = f[i00] * tx.w_lo + f[i01] * tx.w_hi;
      const float bot = f[i10] * tx.w_lo + f[i11] * tx.w_hi;
      row[ch] = top * ty.w_lo + bot * ty.w_hi;
    }
  });
  return out;
}

PointMatches Matcher::cosine_argmax(const Descriptors& queries, const FeatureMap& target,
                                    const PixelGrid& grid) const {
  check_map(target, "target");
  check_descriptors(queries, "queries");
  if (queries.channels != target.channels) {
    throw MatchError("channel mismatch: queries have " + std::to_string(queries.channels) +
                     ", target has " + std::to_string(target.channels));
  }
  const int64_t k = queries.count, c = target.channels, h = target.height, w = target.width;
  const int64_t hw = h * w, big_h = grid.height(), big_w = grid.width();
  PointMatches result;
  result.xy.assign(static_cast<size_t>(2 * k), 0);
  result.scores.assign(static_cast<size_t>(k), 0.0f);
  if (k == 0) return result;

  const AxisTaps rows = grid.taps_y(h), cols = grid.taps_x(w);
  const std::vector<float> qn_t = transposed(normalized_rows(queries), k, c);  // (C, K)
  const std::vector<float> inv = inverse_norms(cell_gram(target, threads_), h, w, rows, cols,
                                               threads_);  // (H, W)

  // Queries in super-chunks whose low-resolution dots stay under kDotsFloats (32 MB).
  constexpr int64_t kQueryChunk = 64, kDotsFloats = 8 << 20;
  const int64_t super =
      std::max<int64_t>(kQueryChunk, kDotsFloats / hw / kQueryChunk * kQueryChunk);
  std::vector<float> dots;
  for (int64_t s0 = 0; s0 < k; s0 += super) {
    const int64_t ks = std::min(k, s0 + super) - s0;
    stream_argmax(qn_t.data() + s0, k, ks, target, rows, cols, inv, big_h, big_w, dots,
                  result.xy.data() + 2 * s0, result.scores.data() + s0, threads_);
  }
  return result;
}

PointMatches Matcher::match_points(const FeatureMap& source, const PixelGrid& source_grid,
                                   const double* points_xy, int64_t count, const FeatureMap& target,
                                   const PixelGrid& target_grid) const {
  if (source.channels != target.channels) {
    throw MatchError("channel mismatch: source has " + std::to_string(source.channels) +
                     ", target has " + std::to_string(target.channels));
  }
  const std::vector<float> queries = sample_descriptors(source, points_xy, count, source_grid);
  return cosine_argmax(Descriptors{queries.data(), count, source.channels}, target, target_grid);
}

namespace {

/// Row-wise and column-wise argmax of the (N, M) cosine matrix of a and b, in blocks of rows
/// (never the whole matrix): row_idx/row_val (N,), col_idx/col_val (M,) (lowest index on ties).
struct BothArgmax {
  std::vector<int64_t> row_idx, col_idx;
  std::vector<float> row_val, col_val;
};

BothArgmax both_argmax(const Descriptors& a, const Descriptors& b, int threads, bool columns) {
  const int64_t n = a.count, m = b.count, c = a.channels;
  const std::vector<float> an_t = transposed(normalized_rows(a), n, c);  // (C, N)
  const std::vector<float> bn_t = transposed(normalized_rows(b), m, c);  // (C, M)
  BothArgmax out;
  out.row_idx.assign(n, 0);
  out.row_val.assign(n, kNegInf);
  // Row blocks small enough that a block's scores stay under ~4 MB.
  const int64_t block =
      std::max<int64_t>(1, std::min<int64_t>(256, (1 << 20) / std::max<int64_t>(m, 1)));
  const int64_t n_blocks = (n + block - 1) / block;
  // Per-task column bests when needed, merged in row order afterwards.
  std::vector<float> task_col_val(columns ? static_cast<size_t>(n_blocks * m) : 0, kNegInf);
  std::vector<int64_t> task_col_idx(columns ? static_cast<size_t>(n_blocks * m) : 0, 0);
  parallel_for(n_blocks, threads, [&](int64_t blk) {
    const int64_t r0 = blk * block, r1 = std::min(n, r0 + block);
    std::vector<float> scores(static_cast<size_t>((r1 - r0) * m));
    gemm_tn_rows(an_t.data(), n, bn_t.data(), m, c, r0, r1, m, scores.data());
    for (int64_t i = r0; i < r1; ++i) {
      const float* s = scores.data() + (i - r0) * m;
      int64_t j_best = 0;
      for (int64_t j = 1; j < m; ++j) {
        if (s[j] > s[j_best]) j_best = j;
      }
      out.row_idx[i] = j_best;
      out.row_val[i] = s[j_best];
      if (columns) {
        float* cv = task_col_val.data() + blk * m;
        int64_t* ci = task_col_idx.data() + blk * m;
        for (int64_t j = 0; j < m; ++j) {
          if (s[j] > cv[j]) {
            cv[j] = s[j];
            ci[j] = i;
          }
        }
      }
    }
  });
  if (columns) {
    out.col_val.assign(m, kNegInf);
    out.col_idx.assign(m, 0);
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      for (int64_t j = 0; j < m; ++j) {
        if (task_col_val[blk * m + j] > out.col_val[j]) {
          out.col_val[j] = task_col_val[blk * m + j];
          out.col_idx[j] = task_col_idx[blk * m + j];
        }
      }
    }
  }
  return out;
}

void check_pair(const Descriptors& a, const Descriptors& b) {
  check_descriptors(a, "a");
  check_descriptors(b, "b");
  if (a.channels != b.channels) {
    throw MatchError("channel mismatch: a has " + std::to_string(a.channels) + ", b has " +
                     std::to_string(b.channels));
  }
}

}  // namespace

PairMatches Matcher::nearest(const Descriptors& a, const Descriptors& b) const {
  check_pair(a, b);
  PairMatches result;
  if (a.count == 0 || b.count == 0) return result;
  const BothArgmax best = both_argmax(a, b, threads_, false);
  for (int64_t i = 0; i < a.count; ++i) {
    result.pairs.push_back(i);
    result.pairs.push_back(best.row_idx[i]);
    result.scores.push_back(best.row_val[i]);
  }
  return result;
}

PairMatches Matcher::mutual_nearest(const Descriptors& a, const Descriptors& b) const {
  check_pair(a, b);
  PairMatches result;
  if (a.count == 0 || b.count == 0) return result;
  const BothArgmax best = both_argmax(a, b, threads_, true);
  for (int64_t i = 0; i < a.count; ++i) {
    const int64_t j = best.row_idx[i];
    if (best.col_idx[j] == i) {
      result.pairs.push_back(i);
      result.pairs.push_back(j);
      result.scores.push_back(best.row_val[i]);
    }
  }
  return result;
}

}  // namespace cleandift_rt
