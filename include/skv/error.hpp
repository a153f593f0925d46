// skv/error.hpp: the one exception type skv throws (host code only; kernels report through status).
#pragma once

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

}  // namespace detail
}  // namespace skv
