// skv._skv: the Python extension. A thin edge over the C++ cache types (docs/python.md):
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
#include <skv/numeric/half.hpp>
#include <skv/numeric/simd.hpp>

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

using Array = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<nb::numpy, float>;
using Writable = nb::ndarray<>;

std::string join(const std::vector<std::int64_t>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

/// C order; an array with a zero extent holds no element and is contiguous whatever its strides.
template <class A>
bool is_c_contiguous(const A& a) {
  for (std::size_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) == 0) return true;
  std::int64_t expected = 1;
  for (std::size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) return false;
    expected *= static_cast<std::int64_t>(a.shape(i));
  }
  return true;
}

constexpr std::uint8_t kFloatCode = static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float);
constexpr std::uint8_t kBfloatCode = static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat);

/// The element type of an array skv takes (float32, float16, bfloat16), or none.
template <class A>
std::optional<Dtype> dtype_of(const A& a) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes != 1) return std::nullopt;
  if (t.code == kFloatCode && t.bits == 32) return Dtype::kFloat32;
  if (t.code == kFloatCode && t.bits == 16) return Dtype::kFloat16;
  if (t.code == kBfloatCode && t.bits == 16) return Dtype::kBFloat16;
  return std::nullopt;
}

const char* dtype_name(Dtype d) {
  return d == Dtype::kFloat32 ? "float32" : d == Dtype::kFloat16 ? "float16" : "bfloat16";
}

/// Checks everything but the values; `shape` entries of -1 match any extent. Returns the dtype.
template <class A>
Dtype check_array(const A& a, const char* name, const std::vector<std::int64_t>& shape, const char* layout) {
  const auto fail = [&](const std::string& what) { throw skv::Error(std::string(name) + " " + what); };
  if (a.device_type() != nb::device::cpu::value) fail("must be a CPU array");
  bool shape_ok = a.ndim() == shape.size();
  for (std::size_t i = 0; shape_ok && i < shape.size(); ++i)
    shape_ok = shape[i] < 0 || static_cast<std::int64_t>(a.shape(i)) == shape[i];
  if (!shape_ok) {
    std::string want;
    for (std::size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    std::vector<std::int64_t> got;
    for (std::size_t i = 0; i < a.ndim(); ++i) got.push_back(static_cast<std::int64_t>(a.shape(i)));
    fail("must have shape " + std::string(layout) + " = [" + want + "], got [" + join(got) + "]");
  }
  const std::optional<Dtype> d = dtype_of(a);
  if (!d) fail("must be float32, float16 or bfloat16");
  if (!is_c_contiguous(a)) fail("must be C-contiguous (numpy.ascontiguousarray makes a contiguous copy)");
  return *d;
}

/// Whether a Python object is a torch tensor (without importing torch).
bool is_torch(nb::handle h) {
  for (nb::handle t : nb::borrow<nb::tuple>(h.type().attr("__mro__")))
    if (nb::cast<std::string>(t.attr("__module__")) == "torch" && nb::cast<std::string>(t.attr("__name__")) == "Tensor")
      return true;
  return false;
}

/// An array as float: float32 is read in place; float16 / bfloat16 are widened exactly into `buffer`.
const float* as_float(const Array& q, Dtype d, std::size_t count, std::vector<float>& buffer) {
  if (d == Dtype::kFloat32) return static_cast<const float*>(q.data());
  buffer.resize(count);
  if (d == Dtype::kFloat16)
    skv::simd::to_f32_row(static_cast<const skv::fp16*>(q.data()), count, buffer.data());
  else
    skv::simd::to_f32_row(static_cast<const skv::bf16*>(q.data()), count, buffer.data());
  return buffer.data();
}

/// Where attention writes, and how its float result gets into `out` (rounded once to nearest even
/// for float16 / bfloat16 outputs).
struct Output {
  nb::object result;  // what Python gets back
  void* data = nullptr;
  Dtype dtype = Dtype::kFloat32;
  std::vector<float> buffer;

  float* floats(std::size_t count) {
    if (dtype == Dtype::kFloat32) return static_cast<float*>(data);
    buffer.resize(count);
    return buffer.data();
  }
  void finish(std::size_t count) {
    if (dtype == Dtype::kFloat16) skv::simd::from_f32_row(buffer.data(), count, static_cast<skv::fp16*>(data));
    if (dtype == Dtype::kBFloat16) skv::simd::from_f32_row(buffer.data(), count, static_cast<skv::bf16*>(data));
  }
};

/// The output of an attention call with queries `q` (Python object `q_obj`, dtype `d`): `out` when
/// given (checked: writable, CPU, C-contiguous, q's shape and dtype), else a new array of q's dtype,
/// a torch tensor for torch queries and a numpy array otherwise (numpy has no bfloat16: a bfloat16
/// query that is not a torch tensor needs out=).
Output make_output(nb::handle q_obj, const Array& q, Dtype d, const std::optional<nb::object>& out) {
  std::vector<std::size_t> shape;
  for (std::size_t i = 0; i < q.ndim(); ++i) shape.push_back(q.shape(i));
  Output o;
  o.dtype = d;
  if (out && !out->is_none()) {
    Writable w;
    if (!nb::try_cast(*out, w))
      throw skv::Error("out must be a writable array (numpy, torch, or anything with __dlpack__)");
    std::vector<std::int64_t> want(shape.begin(), shape.end());
    if (check_array(w, "out", want, "q's shape") != d)
      throw skv::Error(std::string("out must have q's dtype (") + dtype_name(d) + ")");
    o.result = *out;
    o.data = w.data();
    return o;
  }
  if (is_torch(q_obj)) {
    nb::object torch = nb::module_::import_("torch");
    nb::list dims;
    for (std::size_t e : shape) dims.append(e);
    o.result = torch.attr("empty")(nb::tuple(dims), "dtype"_a = q_obj.attr("dtype"));
    o.data = nb::cast<Writable>(o.result).data();
    return o;
  }
  if (d == Dtype::kBFloat16)
    throw skv::Error("bfloat16 queries that are not torch tensors need out= (numpy has no bfloat16)");
  std::size_t count = 1;
  for (std::size_t e : shape) count *= e;
  if (d == Dtype::kFloat16) {
    auto* data = new skv::fp16[count ? count : 1]();
    nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<skv::fp16*>(p); });
    o.result = nb::cast(nb::ndarray<nb::numpy>(data, shape.size(), shape.data(), owner, nullptr,
                                               nb::dlpack::dtype{kFloatCode, 16, 1}));
    o.data = data;
    return o;
  }
  auto* data = new float[count ? count : 1]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  o.result = nb::cast(OutArray(data, shape.size(), shape.data(), owner));
  o.data = data;
  return o;
}

