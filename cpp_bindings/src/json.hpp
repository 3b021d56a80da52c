// Internal: a small JSON reader (RFC 8259 values; \u escapes to UTF-8) for artifact sidecars.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cleandift_rt::detail {

/// A parsed JSON value. Accessors throw std::runtime_error naming the expected type.
class JsonValue {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<JsonValue> array;
  std::map<std::string, JsonValue> object;

  bool has(const std::string& key) const;
  /// object[key]; throws "missing key 'key'".
  const JsonValue& at(const std::string& key) const;
  const std::string& as_string(const std::string& what) const;
  double as_number(const std::string& what) const;
  /// A number that is an exact integer.
  long long as_int(const std::string& what) const;
  const std::vector<JsonValue>& as_array(const std::string& what) const;
};

/// Parse a whole JSON document; throws std::runtime_error("... at offset N") on bad syntax.
JsonValue parse_json(const std::string& text);

}  // namespace cleandift_rt::detail
