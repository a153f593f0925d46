// skv/cache/options.hpp: the accuracy options of a cache type (docs/accuracy.md).
//
//   skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>     // rotated keys, 4 fp32 sink tokens
//   skv::KVCache<3, 2, 128, skv::RotateKeys, skv::RotateValues>  // keys and values rotated
//   skv::BasicKVCache<KQ, VQ, 128, 64, 0, skv::Options<skv::ClipValues>>
//
//   RotateKeys   keys are multiplied by a randomized Hadamard matrix R (quant/rotation.hpp) before
//                they are stored, and queries by R before attention; R is orthogonal, so attention
//                is unchanged in exact arithmetic while outlier channels are spread over all channels.
//                The sign vector comes from the seed, part of the type, so a cache is reproducible.
//   RotateValues values are multiplied by their own randomized Hadamard matrix R_v before they are
//                stored; the attention output, a weighted sum of stored values, is multiplied by R_v^T
//                once per query row. Per-token value groups then see a flat distribution instead of a
//                few large channels (as in KVLinC and TurboQuant); exact arithmetic is unchanged.
//   Sinks<N>     the first N tokens of a sequence are kept in full precision (float; fp16 with
//                Fp16Ring) and never quantized: attention sinks draw a large share of the attention.
//   Fp16Ring     the full-precision area (the residual ring with the partial key group, and the
//                sinks) holds fp16 instead of float: half its memory. Every token is rounded to fp16
//                (after the rotations) before it is stored or quantized, so what a cache holds does
//                not depend on how its appends were split. CPU only: the CUDA cache refuses it.
//   Int8Ring     the same area holds each token row (per KV head) as 8-bit codes with an fp16 zero and
//                step (cache/ring.hpp): about a quarter of its float memory. Every token is rounded
//                through that row (after the rotations) before it is stored or quantized, as with
//                Fp16Ring. CPU only; it excludes Fp16Ring.
//   PreRopeKeys  keys arrive after the model's rotary position embedding (RoPE) and are stored before
//                it: append turns key t back by R(-t) (quant/rotation.hpp, RotaryEmbedding; the cache is
//                given the model's HeadDim/2 frequencies), attention turns each decoded key by R(t).
//                A channel of pre-RoPE keys keeps its sign and size from token to token, which is what
//                per-channel key groups fit (KVQuant); post-RoPE the channel pairs rotate with the
//                position. Attention dequantizes each key tile and rotates it, instead of folding the
//                scales into the query. CPU only; it excludes RotateKeys.
//   ClipKeys     each group's range is chosen by a search over shrunken ranges (ratios 1, 0.95, ...,
//   ClipValues   0.55 of the half-width around the midpoint) for the lowest squared error; the
//                search is exact over its candidates, so a group's error never grows.
//
// Every option is a type; Options<...> combines them in any order (a repeated option keeps the last).
#pragma once

#include <cstdint>
#include <type_traits>

