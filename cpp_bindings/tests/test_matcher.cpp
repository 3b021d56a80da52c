// CPU matcher tests. Without arguments: self-contained checks (against a brute-force upsampling,
// ties, threads, errors). With the fixture directory: equality with the Python matcher's results
// (cleandift_rt.matching, written by make_fixtures.py). With a CUDA device: CUDA == CPU.
#include <cmath>
#include <limits>
#include <random>

#include "check.hpp"
#include "cleandift_rt/cuda_matcher.hpp"
#include "cleandift_rt/errors.hpp"
#include "cleandift_rt/matcher.hpp"

using namespace cleandift_rt;

namespace {

std::vector<float> random_values(int64_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

/// Cosine of query q with the upsampled target at output pixel (x, y), in float64.
double cosine_at(const Matcher& m, const FeatureMap& t, const PixelGrid& g, const float* q,
                 int64_t x, int64_t y) {
  const double p[2] = {static_cast<double>(x), static_cast<double>(y)};
  const std::vector<float> f = m.sample_descriptors(t, p, 1, g);
  double dot = 0, nq = 0, nf = 0;
  for (int64_t c = 0; c < t.channels; ++c) {
    dot += static_cast<double>(q[c]) * f[c];
    nq += static_cast<double>(q[c]) * q[c];
    nf += static_cast<double>(f[c]) * f[c];
  }
  return dot / (std::max(std::sqrt(nq), 1e-12) * std::max(std::sqrt(nf), 1e-12));
}

/// Brute force: best (flat index, score) over every output pixel, float64.
std::pair<int64_t, double> brute_argmax(const Matcher& m, const FeatureMap& t, const PixelGrid& g,
                                        const float* q) {
  int64_t best = 0;
  double best_score = -2.0;
  for (int64_t y = 0; y < g.height(); ++y) {
    for (int64_t x = 0; x < g.width(); ++x) {
      const double s = cosine_at(m, t, g, q, x, y);
      if (s > best_score) {
        best_score = s;
        best = y * g.width() + x;
      }
    }
  }
  return {best, best_score};
}

/// got == want, or a near-tie: the score at got is within tol of the best score.
void check_argmax(const Matcher& m, const FeatureMap& t, const PixelGrid& g, const float* queries,
                  int64_t k, const PointMatches& got, const int64_t* want_xy,
                  const float* want_scores, double tol) {
  for (int64_t i = 0; i < k; ++i) {
    CHECK(std::fabs(got.scores[i] - want_scores[i]) < tol);
    if (got.xy[2 * i] != want_xy[2 * i] || got.xy[2 * i + 1] != want_xy[2 * i + 1]) {
      const double at =
          cosine_at(m, t, g, queries + i * t.channels, got.xy[2 * i], got.xy[2 * i + 1]);
      CHECK(std::fabs(at - want_scores[i]) < tol);
    }
  }
}

void test_grid() {
  const PixelGrid g = PixelGrid::interpolate(4, 8, 16, 32);
  CHECK(g.scale_x() == 0.25 && g.scale_y() == 0.25 && g.shift_x() == -0.375);
  const AxisTaps x = g.taps_x(8);
  CHECK(x.lo[0] == 0 && x.hi[0] == 1 && x.w_hi[0] == 0.0f);  // clamped left edge
  CHECK(x.lo[31] == 7 && x.hi[31] == 7);                     // clamped right edge
  CHECK(x.lo[2] == 0 && std::fabs(x.w_hi[2] - 0.125f) < 1e-7f);
  CHECK(g.contains(-0.5, 15.5) && !g.contains(-0.51, 0) && !g.contains(std::nan(""), 0));
  EXPECT_THROW(MatchError, PixelGrid(0, 3, 1, 1, 0, 0), "positive");
}

void test_brute_force(const Matcher& m) {
  const int64_t c = 8, h = 5, w = 6, k = 9;
  const auto target = random_values(c * h * w, 1), queries = random_values(k * c, 2);
  const FeatureMap t{target.data(), c, h, w};
  for (const PixelGrid& g :
       {PixelGrid::interpolate(h, w, 17, 19), PixelGrid::identity(h, w),
        PixelGrid::from_input_transform(23, 29, 0.7, 0.7, 2.0, 3.0, 4.0, 4.0)}) {
    const PointMatches r = m.cosine_argmax(Descriptors{queries.data(), k, c}, t, g);
    for (int64_t i = 0; i < k; ++i) {
      const auto [flat, score] = brute_argmax(m, t, g, queries.data() + i * c);
      CHECK(std::fabs(r.scores[i] - score) < 1e-5);
      const int64_t got = r.xy[2 * i + 1] * g.width() + r.xy[2 * i];
      CHECK(got == flat ||
            std::fabs(cosine_at(m, t, g, queries.data() + i * c, r.xy[2 * i], r.xy[2 * i + 1]) -
                      score) < 1e-5);
    }
  }
}

void test_ties_and_zeros(const Matcher& m) {
  const int64_t c = 4, h = 3, w = 3;
  std::vector<float> constant(c * h * w, 0.5f), zeros(c * h * w, 0.0f), q = {1, 2, 3, 4};
  const PixelGrid g = PixelGrid::interpolate(h, w, 10, 12);
  const PointMatches tie =
      m.cosine_argmax(Descriptors{q.data(), 1, c}, {constant.data(), c, h, w}, g);
  CHECK(tie.xy[0] == 0 && tie.xy[1] == 0);  // every pixel ties: the first wins
  const PointMatches zero =
      m.cosine_argmax(Descriptors{q.data(), 1, c}, {zeros.data(), c, h, w}, g);
  CHECK(zero.xy[0] == 0 && zero.xy[1] == 0 && zero.scores[0] == 0.0f);
  const PointMatches none =
      m.cosine_argmax(Descriptors{q.data(), 0, c}, {zeros.data(), c, h, w}, g);
  CHECK(none.xy.empty() && none.scores.empty());
}

void test_threads_agree() {
  const int64_t c = 16, h = 7, w = 5, k = 70;  // > one query chunk
  const auto target = random_values(c * h * w, 3), queries = random_values(k * c, 4);
  const PixelGrid g = PixelGrid::interpolate(h, w, 50, 41);
  const PointMatches one =
      Matcher(MatcherOptions{1}).cosine_argmax({queries.data(), k, c}, {target.data(), c, h, w}, g);
  const PointMatches many =
      Matcher(MatcherOptions{5}).cosine_argmax({queries.data(), k, c}, {target.data(), c, h, w}, g);
  CHECK(one.xy == many.xy && one.scores == many.scores);
}

void test_errors(const Matcher& m) {
  std::vector<float> t(2 * 3 * 3, 1.0f), q(2, 1.0f), q3(3, 1.0f);
  const PixelGrid g = PixelGrid::identity(3, 3);
  t[4] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(MatchError, m.cosine_argmax({q.data(), 1, 2}, {t.data(), 2, 3, 3}, g), "NaN or Inf");
  t[4] = 0.0f;
  EXPECT_THROW(MatchError, m.cosine_argmax({q3.data(), 1, 3}, {t.data(), 2, 3, 3}, g),
               "channel mismatch");
  const double outside[2] = {3.0, 0.0};
  EXPECT_THROW(MatchError, m.sample_descriptors({t.data(), 2, 3, 3}, outside, 1, g),
               "points must lie in");
  EXPECT_THROW(MatchError, m.cosine_argmax({q.data(), 1, 2}, {t.data(), 2, 0, 3}, g), "empty");
}

void test_mutual(const Matcher& m) {
  // a0 ~ b1, a1 ~ b0, a2's nearest is b1 too (not mutual).
  std::vector<float> a = {1, 0, 0, 1, 0.9f, 0.1f}, b = {0, 1, 1, 0.01f};
  const PairMatches r = m.mutual_nearest({a.data(), 3, 2}, {b.data(), 2, 2});
  CHECK((r.pairs == std::vector<int64_t>{0, 1, 1, 0}));
  const PairMatches n = m.nearest({a.data(), 3, 2}, {b.data(), 2, 2});
  CHECK((n.pairs == std::vector<int64_t>{0, 1, 1, 0, 2, 1}));
}

void test_python_parity(const Matcher& m, const test::Fixtures& fx) {
  const auto& tgt = fx.at("target");
  const auto& qs = fx.at("queries");
  const FeatureMap t{tgt.as<float>(), tgt.shape[0], tgt.shape[1], tgt.shape[2]};
  const Descriptors q{qs.as<float>(), qs.shape[0], qs.shape[1]};
  const PixelGrid interp = PixelGrid::interpolate(t.height, t.width, 53, 61);
  const PixelGrid transform =
      PixelGrid::from_input_transform(170, 150, 0.4, 0.4, 3.0, 5.0, 8.0, 8.0);
  const PointMatches a = m.cosine_argmax(q, t, interp);
  check_argmax(m, t, interp, q.data, q.count, a, fx.at("argmax_interp_xy").as<int64_t>(),
               fx.at("argmax_interp_scores").as<float>(), 1e-5);
  const PointMatches b = m.cosine_argmax(q, t, transform);
  check_argmax(m, t, transform, q.data, q.count, b, fx.at("argmax_transform_xy").as<int64_t>(),
               fx.at("argmax_transform_scores").as<float>(), 1e-5);

  const auto& src = fx.at("source");
  const auto& pts = fx.at("points");
  const auto& want = fx.at("sampled");
  const std::vector<float> got = m.sample_descriptors(
      {src.as<float>(), src.shape[0], src.shape[1], src.shape[2]}, pts.as<double>(), pts.shape[0],
      PixelGrid::interpolate(src.shape[1], src.shape[2], 40, 33));
  CHECK(static_cast<int64_t>(got.size()) == want.numel());
  for (int64_t i = 0; i < want.numel(); ++i) CHECK(std::fabs(got[i] - want.as<float>()[i]) < 1e-6);

  const auto& sa = fx.at("set_a");
  const auto& sb = fx.at("set_b");
  const PairMatches mn = m.mutual_nearest({sa.as<float>(), sa.shape[0], sa.shape[1]},
                                          {sb.as<float>(), sb.shape[0], sb.shape[1]});
  const auto& pairs = fx.at("mutual_pairs");
  CHECK(static_cast<int64_t>(mn.pairs.size()) == pairs.numel());
  for (int64_t i = 0; i < pairs.numel() && i < static_cast<int64_t>(mn.pairs.size()); ++i) {
    CHECK(mn.pairs[i] == pairs.as<int64_t>()[i]);
  }
  for (int64_t i = 0;
       i < static_cast<int64_t>(mn.scores.size()) && i < fx.at("mutual_scores").shape[0]; ++i) {
    CHECK(std::fabs(mn.scores[i] - fx.at("mutual_scores").as<float>()[i]) < 1e-5);
  }
}

void test_cuda_equals_cpu(const Matcher& m) {
  if (!cuda_matcher_available()) {
    std::cout << "no CUDA device (or built without CUDA): CUDA matcher not run\n";
    return;
  }
  const int64_t c = 64, h = 12, w = 9, k = 300;
  const auto target = random_values(c * h * w, 5), queries = random_values(k * c, 6);
  const PixelGrid g = PixelGrid::interpolate(h, w, 190, 141);
  const PointMatches cpu = m.cosine_argmax({queries.data(), k, c}, {target.data(), c, h, w}, g);
  const PointMatches gpu =
      CudaMatcher(0).cosine_argmax({queries.data(), k, c}, {target.data(), c, h, w}, g);
  CHECK(cpu.xy == gpu.xy);
  CHECK(cpu.scores == gpu.scores);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Matcher m(MatcherOptions{3});
    if (argc > 1) {
      test_python_parity(m, test::Fixtures(argv[1]));
    } else {
      test_grid();
      test_brute_force(m);
      test_ties_and_zeros(m);
      test_threads_agree();
      test_errors(m);
      test_mutual(m);
      test_cuda_equals_cpu(m);
    }
  } catch (const std::exception& e) {
    std::cerr << "unexpected exception: " << e.what() << "\n";
    return 1;
  }
  return test::finish("test_matcher");
}
