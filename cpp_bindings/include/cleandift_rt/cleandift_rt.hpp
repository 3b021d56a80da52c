// cleandift_rt C++ API, all headers. Link cleandift_rt::cleandift_rt (find_package(cleandift_rt)).
//
//   Extractor      artifact (.pt2 AOTInductor package / TensorRT engine) → tap feature maps
//   Matcher        CPU cosine argmax, sample_descriptors, nearest / mutual_nearest (threaded)
//   CudaMatcher    the same cosine argmax on a CUDA GPU (when built with CUDA)
//   PixelGrid      output pixel grid ↔ feature cells (F.interpolate / resize+pad transforms)
//   Error          one-line exceptions (ArtifactError, InputSizeError, MatchError)
#pragma once

#include "cleandift_rt/artifact.hpp"
#include "cleandift_rt/cuda_matcher.hpp"
#include "cleandift_rt/errors.hpp"
#include "cleandift_rt/extractor.hpp"
#include "cleandift_rt/grid.hpp"
#include "cleandift_rt/matcher.hpp"
