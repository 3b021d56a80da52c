// match_images: two images → a correspondence file (CSV), with an exported artifact.
//
//   match_images ARTIFACT SOURCE TARGET OUT.csv [--tap us6] [--step 32] [--threads N]
//
// Source points are a regular grid (every --step px) of SOURCE; each is matched to its best
// TARGET pixel (exact cosine argmax over the bilinearly upsampled target features, in original
// TARGET pixels). OUT.csv: "src_x,src_y,tgt_x,tgt_y,score" per point, written atomically.
// Exit status 0 on success, 2 with one line "error: ..." on bad input.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cleandift_rt/extractor.hpp"
#include "cleandift_rt/matcher.hpp"
#include "example_io.hpp"

using namespace cleandift_rt;

namespace {

struct Args {
  std::string artifact, source, target, out, tap = "us6";
  int64_t step = 32;
  int threads = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--tap")
      a.tap = value();
    else if (arg == "--step")
      a.step = std::stoll(value());
    else if (arg == "--threads")
      a.threads = std::stoi(value());
    else if (arg.rfind("--", 0) == 0)
      throw Error("unknown option " + arg);
    else
      positional.push_back(arg);
  }
  if (positional.size() != 4) {
    throw Error(
        "usage: match_images ARTIFACT SOURCE TARGET OUT.csv [--tap us6] [--step 32] "
        "[--threads N]");
  }
  if (a.step < 1) throw Error("--step must be >= 1");
  a.artifact = positional[0];
  a.source = positional[1];
  a.target = positional[2];
  a.out = positional[3];
  return a;
}

int run(const Args& args) {
  Extractor extractor(args.artifact);
  const ArtifactInfo& info = extractor.info();
  const size_t tap = example::tap_index(info, args.tap);
  const int64_t stride = info.taps[tap].stride;
  const example::RgbImage src = example::read_image(args.source);
  const example::RgbImage tgt = example::read_image(args.target);
  const example::RgbImage src_in = example::resize(src, info.height, info.width);
  const example::RgbImage tgt_in = example::resize(tgt, info.height, info.width);

  // One batch of two when the artifact takes it, else two runs.
  const ImageView a{src_in.pixels.data(), info.height, info.width, 0};
  const ImageView b{tgt_in.pixels.data(), info.height, info.width, 0};
  std::vector<TapTensor> fa, fb;
  if (info.batch_max >= 2 && info.batch_min <= 2) {
    fa = extractor.run({a, b});
    fb = fa;
  } else {
    fa = extractor.run({a});
    fb = extractor.run({b});
  }
  const FeatureMap src_map = fa[tap].map(0);
  const FeatureMap tgt_map = fb[tap].map(fb[tap].shape[0] == 2 ? 1 : 0);

  std::vector<double> points;
  for (int64_t y = args.step / 2; y < src.height; y += args.step) {
    for (int64_t x = args.step / 2; x < src.width; x += args.step) {
      points.push_back(static_cast<double>(x));
      points.push_back(static_cast<double>(y));
    }
  }
  const int64_t count = static_cast<int64_t>(points.size() / 2);
  const Matcher matcher(MatcherOptions{args.threads});
  const PointMatches m = matcher.match_points(
      src_map, example::original_grid(src.height, src.width, info.height, info.width, stride),
      points.data(), count, tgt_map,
      example::original_grid(tgt.height, tgt.width, info.height, info.width, stride));

  const std::string tmp = args.out + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) throw Error("cannot write '" + args.out + "'");
    out << "src_x,src_y,tgt_x,tgt_y,score\n";
    for (int64_t i = 0; i < count; ++i) {
      out << points[2 * i] << "," << points[2 * i + 1] << "," << m.xy[2 * i] << ","
          << m.xy[2 * i + 1] << "," << m.scores[i] << "\n";
    }
    if (!out.flush()) throw Error("cannot write '" + args.out + "'");
  }
  if (std::rename(tmp.c_str(), args.out.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot write '" + args.out + "'");
  }
  std::cout << count << " correspondences (" << args.tap << ", " << info.artifact << ") → "
            << args.out << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "error: " << one_line(e.what()) << "\n";
    return 2;
  }
}
