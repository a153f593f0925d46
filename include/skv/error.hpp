// skv/error.hpp: the one exception type skv throws (host code only; kernels report through status).
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

namespace skv {

/// Thrown for every invalid argument, out-of-range token, corrupt file or unsupported
/// configuration. what() starts with "skv: " and says what was wrong.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error("skv: " + message) {}
};

namespace detail {

inline void require(bool ok, const std::string& message) {
  if (!ok) throw Error(message);
}

/// A number as people write it in a message: "32752", "0.25", "1e+30" (std::to_string prints
/// "32752.000000").
inline std::string number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", x);
  return buf;
}

}  // namespace detail
}  // namespace skv
