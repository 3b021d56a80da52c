// Extractor tests on the tiny AOTInductor package exported by make_fixtures.py: C++ taps equal
// the PyTorch taps; wrong-size inputs, missing files and mismatched sidecars raise clear errors.
#include <algorithm>
#include <cmath>

#include "check.hpp"
#include "cleandift_rt/errors.hpp"
#include "cleandift_rt/extractor.hpp"

using namespace cleandift_rt;

namespace {

double max_rel_error(const TapTensor& got, int64_t item, const test::Array& want) {
  const int64_t per_item = want.numel() / want.shape[0];
  const float* w = want.as<float>() + item * per_item;
  const FeatureMap g = got.map(0);
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < per_item; ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(g.data[i] - w[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(w[i])));
  }
  return max_diff / max_ref;
}

void test_taps_match_pytorch(Extractor& ex, const test::Fixtures& fx) {
  const auto& images = fx.at("images");  // (3, 64, 64, 3) uint8
  const int64_t n = images.shape[0], h = images.shape[1], w = images.shape[2];
  std::vector<ImageView> views;
  for (int64_t i = 0; i < n; ++i) views.push_back({images.as<uint8_t>() + i * h * w * 3, h, w, 0});
  const std::vector<TapTensor> taps = ex.run(views);
  CHECK(taps.size() == ex.info().taps.size());
  for (size_t t = 0; t < taps.size(); ++t) {
    const auto& want = fx.at("tap_" + taps[t].name);
    CHECK(taps[t].shape == want.shape);
    CHECK(taps[t].device == Device::CPU);
    const int64_t per_item = want.numel() / n;
    double max_diff = 0, max_ref = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      max_diff =
          std::max(max_diff, static_cast<double>(std::fabs(taps[t].data[i] - want.as<float>()[i])));
      max_ref = std::max(max_ref, static_cast<double>(std::fabs(want.as<float>()[i])));
    }
    std::cout << "tap " << taps[t].name << ": max rel err " << max_diff / max_ref << " ("
              << per_item << " values per image)\n";
    CHECK(max_diff / max_ref < 1e-4);
  }

  // One image in a padded buffer (row stride > width * 3, as a cv::Mat ROI): same taps.
  const int64_t stride = w * 3 + 40;
  std::vector<uint8_t> padded(static_cast<size_t>(h * stride), 7);
  for (int64_t y = 0; y < h; ++y) {
    std::copy_n(images.as<uint8_t>() + (2 * h + y) * w * 3, w * 3, padded.data() + y * stride);
  }
  const std::vector<TapTensor> one = ex.run({ImageView{padded.data(), h, w, stride}});
  for (const TapTensor& tap : one) {
    CHECK(tap.shape[0] == 1);
    CHECK(max_rel_error(tap, 2, fx.at("tap_" + tap.name)) < 1e-4);
  }
}

void test_bad_inputs(Extractor& ex, const test::Fixtures& fx) {
  const auto& images = fx.at("images");
  const uint8_t* img = images.as<uint8_t>();
  EXPECT_THROW(InputSizeError, ex.run({ImageView{img, 32, 32, 0}}),
               "input is 32x32 but this model takes 64x64");
  std::vector<ImageView> five(5, ImageView{img, 64, 64, 0});
  EXPECT_THROW(InputSizeError, ex.run(five),
               "batch of 5 but this artifact takes 1..4; rebuild: cleandift-rt export");
  EXPECT_THROW(InputSizeError, ex.run({}), "batch of 0");
  EXPECT_THROW(InputSizeError, ex.run({ImageView{img, 64, 64, 100}}), "row stride 100");
  EXPECT_THROW(InputSizeError, ex.run({ImageView{nullptr, 64, 64, 0}}), "no data");
}

void test_bad_artifacts(const test::Fixtures& fx) {
  const std::string package = fx.values.at("package");
  EXPECT_THROW(ArtifactError, Extractor(fx.dir + "/missing.pt2"), "does not exist");
  EXPECT_THROW(ArtifactError, Extractor(fx.dir + "/images.bin"),
               "has no metadata sidecar 'images.bin.json'");
  EXPECT_THROW(ArtifactError, Extractor(fx.values.at("broken_mismatch_taps")),
               "does not match the package: cleandift_rt.channels");
  EXPECT_THROW(ArtifactError, Extractor(fx.values.at("broken_old_torch")),
               "was compiled with torch 1.0.0");
  EXPECT_THROW(ArtifactError, Extractor(fx.values.at("broken_future_format")),
               "format_version 2 != 1");
  EXPECT_THROW(ArtifactError, Extractor(fx.values.at("broken_wrong_name")),
               "describes 'other.pt2'");
  EXPECT_THROW(ArtifactError, Extractor(package, ExtractorOptions{Device::CUDA, 0}),
               "was compiled for cpu, not cuda; rebuild: ");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: test_extractor FIXTURE_DIR\n";
    return 2;
  }
  try {
    const test::Fixtures fx(argv[1]);
    if (!fx.has_value("package")) {
      std::cerr << "fixtures have no AOTInductor package\n";
      return 1;
    }
    Extractor ex(fx.values.at("package"));
    CHECK(ex.info().format == "aoti" && ex.info().height == 64 && ex.info().batch_max == 4);
    CHECK(ex.info().taps.size() == 2 && ex.info().taps[0].name == "us6");
    test_taps_match_pytorch(ex, fx);
    test_bad_inputs(ex, fx);
    test_bad_artifacts(fx);
  } catch (const std::exception& e) {
    std::cerr << "unexpected exception: " << e.what() << "\n";
    return 1;
  }
  return test::finish("test_extractor");
}