namespace skv {

/// Default seed of the key rotation's sign vector.
constexpr std::uint64_t kDefaultRotationSeed = 0x5eedull;

/// Rotate keys (and queries) by the randomized Hadamard rotation with sign seed `Seed`.
template <std::uint64_t Seed = kDefaultRotationSeed>
struct RotateKeysWithSeed {};
using RotateKeys = RotateKeysWithSeed<>;

/// Default seed of the value rotation's sign vector (independent of the keys').
constexpr std::uint64_t kDefaultValueRotationSeed = 0x5eed7a1ull;

/// Rotate values by the randomized Hadamard rotation with sign seed `Seed` (the output back by its
/// inverse).
template <std::uint64_t Seed = kDefaultValueRotationSeed>
struct RotateValuesWithSeed {};
using RotateValues = RotateValuesWithSeed<>;

/// Keep the first N tokens of every sequence in full precision.
template <int N>
struct Sinks {
  static_assert(N >= 0 && N <= 4096, "skv::Sinks: N must be between 0 and 4096");
};

/// Per-group clipping search for keys / values.
struct ClipKeys {};
struct ClipValues {};

/// Hold the ring and the sinks in fp16 instead of float.
struct Fp16Ring {};

/// Hold the ring and the sinks as 8-bit rows (codes, an fp16 zero and step per token and head).
struct Int8Ring {};

/// Store keys in the basis before the rotary position embedding (the cache's RoPE frequencies).
struct PreRopeKeys {};

namespace detail {

/// What each option sets; an unknown type is a compile-time error naming it.
template <class Opt>
struct OptionTraits {
  static_assert(sizeof(Opt) == 0,
                "skv::Options: every option must be skv::RotateKeys(WithSeed), skv::RotateValues(WithSeed), "
                "skv::Sinks<N>, skv::ClipKeys, skv::ClipValues, skv::Fp16Ring, skv::Int8Ring or skv::PreRopeKeys");
};

template <bool Rotate, std::uint64_t Seed, int SinkTokens, bool ClipK, bool ClipV, bool RotateV = false,
          std::uint64_t SeedV = kDefaultValueRotationSeed, bool HalfRing = false, bool ByteRing = false,
          bool PreRope = false>
struct OptionValues {
  static constexpr bool kRotateKeys = Rotate;
  static constexpr std::uint64_t kRotationSeed = Seed;
  static constexpr int kSinkTokens = SinkTokens;
  static constexpr bool kClipKeys = ClipK;
  static constexpr bool kClipValues = ClipV;
  static constexpr bool kRotateValues = RotateV;
  static constexpr std::uint64_t kValueRotationSeed = SeedV;
  static constexpr bool kFp16Ring = HalfRing;
  static constexpr bool kInt8Ring = ByteRing;
  static constexpr bool kPreRopeKeys = PreRope;
};

template <std::uint64_t S>
struct OptionTraits<RotateKeysWithSeed<S>> {
  template <class A>
  using apply = OptionValues<true, S, A::kSinkTokens, A::kClipKeys, A::kClipValues, A::kRotateValues,
                             A::kValueRotationSeed, A::kFp16Ring, A::kInt8Ring, A::kPreRopeKeys>;
};
template <std::uint64_t S>
struct OptionTraits<RotateValuesWithSeed<S>> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, A::kSinkTokens, A::kClipKeys, A::kClipValues, true, S,
                             A::kFp16Ring, A::kInt8Ring, A::kPreRopeKeys>;
};
template <int N>
struct OptionTraits<Sinks<N>> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, N, A::kClipKeys, A::kClipValues, A::kRotateValues,
                             A::kValueRotationSeed, A::kFp16Ring, A::kInt8Ring, A::kPreRopeKeys>;
};
template <>
struct OptionTraits<ClipKeys> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, A::kSinkTokens, true, A::kClipValues, A::kRotateValues,
                             A::kValueRotationSeed, A::kFp16Ring, A::kInt8Ring, A::kPreRopeKeys>;
};
template <>
struct OptionTraits<ClipValues> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, A::kSinkTokens, A::kClipKeys, true, A::kRotateValues,
                             A::kValueRotationSeed, A::kFp16Ring, A::kInt8Ring, A::kPreRopeKeys>;
};

template <>
struct OptionTraits<Fp16Ring> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, A::kSinkTokens, A::kClipKeys, A::kClipValues,
                             A::kRotateValues, A::kValueRotationSeed, true, A::kInt8Ring, A::kPreRopeKeys>;
};

template <>
struct OptionTraits<Int8Ring> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, A::kSinkTokens, A::kClipKeys, A::kClipValues,
                             A::kRotateValues, A::kValueRotationSeed, A::kFp16Ring, true, A::kPreRopeKeys>;
};

template <>
struct OptionTraits<PreRopeKeys> {
  template <class A>
  using apply = OptionValues<A::kRotateKeys, A::kRotationSeed, A::kSinkTokens, A::kClipKeys, A::kClipValues,
                             A::kRotateValues, A::kValueRotationSeed, A::kFp16Ring, A::kInt8Ring, true>;
};

template <class Acc, class... Opts>
struct FoldOptions {
  using type = Acc;
};
template <class Acc, class First, class... Rest>
struct FoldOptions<Acc, First, Rest...> {
  using type = typename FoldOptions<typename OptionTraits<First>::template apply<Acc>, Rest...>::type;
};

}  // namespace detail

/// A set of accuracy options; Options<> is the plain cache.
template <class... Opts>
struct Options : detail::FoldOptions<detail::OptionValues<false, kDefaultRotationSeed, 0, false, false>,
                                     Opts...>::type {};

template <class T>
struct IsOptions : std::false_type {};
template <class... Opts>
struct IsOptions<Options<Opts...>> : std::true_type {};

}  // namespace skv
