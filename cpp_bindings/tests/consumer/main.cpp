// consumer ARTIFACT: extract one grey image and match its centre into itself.
#include <cleandift_rt/cleandift_rt.hpp>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    cleandift_rt::Extractor extractor(argv[1]);
    const auto& info = extractor.info();
    std::vector<uint8_t> image(static_cast<size_t>(info.height * info.width * 3), 128);
    const auto taps = extractor.run({{image.data(), info.height, info.width, 0}});
    const cleandift_rt::FeatureMap map = taps[0].map(0);
    const auto grid =
        cleandift_rt::PixelGrid::interpolate(map.height, map.width, info.height, info.width);
    const double centre[2] = {info.width / 2.0, info.height / 2.0};
    const auto m = cleandift_rt::Matcher().match_points(map, grid, centre, 1, map, grid);
    std::cout << "consumer: " << taps[0].name << " " << map.channels << "x" << map.height << "x"
              << map.width << ", score " << m.scores[0] << "\n";
    return m.scores[0] > 0.99f ? 0 : 1;  // a point matched into its own map scores ~1
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
