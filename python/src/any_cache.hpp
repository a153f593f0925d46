// The Python package's view of a cache: one abstract interface over the compiled set of
// skv::BasicKVCache types. Each compiled configuration is a CacheImpl<Cache>; the kernels it calls are
// instantiated for exactly that type (no runtime branch inside them). Which types exist is decided
// in compiled_set.inc, one translation unit per (head_dim, residual, options) family.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace skv_python {

/// The compiled option sets: none; rotated keys + 4 fp32 sink tokens; those two plus the clipping
/// search for keys and values; rotated keys and values + 4 sink tokens; those with values coded
/// by the Lloyd-Max levels of a normal distribution (skv::Scheme::LloydMax, value bits 2 to 4); and
/// those with the ring and the sinks held in fp16 (skv::Fp16Ring) or in 8-bit rows (skv::Int8Ring);
/// and the last without the key rotation (keys that per-channel groups already fit better unrotated),
/// stored before the rotary embedding when the cache is given the model's rotary frequencies.
enum OptionSet : int {
  kNoOptions = 0,
  kRotateSinks = 1,
  kRotateSinksClip = 2,
  kRotateBothSinks = 3,
  kRotateBothSinksLloydMax = 4,
  kRotateBothSinksLloydMaxFp16Ring = 5,
  kRotateBothSinksLloydMaxInt8Ring = 6,
  kRotateValuesSinksLloydMaxInt8Ring = 7
};
constexpr int kOptionSets = 8;

/// What an option set turns on, as Python names it.
struct OptionFlags {
  bool rotate_keys = false;
  bool rotate_values = false;
  int sinks = 0;
  bool clip = false;
  bool lloyd_max_values = false;
  bool fp16_ring = false;
  bool int8_ring = false;
};

inline OptionFlags option_flags(int set) {
  switch (set) {
    case kRotateSinks: return {true, false, 4, false, false};
    case kRotateSinksClip: return {true, false, 4, true, false};
    case kRotateBothSinks: return {true, true, 4, false, false};
    case kRotateBothSinksLloydMax: return {true, true, 4, false, true};
    case kRotateBothSinksLloydMaxFp16Ring: return {true, true, 4, false, true, true, false};
    case kRotateBothSinksLloydMaxInt8Ring: return {true, true, 4, false, true, false, true};
    case kRotateValuesSinksLloydMaxInt8Ring: return {false, true, 4, false, true, false, true};
    default: return {};
  }
}

inline const char* option_set_name(int set) {
  switch (set) {
    case kRotateSinks: return "rotate_keys + sinks 4";
    case kRotateSinksClip: return "rotate_keys + sinks 4 + clip";
    case kRotateBothSinks: return "rotate_keys + rotate_values + sinks 4";
    case kRotateBothSinksLloydMax: return "rotate_keys + rotate_values + lloyd_max_values + sinks 4";
    case kRotateBothSinksLloydMaxFp16Ring: return "rotate_keys + rotate_values + lloyd_max_values + sinks 4 + fp16_ring";
    case kRotateBothSinksLloydMaxInt8Ring:
      return "rotate_keys + rotate_values + lloyd_max_values + sinks 4 + int8_ring";
    case kRotateValuesSinksLloydMaxInt8Ring: return "rotate_values + lloyd_max_values + sinks 4 + int8_ring";
    default: return "no options";
  }
}

/// A cache configuration as Python names it.
struct Config {
  int key_bits = 0;
  int value_bits = 0;
  int head_dim = 0;
  int residual = 0;
  int options = kNoOptions;  ///< an OptionSet
  int value_group = 0;       ///< channels per value group (per token)
  int page_size = 0;         ///< tokens per page

  std::string name() const;
};

enum class Dtype { kFloat32, kFloat16, kBFloat16 };

/// What a cache keeps besides its tokens, as Python sets it (skv::Retention, plus the sink rule a
/// window applies at attention time).
struct Keep {
  int window = 0;
  int max_chunk = 0;
  int rollback = 0;
  bool keep_sinks = false;
};

