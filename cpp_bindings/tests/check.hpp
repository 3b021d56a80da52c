// Minimal test helpers for the ctest executables: CHECK counts failures, fixtures are read from
// the directory make_fixtures.py wrote (manifest.txt + raw .bin arrays).
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace test {

inline int& failures() {
  static int count = 0;
  return count;
}

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      ++::test::failures();                                                         \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond << "\n"; \
    }                                                                               \
  } while (0)

/// Expect `fn()` to throw E whose what() contains `needle` and is one line.
template <typename E, typename Fn>
void expect_throw(Fn&& fn, const std::string& needle, int line) {
  try {
    fn();
  } catch (const E& e) {
    const std::string what = e.what();
    if (what.find(needle) == std::string::npos || what.find('\n') != std::string::npos) {
      ++failures();
      std::cerr << "line " << line << ": message '" << what << "' lacks '" << needle << "'\n";
    }
    return;
  } catch (const std::exception& e) {
    ++failures();
    std::cerr << "line " << line << ": wrong exception type: " << e.what() << "\n";
    return;
  }
  ++failures();
  std::cerr << "line " << line << ": no exception (expected '" << needle << "')\n";
}
#define EXPECT_THROW(E, expr, needle) ::test::expect_throw<E>([&] { expr; }, needle, __LINE__)

struct Array {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<char> bytes;
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

struct Fixtures {
  std::string dir;
  std::map<std::string, Array> arrays;
  std::map<std::string, std::string> values;

  explicit Fixtures(const std::string& directory) : dir(directory) {
    std::ifstream manifest(dir + "/manifest.txt");
    if (!manifest) throw std::runtime_error("no manifest in " + dir + ": run make_fixtures.py");
    std::string line;
    while (std::getline(manifest, line)) {
      std::istringstream in(line);
      std::string kind, name;
      in >> kind >> name;
      if (kind == "value") {
        std::string text;
        std::getline(in >> std::ws, text);
        values[name] = text;
      } else if (kind == "array") {
        Array a;
        in >> a.dtype;
        for (int64_t d; in >> d;) a.shape.push_back(d);
        std::ifstream data(dir + "/" + name + ".bin", std::ios::binary);
        a.bytes.assign(std::istreambuf_iterator<char>(data), std::istreambuf_iterator<char>());
        arrays[name] = std::move(a);
      }
    }
  }
  const Array& at(const std::string& name) const {
    const auto it = arrays.find(name);
    if (it == arrays.end()) throw std::runtime_error("fixture array '" + name + "' missing");
    return it->second;
  }
  bool has_value(const std::string& key) const { return values.count(key) > 0; }
};

inline int finish(const char* name) {
  if (failures() == 0) {
    std::cout << name << ": all checks passed\n";
    return 0;
  }
  std::cout << name << ": " << failures() << " check(s) failed\n";
  return 1;
}

}  // namespace test