/// An array argument as skv reads it (numpy, torch, anything with __dlpack__ or the buffer protocol).
Array as_array(nb::handle h, const char* name) {
  Array a;
  if (!nb::try_cast(h, a))
    throw skv::Error(std::string(name) + " must be an array of float32, float16 or bfloat16 (numpy, torch, or anything "
                     "with __dlpack__ or the buffer protocol)");
  return a;
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
  // the sets python/CMakeLists.txt compiles only with SKV_PYTHON_ALL_OPTION_SETS
  const bool comparison_set = options == kRotateSinksClip || options == kRotateBothSinksLloydMaxFp16Ring;
  const bool any_of_the_set = std::any_of(families().begin(), families().end(),
                                          [&](const Family& f) { return f.options == options; });
  throw skv::Error("no cache compiled for head_dim " + std::to_string(head_dim) + ", residual " +
                   std::to_string(residual) + ", " + option_set_name(options) +
                   "; compiled: " + family_summary() + " (key and value bits each in {2, 3, 4, 8}); see skv.compiled()" +
                   (comparison_set && !any_of_the_set
                        ? ". This option set is built only on request: pip install . "
                          "-Ccmake.define.SKV_PYTHON_ALL_OPTION_SETS=ON"
                        : ""));
}

/// Option flags as keyword arguments: "rotate_keys=True, rotate_values=False, sinks=4, clip=False,
/// lloyd_max_values=False, fp16_ring=False, int8_ring=False".
std::string describe(const OptionFlags& f) {
  const auto b = [](bool x) { return std::string(x ? "True" : "False"); };
  return "rotate_keys=" + b(f.rotate_keys) + ", rotate_values=" + b(f.rotate_values) + ", sinks=" +
         std::to_string(f.sinks) + ", clip=" + b(f.clip) + ", lloyd_max_values=" + b(f.lloyd_max_values) +
         ", fp16_ring=" + b(f.fp16_ring) + ", int8_ring=" + b(f.int8_ring);
}