/// What Python can do with a cache. Inputs are validated by the caller (module.cpp) for shape,
/// dtype and contiguity; the C++ cache checks values (NaN / Inf, capacity) all-or-nothing.
class AnyCache {
 public:
  explicit AnyCache(const Config& config) : config_(config) {}
  virtual ~AnyCache() = default;
  AnyCache(const AnyCache&) = delete;
  AnyCache& operator=(const AnyCache&) = delete;

  const Config& config() const { return config_; }

  /// k, v: [n][num_kv_heads][head_dim] float (float16 / bfloat16 inputs are widened by the caller).
  virtual void append(const float* k, const float* v, int n) = 0;
  /// Forgets the tokens after the first n (skv::BasicKVCache::truncate).
  virtual void truncate(int n) = 0;
  virtual bool can_truncate(int n) const = 0;
  /// q, out: [num_q_heads][head_dim] float. An empty cache is an error here (a query attends at least
  /// to its own token), as in attention().
  virtual void decode(const float* q, int num_q_heads, float* out, float scale, int num_threads) const = 0;
  /// Attention for the last num_q_tokens appended tokens, each causal up to its own position
  /// (prefill chunks, speculative verification): q, out [num_q_tokens][num_q_heads][head_dim] float.
  virtual void attention(const float* q, int num_q_tokens, int num_q_heads, float* out, float scale,
                         int num_threads) const = 0;
  /// Decodes `batch` caches of this same type in one call: q, out [batch][num_q_heads][head_dim].
  virtual void decode_batch(const AnyCache* const* caches, int batch, const float* q, int num_q_heads, float* out,
                            float scale, int num_threads) const = 0;
  virtual bool same_type(const AnyCache& other) const = 0;
  virtual void clear() = 0;
  /// An independent copy (beam search duplicates a sequence).
  virtual std::unique_ptr<AnyCache> clone() const = 0;
  /// Every token as attention sees it, in the keys' own basis (rotation undone): keys and values
  /// [size()][num_kv_heads][head_dim] float. For the fallback that hands whole tensors to a framework.
  virtual void dequantize(float* keys, float* values) const = 0;

  virtual int size() const = 0;
  virtual int capacity() const = 0;
  virtual const Keep& keep() const = 0;
  virtual int num_kv_heads() const = 0;
  virtual int sink_size() const = 0;
  virtual int quantized_size() const = 0;
  virtual int residual_size() const = 0;
  virtual std::size_t memory_bytes() const = 0;
  virtual std::size_t reserved_bytes() const = 0;
  virtual double bits_per_element() const = 0;
  virtual float default_scale() const = 0;

  /// Whether the cache stores keys before the rotary embedding (skv::PreRopeKeys: the set without
  /// rotated keys), and its rotary frequencies (head_dim / 2; zeros until set: keys stored as given).
  virtual bool pre_rope_keys() const = 0;
  virtual std::vector<float> rope_frequencies() const = 0;
  /// Sets them (head_dim / 2 floats) on an empty cache; an error for the other sets.
  virtual void set_rope_frequencies(const float* inv_freq) = 0;

  /// The stored state, for tests and inspection: the bytes of the pages in use, and the
  /// full-precision area (residual ring and sinks) as floats.
  virtual std::vector<std::uint8_t> page_bytes() const = 0;
  virtual std::vector<float> full_precision() const = 0;

 private:
  Config config_;
};

/// One compiled family: every bit pair of `pairs` at one (head_dim, residual, options).
struct Family {
  int head_dim;
  int residual;
  int options;  ///< an OptionSet
  std::vector<std::pair<int, int>> pairs;
  /// Throws skv::Error (naming the compiled pairs) when the pair is not compiled.
  std::unique_ptr<AnyCache> (*make)(int key_bits, int value_bits, int num_kv_heads, int max_tokens, const Keep& keep);
};

/// Every family compiled into the extension, in registration order.
std::vector<Family>& families();

struct RegisterFamily {
  explicit RegisterFamily(Family f) { families().push_back(std::move(f)); }
};

}  // namespace skv_python
