// track_video: track points through a video with an exported artifact (needs OpenCV).
//
//   track_video ARTIFACT VIDEO OUT.csv [--tap us6] [--step 48] [--annotated OUT.mp4]
//               [--threads N] [--max-frames N]
//
// Points on a regular grid (every --step px) of the first frame are described once (bilinear
// samples of its features); in every frame each point is the exact cosine argmax of its
// first-frame descriptor over the frame's upsampled features (no drift accumulates).
// OUT.csv: "frame,point,x,y,score" per point and frame, written atomically. --annotated writes
// the video with the tracked points drawn. Exit 0 on success, 2 with "error: ..." on bad input.
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <cstdio>
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
  std::string artifact, video, out, annotated, tap = "us6";
  int64_t step = 48, max_frames = -1;
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
    else if (arg == "--annotated")
      a.annotated = value();
    else if (arg == "--threads")
      a.threads = std::stoi(value());
    else if (arg == "--max-frames")
      a.max_frames = std::stoll(value());
    else if (arg.rfind("--", 0) == 0)
      throw Error("unknown option " + arg);
    else
      positional.push_back(arg);
  }
  if (positional.size() != 3) {
    throw Error(
        "usage: track_video ARTIFACT VIDEO OUT.csv [--tap us6] [--step 48] "
        "[--annotated OUT.mp4] [--threads N] [--max-frames N]");
  }
  if (a.step < 1) throw Error("--step must be >= 1");
  a.artifact = positional[0];
  a.video = positional[1];
  a.out = positional[2];
  return a;
}

int run(const Args& args) {
  Extractor extractor(args.artifact);
  const ArtifactInfo& info = extractor.info();
  if (info.batch_min > 1)
    throw Error("the artifact's batch starts at " + std::to_string(info.batch_min) +
                "; track_video runs batches of 1");
  const size_t tap = example::tap_index(info, args.tap);
  const int64_t stride = info.taps[tap].stride;
  cv::VideoCapture capture(args.video);
  if (!capture.isOpened()) throw Error("cannot open video '" + args.video + "'");
  const Matcher matcher(MatcherOptions{args.threads});

  const std::string tmp = args.out + ".tmp";
  std::ofstream out(tmp);
  if (!out) throw Error("cannot write '" + args.out + "'");
  out << "frame,point,x,y,score\n";
  cv::VideoWriter writer;
  std::vector<double> points;
  std::vector<float> queries;
  int64_t channels = 0, frame_index = 0;
  cv::Mat frame;
  while (capture.read(frame) && (args.max_frames < 0 || frame_index < args.max_frames)) {
    const example::RgbImage rgb = example::from_mat(frame);
    const example::RgbImage input = example::resize(rgb, info.height, info.width);
    const std::vector<TapTensor> taps =
        extractor.run({ImageView{input.pixels.data(), info.height, info.width, 0}});
    const FeatureMap map = taps[tap].map(0);
    const PixelGrid grid =
        example::original_grid(rgb.height, rgb.width, info.height, info.width, stride);
    if (frame_index == 0) {  // the template: descriptors of the first frame's grid points
      for (int64_t y = args.step / 2; y < rgb.height; y += args.step) {
        for (int64_t x = args.step / 2; x < rgb.width; x += args.step) {
          points.push_back(static_cast<double>(x));
          points.push_back(static_cast<double>(y));
        }
      }
      queries = matcher.sample_descriptors(map, points.data(),
                                           static_cast<int64_t>(points.size() / 2), grid);
      channels = map.channels;
      if (!args.annotated.empty()) {
        const double fps = capture.get(cv::CAP_PROP_FPS);
        writer.open(args.annotated, cv::VideoWriter::fourcc('m', 'p', '4', 'v'),
                    fps > 0 ? fps : 25.0, frame.size());
        if (!writer.isOpened()) throw Error("cannot write video '" + args.annotated + "'");
      }
    }
    const int64_t count = static_cast<int64_t>(points.size() / 2);
    const PointMatches m =
        matcher.cosine_argmax(Descriptors{queries.data(), count, channels}, map, grid);
    for (int64_t i = 0; i < count; ++i) {
      out << frame_index << "," << i << "," << m.xy[2 * i] << "," << m.xy[2 * i + 1] << ","
          << m.scores[i] << "\n";
      if (writer.isOpened()) {
        const cv::Point at(static_cast<int>(m.xy[2 * i]), static_cast<int>(m.xy[2 * i + 1]));
        cv::circle(frame, at, 4, cv::Scalar(0, 255, 0), cv::FILLED);
      }
    }
    if (writer.isOpened()) writer.write(frame);
    ++frame_index;
    if (frame_index % 25 == 0) std::cerr << "\rframe " << frame_index << std::flush;
  }
  if (frame_index == 0) throw Error("no frames in '" + args.video + "'");
  out.close();
  if (!out || std::rename(tmp.c_str(), args.out.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot write '" + args.out + "'");
  }
  std::cerr << "\r" << frame_index << " frames, " << points.size() / 2 << " points → " << args.out
            << "\n";
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