/// The Python object: owns one compiled cache.
class KVCache {
 public:
  KVCache(int key_bits, int value_bits, int head_dim, int num_kv_heads, int max_tokens, std::optional<int> residual,
          std::optional<bool> rotate_keys, std::optional<bool> rotate_values, std::optional<int> sinks,
          std::optional<bool> clip, std::optional<bool> lloyd_max_values, std::optional<bool> fp16_ring,
          std::optional<bool> int8_ring, int window,
          int max_chunk, int rollback, bool keep_sinks, std::optional<std::vector<float>> rope_frequencies) {
    const int r = residual.value_or(kDefaultResidual);
    // Given none of the options: the default set, where it is compiled (the rotation needs a power-of-
    // two head_dim). Given some: the others are off, so rotate_keys=False alone means the plain cache.
    const bool any_option = rotate_keys || rotate_values || sinks || clip || lloyd_max_values || fp16_ring ||
                            int8_ring;
    const bool defaults = !any_option && (head_dim & (head_dim - 1)) == 0;
    OptionFlags want;
    want.rotate_keys = rotate_keys.value_or(defaults && kDefaultRotateKeys);
    want.rotate_values = rotate_values.value_or(false);
    want.sinks = sinks.value_or(defaults ? kDefaultSinks : 0);
    want.clip = clip.value_or(defaults && kDefaultClip);
    want.lloyd_max_values = lloyd_max_values.value_or(false);
    want.fp16_ring = fp16_ring.value_or(false);
    want.int8_ring = int8_ring.value_or(false);
    int set = -1;
    std::string sets;
    for (int o = 0; o < kOptionSets; ++o) {
      const OptionFlags f = option_flags(o);
      if (f.rotate_keys == want.rotate_keys && f.rotate_values == want.rotate_values && f.sinks == want.sinks &&
          f.clip == want.clip && f.lloyd_max_values == want.lloyd_max_values && f.fp16_ring == want.fp16_ring &&
          f.int8_ring == want.int8_ring)
        set = o;
      sets += std::string(o ? "; " : "") + describe(f);
    }
    if (set < 0)
      throw skv::Error("the compiled option sets are: " + sets + "; got " + describe(want) + "; see skv.compiled()");
    cache_ = find_family(head_dim, r, set)
                 .make(key_bits, value_bits, num_kv_heads, max_tokens, Keep{window, max_chunk, rollback, keep_sinks});
    if (rope_frequencies) {
      if (static_cast<int>(rope_frequencies->size()) != head_dim / 2)
        throw skv::Error("rope_frequencies must hold head_dim / 2 = " + std::to_string(head_dim / 2) +
                         " frequencies (the model's inv_freq; partial rotary embeddings are not supported), got " +
                         std::to_string(rope_frequencies->size()));
      cache_->set_rope_frequencies(rope_frequencies->data());
    }
  }

  explicit KVCache(std::unique_ptr<AnyCache> cache) : cache_(std::move(cache)) {}

  const AnyCache& get() const { return *cache_; }

  KVCache copy() const { return KVCache(cache_->clone()); }

