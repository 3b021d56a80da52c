// cleandift_rt C++ errors: every failure the caller can cause is a cleandift_rt::Error whose
// message is one line (newlines in causes are replaced), never an abort.
#pragma once

#include <stdexcept>
#include <string>

namespace cleandift_rt {

/// Base error of the library. what() is a single line.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message);
};

/// An artifact or its sidecar is missing, corrupt, or does not fit this build / machine.
class ArtifactError : public Error {
 public:
  using Error::Error;
};

/// An input whose size, layout or batch the artifact cannot take.
class InputSizeError : public Error {
 public:
  using Error::Error;
};

/// Bad matching input: shapes, NaN/Inf values, points outside the grid.
class MatchError : public Error {
 public:
  using Error::Error;
};

/// The first line of a message (trimmed), or `fallback` when it is empty.
std::string one_line(const std::string& message, const std::string& fallback = "error");

}  // namespace cleandift_rt
