#include "cleandift_rt/artifact.hpp"

#include <sys/stat.h>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "cleandift_rt/errors.hpp"
#include "json.hpp"

namespace cleandift_rt {
namespace {

using detail::JsonValue;

bool is_regular_file(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// {key: value} of a JSON object of strings / numbers / nulls (nulls and others skipped).
std::map<std::string, std::string> string_map(const JsonValue& v) {
  std::map<std::string, std::string> out;
  if (v.kind != JsonValue::Kind::Object) return out;
  for (const auto& [key, value] : v.object) {
    if (value.kind == JsonValue::Kind::String) {
      out[key] = value.string;
    } else if (value.kind == JsonValue::Kind::Number) {
      std::ostringstream text;
      text << value.number;
      out[key] = text.str();
    } else if (value.kind == JsonValue::Kind::Array) {  // e.g. compute capability [9, 0]
      std::string joined;
      for (const JsonValue& part : value.array) {
        if (part.kind != JsonValue::Kind::Number) break;
        std::ostringstream text;
        text << part.number;
        joined += (joined.empty() ? "" : ".") + text.str();
      }
      out[key] = joined;
    }
  }
  return out;
}

std::string optional_string(const JsonValue& doc, const std::string& key,
                            const std::string& fallback) {
  return doc.has(key) ? doc.at(key).as_string(key) : fallback;
}

ArtifactInfo from_json(const JsonValue& doc) {
  ArtifactInfo info;
  info.format_version = doc.has("format_version")
                            ? static_cast<int>(doc.at("format_version").as_int("format_version"))
                            : 0;
  if (info.format_version != kSidecarFormatVersion) {
    throw std::runtime_error("format_version " + std::to_string(info.format_version) +
                             " != " + std::to_string(kSidecarFormatVersion));
  }
  info.format = doc.at("format").as_string("format");
  info.artifact = doc.at("artifact").as_string("artifact");
  info.model = doc.at("model").as_string("model");
  info.weights_sha256 = doc.at("weights_sha256").as_string("weights_sha256");
  info.timestep = doc.at("timestep").as_number("timestep");
  for (const JsonValue& t : doc.at("taps").as_array("taps")) {
    TapSpec tap;
    tap.name = t.at("name").as_string("taps[].name");
    tap.channels = t.at("channels").as_int("taps[].channels");
    tap.stride = t.at("stride").as_int("taps[].stride");
    if (tap.channels < 1 || tap.stride < 1) {
      throw std::runtime_error("tap '" + tap.name + "' has non-positive channels or stride");
    }
    info.taps.push_back(tap);
  }
  if (info.taps.empty()) throw std::runtime_error("no taps");
  info.height = doc.at("height").as_int("height");
  info.width = doc.at("width").as_int("width");
  const auto& batch = doc.at("batch").as_array("batch");
  if (batch.size() != 2) throw std::runtime_error("'batch' must be [min, max]");
  info.batch_min = batch[0].as_int("batch[0]");
  info.batch_max = batch[1].as_int("batch[1]");
  if (info.height < 1 || info.width < 1 || info.batch_min < 1 || info.batch_max < info.batch_min) {
    throw std::runtime_error("bad input size or batch range");
  }
  info.precision = doc.at("precision").as_string("precision");
  if (doc.has("producer")) info.producer = string_map(doc.at("producer"));
  if (doc.has("target")) info.target = string_map(doc.at("target"));
  info.rebuild = optional_string(doc, "rebuild", "");
  info.input_name = optional_string(doc, "input_name", "images");
  info.input_layout = optional_string(doc, "input_layout", "NHWC");
  info.input_dtype = optional_string(doc, "input_dtype", "uint8");
  return info;
}

}  // namespace

std::string ArtifactInfo::rebuild_hint() const {
  return rebuild.empty() ? std::string() : "; rebuild: " + rebuild;
}

std::string sidecar_path(const std::string& artifact) { return artifact + ".json"; }

ArtifactInfo read_sidecar(const std::string& artifact) {
  if (!exists(artifact)) throw ArtifactError("artifact '" + artifact + "' does not exist");
  const std::string path = sidecar_path(artifact);
  if (!is_regular_file(path)) {
    throw ArtifactError("'" + artifact + "' has no metadata sidecar '" + base_name(path) +
                        "': re-export it");
  }
  ArtifactInfo info;
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open the file");
    std::ostringstream text;
    text << in.rdbuf();
    info = from_json(detail::parse_json(text.str()));
  } catch (const std::exception& exc) {
    throw ArtifactError("bad metadata sidecar '" + path + "': " + one_line(exc.what()));
  }
  info.path = artifact;
  if (info.format != "onnx" && info.format != "engine" && info.format != "aoti") {
    throw ArtifactError("'" + path + "': unknown artifact format '" + info.format + "'");
  }
  if (info.artifact != base_name(artifact)) {
    throw ArtifactError("sidecar '" + base_name(path) + "' describes '" + info.artifact +
                        "', not '" + base_name(artifact) + "'" + info.rebuild_hint());
  }
  return info;
}

}  // namespace cleandift_rt
