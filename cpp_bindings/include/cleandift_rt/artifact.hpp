// Exported artifacts' JSON metadata sidecar (<artifact>.json), as written by
// cleandift_rt/artifacts.py (format_version 1). No libtorch needed.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cleandift_rt {

/// Sidecar format this library reads (cleandift_rt.artifacts.FORMAT_VERSION).
constexpr int kSidecarFormatVersion = 1;

/// One output of the graph: tap name, channels C and stride (input px per feature cell).
struct TapSpec {
  std::string name;
  int64_t channels = 0;
  int64_t stride = 0;
};

/// What an artifact computes and takes (the fields loaders check).
struct ArtifactInfo {
  std::string path;      ///< the artifact file
  std::string format;    ///< "aoti", "engine" or "onnx"
  std::string artifact;  ///< file name the sidecar describes
  std::string model;
  std::string weights_sha256;
  double timestep = 0.0;
  std::vector<TapSpec> taps;                          ///< output order
  int64_t height = 0, width = 0;                      ///< fixed input size (px)
  int64_t batch_min = 1, batch_max = 1;               ///< batch range
  std::string precision;                              ///< "fp32", "fp16" or "bf16" (outputs' dtype)
  std::string input_name, input_layout, input_dtype;  ///< "images", "NHWC", "uint8"
  std::map<std::string, std::string> producer;        ///< e.g. {"torch": "2.13.0+cpu"}
  std::map<std::string, std::string> target;          ///< engines: gpu name, capability
  std::string rebuild;                                ///< the command that rebuilds the artifact
  int format_version = 0;

  /// "; rebuild: <command>" or "" (appended to error messages).
  std::string rebuild_hint() const;
};

/// Path of the sidecar of `artifact`: "<artifact>.json".
std::string sidecar_path(const std::string& artifact);

/// Read and check the sidecar of `artifact`: the artifact and sidecar exist, the JSON parses,
/// format_version is kSidecarFormatVersion, required fields have the right types, the format is
/// known and the sidecar describes this file name. Throws ArtifactError (one line) otherwise.
ArtifactInfo read_sidecar(const std::string& artifact);

}  // namespace cleandift_rt