  /// (keys, values), each float32 [len, num_kv_heads, head_dim]: every token as attention sees it.
  nb::tuple dequantize() const {
    const std::size_t n = static_cast<std::size_t>(cache_->size()), h = static_cast<std::size_t>(cache_->num_kv_heads()),
                      d = static_cast<std::size_t>(cache_->config().head_dim);
    auto* k = new float[n * h * d + 1];
    auto* v = new float[n * h * d + 1];
    nb::capsule ko(k, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    nb::capsule vo(v, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    {
      nb::gil_scoped_release release;
      cache_->dequantize(k, v);
    }
    const std::size_t shape[3] = {n, h, d};
    return nb::make_tuple(OutArray(k, 3, shape, ko), OutArray(v, 3, shape, vo));
  }

  void append(nb::handle k_obj, nb::handle v_obj) {
    const Array k = as_array(k_obj, "k"), v = as_array(v_obj, "v");
    const std::int64_t h = cache_->num_kv_heads(), d = cache_->config().head_dim;
    const Dtype dk = check_array(k, "k", {-1, h, d}, "[n, num_kv_heads, head_dim]");
    const Dtype dv = check_array(v, "v", {-1, h, d}, "[n, num_kv_heads, head_dim]");
    if (k.shape(0) != v.shape(0))
      throw skv::Error("k and v must hold the same number of tokens (" + std::to_string(k.shape(0)) + " and " +
                       std::to_string(v.shape(0)) + ")");
    if (dk != dv) throw skv::Error("k and v must have the same dtype");
    if (k.shape(0) > static_cast<std::size_t>(INT32_MAX)) throw skv::Error("too many tokens in one append");
    const int n = static_cast<int>(k.shape(0));
    nb::gil_scoped_release release;
    // float16 / bfloat16 are widened exactly here, once, so that the compiled set instantiates one
    // append per cache type: the cache's bytes are those of the float values (skv::append's contract)
    const std::size_t count = k.shape(0) * static_cast<std::size_t>(h * d);
    std::vector<float> kf, vf;
    cache_->append(as_float(k, dk, count, kf), as_float(v, dv, count, vf), n);
  }

  void truncate(std::int64_t n) {
    if (n < 0 || n > INT32_MAX) throw skv::Error("truncate: n must be between 0 and len(cache), got " + std::to_string(n));
    nb::gil_scoped_release release;
    cache_->truncate(static_cast<int>(n));
  }

  bool can_truncate(std::int64_t n) const {
    return n >= 0 && n <= INT32_MAX && cache_->can_truncate(static_cast<int>(n));
  }

  nb::object decode(nb::handle q_obj, std::optional<float> scale, int num_threads, std::optional<nb::object> out) const {
    const Array q = as_array(q_obj, "q");
    const Dtype d = check_query(q, 2);
    const int nq = static_cast<int>(q.shape(0));
    const float s = scale.value_or(cache_->default_scale());
    Output o = make_output(q_obj, q, d, out);
    const std::size_t count = static_cast<std::size_t>(nq) * cache_->config().head_dim;
    {
      nb::gil_scoped_release release;
      std::vector<float> qf;
      cache_->decode(as_float(q, d, count, qf), nq, o.floats(count), s, num_threads);
      o.finish(count);
    }
    return o.result;
  }

  nb::object attention(nb::handle q_obj, std::optional<float> scale, int num_threads,
                       std::optional<nb::object> out) const {
    const Array q = as_array(q_obj, "q");
    const Dtype d = check_query(q, 3, "[num_q_tokens, num_q_heads, head_dim]");
    const std::size_t n = q.shape(0);
    if (n > static_cast<std::size_t>(INT32_MAX)) throw skv::Error("attention: too many query tokens");
    const int nq = static_cast<int>(q.shape(1));
    const float s = scale.value_or(cache_->default_scale());
    Output o = make_output(q_obj, q, d, out);
    const std::size_t count = n * static_cast<std::size_t>(nq) * cache_->config().head_dim;
    {
      nb::gil_scoped_release release;
      std::vector<float> qf;
      cache_->attention(as_float(q, d, count, qf), static_cast<int>(n), nq, o.floats(count), s, num_threads);
      o.finish(count);
    }
    return o.result;
  }

  /// Seconds per decode call measured inside C++ (no Python in the loop), for the overhead benchmark.
  double time_decode(nb::handle q_obj, int iterations, int num_threads) const {
    const Array q = as_array(q_obj, "q");
    if (check_query(q, 2) != Dtype::kFloat32) throw skv::Error("_time_decode takes float32 queries");
    const int nq = static_cast<int>(q.shape(0));
    std::vector<float> out(static_cast<std::size_t>(nq) * cache_->config().head_dim);
    const float s = cache_->default_scale();
    nb::gil_scoped_release release;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iterations; ++i)
      cache_->decode(static_cast<const float*>(q.data()), nq, out.data(), s, num_threads);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return elapsed.count() / (iterations > 0 ? iterations : 1);
  }

  /// q [num_q_heads, head_dim] (ndim 2) or [..., num_q_heads, head_dim] (ndim 3): returns the dtype.
  Dtype check_query(const Array& q, std::size_t ndim, const char* layout3 = "[batch, num_q_heads, head_dim]") const {
    const std::int64_t d = cache_->config().head_dim;
    const char* layout = ndim == 2 ? "[num_q_heads, head_dim]" : layout3;
    if (q.ndim() != ndim) {
      std::vector<std::int64_t> got;
      for (std::size_t i = 0; i < q.ndim(); ++i) got.push_back(static_cast<std::int64_t>(q.shape(i)));
      throw skv::Error("q must have " + std::to_string(ndim) + " dimensions " + layout + ", got [" + join(got) + "]");
    }
    const Dtype dt = ndim == 2 ? check_array(q, "q", {-1, d}, layout) : check_array(q, "q", {-1, -1, d}, layout);
    const std::int64_t nq = static_cast<std::int64_t>(q.shape(ndim - 2));
    if (nq <= 0 || nq % cache_->num_kv_heads() != 0 || nq > INT32_MAX)
      throw skv::Error("q's num_q_heads (" + std::to_string(nq) + ") must be a positive multiple of num_kv_heads (" +
                       std::to_string(cache_->num_kv_heads()) + ")");
    return dt;
  }

  void clear() {
    nb::gil_scoped_release release;
    cache_->clear();
  }

  nb::ndarray<nb::numpy, std::uint8_t> page_bytes() const { return to_numpy(cache_->page_bytes()); }
  nb::ndarray<nb::numpy, float> full_precision() const { return to_numpy(cache_->full_precision()); }

  std::string repr() const {
    const Keep& k = cache_->keep();
    return "skv.KVCache(" + cache_->config().name() + ", num_kv_heads " + std::to_string(cache_->num_kv_heads()) +
           (k.window ? ", window " + std::to_string(k.window) : std::string()) + ", " + std::to_string(cache_->size()) +
           " of " + std::to_string(cache_->capacity()) + " tokens)";
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

nb::object decode_batch(const std::vector<const KVCache*>& caches, nb::handle q_obj, std::optional<float> scale,
                        int num_threads, std::optional<nb::object> out) {
  if (caches.empty()) throw skv::Error("decode_batch needs at least one cache");
  for (const KVCache* c : caches)
    if (c == nullptr) throw skv::Error("decode_batch: caches must not contain None");
  const KVCache& first = *caches[0];
  const Keep& keep = first.get().keep();
  for (std::size_t b = 1; b < caches.size(); ++b) {
    const AnyCache& c = caches[b]->get();
    if (!first.get().same_type(c) || c.num_kv_heads() != first.get().num_kv_heads() ||
        c.keep().window != keep.window || c.keep().keep_sinks != keep.keep_sinks)
      throw skv::Error("decode_batch: every cache must have the same configuration, num_kv_heads, window and "
                       "keep_sinks (cache 0 is " + first.get().config().name() + " with " +
                       std::to_string(first.get().num_kv_heads()) + " KV heads, window " + std::to_string(keep.window) +
                       ", cache " + std::to_string(b) + " is " + c.config().name() + " with " +
                       std::to_string(c.num_kv_heads()) + " KV heads, window " + std::to_string(c.keep().window) + ")");
  }
  const Array q = as_array(q_obj, "q");
  const Dtype d = first.check_query(q, 3);
  if (q.shape(0) != caches.size())
    throw skv::Error("q has " + std::to_string(q.shape(0)) + " rows for " + std::to_string(caches.size()) + " caches");
  const int nq = static_cast<int>(q.shape(1));
  const float s = scale.value_or(first.get().default_scale());
  Output o = make_output(q_obj, q, d, out);
  const std::size_t count = caches.size() * static_cast<std::size_t>(nq) * first.get().config().head_dim;
  std::vector<const AnyCache*> any;
  for (const KVCache* c : caches) any.push_back(&c->get());
  {
    nb::gil_scoped_release release;
    std::vector<float> qf;
    first.get().decode_batch(any.data(), static_cast<int>(any.size()), as_float(q, d, count, qf), nq, o.floats(count), s,
                             num_threads);
    o.finish(count);
  }
  return o.result;
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
    const OptionFlags f = option_flags(o);
    row["rotate_keys"] = f.rotate_keys;
    row["rotate_values"] = f.rotate_values;
    row["sinks"] = f.sinks;
    row["clip"] = f.clip;
    row["lloyd_max_values"] = f.lloyd_max_values;
    row["fp16_ring"] = f.fp16_ring;
    row["int8_ring"] = f.int8_ring;
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
to 64 channels to value_bits, with fp16 scales and zero points, in pages of 64 tokens (without
rotate_keys, in the 8-bit-ring set: values grouped over the whole head, pages of 32 tokens). The last
incomplete group of tokens (plus `residual` more) stays in float32 until it is quantized once.
rotate_keys=True rotates keys (and queries) by a randomized Hadamard transform; rotate_values=True
rotates values by another one (and the attention output back); sinks=4 keeps the first 4 tokens in
float32; clip=True chooses every group's range by a clipping search; lloyd_max_values=True codes
values with the Lloyd-Max levels of a normal distribution (with rotate_values, value bits 2 to 4);
fp16_ring=True (with all of those but clip) holds the ring and the sinks in float16: half their
memory, every token rounded to float16 before it is stored or quantized. int8_ring=True (instead of
fp16_ring) holds them as 8-bit rows, each token and head with a float16 zero and step: about a
quarter of their float32 memory, every token rounded through its row the same way.

Given only the bits, the cache uses residual=128, rotate_keys=True, sinks=4, clip=False: the best
compiled setting measured in a real model's generation loop (docs/accuracy.md, "Defaults"); at
head_dim 96 (no rotation) the options are off. Given some of rotate_keys, rotate_values, sinks, clip,
lloyd_max_values, fp16_ring and int8_ring, the others are off. residual=0, rotate_keys=False gives
the plain cache of the C++ short form.

Only compiled configurations exist (skv.compiled()); any other raises ValueError naming the set.)doc")
      .def(nb::init<int, int, int, int, int, std::optional<int>, std::optional<bool>, std::optional<bool>,
                    std::optional<int>, std::optional<bool>, std::optional<bool>, std::optional<bool>,
                    std::optional<bool>, int, int, int, bool, std::optional<std::vector<float>>>(),
           "key_bits"_a, "value_bits"_a, "head_dim"_a = 128, "num_kv_heads"_a, "max_tokens"_a,
           "residual"_a = nb::none(), "rotate_keys"_a = nb::none(), "rotate_values"_a = nb::none(),
           "sinks"_a = nb::none(), "clip"_a = nb::none(), "lloyd_max_values"_a = nb::none(),
           "fp16_ring"_a = nb::none(), "int8_ring"_a = nb::none(), "window"_a = 0, "max_chunk"_a = 0,
           "rollback"_a = 0, "keep_sinks"_a = false, "rope_frequencies"_a = nb::none(),
           "Allocates every page for max_tokens tokens up front. Defaults: residual=128 and, when none of\n"
           "rotate_keys, rotate_values, sinks, clip, lloyd_max_values, fp16_ring and int8_ring is given,\n"
           "rotate_keys=True, rotate_values=False, sinks=4, clip=False, lloyd_max_values=False, fp16_ring=False,\n"
           "int8_ring=False (off at head_dim 96).\n"
           "window=W > 0: a sliding-window cache; query i sees tokens i-W < j <= i (with keep_sinks=True the\n"
           "sink tokens too) and memory is bounded by the window, whatever max_tokens is (a stream of any\n"
           "length); attention() serves chunks of up to max_chunk queries (0: 64). rollback=N keeps float\n"
           "copies of N more tokens so that truncate() can always take back N tokens.\n"
           "rope_frequencies: the model's rotary frequencies (head_dim / 2 floats, its inv_freq) for the set\n"
           "without rotated keys (int8_ring=True, rotate_keys=False), which then stores key t as R(-t) k, before\n"
           "the rotary embedding, and turns what it decodes by R(t); keys arrive and attend post-RoPE as usual.")
      .def("append", &KVCache::append, "k"_a, "v"_a,
           "Appends tokens: k and v are [n, num_kv_heads, head_dim], float32, float16 or bfloat16 (one dtype),\n"
           "C-contiguous, read in place (numpy, torch, DLPack). A rejected call (NaN/Inf, a wrong shape or dtype,\n"
           "too many tokens) raises ValueError and leaves every stored token unchanged; page slots past the\n"
           "quantized length, which hold no token, may have been written (page_bytes() shows them).")
      .def("truncate", &KVCache::truncate, "n"_a,
           "Forgets the tokens after the first n (rejected draft tokens): afterwards the cache holds what\n"
           "appending its first n tokens gives. Raises ValueError, changing nothing, when a block that\n"
           "completed after token n can no longer be taken back (see rollback).")
      .def("can_truncate", &KVCache::can_truncate, "n"_a,
           "Whether truncate(n) would succeed; a batch checks every sequence before it truncates any.")
      .def("decode", &KVCache::decode, "q"_a, "scale"_a = nb::none(), "num_threads"_a = 0, "out"_a = nb::none(),
           "Attention of one query token (position len(cache) - 1) over the cache: q [num_q_heads, head_dim]\n"
           "float32, float16 or bfloat16 (num_q_heads a multiple of num_kv_heads) -> [num_q_heads, head_dim] of\n"
           "q's dtype, into out= when given, else a new torch tensor for torch queries or a numpy array.\n"
           "scale defaults to 1/sqrt(head_dim); num_threads 0 uses every OpenMP thread. An empty cache raises\n"
           "ValueError (the query's own token must be appended first), as attention() does.")
      .def("attention", &KVCache::attention, "q"_a, "scale"_a = nb::none(), "num_threads"_a = 0, "out"_a = nb::none(),
           "Causal attention for the last n appended tokens (a prefill chunk, drafted tokens):\n"
           "q [n, num_q_heads, head_dim] float32, float16 or bfloat16 -> the same shape and dtype (out= as in\n"
           "decode); query i attends to tokens 0 .. len(cache) - n + i (the last `window` of them in a window\n"
           "cache). With n == 1 it equals decode(q[0]).")
      .def("copy", &KVCache::copy, "An independent copy of the cache (its pages, ring and length).")
      .def("__copy__", &KVCache::copy)
      .def("dequantize", &KVCache::dequantize,
           "(keys, values), float32 [len, num_kv_heads, head_dim]: every token as attention sees it (keys in\n"
           "their own basis). O(len) per call: for inspection and for frameworks that need whole tensors.")
      .def("clear", &KVCache::clear, "Forgets every token (the memory stays allocated).")
      .def("page_bytes", &KVCache::page_bytes, "The bytes of the pages in use (uint8), as the C++ cache stores them.")
      .def("full_precision", &KVCache::full_precision,
           "The full-precision area as float32 (float16 values with fp16_ring, the decoded rows with int8_ring):\n"
           "the residual ring (keys, then values), then the sink tokens; keys as stored (before the rotary\n"
           "embedding when the cache has rope_frequencies).")
      .def("_time_decode", &KVCache::time_decode, "q"_a, "iterations"_a, "num_threads"_a = 0,
           "Seconds per decode measured in C++ without Python in the loop (for benchmarks).")
      .def("__len__", [](const KVCache& c) { return c.get().size(); }, "Tokens appended.")
      .def("__repr__", &KVCache::repr)
      .def_prop_ro("capacity", [](const KVCache& c) { return c.get().capacity(); }, "max_tokens.")
      .def_prop_ro("memory_bytes", [](const KVCache& c) { return c.get().memory_bytes(); },
                   "Bytes holding the cached tokens now: pages in use plus the full-precision area (float32;\n"
                   "float16 with fp16_ring; 8-bit rows with int8_ring).")
      .def_prop_ro("reserved_bytes", [](const KVCache& c) { return c.get().reserved_bytes(); },
                   "Bytes allocated for max_tokens.")
      .def_prop_ro("bits_per_element", [](const KVCache& c) { return c.get().bits_per_element(); },
                   "Bits per cached key or value element of a quantized token, scales and zeros included\n"
                   "(sinks and the residual window are full precision; memory_bytes counts them).")
      .def_prop_ro("key_bits", [](const KVCache& c) { return c.get().config().key_bits; })
      .def_prop_ro("value_bits", [](const KVCache& c) { return c.get().config().value_bits; })
      .def_prop_ro("head_dim", [](const KVCache& c) { return c.get().config().head_dim; })
      .def_prop_ro("value_group", [](const KVCache& c) { return c.get().config().value_group; },
                   "Channels per value group (values are grouped per token): 64 (32 at head_dim 96), or the "
                   "whole head in the set without rotated keys.")
      .def_prop_ro("page_size", [](const KVCache& c) { return c.get().config().page_size; },
                   "Tokens per page: 64, or 32 in the set without rotated keys.")
      .def_prop_ro("num_kv_heads", [](const KVCache& c) { return c.get().num_kv_heads(); })
      .def_prop_ro("residual", [](const KVCache& c) { return c.get().config().residual; })
      .def_prop_ro("rotate_keys", [](const KVCache& c) { return option_flags(c.get().config().options).rotate_keys; })
      .def_prop_ro("rotate_values",
                   [](const KVCache& c) { return option_flags(c.get().config().options).rotate_values; })
      .def_prop_ro("sinks", [](const KVCache& c) { return option_flags(c.get().config().options).sinks; })
      .def_prop_ro("clip", [](const KVCache& c) { return option_flags(c.get().config().options).clip; })
      .def_prop_ro("lloyd_max_values",
                   [](const KVCache& c) { return option_flags(c.get().config().options).lloyd_max_values; })
      .def_prop_ro("fp16_ring", [](const KVCache& c) { return option_flags(c.get().config().options).fp16_ring; })
      .def_prop_ro("int8_ring", [](const KVCache& c) { return option_flags(c.get().config().options).int8_ring; })
      .def_prop_ro("pre_rope_keys", [](const KVCache& c) { return c.get().pre_rope_keys(); },
                   "Whether the cache stores keys before the rotary embedding given rope_frequencies (the set "
                   "without rotated keys).")
      .def_prop_ro("rope_frequencies",
                   [](const KVCache& c) -> nb::object {
                     if (!c.get().pre_rope_keys()) return nb::none();
                     return nb::cast(c.get().rope_frequencies());
                   },
                   "The rotary frequencies keys are stored by (a list of head_dim / 2 floats; zeros: keys stored "
                   "as given), or None for the sets that store keys as given.")
      .def_prop_ro("sink_size", [](const KVCache& c) { return c.get().sink_size(); }, "Tokens kept as float32 sinks.")
      .def_prop_ro("quantized_size", [](const KVCache& c) { return c.get().quantized_size(); },
                   "Tokens stored quantized.")
      .def_prop_ro("residual_size", [](const KVCache& c) { return c.get().residual_size(); },
                   "Tokens still in the float32 residual window.")
      .def_prop_ro("default_scale", [](const KVCache& c) { return c.get().default_scale(); },
                   "The softmax scale used when none is given: 1/sqrt(head_dim).")
      .def_prop_ro("window", [](const KVCache& c) { return c.get().keep().window; },
                   "The sliding window in tokens (0: attention reads every token).")
      .def_prop_ro("max_chunk", [](const KVCache& c) { return c.get().keep().max_chunk; },
                   "Query tokens per attention() call that a window cache serves.")
      .def_prop_ro("rollback", [](const KVCache& c) { return c.get().keep().rollback; },
                   "Tokens truncate() can always take back beyond those the ring holds.")
      .def_prop_ro("keep_sinks", [](const KVCache& c) { return c.get().keep().keep_sinks; },
                   "Whether the sink tokens stay visible outside the window.");

  m.def("decode_batch", &skv_python::decode_batch, "caches"_a, "q"_a, "scale"_a = nb::none(), "num_threads"_a = 0,
        "out"_a = nb::none(),
        "Decodes many caches of one configuration in one call (one thread pool over all of them):\n"
        "q [batch, num_q_heads, head_dim] float32, float16 or bfloat16 -> the same shape and dtype (out= as\n"
        "in KVCache.decode).");
  m.def("compiled", &skv_python::compiled,
        "The compiled configurations: a list of dicts with key_bits, value_bits, head_dim, residual,\n"
        "rotate_keys, rotate_values, sinks, clip, lloyd_max_values, fp16_ring and int8_ring.");
}
