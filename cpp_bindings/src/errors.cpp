#include "cleandift_rt/errors.hpp"

namespace cleandift_rt {

std::string one_line(const std::string& message, const std::string& fallback) {
  const auto first = message.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return fallback;
  const auto end = message.find_first_of("\r\n", first);
  std::string line =
      message.substr(first, end == std::string::npos ? std::string::npos : end - first);
  const auto last = line.find_last_not_of(" \t");
  return line.substr(0, last + 1);
}

Error::Error(const std::string& message) : std::runtime_error(one_line(message)) {}

}  // namespace cleandift_rt
