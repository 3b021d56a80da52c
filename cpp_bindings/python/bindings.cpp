// Python bindings of the C++ matchers (module cleandift_rt_cpp), for parity tests against the
// Python matcher and for Python users who want the threaded CPU matcher without torch.
// Arrays are numpy: maps (C, h, w) float32, descriptors (N, C) float32, points (K, 2) float64
// (other dtypes are converted); results are numpy arrays. Errors raise cleandift_rt_cpp.Error
// (a ValueError). The GIL is released while matching.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "cleandift_rt/cuda_matcher.hpp"
#include "cleandift_rt/errors.hpp"
#include "cleandift_rt/grid.hpp"
#include "cleandift_rt/matcher.hpp"

namespace py = pybind11;
using namespace cleandift_rt;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

FeatureMap as_map(const FloatArray& a, const char* name) {
  if (a.ndim() != 3) throw MatchError(std::string(name) + " must have shape (C, h, w)");
  return FeatureMap{a.data(), a.shape(0), a.shape(1), a.shape(2)};
}

Descriptors as_descriptors(const FloatArray& a, const char* name) {
  if (a.ndim() != 2) throw MatchError(std::string(name) + " must have shape (N, C)");
  return Descriptors{a.data(), a.shape(0), a.shape(1)};
}

const double* as_points(const DoubleArray& a, int64_t* count) {
  if (a.size() == 0) {
    *count = 0;
    return nullptr;
  }
  if (a.ndim() != 2 || a.shape(1) != 2) throw MatchError("points must have shape (K, 2)");
  *count = a.shape(0);
  return a.data();
}

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& values, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(values));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

py::tuple point_result(PointMatches&& m) {
  const auto k = static_cast<py::ssize_t>(m.scores.size());
  return py::make_tuple(to_numpy(std::move(m.xy), {k, 2}), to_numpy(std::move(m.scores), {k}));
}

py::tuple pair_result(PairMatches&& m) {
  const auto p = static_cast<py::ssize_t>(m.scores.size());
  return py::make_tuple(to_numpy(std::move(m.scores), {p}), to_numpy(std::move(m.pairs), {p, 2}));
}

}  // namespace

PYBIND11_MODULE(cleandift_rt_cpp, m) {
  m.doc() = "C++ matchers of cleandift_rt (CPU threaded, CUDA when built with it)";
  py::register_exception<Error>(m, "Error", PyExc_ValueError);

  py::class_<PixelGrid>(m, "PixelGrid")
      .def(py::init<int64_t, int64_t, double, double, double, double>(), py::arg("height"),
           py::arg("width"), py::arg("scale_x"), py::arg("scale_y"), py::arg("shift_x"),
           py::arg("shift_y"))
      .def_static("interpolate", &PixelGrid::interpolate, py::arg("feat_h"), py::arg("feat_w"),
                  py::arg("out_h"), py::arg("out_w"))
      .def_static("identity", &PixelGrid::identity, py::arg("feat_h"), py::arg("feat_w"))
      .def_static("from_input_transform", &PixelGrid::from_input_transform, py::arg("orig_h"),
                  py::arg("orig_w"), py::arg("input_scale_x"), py::arg("input_scale_y"),
                  py::arg("input_offset_x"), py::arg("input_offset_y"), py::arg("stride_x"),
                  py::arg("stride_y"))
      .def_property_readonly(
          "size", [](const PixelGrid& g) { return py::make_tuple(g.height(), g.width()); })
      .def_property_readonly(
          "scale", [](const PixelGrid& g) { return py::make_tuple(g.scale_x(), g.scale_y()); })
      .def_property_readonly(
          "shift", [](const PixelGrid& g) { return py::make_tuple(g.shift_x(), g.shift_y()); });

  py::class_<Matcher>(m, "Matcher")
      .def(py::init([](int num_threads) { return Matcher(MatcherOptions{num_threads}); }),
           py::arg("num_threads") = 0)
      .def_property_readonly("num_threads", &Matcher::num_threads)
      .def(
          "sample_descriptors",
          [](const Matcher& self, const FloatArray& fmap, const DoubleArray& points,
             const PixelGrid& grid) {
            const FeatureMap map = as_map(fmap, "feature_map");
            int64_t k = 0;
            const double* pts = as_points(points, &k);
            std::vector<float> out;
            {
              py::gil_scoped_release release;
              out = self.sample_descriptors(map, pts, k, grid);
            }
            return to_numpy(std::move(out),
                            {static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(map.channels)});
          },
          py::arg("feature_map"), py::arg("points"), py::arg("grid"),
          "(C, h, w) map, (K, 2) (x, y) points → (K, C) float32 descriptors")
      .def(
          "cosine_argmax",
          [](const Matcher& self, const FloatArray& queries, const FloatArray& target,
             const PixelGrid& grid) {
            const Descriptors q = as_descriptors(queries, "queries");
            const FeatureMap t = as_map(target, "target");
            PointMatches r;
            {
              py::gil_scoped_release release;
              r = self.cosine_argmax(q, t, grid);
            }
            return point_result(std::move(r));
          },
          py::arg("queries"), py::arg("target"), py::arg("grid"),
          "(K, C) queries, (C, h, w) target → ((K, 2) int64 (x, y), (K,) float32 scores)")
      .def(
          "match_points",
          [](const Matcher& self, const FloatArray& source, const PixelGrid& source_grid,
             const DoubleArray& points, const FloatArray& target, const PixelGrid& target_grid) {
            const FeatureMap s = as_map(source, "source"), t = as_map(target, "target");
            int64_t k = 0;
            const double* pts = as_points(points, &k);
            PointMatches r;
            {
              py::gil_scoped_release release;
              r = self.match_points(s, source_grid, pts, k, t, target_grid);
            }
            return point_result(std::move(r));
          },
          py::arg("source"), py::arg("source_grid"), py::arg("points"), py::arg("target"),
          py::arg("target_grid"))
      .def(
          "nearest",
          [](const Matcher& self, const FloatArray& a, const FloatArray& b) {
            const Descriptors da = as_descriptors(a, "a"), db = as_descriptors(b, "b");
            PairMatches r;
            {
              py::gil_scoped_release release;
              r = self.nearest(da, db);
            }
            return pair_result(std::move(r));
          },
          py::arg("a"), py::arg("b"), "→ ((P,) float32 scores, (P, 2) int64 pairs)")
      .def(
          "mutual_nearest",
          [](const Matcher& self, const FloatArray& a, const FloatArray& b) {
            const Descriptors da = as_descriptors(a, "a"), db = as_descriptors(b, "b");
            PairMatches r;
            {
              py::gil_scoped_release release;
              r = self.mutual_nearest(da, db);
            }
            return pair_result(std::move(r));
          },
          py::arg("a"), py::arg("b"), "→ ((P,) float32 scores, (P, 2) int64 pairs)");

  m.def("cuda_available", &cuda_matcher_available, "built with CUDA and a CUDA device is visible");
  m.def(
      "cuda_cosine_argmax",
      [](const FloatArray& queries, const FloatArray& target, const PixelGrid& grid, int device) {
        const Descriptors q = as_descriptors(queries, "queries");
        const FeatureMap t = as_map(target, "target");
        PointMatches r;
        {
          py::gil_scoped_release release;
          r = CudaMatcher(device).cosine_argmax(q, t, grid);
        }
        return point_result(std::move(r));
      },
      py::arg("queries"), py::arg("target"), py::arg("grid"), py::arg("device") = 0,
      "CUDA Matcher.cosine_argmax (host arrays in, host results out)");
}
