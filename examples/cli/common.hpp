// examples/cli/common.hpp: small helpers of the skv command line (tables, progress, list parsing).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <skv/error.hpp>

namespace skv_cli {

/// A progress bar on stderr, drawn only when stderr is a terminal (logs and pipes stay clean).
class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), tty_(::isatty(2) != 0) {}
  ~Progress() {
    if (tty_ && drawn_) std::fprintf(stderr, "\r%*s\r", 72, "");
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void operator()(int done, int total) {
    if (!tty_ || total <= 0) return;
    const int width = 30, filled = done * width / total;
    std::fprintf(stderr, "\r%s [%s%s] %d/%d", what_.c_str(), std::string(static_cast<std::size_t>(filled), '#').c_str(),
                 std::string(static_cast<std::size_t>(width - filled), ' ').c_str(), done, total);
    std::fflush(stderr);
    drawn_ = true;
  }

 private:
  std::string what_;
  bool tty_;
  bool drawn_ = false;
};

/// "2,3,4" -> {2, 3, 4}; every entry an integer in [lo, hi].
inline std::vector<int> parse_int_list(const std::string& s, int lo, int hi, const std::string& what) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t comma = s.find(',', pos);
    const std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    std::size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < lo || v > hi)
      throw skv::Error(what + ": '" + item + "' is not an integer between " + std::to_string(lo) + " and " + std::to_string(hi));
    out.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

/// A configuration name "k4v2" -> (4, 2).
inline std::pair<int, int> parse_config(const std::string& name) {
  int k = 0, v = 0;
  char tail = 0;
  if (std::sscanf(name.c_str(), "k%dv%d%c", &k, &v, &tail) != 2 || k < 1 || k > 8 || v < 1 || v > 8 ||
      name != "k" + std::to_string(k) + "v" + std::to_string(v))
    throw skv::Error("configuration '" + name + "' is not of the form kKvV with K and V between 1 and 8 (e.g. k4v2)");
  return {k, v};
}

inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t at = s.find(sep, pos);
    out.push_back(s.substr(pos, at == std::string::npos ? std::string::npos : at - pos));
    if (at == std::string::npos) break;
    pos = at + 1;
  }
  return out;
}

/// Numbers for tables: 4 significant digits, scientific when small or large.
inline std::string num(double x) {
  char buf[32];
  if (x != 0 && (x < 1e-3 || x >= 1e5) && x > -1e5)
    std::snprintf(buf, sizeof buf, "%.3e", x);
  else
    std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}

/// The plan's predicted distortion against the best uniform width's: "... vs X for uniform k4v4 (2.5x
/// lower)"; no ratio when either is zero (a ratio of 0 / 0 printed as "-nanx").
inline std::string plan_summary(double predicted, double uniform, int uniform_bits) {
  std::string s = "predicted distortion " + num(predicted);
  if (uniform_bits <= 0) return s + " (no uniform width fits this budget)";
  const std::string kv = "k" + std::to_string(uniform_bits) + "v" + std::to_string(uniform_bits);
  s += " vs " + num(uniform) + " for uniform " + kv;
  if (predicted > 0 && uniform > 0 && std::isfinite(predicted) && std::isfinite(uniform)) {
    char buf[48];
    std::snprintf(buf, sizeof buf, " (%.3gx %s)", predicted <= uniform ? uniform / predicted : predicted / uniform,
                  predicted <= uniform ? "lower" : "higher");
    s += buf;
  } else if (predicted == uniform) {
    s += " (the same)";
  }
  return s;
}

/// A plain text table: header row, rule, rows; columns right-aligned except the first.
inline void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w(header.size(), 0);
  for (std::size_t c = 0; c < header.size(); ++c) w[c] = header[c].size();
  for (const auto& r : rows)
    for (std::size_t c = 0; c < r.size() && c < w.size(); ++c) w[c] = std::max(w[c], r[c].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (std::size_t c = 0; c < w.size(); ++c) {
      const std::string cell = c < r.size() ? r[c] : "";
      const std::string pad(w[c] - cell.size(), ' ');
      s += (c ? "  " : "") + (c == 0 ? cell + pad : pad + cell);
    }
    std::printf("%s\n", s.c_str());
  };
  line(header);
  std::size_t total = 0;
  for (std::size_t c = 0; c < w.size(); ++c) total += w[c] + (c ? 2 : 0);
  std::printf("%s\n", std::string(total, '-').c_str());
  for (const auto& r : rows) line(r);
}

}  // namespace skv_cli
