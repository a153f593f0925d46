// skv._skv: the Python extension. A thin edge over the C++ cache types (DESIGN.md section 7):
// arrays come in through DLPack / the buffer protocol without copies, are checked for shape, dtype,
// device and contiguity before any work, the GIL is released around the work, and skv::Error
// becomes ValueError with the same message.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <skv/error.hpp>

#include "any_cache.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace skv_python {

std::vector<Family>& families() {
  static std::vector<Family> all;
  return all;
}

std::string Config::name() const {
  return "k" + std::to_string(key_bits) + "v" + std::to_string(value_bits) + ", head_dim " +
         std::to_string(head_dim) + ", residual " + std::to_string(residual) +
         ", " + option_set_name(options);
}

namespace {

// What skv.KVCache uses when the caller gives only bits: measured in the generation loop
// (docs/accuracy.md, "Defaults").
constexpr int kDefaultResidual = 128;
constexpr bool kDefaultRotateKeys = true;
constexpr int kDefaultSinks = 4;
constexpr bool kDefaultClip = false;
constexpr int kCompiledSinks = 4;

using Array = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<nb::numpy, float>;

std::string join(const std::vector<std::int64_t>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

std::string shape_of(const Array& a) {
  std::vector<std::int64_t> s;
  for (std::size_t i = 0; i < a.ndim(); ++i) s.push_back(static_cast<std::int64_t>(a.shape(i)));
  return "[" + join(s) + "]";
}

bool is_c_contiguous(const Array& a) {
  std::int64_t expected = 1;
  for (std::size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) return false;
    expected *= static_cast<std::int64_t>(a.shape(i));
  }
  return true;
}

bool is_float32(const Array& a) { return a.dtype() == nb::dtype<float>(); }
bool is_float16(const Array& a) {
  return a.dtype() == nb::dlpack::dtype{static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
}

/// Checks everything but the values; `shape` entries of -1 match any extent.
void check_array(const Array& a, const char* name, const std::vector<std::int64_t>& shape, bool allow_f16,
                 const char* layout) {
  const auto fail = [&](const std::string& what) { throw skv::Error(std::string(name) + " " + what); };
  if (a.device_type() != nb::device::cpu::value) fail("must be a CPU array");
  bool shape_ok = a.ndim() == shape.size();
  for (std::size_t i = 0; shape_ok && i < shape.size(); ++i)
    shape_ok = shape[i] < 0 || static_cast<std::int64_t>(a.shape(i)) == shape[i];
  if (!shape_ok) {
    std::string want;
    for (std::size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    fail("must have shape " + std::string(layout) + " = [" + want + "], got " + shape_of(a));
  }
  if (!(is_float32(a) || (allow_f16 && is_float16(a))))
    fail(allow_f16 ? "must be float32 or float16" : "must be float32");
  if (!is_c_contiguous(a)) fail("must be C-contiguous (numpy.ascontiguousarray makes a contiguous copy)");
}

OutArray new_output(std::size_t d0, std::size_t d1, std::size_t d2 = 0) {
  const std::size_t count = d0 * d1 * (d2 ? d2 : 1);
  float* data = new float[count ? count : 1]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  if (d2) {
    const std::size_t shape[3] = {d0, d1, d2};
    return OutArray(data, 3, shape, owner);
  }
  const std::size_t shape[2] = {d0, d1};
  return OutArray(data, 2, shape, owner);
}

std::string family_summary() {
  // "head_dim 64, 128, 256 with residual 0, 128 ..." grouped by (residual, options).
  std::map<std::tuple<int, int>, std::set<int>> groups;
  for (const Family& f : families()) groups[{f.options, f.residual}].insert(f.head_dim);
  std::string s;
  for (const auto& [key, dims] : groups) {
    s += s.empty() ? "" : "; ";
    s += std::string(option_set_name(std::get<0>(key))) + ", residual " +
         std::to_string(std::get<1>(key)) + ": head_dim";
    bool first = true;
    for (int d : dims) s += (first ? " " : ", ") + std::to_string(d), first = false;
  }
  return s;
}

const Family& find_family(int head_dim, int residual, int options) {
  for (const Family& f : families())
    if (f.head_dim == head_dim && f.residual == residual && f.options == options) return f;
  throw skv::Error("no cache compiled for head_dim " + std::to_string(head_dim) + ", residual " +
                   std::to_string(residual) + ", " + option_set_name(options) +
                   "; compiled: " + family_summary() + " (key and value bits each in {2, 3, 4, 8}); see skv.compiled()");
}

/// The Python object: owns one compiled cache.
class KVCache {
 public:
  KVCache(int key_bits, int value_bits, int head_dim, int num_kv_heads, int max_tokens, std::optional<int> residual,
          std::optional<bool> rotate_keys, std::optional<int> sinks, std::optional<bool> clip) {
    const int r = residual.value_or(kDefaultResidual);
    // Given none of the options: the default set, where it is compiled (the rotation needs a power-of-
    // two head_dim). Given some: the others are off, so rotate_keys=False alone means the plain cache.
    const bool any_option = rotate_keys || sinks || clip;
    const bool defaults = !any_option && (head_dim & (head_dim - 1)) == 0;
    const bool rot = rotate_keys.value_or(defaults && kDefaultRotateKeys);
    const int s = sinks.value_or(defaults ? kDefaultSinks : 0);
    const bool c = clip.value_or(defaults && kDefaultClip);
    int set = -1;
    if (!rot && s == 0 && !c) set = kNoOptions;
    if (rot && s == kCompiledSinks) set = c ? kRotateSinksClip : kRotateSinks;
    if (set < 0)
      throw skv::Error("the compiled option sets are: none (rotate_keys=False, sinks=0, clip=False), rotate_keys=True "
                       "with sinks=4, and rotate_keys=True with sinks=4 and clip=True; got rotate_keys=" +
                       std::string(rot ? "True" : "False") + ", sinks=" + std::to_string(s) +
                       ", clip=" + std::string(c ? "True" : "False") + "; see skv.compiled()");
    cache_ = find_family(head_dim, r, set).make(key_bits, value_bits, num_kv_heads, max_tokens);
  }

  const AnyCache& get() const { return *cache_; }

  void append(const Array& k, const Array& v) {
    const std::int64_t h = cache_->num_kv_heads(), d = cache_->config().head_dim;
    check_array(k, "k", {-1, h, d}, true, "[n, num_kv_heads, head_dim]");
    check_array(v, "v", {-1, h, d}, true, "[n, num_kv_heads, head_dim]");
    if (k.shape(0) != v.shape(0))
      throw skv::Error("k and v must hold the same number of tokens (" + std::to_string(k.shape(0)) + " and " +
                       std::to_string(v.shape(0)) + ")");
    if (is_float16(k) != is_float16(v)) throw skv::Error("k and v must have the same dtype");
    if (k.shape(0) > static_cast<std::size_t>(INT32_MAX)) throw skv::Error("too many tokens in one append");
    const int n = static_cast<int>(k.shape(0));
    const Dtype dtype = is_float16(k) ? Dtype::kFloat16 : Dtype::kFloat32;
    nb::gil_scoped_release release;
    cache_->append(k.data(), v.data(), n, dtype);
  }

  OutArray decode(const Array& q, std::optional<float> scale, int num_threads) const {
    const int nq = check_query(q, 2);
    const float s = scale.value_or(cache_->default_scale());
    OutArray out = new_output(static_cast<std::size_t>(nq), static_cast<std::size_t>(cache_->config().head_dim));
    {
      nb::gil_scoped_release release;
      cache_->decode(static_cast<const float*>(q.data()), nq, out.data(), s, num_threads);
    }
    return out;
  }

  OutArray attention(const Array& q, std::optional<float> scale, int num_threads) const {
    const int nq = check_query(q, 3, "[num_q_tokens, num_q_heads, head_dim]");
    const std::size_t n = q.shape(0);
    if (n == 0 || n > static_cast<std::size_t>(cache_->size()))
      throw skv::Error("attention: q holds " + std::to_string(n) + " query tokens; it needs between 1 and len(cache) = " +
                       std::to_string(cache_->size()) + " (the queries of the last tokens appended)");
    const float s = scale.value_or(cache_->default_scale());
    OutArray out = new_output(n, static_cast<std::size_t>(nq), static_cast<std::size_t>(cache_->config().head_dim));
    {
      nb::gil_scoped_release release;
      cache_->attention(static_cast<const float*>(q.data()), static_cast<int>(n), nq, out.data(), s, num_threads);
    }
    return out;
  }

  /// Seconds per decode call measured inside C++ (no Python in the loop), for the overhead benchmark.
  double time_decode(const Array& q, int iterations, int num_threads) const {
    const int nq = check_query(q, 2);
    std::vector<float> out(static_cast<std::size_t>(nq) * cache_->config().head_dim);
    const float s = cache_->default_scale();
    nb::gil_scoped_release release;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iterations; ++i)
      cache_->decode(static_cast<const float*>(q.data()), nq, out.data(), s, num_threads);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return elapsed.count() / (iterations > 0 ? iterations : 1);
  }

  /// q [num_q_heads, head_dim] (ndim 2) or [batch, num_q_heads, head_dim] (ndim 3): returns num_q_heads.
  int check_query(const Array& q, std::size_t ndim, const char* layout3 = "[batch, num_q_heads, head_dim]") const {
    const std::int64_t d = cache_->config().head_dim;
    const char* layout = ndim == 2 ? "[num_q_heads, head_dim]" : layout3;
    if (q.ndim() != ndim)
      throw skv::Error("q must have " + std::to_string(ndim) + " dimensions " + layout + ", got " + shape_of(q));
    if (ndim == 2)
      check_array(q, "q", {-1, d}, false, layout);
    else
      check_array(q, "q", {-1, -1, d}, false, layout);
    const std::int64_t nq = static_cast<std::int64_t>(q.shape(ndim - 2));
    if (nq <= 0 || nq % cache_->num_kv_heads() != 0 || nq > INT32_MAX)
      throw skv::Error("q's num_q_heads (" + std::to_string(nq) + ") must be a positive multiple of num_kv_heads (" +
                       std::to_string(cache_->num_kv_heads()) + ")");
    return static_cast<int>(nq);
  }

  void clear() {
    nb::gil_scoped_release release;
    cache_->clear();
  }

  nb::ndarray<nb::numpy, std::uint8_t> page_bytes() const { return to_numpy(cache_->page_bytes()); }
  nb::ndarray<nb::numpy, float> full_precision() const { return to_numpy(cache_->full_precision()); }

  std::string repr() const {
    return "skv.KVCache(" + cache_->config().name() + ", num_kv_heads " + std::to_string(cache_->num_kv_heads()) +
           ", " + std::to_string(cache_->size()) + " of " + std::to_string(cache_->capacity()) + " tokens)";
  }

 private:
  template <class T>
  static nb::ndarray<nb::numpy, T> to_numpy(std::vector<T> values) {
    auto* held = new std::vector<T>(std::move(values));
    nb::capsule owner(held, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    const std::size_t shape[1] = {held->size()};
    return nb::ndarray<nb::numpy, T>(held->data(), 1, shape, owner);
  }

  std::unique_ptr<AnyCache> cache_;
};

OutArray decode_batch(const std::vector<const KVCache*>& caches, const Array& q, std::optional<float> scale,
                      int num_threads) {
  if (caches.empty()) throw skv::Error("decode_batch needs at least one cache");
  for (const KVCache* c : caches)
    if (c == nullptr) throw skv::Error("decode_batch: caches must not contain None");
  const KVCache& first = *caches[0];
  for (std::size_t b = 1; b < caches.size(); ++b)
    if (!first.get().same_type(caches[b]->get()) || caches[b]->get().num_kv_heads() != first.get().num_kv_heads())
      throw skv::Error("decode_batch: every cache must have the same configuration and num_kv_heads (cache 0 is " +
                       first.get().config().name() + " with " + std::to_string(first.get().num_kv_heads()) +
                       " KV heads, cache " + std::to_string(b) + " is " + caches[b]->get().config().name() + " with " +
                       std::to_string(caches[b]->get().num_kv_heads()) + ")");
  const int nq = first.check_query(q, 3);
  if (q.shape(0) != caches.size())
    throw skv::Error("q has " + std::to_string(q.shape(0)) + " rows for " + std::to_string(caches.size()) + " caches");
  const float s = scale.value_or(first.get().default_scale());
  const std::size_t d = static_cast<std::size_t>(first.get().config().head_dim);
  OutArray out = new_output(caches.size(), static_cast<std::size_t>(nq), d);
  std::vector<const AnyCache*> any;
  for (const KVCache* c : caches) any.push_back(&c->get());
  {
    nb::gil_scoped_release release;
    first.get().decode_batch(any.data(), static_cast<int>(any.size()), static_cast<const float*>(q.data()), nq,
                             out.data(), s, num_threads);
  }
  return out;
}

nb::list compiled() {
  std::vector<std::tuple<int, int, int, int, int>> rows;
  for (const Family& f : families())
    for (const auto& [kb, vb] : f.pairs) rows.emplace_back(f.head_dim, f.residual, f.options, kb, vb);
  std::sort(rows.begin(), rows.end());
  nb::list out;
  for (const auto& [d, r, o, kb, vb] : rows) {
    nb::dict row;
    row["key_bits"] = kb;
    row["value_bits"] = vb;
    row["head_dim"] = d;
    row["residual"] = r;
    row["rotate_keys"] = o != kNoOptions;
    row["sinks"] = o != kNoOptions ? kCompiledSinks : 0;
    row["clip"] = o == kRotateSinksClip;
    out.append(row);
  }
  return out;
}

}  // namespace
}  // namespace skv_python

NB_MODULE(_skv, m) {
  using namespace skv_python;
  m.doc() = "skv: mixed-precision quantized KV caches (the compiled extension; import skv instead).";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const skv::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  nb::class_<KVCache>(m, "KVCache", R"doc(A quantized KV cache for one sequence (one layer).

Keys are quantized per channel in groups of 32 tokens to key_bits, values per token in groups of up
to 64 channels to value_bits, with fp16 scales and zero points, in pages of 64 tokens. The last
incomplete group of tokens (plus `residual` more) stays in float32 until it is quantized once.
rotate_keys=True rotates keys (and queries) by a randomized Hadamard transform; sinks=4 keeps the
first 4 tokens in float32; clip=True chooses every group's range by a clipping search.

Given only the bits, the cache uses residual=128, rotate_keys=True, sinks=4, clip=False: the best
compiled setting measured in a real model's generation loop (docs/accuracy.md, "Defaults"); at
head_dim 96 (no rotation) the options are off. Given some of rotate_keys, sinks and clip, the others
are off. residual=0, rotate_keys=False gives the plain cache of the C++ short form.

Only compiled configurations exist (skv.compiled()); any other raises ValueError naming the set.)doc")
      .def(nb::init<int, int, int, int, int, std::optional<int>, std::optional<bool>, std::optional<int>,
                    std::optional<bool>>(),
           "key_bits"_a, "value_bits"_a, "head_dim"_a = 128, "num_kv_heads"_a, "max_tokens"_a,
           "residual"_a = nb::none(), "rotate_keys"_a = nb::none(), "sinks"_a = nb::none(), "clip"_a = nb::none(),
           "Allocates every page for max_tokens tokens up front. Defaults: residual=128 and, when none of\n"
           "rotate_keys, sinks and clip is given, rotate_keys=True, sinks=4, clip=False (off at head_dim 96).")
      .def("append", &KVCache::append, "k"_a, "v"_a,
           "Appends tokens: k and v are [n, num_kv_heads, head_dim], float32 or float16, C-contiguous, read in\n"
           "place. All or nothing: NaN/Inf, a wrong shape or dtype, or too many tokens raise ValueError and\n"
           "leave the cache unchanged.")
      .def("decode", &KVCache::decode, "q"_a, "scale"_a = nb::none(), "num_threads"_a = 0,
           "Attention of one query token over every cached token: q [num_q_heads, head_dim] float32\n"
           "(num_q_heads a multiple of num_kv_heads) -> float32 [num_q_heads, head_dim]. scale defaults to\n"
           "1/sqrt(head_dim); num_threads 0 uses every OpenMP thread.")
      .def("attention", &KVCache::attention, "q"_a, "scale"_a = nb::none(), "num_threads"_a = 0,
           "Causal attention for the last n appended tokens (a prefill chunk, drafted tokens):\n"
           "q [n, num_q_heads, head_dim] float32 -> float32 [n, num_q_heads, head_dim]; query i attends to\n"
           "tokens 0 .. len(cache) - n + i. With n == 1 it equals decode(q[0]).")
      .def("clear", &KVCache::clear, "Forgets every token (the memory stays allocated).")
      .def("page_bytes", &KVCache::page_bytes, "The bytes of the pages in use (uint8), as the C++ cache stores them.")
      .def("full_precision", &KVCache::full_precision,
           "The float32 area: the residual ring (keys, then values), then the sink tokens.")
      .def("_time_decode", &KVCache::time_decode, "q"_a, "iterations"_a, "num_threads"_a = 0,
           "Seconds per decode measured in C++ without Python in the loop (for benchmarks).")
      .def("__len__", [](const KVCache& c) { return c.get().size(); }, "Tokens appended.")
      .def("__repr__", &KVCache::repr)
      .def_prop_ro("capacity", [](const KVCache& c) { return c.get().capacity(); }, "max_tokens.")
      .def_prop_ro("memory_bytes", [](const KVCache& c) { return c.get().memory_bytes(); },
                   "Bytes holding the cached tokens now: pages in use plus the float32 area.")
      .def_prop_ro("reserved_bytes", [](const KVCache& c) { return c.get().reserved_bytes(); },
                   "Bytes allocated for max_tokens.")
      .def_prop_ro("bits_per_element", [](const KVCache& c) { return c.get().bits_per_element(); },
                   "Bits per cached key or value element of a quantized token, scales and zeros included\n"
                   "(sinks and the residual window are full precision; memory_bytes counts them).")
      .def_prop_ro("key_bits", [](const KVCache& c) { return c.get().config().key_bits; })
      .def_prop_ro("value_bits", [](const KVCache& c) { return c.get().config().value_bits; })
      .def_prop_ro("head_dim", [](const KVCache& c) { return c.get().config().head_dim; })
      .def_prop_ro("num_kv_heads", [](const KVCache& c) { return c.get().num_kv_heads(); })
      .def_prop_ro("residual", [](const KVCache& c) { return c.get().config().residual; })
      .def_prop_ro("rotate_keys", [](const KVCache& c) { return c.get().config().options != kNoOptions; })
      .def_prop_ro("sinks", [](const KVCache& c) { return c.get().config().options != kNoOptions ? kCompiledSinks : 0; })
      .def_prop_ro("clip", [](const KVCache& c) { return c.get().config().options == kRotateSinksClip; })
      .def_prop_ro("sink_size", [](const KVCache& c) { return c.get().sink_size(); }, "Tokens kept as float32 sinks.")
      .def_prop_ro("quantized_size", [](const KVCache& c) { return c.get().quantized_size(); },
                   "Tokens stored quantized.")
      .def_prop_ro("residual_size", [](const KVCache& c) { return c.get().residual_size(); },
                   "Tokens still in the float32 residual window.")
      .def_prop_ro("default_scale", [](const KVCache& c) { return c.get().default_scale(); },
                   "The softmax scale used when none is given: 1/sqrt(head_dim).");

  m.def("decode_batch", &skv_python::decode_batch, "caches"_a, "q"_a, "scale"_a = nb::none(), "num_threads"_a = 0,
        "Decodes many caches of one configuration in one call (one thread pool over all of them):\n"
        "q [batch, num_q_heads, head_dim] float32 -> float32 [batch, num_q_heads, head_dim].");
  m.def("compiled", &skv_python::compiled,
        "The compiled configurations: a list of dicts with key_bits, value_bits, head_dim, residual,\n"
        "rotate_keys, sinks and clip.");
}
