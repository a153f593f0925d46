// skv/dispatch.hpp: from a runtime (key_bits, value_bits) pair -- e.g. a line of a bit plan -- to the
// compile-time cache type, at the edge of an engine. Kernels never dispatch at run time: only the
// pairs listed are instantiated, and asking for any other is an error that lists them.
//
//   using Compiled = skv::BitPairs<skv::BitPair<4, 2>, skv::BitPair<4, 4>, skv::BitPair<8, 4>>;
//   // or: using Compiled = skv::BitPairList<4, 2, 4, 4, 8, 4>;
//   skv::dispatch<Compiled>(plan.key_bits, plan.value_bits, [&](auto tag) {
//     using Cache = typename decltype(tag)::type;   // skv::KVCache<4, 2> for (4, 2)
//     run_layer<Cache>(...);
//   });
//
// dispatch_with<Pairs, CacheOf> does the same for any family of cache types (other head dims,
// residual windows, options): the Python package instantiates its compiled set that way.
#pragma once

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <skv/cache/kv_cache.hpp>
#include <skv/error.hpp>

namespace skv {

/// Carries a type to a generic lambda: f(TypeTag<T>{}) and then typename decltype(tag)::type.
template <class T>
struct TypeTag {
  using type = T;
};

/// One compiled (key bits, value bits) combination.
template <int KeyBits, int ValueBits>
struct BitPair {
  static_assert(KeyBits >= 1 && KeyBits <= 8, "skv::BitPair: KeyBits must be between 1 and 8");
  static_assert(ValueBits >= 1 && ValueBits <= 8, "skv::BitPair: ValueBits must be between 1 and 8");
  static constexpr int kKeyBits = KeyBits;
  static constexpr int kValueBits = ValueBits;
};

template <class T>
struct IsBitPair : std::false_type {};
template <int K, int V>
struct IsBitPair<BitPair<K, V>> : std::true_type {};

/// The set of compiled pairs.
template <class... Pairs>
struct BitPairs {
  static_assert(sizeof...(Pairs) > 0, "skv::BitPairs: list at least one skv::BitPair");
  static_assert((IsBitPair<Pairs>::value && ...), "skv::BitPairs: every entry must be an skv::BitPair<KeyBits, ValueBits>");
  static constexpr int kSize = static_cast<int>(sizeof...(Pairs));

  static constexpr bool contains(int key_bits, int value_bits) {
    return ((Pairs::kKeyBits == key_bits && Pairs::kValueBits == value_bits) || ...);
  }
  /// "k4v2, k4v4, k8v4"
  static std::string names() {
    std::string s;
    ((s += (s.empty() ? "" : ", ") + std::string("k") + std::to_string(Pairs::kKeyBits) + "v" +
           std::to_string(Pairs::kValueBits)),
     ...);
    return s;
  }
};

namespace detail {
template <class Acc, int... Bits>
struct BitPairListImpl;
template <class... Done>
struct BitPairListImpl<BitPairs<Done...>> {
  using type = BitPairs<Done...>;
};
template <class... Done, int K, int V, int... Rest>
struct BitPairListImpl<BitPairs<Done...>, K, V, Rest...> {
  using type = typename BitPairListImpl<BitPairs<Done..., BitPair<K, V>>, Rest...>::type;
};
template <int... Bits>
struct BitPairListOf {
  static_assert(sizeof...(Bits) % 2 == 0, "skv::BitPairList: give key and value bits in pairs: <K0, V0, K1, V1, ...>");
  static_assert(sizeof...(Bits) > 0, "skv::BitPairList: list at least one pair");
  using type = typename BitPairListImpl<BitPairs<>, Bits...>::type;
};
}  // namespace detail

/// BitPairList<4, 2, 4, 4> == BitPairs<BitPair<4, 2>, BitPair<4, 4>>.
template <int... Bits>
using BitPairList = typename detail::BitPairListOf<Bits...>::type;

/// The default cache type for a pair: KVCache<K, V, HeadDim>.
template <int HeadDim>
struct DefaultCacheOf {
  template <int K, int V>
  using type = KVCache<K, V, HeadDim>;
  static std::string describe() { return "head_dim " + std::to_string(HeadDim); }
};

namespace detail {
template <class CacheOf, class F, class... Pairs>
decltype(auto) dispatch_impl(BitPairs<Pairs...>*, int key_bits, int value_bits, F&& f) {
  using First = std::tuple_element_t<0, std::tuple<Pairs...>>;
  using R = decltype(f(TypeTag<typename CacheOf::template type<First::kKeyBits, First::kValueBits>>{}));
  const auto not_found = [&] {
    return Error("no cache compiled for k" + std::to_string(key_bits) + "v" + std::to_string(value_bits) + " (" +
                 CacheOf::describe() + "); compiled pairs: " + BitPairs<Pairs...>::names());
  };
  if constexpr (std::is_void_v<R>) {
    const bool found =
        ((Pairs::kKeyBits == key_bits && Pairs::kValueBits == value_bits
              ? (f(TypeTag<typename CacheOf::template type<Pairs::kKeyBits, Pairs::kValueBits>>{}), true)
              : false) ||
         ...);
    if (!found) throw not_found();
  } else {
    R result{};
    const bool found =
        ((Pairs::kKeyBits == key_bits && Pairs::kValueBits == value_bits
              ? (result = f(TypeTag<typename CacheOf::template type<Pairs::kKeyBits, Pairs::kValueBits>>{}), true)
              : false) ||
         ...);
    if (!found) throw not_found();
    return result;
  }
}

template <class F, class... Pairs>
void for_each_pair_impl(BitPairs<Pairs...>*, F&& f) {
  (f(TypeTag<Pairs>{}), ...);
}
}  // namespace detail

/// Calls f(TypeTag<CacheOf::type<key_bits, value_bits>>{}) for the matching pair of `Pairs` (an
/// skv::BitPairs); throws skv::Error listing the compiled pairs when none matches. CacheOf maps a
/// pair to a cache type (`template <int K, int V> using type = ...;`) and names the rest of the
/// configuration (`static std::string describe();`), as DefaultCacheOf does. f must return the same
/// type for every pair (void, or a default-constructible type that is returned).
template <class Pairs, class CacheOf, class F>
decltype(auto) dispatch_with(int key_bits, int value_bits, F&& f) {
  return detail::dispatch_impl<CacheOf>(static_cast<Pairs*>(nullptr), key_bits, value_bits, std::forward<F>(f));
}

/// dispatch_with for the short form: f(TypeTag<KVCache<key_bits, value_bits, HeadDim>>{}).
template <class Pairs, int HeadDim = 128, class F>
decltype(auto) dispatch(int key_bits, int value_bits, F&& f) {
  return dispatch_with<Pairs, DefaultCacheOf<HeadDim>>(key_bits, value_bits, std::forward<F>(f));
}

/// Calls f(TypeTag<BitPair<K, V>>{}) for every pair of `Pairs`, in order (e.g. to list or register
/// the compiled set).
template <class Pairs, class F>
void for_each_pair(F&& f) {
  detail::for_each_pair_impl(static_cast<Pairs*>(nullptr), std::forward<F>(f));
}

}  // namespace skv
